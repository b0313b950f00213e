"""More of tf_dsr on Keras 3 (the `keras` package, TensorFlow backend).

- FLOPs: `tf_dsr.flops_report` and `sparsity_report(...).flops` of a Keras 3
  model equal those of the same tf_keras model (hand-worked numbers too).
- `to_tflite` strips a Keras 3 model and stores its kernels sparse; the
  TFLite interpreter gives Keras's outputs.
- `save_sparse` / `load_sparse` of a Keras 3 model restore masks, weights and
  the DSR state bit-identically (or rebuild the model from its config), and
  refuse another model leaving it unchanged.
- MultiHeadAttention: its query, key, value (gate) and output projections
  are sparse, each under its own name, masked in the forward pass; the
  engine reallocates them in `fit` and a `.keras` file keeps their masks.
"""

import json
import zlib

import keras
import numpy as np
import pytest
import tensorflow as tf

import tf_dsr
from tf_dsr import keras as tf_keras
from tf_dsr import wrapper as wrapper_lib

from tests.helpers import run_tflite

KERASES = {'keras3': keras, 'tf_keras': tf_keras}


# ------------------------------------------------------------------- FLOPs
def _conv_dense(keras_module, sparsity=0.75):
  """(6, 6, 2) -> conv 3x3 -> 1x1 conv stride 2 (kept dense) -> fc."""
  layers = keras_module.layers
  inputs = keras_module.Input((6, 6, 2))
  x = layers.Conv2D(4, 3, name='conv')(inputs)       # -> (4, 4, 4)
  x = layers.Conv2D(3, 1, strides=2, name='proj')(x)  # -> (2, 2, 3)
  x = layers.Flatten(name='flat')(x)                  # -> 12
  outputs = layers.Dense(5, name='fc')(x)
  return tf_dsr.sparsify(keras_module.Model(inputs, outputs), sparsity,
                         seed=1, exclude=['proj'])


def test_keras3_flops_equal_the_tf_keras_flops_and_the_hand_count():
  reports = {name: tf_dsr.flops_report(_conv_dense(module))
             for name, module in KERASES.items()}
  # conv: 3*3*2*4 = 72 entries at 4*4 = 16 positions: 2304 FLOPs dense, 18
  # active (sparsity 0.75): 576. proj (kept dense): 12 entries at 2*2
  # positions: 96. fc: 60 entries once: 120, 15 active: 30.
  assert [(l.name, l.dense, l.sparse, l.masked)
          for l in reports['keras3'].layers] == [
              ('conv', 2304, 576, True), ('proj', 96, 96, False),
              ('fc', 120, 30, True)]
  assert reports['keras3'] == reports['tf_keras']
  report = tf_dsr.sparsity_report(_conv_dense(keras))
  assert (report.flops.dense, report.flops.sparse) == (2520, 702)
  assert 'inference FLOPs' in str(report)


def _other_kinds(keras_module):
  layers = keras_module.layers
  image = keras_module.Input((6, 6, 2))
  a = layers.DepthwiseConv2D(3, depth_multiplier=2, padding='same',
                             name='depthwise')(image)
  b = layers.SeparableConv2D(4, 3, name='separable')(image)
  c = layers.MaxPooling2D(2)(b)
  c = layers.Conv2DTranspose(3, 2, strides=2, name='transposed')(c)
  sequence = keras_module.Input((5, 4))
  shared = layers.Dense(4, name='shared')
  d = shared(shared(sequence))
  tokens = keras_module.Input((3,))
  e = layers.Embedding(10, 2, name='embedding')(tokens)
  model = keras_module.Model([image, sequence, tokens], [a, c, d, e])
  return tf_dsr.sparsify(model, 0.5, seed=2)


def test_keras3_flops_of_other_layer_kinds_equal_the_tf_keras_ones():
  # As tf_dsr/flops_test.py works them out for tf_keras (dense FLOPs):
  # depthwise 2592, separable 832, transposed 384, the shared Dense called
  # twice 320; the embedding costs nothing.
  reports = {name: tf_dsr.flops_report(_other_kinds(module))
             for name, module in KERASES.items()}
  assert {l.name: l.dense for l in reports['keras3'].layers} == {
      'depthwise': 2592, 'separable': 832, 'transposed': 384, 'shared': 320}
  assert reports['keras3'] == reports['tf_keras']
  assert reports['keras3'].sparse < reports['keras3'].dense


