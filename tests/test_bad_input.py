"""Every bad input gets an error naming the argument and echoing the value."""

import numpy as np
import pytest

import tf_dsr
from tf_dsr import keras
from tests.helpers import masks_of
from tests.helpers import sparse_tiny_cnn
from tests.helpers import tiny_cnn
from tests.helpers import tiny_data


@pytest.mark.parametrize('sparsity', [-0.1, 1.0, 1.5, float('nan'), '0.5', None])
def test_sparsity_outside_unit_interval(sparsity):
  with pytest.raises(ValueError, match=r'`sparsity`.*' + repr(sparsity)[:3]):
    tf_dsr.DynamicSparseWrapper(keras.layers.Dense(2), sparsity=sparsity)
  with pytest.raises(ValueError, match='`sparsity`'):
    tf_dsr.sparsify(tiny_cnn(), sparsity)


def test_layer_without_prunable_kernel():
  with pytest.raises(ValueError, match="'norm'.*no prunable kernel"):
    tf_dsr.DynamicSparseWrapper(keras.layers.BatchNormalization(name='norm'),
                                sparsity=0.5)


def test_wrapping_twice():
  wrapper = tf_dsr.DynamicSparseWrapper(keras.layers.Dense(2, name='d'), 0.5)
  with pytest.raises(ValueError, match='already wrapped'):
    tf_dsr.DynamicSparseWrapper(wrapper, 0.5)
  model = tf_dsr.sparsify(tiny_cnn(), 0.5)
  with pytest.raises(ValueError, match='already sparsified'):
    tf_dsr.sparsify(model, 0.5)


def test_exclude_naming_a_missing_layer_changes_nothing():
  model = tiny_cnn()
  before = [w.numpy() for w in model.weights]
  with pytest.raises(ValueError, match=r"`exclude`.*\['nope'\]"):
    tf_dsr.sparsify(model, 0.9, exclude=['conv1', 'nope'])
  for a, b in zip(before, model.weights):
    np.testing.assert_array_equal(a, b.numpy())
  with pytest.raises(ValueError, match=r"`exclude`.*string 'conv1'"):
    tf_dsr.sparsify(model, 0.9, exclude='conv1')


def test_callback_on_a_model_without_sparse_layers():
  model = tiny_cnn()
  model.compile('sgd', keras.losses.SparseCategoricalCrossentropy(True))
  x, y = tiny_data()
  cb = tf_dsr.ReallocationCallback(target_pruned=10)
  with pytest.raises(ValueError, match='no DynamicSparseWrapper'):
    model.fit(x, y, epochs=1, verbose=0, callbacks=[cb])


def test_training_without_callback_or_reallocator_is_refused():
  model = sparse_tiny_cnn()
  x, y = tiny_data()
  with pytest.raises(ValueError, match='without a `tf_dsr.ReallocationCallback`'):
    model.fit(x, y, epochs=1, verbose=0)
  # Inference is fine without one.
  assert model.predict(x, verbose=0).shape == (64, 10)


@pytest.mark.parametrize('kwargs,pattern', [
    ({'target_pruned': 0}, '`target_pruned`.*0'),
    ({'target_pruned': -5}, '`target_pruned`.*-5'),
    ({'target_pruned': 10, 'tolerance': 0.0}, '`tolerance`.*0.0'),
    ({'target_pruned': 10, 'tolerance': 1.0}, '`tolerance`.*1.0'),
    ({'target_pruned': 10, 'initial_threshold': 0.0}, '`initial_threshold`'),
    ({'target_pruned': 10, 'period': 0}, '`period`.*0'),
    ({'target_pruned': 10, 'period': {0: 100, 25: 0}}, '`period`'),
    ({'target_pruned': 10, 'period': {0: 100, 80: 400, 25: 200}},
     '`period` keys must be strictly increasing'),
    ({'target_pruned': 10, 'period': {5: 100}}, '`period` must start at'),
    ({'target_pruned': 10, 'period': 'often'}, "`period`.*'often'"),
    ({'target_pruned': 10, 'stop_epoch': -1}, '`stop_epoch`.*-1'),
    ({'target_pruned': 10, 'seed': 1.5}, '`seed`.*1.5'),
])
def test_callback_arguments(kwargs, pattern):
  with pytest.raises(ValueError, match=pattern):
    tf_dsr.ReallocationCallback(**kwargs)


def test_reallocator_arguments_leave_the_model_unbound():
  model = sparse_tiny_cnn()
  with pytest.raises(ValueError, match='`tolerance`.*2'):
    tf_dsr.Reallocator(model, target_pruned=10, tolerance=2)
  assert not hasattr(model, 'dynamic_sparsity_state')
  x, y = tiny_data()
  with pytest.raises(ValueError, match='without a `tf_dsr.ReallocationCallback`'):
    model.fit(x, y, epochs=1, verbose=0)
  assert masks_of(model)


def test_objects_of_neither_keras_get_a_clear_message():
  with pytest.raises(ValueError, match='`layer`.*tf_keras.*got builtins.str'):
    tf_dsr.DynamicSparseWrapper('dense', 0.5)
  with pytest.raises(ValueError, match='`to_sparsify` must be a Keras layer'):
    tf_dsr.sparsify(object(), 0.5)


def test_a_subclass_of_the_tf_keras_wrapper_refuses_a_keras3_layer():
  import keras as keras3  # pylint: disable=g-import-not-at-top

  class MyWrapper(tf_dsr.DynamicSparseWrapper):
    pass

  # tf_dsr.DynamicSparseWrapper itself dispatches to the Keras 3 wrapper; a
  # subclass stays the tf_keras wrapper, and says so.
  assert not isinstance(tf_dsr.DynamicSparseWrapper(keras3.layers.Dense(2), 0.5),
                        MyWrapper)
  with pytest.raises(ValueError, match=r'`layer` must be a tf_keras.*got '
                     r'keras\S*Dense.*Keras 3.*returns the Keras 3 wrapper'):
    MyWrapper(keras3.layers.Dense(2), 0.5)


