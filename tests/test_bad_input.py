"""Every bad input gets an error naming the argument and echoing the value."""

import numpy as np
import pytest

import tf_dsr
from tf_dsr import keras
from tests.conftest import masks_of
from tests.conftest import sparse_tiny_cnn
from tests.conftest import tiny_cnn
from tests.conftest import tiny_data


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
  with pytest.raises(ValueError, match='no `tf_dsr.ReallocationCallback`'):
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
  with pytest.raises(ValueError, match='no `tf_dsr.ReallocationCallback`'):
    model.fit(x, y, epochs=1, verbose=0)
  assert masks_of(model)


def test_keras3_objects_get_a_clear_message():
  import keras as keras3  # pylint: disable=g-import-not-at-top
  if keras3.__version__.startswith('2.'):
    pytest.skip('keras is Keras 2 here')
  layer = keras3.layers.Dense(3)
  with pytest.raises(ValueError, match='Keras 3.*from tf_dsr import keras'):
    tf_dsr.DynamicSparseWrapper(layer, 0.5)
  model = keras3.Sequential([keras3.Input((4,)), keras3.layers.Dense(2)])
  with pytest.raises(ValueError, match='`to_sparsify`.*Keras 3'):
    tf_dsr.sparsify(model, 0.5)