def test_keras3_flops_need_a_layer_graph():
  with pytest.raises(ValueError, match="`model` 'plain'.*no graph"):
    tf_dsr.flops_report(keras.Sequential([keras.layers.Dense(2)],
                                         name='plain'))
  with pytest.raises(ValueError, match='`model` must be a Keras 3 model'):
    tf_dsr.flops_report(keras.layers.Dense(2))


# ------------------------------------------------------------------ TFLite
def test_keras3_to_tflite_strips_and_stores_the_weights_sparse():
  keras.utils.set_random_seed(0)
  model = tf_dsr.sparsify(keras.Sequential([
      keras.Input((64,)), keras.layers.Dense(100, activation='relu'),
      keras.layers.Dense(10)]), 0.9, seed=1)
  rng = np.random.default_rng(0)
  for wrapper in tf_dsr.collect_wrappers(model):  # Weight where masked too.
    for kernel, _ in wrapper.sparse_weights:
      kernel.assign(rng.normal(size=kernel.shape).astype('float32'))
  x = rng.normal(size=(3, 64)).astype('float32')
  expected = model.predict(x, verbose=0)
  dense = tf_dsr.to_tflite(model, sparse=False)
  sparse = tf_dsr.to_tflite(model)
  # 6400 + 1000 kernel entries: dense about 29.6 kB of float32, sparse
  # about a tenth of that plus indices.
  assert len(sparse) < 0.5 * len(dense)
  for content in (dense, sparse):
    np.testing.assert_allclose(run_tflite(content, x), expected,
                               rtol=1e-5, atol=1e-5)
  assert tf_dsr.collect_wrappers(model)  # The model keeps its wrappers.
  with pytest.raises(ValueError, match='`model` must be a keras3 model'):
    tf_dsr.to_tflite(keras.layers.Dense(3))


# ------------------------------------------------------- compact checkpoints
def _cnn(seed=1, width=3):
  layers = keras.layers
  inputs = keras.Input((6, 6, 1))
  x = layers.Conv2D(4, 3, name='conv')(inputs)
  x = layers.BatchNormalization(name='bn')(x)
  x = layers.Flatten(name='flat')(x)
  outputs = layers.Dense(width, name='fc')(x)
  return tf_dsr.sparsify(keras.Model(inputs, outputs), 0.7, seed=seed)


def _data(n=40, seed=0):
  rng = np.random.default_rng(seed)
  return (rng.normal(size=(n, 6, 6, 1)).astype('float32'),
          rng.integers(0, 3, n))


def _trained_cnn():
  """A sparse Keras 3 CNN after reallocations (masks moved, H adapted)."""
  keras.utils.set_random_seed(0)
  model = _cnn()
  model.compile(keras.optimizers.SGD(0.05, momentum=0.9),
                keras.losses.SparseCategoricalCrossentropy(from_logits=True))
  before = [m.numpy().copy() for w in tf_dsr.collect_wrappers(model)
            for _, m in w.sparse_weights]
  x, y = _data()
  callback = tf_dsr.ReallocationCallback(period=3, target_pruned=6, seed=0,
                                         initial_threshold=0.05)
  model.fit(x, y, batch_size=10, epochs=2, verbose=0, callbacks=[callback])
  after = [m.numpy() for w in tf_dsr.collect_wrappers(model)
           for _, m in w.sparse_weights]
  assert any((a != b).any() for a, b in zip(before, after))
  return model


def _weights(model):
  """The model's weights without the DSR state (compared on its own)."""
  state = {id(v) for w in tf_dsr.collect_wrappers(model)
           for v in w.state_variables.values()}
  return [v for v in model.weights if id(v) not in state]


