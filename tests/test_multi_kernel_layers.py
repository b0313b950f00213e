"""Layers with several sparse kernels: one unique name per kernel in stats,
the sparsity report and TensorBoard; save and load; lazily built layers are
refused."""

import numpy as np
import pytest
import tensorflow as tf
import tensorflow_model_optimization as tfmot

import tf_dsr
from tf_dsr import keras
from tests.helpers import masks_of


@keras.utils.register_keras_serializable(package='tf_dsr_tests')
class TwoDense(keras.layers.Layer, tfmot.sparsity.keras.PrunableLayer):
  """Two Dense sublayers whose kernels are both named `kernel`."""

  def __init__(self, **kwargs):
    super().__init__(**kwargs)
    self.first = keras.layers.Dense(4, name='first')
    self.second = keras.layers.Dense(3, name='second')

  def build(self, input_shape):
    self.first.build(input_shape)
    self.second.build((None, 4))
    super().build(input_shape)

  def call(self, inputs):
    return self.second(self.first(inputs))

  def get_prunable_weights(self):
    return [self.first.kernel, self.second.kernel]


def _model(layer):
  inputs = keras.Input((5, 6))
  x = tf_dsr.DynamicSparseWrapper(layer, sparsity=0.5, seed=1)(inputs)
  outputs = keras.layers.Dense(2, name='head')(keras.layers.Flatten()(x))
  model = keras.Model(inputs, outputs)
  model.compile(keras.optimizers.SGD(0.1, momentum=0.9),
                keras.losses.SparseCategoricalCrossentropy(from_logits=True))
  return model


CASES = {
    # name -> (layer, expected names, sizes)
    'two dense sublayers': (
        lambda: TwoDense(name='two'),
        ['dynamic_sparse_two/first/kernel', 'dynamic_sparse_two/second/kernel'],
        [6 * 4, 4 * 3]),
    'lstm': (
        lambda: keras.layers.LSTM(3, return_sequences=True, name='lstm'),
        ['dynamic_sparse_lstm/kernel', 'dynamic_sparse_lstm/recurrent_kernel'],
        [6 * 12, 3 * 12]),
    'gru': (
        lambda: keras.layers.GRU(2, return_sequences=True, name='gru'),
        ['dynamic_sparse_gru/kernel', 'dynamic_sparse_gru/recurrent_kernel'],
        [6 * 6, 2 * 6]),
}


@pytest.mark.parametrize('case', sorted(CASES))
def test_each_kernel_has_a_unique_name_everywhere(tmp_path, case):
  make, names, sizes = CASES[case]
  keras.utils.set_random_seed(0)
  model = _model(make())
  rng = np.random.default_rng(0)
  x = rng.normal(size=(16, 5, 6)).astype('float32')
  y = rng.integers(0, 2, size=16)
  cb = tf_dsr.ReallocationCallback(target_pruned=8, period=2,
                                   initial_threshold=0.1,
                                   log_dir=str(tmp_path / 'logs'))
  model.fit(x, y, batch_size=4, epochs=1, verbose=0, callbacks=[cb])
  assert len(cb.history) == 2
  stats = cb.history[-1]
  assert list(stats.active) == names
  # The counts are per kernel: they sum to the active weights of both, half
  # of each kernel (sparsity 0.5), not of one counted twice.
  assert stats.total_active == sum(round(0.5 * n) for n in sizes)
  assert sum(stats.active.values()) == stats.total_active
  report = tf_dsr.sparsity_report(model)
  assert [t.name for t in report.tensors] == names
  assert [t.total for t in report.tensors] == sizes
  tags = set()
  for event_file in (tmp_path / 'logs').iterdir():
    for record in tf.compat.v1.train.summary_iterator(str(event_file)):
      tags |= {v.tag for v in record.summary.value}
  assert {f'dsr_density/{name}' for name in names} <= tags
  path = str(tmp_path / 'model.keras')
  model.save(path)
  loaded = keras.models.load_model(path)
  for a, b in zip(masks_of(loaded), masks_of(model)):
    np.testing.assert_array_equal(a, b)
  np.testing.assert_allclose(loaded.predict(x, verbose=0),
                             model.predict(x, verbose=0), rtol=1e-5, atol=1e-6)
  assert float(loaded.layers[1].state_variables['threshold'].numpy()) == (
      stats.threshold)


def test_multi_head_attention_is_refused_with_a_way_out():
  layer = keras.layers.MultiHeadAttention(2, 4, name='attention')
  with pytest.raises(ValueError, match=r"'attention'.*only when first called.*"
                     r"exclude=\['attention'\]"):
    tf_dsr.DynamicSparseWrapper(layer, sparsity=0.5)
  inputs = keras.Input((4, 8))
  x = keras.layers.MultiHeadAttention(2, 4, name='attention')(inputs, inputs)
  model = keras.Model(inputs, keras.layers.Dense(2, name='fc')(x))
  with pytest.raises(ValueError, match="exclude=\\['attention'\\]"):
    tf_dsr.sparsify(model, 0.5)
  sparse = tf_dsr.sparsify(model, 0.5, exclude=['attention'])
  assert [w.name for w in tf_dsr.collect_wrappers(sparse)] == [
      'dynamic_sparse_fc']


def test_separable_conv_sparsifies_the_pointwise_kernel():
  wrapper = tf_dsr.DynamicSparseWrapper(
      keras.layers.SeparableConv2D(4, 3, name='sep'), sparsity=0.5)
  wrapper.build((None, 8, 8, 2))
  assert wrapper.sparse_names == ['dynamic_sparse_sep/pointwise_kernel']


def test_a_sparsity_per_kernel_reaches_the_reallocation_layout():
  # An LSTM with sparsity 0.5 for its kernel and 0.75 for its recurrent
  # kernel (as ER/ERK give): the engine reads one number per kernel.
  inputs = keras.Input((4, 2))
  x = tf_dsr.DynamicSparseWrapper(keras.layers.LSTM(3, name='lstm'),
                                  sparsity=[0.5, 0.75], seed=1)(inputs)
  reallocator = tf_dsr.Reallocator(keras.Model(inputs, x), target_pruned=2,
                                   optimizer=False)
  reallocator.reallocate(1)
  assert reallocator.layout.sparsities == (0.5, 0.75)