@pytest.mark.parametrize('period,pattern', [
    ({2: 2, 0: 4}, r'strictly increasing, got them in the order \[2, 0\].*'
                   r'write \{0: 4, 2: 2\}'),
    ({5: 100}, 'must start at epoch 0: its first key is 5'),
    ({-1: 3, 0: 2}, 'keys must be >= 0.*-1'),
    ({0: 100, 25: 0}, 'the value of key 25 is 0'),
    ({0: 100, 'a': 3}, "keys must be ints.*'a' is not"),
])
def test_period_messages_say_what_is_wrong(period, pattern):
  with pytest.raises(ValueError, match=pattern):
    tf_dsr.ReallocationCallback(target_pruned=10, period=period)


def test_numpy_scalars_are_numbers_everywhere():
  model = tf_dsr.sparsify(tiny_cnn(), sparsity=np.float32(0.5),
                          exclude=['conv1'], seed=np.int64(3))
  wrapper = tf_dsr.collect_wrappers(model)[0]
  assert wrapper.sparsity == 0.5 and wrapper.seed == 3
  assert type(wrapper.seed) is int
  layer = tf_dsr.DynamicSparseWrapper(keras.layers.Dense(2), np.float64(0.25),
                                      seed=np.int32(1))
  assert layer.get_config()['seed'] == 1
  cb = tf_dsr.ReallocationCallback(
      target_pruned=np.int64(10), tolerance=np.float32(0.2),
      initial_threshold=np.float16(0.01), period={np.int64(0): np.int32(4)},
      stop_epoch=np.int64(3), stop_step=np.int32(100), seed=np.int64(2))
  assert cb.schedule.pieces == {0: 4} and cb.stop_epoch == 3 and cb.seed == 2
  model.compile('sgd', keras.losses.SparseCategoricalCrossentropy(True))
  realloc = tf_dsr.Reallocator(model, 'set', drop_fraction=np.float32(0.3),
                               seed=np.int64(1))
  assert realloc.seed == 1
  tf_dsr.Reallocator(model, 'deepr', alpha=np.float32(1e-4),
                     temperature=np.float64(0.0), learning_rate=np.float32(0.1))


def test_target_pruned_above_the_sparse_weights_names_both_numbers():
  model = sparse_tiny_cnn()  # conv2 1152 + fc 160 = 1312 sparse weights.
  with pytest.raises(ValueError, match=r'`target_pruned` \(1313\).*1,312'):
    tf_dsr.Reallocator(model, target_pruned=1313)
  with pytest.raises(ValueError, match=r'`target_pruned` \(5000\).*1,312'):
    tf_dsr.Reallocator(model, 'set', target_pruned=5000)
  assert not hasattr(model, 'dynamic_sparsity_state')
  tf_dsr.Reallocator(model, target_pruned=1312)
  x, y = tiny_data()
  with pytest.raises(ValueError, match=r'`target_pruned` \(2000\).*1,312'):
    model.fit(x, y, epochs=1, verbose=0, callbacks=[
        tf_dsr.ReallocationCallback(target_pruned=2000)])


@pytest.mark.parametrize('auxiliary, message', [
    ('sign', r"`auxiliary` must be None or a dict .*got 'sign'"),
    ({'sign': 'float32'}, r"`auxiliary` entry 'sign': 'float32' must map"),
    ({'sign': {'dtype': 'float32'}}, r"`auxiliary` entry 'sign'"),
    ({'sign': {'dtype': 'nope', 'sum_on_read': False}},
     r"`auxiliary` entry 'sign': dtype 'nope' is not a TensorFlow dtype"),
])
def test_wrapper_auxiliary_is_checked(auxiliary, message):
  with pytest.raises(ValueError, match=message):
    tf_dsr.DynamicSparseWrapper(keras.layers.Dense(2), 0.5,
                                auxiliary=auxiliary)


def test_add_auxiliary_refuses_another_dtype_and_leaves_the_layer_as_it_was():
  wrapper = tf_dsr.DynamicSparseWrapper(keras.layers.Dense(2), 0.5)
  wrapper.build((None, 4))
  (sign,) = wrapper.add_auxiliary('sign', 'float32')
  count = len(wrapper.weights)
  with pytest.raises(ValueError, match=r"already holds rule variables 'sign'"):
    wrapper.add_auxiliary('sign', 'float32', sum_on_read=True)
  assert len(wrapper.weights) == count
  assert wrapper.auxiliary_weights['sign'] == [sign]
  # The same checks as the Keras 3 wrapper's (one shared function).
  for kwargs, message in (
      (dict(sum_on_read=1), r'`sum_on_read` must be True or False, got 1'),
      (dict(dtype='nope'), r"`dtype` of rule variables 'other'.*got 'nope'"),
      (dict(initial_values=[np.ones((4, 2))] * 2),
       r'`initial_values` must hold one tensor per sparse kernel.*\(1\), got 2')):
    with pytest.raises(ValueError, match=message):
      wrapper.add_auxiliary('other', **kwargs)
  assert len(wrapper.weights) == count and 'other' not in wrapper.auxiliary
  unbuilt = tf_dsr.DynamicSparseWrapper(keras.layers.Dense(2), 0.5)
  with pytest.raises(ValueError, match='not built yet'):
    unbuilt.add_auxiliary('sign')