def _state(model):
  variables = tf_dsr.collect_wrappers(model)[0].state_variables
  return {name: variables[name].numpy() for name in ('threshold',
                                                      'reallocations')}


def test_keras3_compact_checkpoint_restores_everything_bit_identically(
    tmp_path):
  model = _trained_cnn()
  path = str(tmp_path / 'model.npz')
  size = tf_dsr.save_sparse(model, path)
  assert size == (tmp_path / 'model.npz').stat().st_size
  fresh = _cnn(seed=7)  # Other masks and kernels.
  loaded = tf_dsr.load_sparse(path, model=fresh)
  assert loaded is fresh
  ours, theirs = _weights(fresh), _weights(model)
  assert len(ours) == len(theirs) == 10  # 2 kernels, 2 masks, 2 biases, bn 4.
  # Masks, kernels, biases, batch-norm statistics: bit-identical.
  for a, b in zip(ours, theirs):
    assert a.dtype == b.dtype
    np.testing.assert_array_equal(a.numpy(), b.numpy())
  assert _state(fresh) == _state(model)
  assert int(_state(model)['reallocations']) == 2
  # No step count in the file: the next reallocation falls due by the new
  # optimizer's steps.
  assert int(tf_dsr.collect_wrappers(fresh)[0].state_variables[
      'last_step'].numpy()) == -1
  rebuilt = tf_dsr.load_sparse(path)  # Rebuilt from the stored config.
  assert isinstance(rebuilt, keras.Model)
  assert [w.name for w in tf_dsr.collect_wrappers(rebuilt)] == [
      'dynamic_sparse_conv', 'dynamic_sparse_fc']
  x, _ = _data(8, seed=3)
  np.testing.assert_array_equal(rebuilt.predict(x, verbose=0),
                                model.predict(x, verbose=0))


def test_keras3_compact_checkpoint_refuses_another_model_leaving_it(
    tmp_path):
  path = str(tmp_path / 'model.npz')
  tf_dsr.save_sparse(_trained_cnn(), path)
  other = _cnn(width=5)  # fc is 64 x 5, not 64 x 3.
  before = [v.numpy().copy() for v in other.weights]
  with pytest.raises(ValueError, match=r"`path` .* does not match `model`.*"
                     r"shape \(64, 3\).*\(64, 5\)"):
    tf_dsr.load_sparse(path, model=other)
  for a, b in zip(before, other.weights):
    np.testing.assert_array_equal(a, b.numpy())
  with pytest.raises(ValueError, match='`model` must be a keras3 model'):
    tf_dsr.save_sparse(keras.layers.Dense(3), path)
  # The manifest names the Keras that rebuilds the model; an unknown one is
  # refused by name.
  with np.load(path) as archive:
    arrays = {name: archive[name] for name in archive.files}
  manifest = json.loads(arrays['manifest'].tobytes())
  assert manifest['keras'] == 'keras3'
  manifest['keras'] = 'jax'
  arrays['manifest'] = np.frombuffer(json.dumps(manifest).encode(), np.uint8)
  np.savez(path, **arrays)
  with pytest.raises(ValueError, match="unknown Keras, 'jax'"):
    tf_dsr.load_sparse(path)


# ------------------------------------------------------ MultiHeadAttention
ATTENTION_NAMES = ['dynamic_sparse_mha/query/kernel',
                   'dynamic_sparse_mha/key/kernel',
                   'dynamic_sparse_mha/value/kernel',
                   'dynamic_sparse_mha/attention_output/kernel']


