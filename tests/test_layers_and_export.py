"""Wrapping each supported layer, serialization, strip (ours and tfmot's), report."""

import numpy as np
import pytest
import tensorflow as tf
import tensorflow_model_optimization as tfmot

import tf_dsr
from tf_dsr import keras
from tests.helpers import FLAVOURS
from tests.helpers import masks_of
from tests.helpers import sparse_pairs
from tests.helpers import sparse_tiny_cnn
from tests.helpers import tiny_cnn
from tests.helpers import tiny_data

LAYERS = {
    'conv1d': (lambda: keras.layers.Conv1D(6, 3), (2, 10, 4)),
    'conv2d': (lambda: keras.layers.Conv2D(6, 3), (2, 8, 8, 4)),
    'conv3d': (lambda: keras.layers.Conv3D(6, 3), (2, 5, 5, 5, 2)),
    'depthwise': (lambda: keras.layers.DepthwiseConv2D(3, depth_multiplier=2),
                  (2, 8, 8, 4)),
    'separable': (lambda: keras.layers.SeparableConv2D(6, 3), (2, 8, 8, 4)),
    'dense': (lambda: keras.layers.Dense(7), (2, 12)),
    'embedding': (lambda: keras.layers.Embedding(30, 5), None),
}


def _padded_recurrent(k, wrap):
  """Tokens -> Embedding(mask_zero) -> LSTM (sequences) -> Dense -> GRU in
  the Keras `k`, and the Dense's output; with `wrap`, every layer sparse."""
  maybe = lambda layer: (tf_dsr.DynamicSparseWrapper(layer, 0.5, seed=3)
                         if wrap else layer)
  tokens = k.Input((5,), dtype='int32')
  x = maybe(k.layers.Embedding(9, 4, mask_zero=True, name='emb'))(tokens)
  x = maybe(k.layers.LSTM(3, return_sequences=True, name='lstm'))(x)
  dense = maybe(k.layers.Dense(3, name='fc'))(x)
  outputs = maybe(k.layers.GRU(2, name='gru'))(dense)
  return k.Model(tokens, [outputs, dense])