@pytest.mark.parametrize('use_gate', [False, True])
def test_keras3_attention_projections_are_sparse_and_masked(use_gate):
  layer = keras.layers.MultiHeadAttention(2, 4, use_gate=use_gate, name='mha')
  wrapper = tf_dsr.DynamicSparseWrapper(layer, sparsity=0.5, seed=3)
  assert isinstance(wrapper, tf_dsr.DynamicSparseWrapper)
  rng = np.random.default_rng(0)
  query = rng.normal(size=(2, 5, 8)).astype('float32')
  value = rng.normal(size=(2, 3, 6)).astype('float32')
  expected = wrapper(query, value).numpy()  # Builds query, key, value, ...
  names = list(ATTENTION_NAMES)
  shapes = [(8, 2, 4), (6, 2, 4), (6, 2, 4), (2, 4, 8)]
  if use_gate:
    names.insert(3, 'dynamic_sparse_mha/gate/kernel')
    shapes.insert(3, (8, 2, 4))
  assert wrapper.sparse_names == names
  assert [tuple(k.shape) for k, _ in wrapper.sparse_weights] == shapes
  # Each mask as every wrapper draws it: from the seed, the layer's name and
  # the kernel's position; half of each kernel active.
  key = zlib.crc32(b'mha') & 0x7FFFFFFF
  for index, (kernel, mask) in enumerate(wrapper.sparse_weights):
    drawn = wrapper_lib.initial_mask(
        tuple(kernel.shape), 0.5, tf.constant([3, key + index], tf.int64))
    np.testing.assert_array_equal(mask.numpy(), drawn.numpy() > 0.5)
    assert mask.numpy().sum() == mask.numpy().size // 2
  # Put weight back where the masks are 0: the output must not see it.
  for kernel, mask in wrapper.sparse_weights:
    kernel.assign(kernel.numpy() + (1 - mask.numpy()))
  np.testing.assert_allclose(wrapper(query, value).numpy(), expected,
                             rtol=1e-5, atol=1e-6)
  # The inner layer alone sees the weight put back.
  assert not np.allclose(wrapper.layer(query, value).numpy(), expected)


def _padded_attention(wrap):
  keras.utils.set_random_seed(0)
  inputs = keras.Input((5,), dtype='int32')
  embedded = keras.layers.Embedding(10, 8, mask_zero=True, name='emb')(inputs)
  attention = keras.layers.MultiHeadAttention(2, 4, name='mha')
  if wrap:  # Sparsity 0: every mask full, so only the Keras masks differ.
    attention = tf_dsr.DynamicSparseWrapper(attention, sparsity=0.0)
  attended = attention(embedded, embedded)
  # Averages over the unpadded positions only if the mask reaches it.
  pooled = keras.layers.GlobalAveragePooling1D(name='pool')(attended)
  return keras.Model(inputs, [attended, pooled])


def test_keras3_attention_wrapper_passes_the_padding_masks_on():
  plain, wrapped = _padded_attention(False), _padded_attention(True)
  inner = wrapped.get_layer('dynamic_sparse_mha').layer
  for source, target in zip(plain.get_layer('mha').weights + plain.get_layer(
      'emb').weights, inner.weights + wrapped.get_layer('emb').weights):
    target.assign(source)
  # Token 0 is padding: attention must skip it as the plain layer does.
  tokens = np.array([[3, 4, 0, 0, 0], [5, 6, 7, 0, 0]])
  (ours, our_pool), (theirs, their_pool) = wrapped(tokens), plain(tokens)
  np.testing.assert_allclose(ours.numpy(), theirs.numpy(), rtol=1e-6,
                             atol=1e-6)
  # The output keeps the query's mask for the layers after it: the pooling
  # averages the first 2 and 3 positions.
  np.testing.assert_allclose(our_pool.numpy(), their_pool.numpy(), rtol=1e-6,
                             atol=1e-6)
  np.testing.assert_allclose(our_pool.numpy()[1], ours.numpy()[1, :3].mean(0),
                             rtol=1e-5, atol=1e-6)


def _attention_model():
  inputs = keras.Input((5, 8))
  x = keras.layers.MultiHeadAttention(2, 4, name='mha')(inputs, inputs)
  x = keras.layers.Flatten(name='flat')(x)
  outputs = keras.layers.Dense(3, name='fc')(x)
  return tf_dsr.sparsify(keras.Model(inputs, outputs), 0.5, seed=1)


def _masks(model):
  return [m.numpy() for w in tf_dsr.collect_wrappers(model)
          for _, m in w.sparse_weights]


def test_keras3_attention_model_reallocates_and_round_trips(tmp_path):
  keras.utils.set_random_seed(0)
  model = _attention_model()
  assert [w.name for w in tf_dsr.collect_wrappers(model)] == [
      'dynamic_sparse_mha', 'dynamic_sparse_fc']
  model.compile(keras.optimizers.SGD(0.05, momentum=0.9),
                keras.losses.SparseCategoricalCrossentropy(from_logits=True))
  rng = np.random.default_rng(0)
  x = rng.normal(size=(40, 5, 8)).astype('float32')
  y = rng.integers(0, 3, 40)
  before = _masks(model)
  callback = tf_dsr.ReallocationCallback(period=2, target_pruned=10, seed=0,
                                         initial_threshold=0.05)
  model.fit(x, y, batch_size=10, epochs=1, verbose=0, callbacks=[callback])
  assert len(callback.history) == 2
  assert list(callback.history[-1].active) == ATTENTION_NAMES + [
      'dynamic_sparse_fc/kernel']
  after = _masks(model)
  assert any((a != b).any() for a, b in zip(before[:4], after[:4]))
  assert sum(m.sum() for m in after) == sum(m.sum() for m in before)
  for (kernel, mask) in tf_dsr.collect_wrappers(model)[0].sparse_weights:
    assert (kernel.numpy()[~mask.numpy()] == 0).all()
  path = str(tmp_path / 'attention.keras')
  model.save(path)
  loaded = keras.models.load_model(path)
  for a, b in zip(_masks(loaded), after):
    np.testing.assert_array_equal(a, b)
  np.testing.assert_array_equal(loaded.predict(x, verbose=0),
                                model.predict(x, verbose=0))


# ------------------------------------------- tf_dsr's protocol: custom layers
class _Mixer(keras.layers.Layer):
  """A custom layer naming its two sparse kernels by tf_dsr's protocol: one
  of its own and one of a sublayer."""

  def __init__(self, **kwargs):
    super().__init__(**kwargs)
    self.proj = keras.layers.Dense(4, name='proj')

  def build(self, input_shape):
    self.mix = self.add_weight(shape=(input_shape[-1], 6), name='mix')
    self.proj.build((None, 6))

  def call(self, inputs):
    return self.proj(keras.ops.relu(inputs @ self.mix))

  def get_prunable_weights(self):
    return [self.mix, self.proj.kernel]


def test_keras3_custom_layer_with_the_protocol_trains_with_moving_masks():
  keras.utils.set_random_seed(0)
  inputs = keras.Input((5,))
  x = tf_dsr.DynamicSparseWrapper(_Mixer(name='mixer'), sparsity=[0.5, 0.75],
                                  seed=2)(inputs)
  model = keras.Model(inputs, keras.layers.Dense(2, name='head')(x))
  wrapper, = tf_dsr.collect_wrappers(model)
  assert wrapper.sparse_names == ['dynamic_sparse_mixer/mix',
                                  'dynamic_sparse_mixer/kernel']
  # Sparsity per kernel, in the protocol's order: 15 of 30, 6 of 24 active.
  before = [m.numpy().copy() for _, m in wrapper.sparse_weights]
  assert [int(m.sum()) for m in before] == [15, 6]
  model.compile(keras.optimizers.SGD(0.1, momentum=0.9),
                keras.losses.SparseCategoricalCrossentropy(from_logits=True))
  rng = np.random.default_rng(0)
  x_train = rng.normal(size=(40, 5)).astype('float32')
  y_train = (x_train[:, 0] > 0).astype('int32')
  callback = tf_dsr.ReallocationCallback(period=2, target_pruned=4, seed=0,
                                         initial_threshold=0.1)
  model.fit(x_train, y_train, batch_size=10, epochs=2, verbose=0,
            callbacks=[callback])
  assert len(callback.history) == 4
  after = [m.numpy() for _, m in wrapper.sparse_weights]
  assert any((a != b).any() for a, b in zip(before, after))
  assert sum(int(m.sum()) for m in after) == 21
  for kernel, mask in wrapper.sparse_weights:
    assert (kernel.numpy()[~mask.numpy()] == 0).all()