@pytest.mark.parametrize('flavour', sorted(FLAVOURS))
def test_wrappers_pass_keras_masks_to_the_layer_and_on(flavour, tmp_path):
  k = FLAVOURS[flavour]
  plain, wrapped = _padded_recurrent(k, False), _padded_recurrent(k, True)
  # The plain model gets the wrapped model's weights, kernels masked.
  for wrapper in tf_dsr.collect_wrappers(wrapped):
    masked = {id(kernel): kernel.numpy() * mask.numpy()
              for kernel, mask in wrapper.sparse_weights}
    for source, target in zip(wrapper.layer.weights,
                              plain.get_layer(wrapper.layer.name).weights):
      target.assign(masked.get(id(source), source.numpy()))
  # Token 0 is padding. The Embedding's mask reaches the LSTM, which skips
  # the padded steps; the Dense passes it on to the GRU, whose output is
  # that of the last real token.
  tokens = np.array([[3, 4, 0, 0, 0], [5, 6, 7, 8, 0]])
  (ours, our_dense), (theirs, their_dense) = wrapped(tokens), plain(tokens)
  np.testing.assert_allclose(ours.numpy(), theirs.numpy(), rtol=1e-6,
                             atol=1e-6)
  np.testing.assert_allclose(our_dense.numpy(), their_dense.numpy(),
                             rtol=1e-6, atol=1e-6)
  np.testing.assert_array_equal(our_dense._keras_mask.numpy(), tokens != 0)  # pylint: disable=protected-access
  # Without the mask the GRU would run on through the padding.
  unmasked = plain.get_layer('gru')(tf.identity(their_dense))
  assert np.abs(unmasked.numpy() - theirs.numpy()).max() > 1e-4
  # The stripped model (the layers, called as recorded) and the model
  # reloaded from a .keras file compute the same.
  path = str(tmp_path / 'padded.keras')
  wrapped.save(path)
  for model in (tf_dsr.strip_dynamic_sparsity(wrapped),
                k.models.load_model(path)):
    np.testing.assert_allclose(model(tokens)[0].numpy(), theirs.numpy(),
                               rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize('name', sorted(LAYERS))
def test_wrapped_layer_computes_with_the_masked_kernel(name):
  make, shape = LAYERS[name]
  wrapper = tf_dsr.DynamicSparseWrapper(make(), sparsity=0.75, seed=3)
  if shape is None:
    inputs = tf.constant([[1, 5, 29], [0, 3, 3]])
  else:
    inputs = tf.random.stateless_normal(shape, [1, 2])
  out = wrapper(inputs)
  (kernel, mask), = wrapper.sparse_weights
  n = kernel.shape.num_elements()
  assert int(mask.numpy().sum()) == max(1, round(0.25 * n))
  assert (kernel.numpy()[mask.numpy() == 0] == 0).all()
  # Put non-zero values under the mask: the output must not see them.
  kernel.assign(tf.where(tf.cast(mask, tf.bool), kernel, 123.0))
  np.testing.assert_allclose(wrapper(inputs), out, rtol=1e-5, atol=1e-5)


class _ScaledDense(keras.layers.Layer, tfmot.sparsity.keras.PrunableLayer):
  """A custom layer naming its prunable weight through tfmot's protocol."""

  def build(self, input_shape):
    self.w = self.add_weight('w', shape=(input_shape[-1], 3))
    self.scale = self.add_weight('scale', shape=(), initializer='ones')

  def call(self, inputs):
    return self.scale * tf.matmul(inputs, self.w)

  def get_prunable_weights(self):
    return [self.w]


def test_custom_prunable_layer():
  wrapper = tf_dsr.DynamicSparseWrapper(_ScaledDense(), sparsity=0.5)
  x = tf.ones([1, 4])
  wrapper(x)
  (kernel, mask), = wrapper.sparse_weights
  assert kernel is wrapper.layer.w
  assert int(mask.numpy().sum()) == 6
  np.testing.assert_allclose(
      wrapper(x), x @ (kernel * tf.cast(mask, kernel.dtype)).numpy(), rtol=1e-6)


def test_sparsify_sequential_and_list_and_exclude():
  model = keras.Sequential([
      keras.layers.Dense(8, input_shape=(4,), name='a'),
      keras.layers.Dropout(0.1, name='drop'),
      keras.layers.Dense(3, name='b'),
  ])
  sparse = tf_dsr.sparsify(model, 0.5, exclude=['b'])
  assert [type(l).__name__ for l in sparse.layers] == [
      'DynamicSparseWrapper', 'Dropout', 'Dense']
  assert sparse.layers[0].name == 'dynamic_sparse_a'
  layers = tf_dsr.sparsify([keras.layers.Dense(2), keras.layers.ReLU()], 0.5)
  assert [type(l).__name__ for l in layers] == ['DynamicSparseWrapper', 'ReLU']


def test_same_seed_same_initial_masks_and_layers_differ():
  first = tf_dsr.sparsify(tiny_cnn(), 0.8, seed=7)
  second = tf_dsr.sparsify(tiny_cnn(), 0.8, seed=7)
  third = tf_dsr.sparsify(tiny_cnn(), 0.8, seed=8)
  for a, b in zip(masks_of(first), masks_of(second)):
    np.testing.assert_array_equal(a, b)
  assert any((a != b).any() for a, b in zip(masks_of(first), masks_of(third)))


def test_wrapper_config_round_trip():
  wrapper = tf_dsr.DynamicSparseWrapper(keras.layers.Conv2D(4, 3, name='c'),
                                        sparsity=0.9, seed=5)
  config = wrapper.get_config()
  clone = tf_dsr.DynamicSparseWrapper.from_config(config)
  assert clone.get_config() == config
  assert (clone.sparsity, clone.seed, clone.layer.name) == (0.9, 5, 'c')


def test_schedule_config_round_trip():
  schedule = tf_dsr.PeriodSchedule({0: 100, 25: 200}, unit='step')
  assert tf_dsr.PeriodSchedule.from_config(schedule.get_config()) == schedule


@pytest.mark.parametrize('suffix', ['.keras', '.h5', '_savedmodel'])
def test_model_save_and_load(tmp_path, suffix):
  model = sparse_tiny_cnn()
  x, y = tiny_data()
  model.fit(x, y, epochs=1, verbose=0, batch_size=16,
            callbacks=[tf_dsr.ReallocationCallback(target_pruned=10, period=2)])
  path = str(tmp_path / f'model{suffix}')
  model.save(path)
  loaded = keras.models.load_model(path)
  np.testing.assert_allclose(loaded.predict(x, verbose=0),
                             model.predict(x, verbose=0), rtol=1e-5, atol=1e-6)
  for a, b in zip(masks_of(loaded), masks_of(model)):
    np.testing.assert_array_equal(a, b)


def test_save_weights_carries_the_dsr_state(tmp_path):
  model = sparse_tiny_cnn()
  x, y = tiny_data()
  model.fit(x, y, epochs=1, verbose=0, batch_size=16,
            callbacks=[tf_dsr.ReallocationCallback(target_pruned=10, period=2)])
  state = model.dynamic_sparsity_state
  expected = (float(state.threshold.numpy()), int(state.reallocations.numpy()),
              int(state.last_step.numpy()))
  assert expected[1] == 2
  model.save_weights(str(tmp_path / 'w'))
  fresh = sparse_tiny_cnn()
  fresh.load_weights(str(tmp_path / 'w'))
  realloc = tf_dsr.Reallocator(fresh, target_pruned=10)
  assert (float(realloc.state.threshold.numpy()),
          int(realloc.state.reallocations.numpy()),
          int(realloc.state.last_step.numpy())) == expected
  for a, b in zip(masks_of(fresh), masks_of(model)):
    np.testing.assert_array_equal(a, b)


def test_strip_bakes_masks_and_leaves_the_model_alone():
  model = sparse_tiny_cnn()
  x, _ = tiny_data()
  for kernel, mask in sparse_pairs(model):  # values hidden under the mask
    kernel.assign(tf.where(tf.cast(mask, tf.bool), kernel, 5.0))
  plain = tf_dsr.strip_dynamic_sparsity(model)
  assert not any(isinstance(l, tf_dsr.DynamicSparseWrapper) for l in plain.layers)
  assert [l.name for l in plain.layers[1:]] == ['conv1', 'conv2', 'pool', 'fc']
  np.testing.assert_allclose(plain.predict(x, verbose=0),
                             model.predict(x, verbose=0), rtol=1e-5, atol=1e-6)
  fc = plain.get_layer('fc').kernel.numpy()
  _, fc_mask = sparse_pairs(model)[1]
  assert (fc[fc_mask.numpy() == 0] == 0).all()
  # The source model still holds its (hidden) values: nothing was changed.
  assert (sparse_pairs(model)[1][0].numpy()[fc_mask.numpy() == 0] == 5.0).all()


def test_strip_handles_a_model_mixing_tfmot_and_tf_dsr_wrappers():
  inputs = keras.Input((6,))
  x = tfmot.sparsity.keras.prune_low_magnitude(
      keras.layers.Dense(5, name='pruned'))(inputs)
  outputs = tf_dsr.DynamicSparseWrapper(keras.layers.Dense(3, name='dsr'),
                                        sparsity=0.6)(x)
  model = keras.Model(inputs, outputs)
  # tf_dsr.sparsify leaves tfmot's wrappers alone on a mixed model.
  data = np.random.default_rng(0).normal(size=(4, 6)).astype('float32')
  tfmot_wrapper = model.layers[1]
  tfmot_wrapper.pruning_vars[0][1].assign(
      tf.cast(tf.random.stateless_uniform([6, 5], [1, 1]) < 0.5, tf.float32))
  plain = tf_dsr.strip_dynamic_sparsity(model)
  assert [type(l).__name__ for l in plain.layers] == ['InputLayer', 'Dense',
                                                      'Dense']
  weight, mask, _ = tfmot_wrapper.pruning_vars[0]
  np.testing.assert_array_equal(plain.get_layer('pruned').kernel.numpy(),
                                (weight * mask).numpy())
  # tfmot's own strip_pruning works on the mixed model too (it keeps ours).
  stripped = tfmot.sparsity.keras.strip_pruning(model)
  assert isinstance(stripped.layers[-1], tf_dsr.DynamicSparseWrapper)
  assert stripped.predict(data, verbose=0).shape == (4, 3)


def test_sparsity_report_counts():
  model = sparse_tiny_cnn(sparsity=0.75)
  report = tf_dsr.sparsity_report(model)
  names = [t.name for t in report.tensors]
  assert names == ['dynamic_sparse_conv2/kernel', 'dynamic_sparse_fc/kernel']
  # conv2 kernel 3*3*8*16 = 1152 -> 288 active; fc 16*10 = 160 -> 40 active.
  assert [(t.active, t.total) for t in report.tensors] == [(288, 1152), (40, 160)]
  assert (report.sparse_active, report.sparse_total) == (328, 1312)
  # conv1: 3*3*1*8 + 8 = 80, conv2 bias 16, fc bias 10 (all dense).
  assert report.model_total == 1312 + 80 + 16 + 10
  assert report.model_active == 328 + 80 + 16 + 10
  assert 'total sparse' in str(report) and '1,312' in str(report)
