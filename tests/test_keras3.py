"""tf_dsr on Keras 3 (the `keras` package, TensorFlow backend).

- Importing tf_dsr leaves `tf.keras` and TF_USE_LEGACY_KERAS as they were.
- `tf_dsr.DynamicSparseWrapper` and `tf_dsr.sparsify` take Keras 3 layers and
  models; their masks equal the tf_keras path's for the same seed, layer name
  and shape, and the forward pass uses `kernel * mask`.
- The engine on a Keras 3 model gives the same masks, H and stats as on the
  same tf_keras model, resets SGD momentum and Adam moments where weights
  move, and `fit` with the callback reallocates on schedule with one trace.
- A `.keras` file loads in a fresh process with masks and state (that a
  `.keras` or `.weights.h5` file resumes a run bit-identically is tested
  on both Kerases in tests/test_save_paths.py).
- `strip_dynamic_sparsity` gives a plain Keras 3 model with the masked
  kernels, and `sparsity_report` the tf_keras report's numbers.
- An XLA-compiled train step gives the same masks as an uncompiled one;
  with `mixed_float16` the LossScaleOptimizer's inner momentum is reset.

DeepR, RigL, SNFS and `tf_dsr.snip` on Keras 3 (rule variables, the
dense-gradient hook, rule serialization), and DSR and those rules under
MirroredStrategy (in one subprocess), are tested in
tests/test_keras3_rules.py.
"""

import os
import subprocess
import sys
import textwrap

import keras
import numpy as np
import pytest
import tensorflow as tf

import tf_dsr
from tf_dsr import keras as tf_keras

from tests.helpers import assert_reset_where_moved

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
KERASES = {'keras3': keras, 'tf_keras': tf_keras}


def _python(code, **env):
  environ = {k: v for k, v in os.environ.items()
             if k != 'TF_USE_LEGACY_KERAS'}
  environ.update(PYTHONPATH=REPO, TF_CPP_MIN_LOG_LEVEL='3', **env)
  done = subprocess.run([sys.executable, '-c', textwrap.dedent(code)],
                        capture_output=True, text=True, cwd=REPO, env=environ)
  assert done.returncode == 0, done.stderr[-3000:]
  return done.stdout.strip().splitlines()[-1]


# ------------------------------------------------------------------ import
_IMPORT = '''
import json
import os
before = os.environ.get('TF_USE_LEGACY_KERAS')
import tf_dsr
import tensorflow as tf
assert os.environ.get('TF_USE_LEGACY_KERAS') == before, os.environ
print(tf.keras.__name__)
'''


def test_importing_tf_dsr_leaves_tf_keras_as_keras_3():
  assert _python(_IMPORT + 'assert tf.keras.version().startswith("3.")\n'
                 'print(tf.keras.__name__)\n').startswith('keras.')


def test_importing_tf_dsr_keeps_a_users_legacy_keras_setting():
  assert _python(_IMPORT, TF_USE_LEGACY_KERAS='1').startswith('tf_keras')


# ----------------------------------------------------------------- wrapper
def _layer(kind, keras_module):
  layers = keras_module.layers
  return {
      'dense': (lambda: layers.Dense(6, name='k'), (None, 5)),
      'conv1d': (lambda: layers.Conv1D(4, 3, name='k'), (None, 7, 3)),
      'conv2d': (lambda: layers.Conv2D(4, 3, name='k'), (None, 6, 6, 2)),
      'conv3d': (lambda: layers.Conv3D(2, 2, name='k'), (None, 4, 4, 4, 2)),
      'conv2d_transpose': (lambda: layers.Conv2DTranspose(3, 3, name='k'),
                           (None, 5, 5, 2)),
      'depthwise_conv2d': (lambda: layers.DepthwiseConv2D(3, name='k'),
                           (None, 6, 6, 4)),
      'separable_conv2d': (lambda: layers.SeparableConv2D(4, 3, name='k'),
                           (None, 6, 6, 3)),
      'embedding': (lambda: layers.Embedding(20, 4, name='k'), (None, 3)),
      'lstm': (lambda: layers.LSTM(3, name='k'), (None, 4, 2)),
  }[kind]


LAYERS = ['dense', 'conv1d', 'conv2d', 'conv3d', 'conv2d_transpose',
          'depthwise_conv2d', 'separable_conv2d', 'embedding', 'lstm']


@pytest.mark.parametrize('kind', LAYERS)
def test_keras3_masks_equal_the_tf_keras_masks(kind):
  masks = {}
  for name, keras_module in KERASES.items():
    make, shape = _layer(kind, keras_module)
    wrapper = tf_dsr.DynamicSparseWrapper(make(), sparsity=0.7, seed=3)
    wrapper.build(shape)
    masks[name] = [m.numpy() for _, m in wrapper.sparse_weights]
  assert len(masks['keras3']) == len(masks['tf_keras']) >= 1
  for ours, theirs in zip(masks['keras3'], masks['tf_keras']):
    np.testing.assert_array_equal(ours, theirs)
    assert 0 < ours.mean() < 0.5


# Keras 3 layers whose kernels tf_dsr knows: `(make, input shape, number of
# sparse kernels)`.
KERAS3_ONLY = {
    'einsum_dense': (lambda: keras.layers.EinsumDense('ab,bc->ac', 4), (2, 5),
                     1),
    'conv1d_transpose': (lambda: keras.layers.Conv1DTranspose(3, 3),
                         (2, 5, 2), 1),
    'conv3d_transpose': (lambda: keras.layers.Conv3DTranspose(2, 2),
                         (2, 3, 3, 3, 2), 1),
    'depthwise_conv1d': (lambda: keras.layers.DepthwiseConv1D(3), (2, 6, 3),
                         1),
    'separable_conv1d': (lambda: keras.layers.SeparableConv1D(4, 3),
                         (2, 6, 3), 1),
    'gru': (lambda: keras.layers.GRU(3), (2, 4, 2), 2),
    'simple_rnn': (lambda: keras.layers.SimpleRNN(3), (2, 4, 2), 2),
}


@pytest.mark.parametrize('kind', sorted(KERAS3_ONLY))
def test_keras3_layer_kernels_are_masked(kind):
  make, shape, count = KERAS3_ONLY[kind]
  wrapper = tf_dsr.DynamicSparseWrapper(make(), sparsity=0.5, seed=2)
  x = np.random.default_rng(0).normal(size=shape).astype('float32')
  wrapper(x)
  # Built: masked entries of the kernels are 0, so the layer alone computes
  # what the masked call must.
  dense = wrapper.layer(x).numpy()
  assert len(wrapper.sparse_weights) == count
  for kernel, mask in wrapper.sparse_weights:
    assert mask.numpy().sum() == round(0.5 * mask.numpy().size)
    assert (kernel.numpy()[mask.numpy() == 0] == 0).all()
  # Put weight back at masked entries: the wrapper's output must not see it.
  for kernel, mask in wrapper.sparse_weights:
    kernel.assign(kernel.numpy() + (1 - mask.numpy()))
  np.testing.assert_allclose(wrapper(x).numpy(), dense, rtol=1e-5, atol=1e-6)


def test_one_class_name_for_both_wrappers():
  wrapper = tf_dsr.DynamicSparseWrapper(keras.layers.Dense(3), sparsity=0.5)
  legacy = tf_dsr.DynamicSparseWrapper(tf_keras.layers.Dense(3), sparsity=0.5)
  assert isinstance(wrapper, keras.layers.Layer)
  assert isinstance(legacy, tf_keras.layers.Layer)
  assert isinstance(wrapper, tf_dsr.DynamicSparseWrapper)
  assert isinstance(legacy, tf_dsr.DynamicSparseWrapper)


def test_keras3_forward_pass_uses_the_masked_kernel():
  dense = keras.layers.Dense(4, use_bias=False, name='fc')
  wrapper = tf_dsr.DynamicSparseWrapper(dense, sparsity=0.5, seed=1)
  x = np.random.default_rng(0).normal(size=(2, 6)).astype('float32')
  wrapper(x)
  (kernel, mask), = wrapper.sparse_weights
  # Entries the mask later drops must not reach the output: put weight back
  # where the mask is 0, and the output must not change.
  expected = x @ (kernel.numpy() * mask.numpy())
  kernel.assign(kernel.numpy() + (1 - mask.numpy()))
  np.testing.assert_allclose(wrapper(x).numpy(), expected, rtol=1e-6)
  assert wrapper.sparse_names == ['dynamic_sparse_fc/kernel']


def test_keras3_layer_without_known_kernels_is_refused_with_what_to_do():
  with pytest.raises(ValueError, match=r"'bn'.*BatchNormalization.*Dense.*"
                     r"get_prunable_weights.*exclude=\['bn'\]"):
    tf_dsr.DynamicSparseWrapper(keras.layers.BatchNormalization(name='bn'),
                                sparsity=0.5)


class _Scaled(keras.layers.Layer):
  """A custom layer naming its sparse kernel through the protocol."""

  def build(self, input_shape):
    self.weight = self.add_weight(shape=(input_shape[-1], 3), name='weight')

  def call(self, inputs):
    return 2.0 * (inputs @ self.weight)

  def get_prunable_weights(self):
    return [self.weight]


def test_keras3_custom_layer_names_its_kernels_by_protocol():
  wrapper = tf_dsr.DynamicSparseWrapper(_Scaled(name='s'), sparsity=0.5)
  x = np.ones((1, 4), 'float32')
  out = wrapper(x).numpy()
  (kernel, mask), = wrapper.sparse_weights
  np.testing.assert_allclose(out, 2 * x @ (kernel.numpy() * mask.numpy()))
  assert wrapper.sparse_names == ['dynamic_sparse_s/weight']


def _cnn(keras_module, sparsity=0.7, **options):
  layers = keras_module.layers
  inputs = keras_module.Input((6, 6, 1))
  x = layers.Conv2D(4, 3, name='conv')(inputs)
  x = layers.BatchNormalization(name='bn')(x)
  x = layers.Flatten(name='flat')(x)
  outputs = layers.Dense(3, name='fc')(x)
  return tf_dsr.sparsify(keras_module.Model(inputs, outputs), sparsity, seed=1,
                         **options)


def test_sparsify_wraps_the_kernels_of_a_keras3_model():
  model = _cnn(keras)
  wrappers = tf_dsr.collect_wrappers(model)
  assert [w.name for w in wrappers] == ['dynamic_sparse_conv',
                                        'dynamic_sparse_fc']
  assert isinstance(model, keras.Model)
  kept = tf_dsr.sparsify(keras.Sequential([
      keras.Input((5,)), keras.layers.Dense(4, name='a'),
      keras.layers.Dense(2, name='b')]), 0.5, exclude=['a'])
  assert [w.name for w in tf_dsr.collect_wrappers(kept)] == [
      'dynamic_sparse_b']
  # ERK and the initial scale give the same masks and kernels as on tf_keras.
  options = dict(distribution='erk', init_scale='sparse_fan_in')
  twins = {name: _cnn(module, 0.8, **options)
           for name, module in KERASES.items()}
  pairs = [[p for w in tf_dsr.collect_wrappers(m) for p in w.sparse_weights]
           for m in twins.values()]
  assert [w.sparsity for w in tf_dsr.collect_wrappers(twins['keras3'])] == [
      w.sparsity for w in tf_dsr.collect_wrappers(twins['tf_keras'])]
  for (_, ours), (_, theirs) in zip(*pairs):
    np.testing.assert_array_equal(ours.numpy(), theirs.numpy())
  with pytest.raises(ValueError, match='mixes'):
    tf_dsr.sparsify([keras.layers.Dense(2), tf_keras.layers.Dense(2)], 0.5)


# ------------------------------------------------------------------ engine
def _twins(sparsity=0.7):
  """The same sparse CNN in both Kerases, with equal kernels and masks."""
  models = {name: _cnn(module, sparsity) for name, module in KERASES.items()}
  rng = np.random.default_rng(0)
  pairs = {name: [p for w in tf_dsr.collect_wrappers(m)
                  for p in w.sparse_weights]
           for name, m in models.items()}
  for (k3, m3), (k2, m2) in zip(pairs['keras3'], pairs['tf_keras']):
    np.testing.assert_array_equal(m3.numpy(), m2.numpy())
    value = rng.normal(size=k2.shape).astype('float32') * m2.numpy()
    k3.assign(value)
    k2.assign(value)
  return models, pairs


@pytest.mark.parametrize('method, options', [
    ('dsr', {'target_pruned': 12, 'initial_threshold': 0.5}),
    ('set', {'drop_fraction': 0.3}),
    ('static', {}),
])
def test_keras3_reallocation_equals_the_tf_keras_one(method, options):
  models, pairs = _twins()
  reallocators = {
      name: tf_dsr.Reallocator(model, method, optimizer=False, seed=5,
                               **options)
      for name, model in models.items()}
  for step in (10, 20, 30):
    stats = {name: r.reallocate(step) for name, r in reallocators.items()}
    assert stats['keras3'] == stats['tf_keras']
  for (k3, m3), (k2, m2) in zip(pairs['keras3'], pairs['tf_keras']):
    np.testing.assert_array_equal(m3.numpy(), m2.numpy())
    np.testing.assert_array_equal(k3.numpy(), k2.numpy())
  assert reallocators['keras3'].trace_count == 1
  if method != 'static':
    assert sum(s.pruned for s in [stats['keras3']]) > 0


@pytest.mark.parametrize('optimizer, kinds', [
    (lambda: keras.optimizers.SGD(0.1, momentum=0.9), 1),
    (lambda: keras.optimizers.Adam(0.01), 2),
    (lambda: keras.optimizers.AdamW(0.01), 2),
])
def test_keras3_optimizer_state_is_reset_where_weights_move(optimizer, kinds):
  model = _cnn(keras)
  model.compile(optimizer(), 'mse')
  model.optimizer.build(model.trainable_variables)
  realloc = tf_dsr.Reallocator(model, target_pruned=12, initial_threshold=0.5)
  pairs = [p for w in tf_dsr.collect_wrappers(model) for p in w.sparse_weights]
  slots = tf_dsr.kerases.KERAS3.slot_variables(model.optimizer,
                                               [k for k, _ in pairs])
  assert [len(group) for group in slots] == [kinds] * len(pairs)
  for group in slots:
    for slot in group:
      slot.assign(tf.ones_like(slot))
  before = [m.numpy() for _, m in pairs]
  stats = realloc.reallocate(1)
  assert stats.pruned > 0
  assert assert_reset_where_moved(pairs, slots, before) == stats.pruned


def test_keras3_optimizer_of_the_other_keras_is_refused():
  with pytest.raises(TypeError, match='Keras 3 optimizer'):
    tf_dsr.Reallocator(_cnn(keras), target_pruned=10,
                       optimizer=tf_keras.optimizers.SGD(0.1))


def _data():
  rng = np.random.default_rng(0)
  return (rng.normal(size=(40, 6, 6, 1)).astype('float32'),
          rng.integers(0, 3, 40))


def _compiled(optimizer=None):
  keras.utils.set_random_seed(0)
  model = _cnn(keras)
  model.compile(optimizer or keras.optimizers.SGD(0.05, momentum=0.9),
                keras.losses.SparseCategoricalCrossentropy(from_logits=True))
  return model


def _callback():
  return tf_dsr.ReallocationCallback(period=3, target_pruned=6, seed=0)


def test_keras3_fit_needs_the_callback_and_then_reallocates_on_schedule():
  x, y = _data()
  model = _compiled(keras.optimizers.Adam(0.01))
  with pytest.raises(ValueError, match='ReallocationCallback'):
    model.fit(x, y, batch_size=10, epochs=1, verbose=0)
  callback = _callback()
  model.fit(x, y, batch_size=10, epochs=2, verbose=0, callbacks=[callback])
  assert [s.step for s in callback.history] == [3, 6]
  assert callback.reallocator.trace_count == 1
  state = tf_dsr.collect_wrappers(model)[0].state_variables
  assert int(state['last_step'].numpy()) == 6
  assert int(state['step'].numpy()) == 8


def test_keras3_keras_file_loads_in_a_fresh_process(tmp_path):
  x, y = _data()
  model = _compiled()
  model.fit(x, y, batch_size=10, epochs=1, verbose=0,
            callbacks=[_callback()])
  path = str(tmp_path / 'run.keras')
  model.save(path)
  expected = tmp_path / 'expected.npz'
  np.savez(expected, *[v.numpy() for v in model.weights])
  assert _python(f'''
      import keras, numpy as np
      import tf_dsr
      model = keras.models.load_model({path!r})
      expected = np.load({str(expected)!r})
      values = [v.numpy() for v in model.weights]
      assert len(values) == len(expected.files)
      for i, value in enumerate(values):
        np.testing.assert_array_equal(value, expected[f'arr_{{i}}'])
      wrappers = tf_dsr.collect_wrappers(model)
      print(len(wrappers), int(wrappers[0].state_variables['last_step']))
      ''') == '2 3'


# ------------------------------------------------------- strip and report
def test_keras3_strip_gives_a_plain_model_with_the_masked_kernels():
  models, pairs = _twins()
  model = models['keras3']
  rng = np.random.default_rng(1)
  for kernel, _ in pairs['keras3']:  # Nonzero where masked, for the strip.
    kernel.assign(rng.normal(size=kernel.shape).astype('float32'))
  x = rng.normal(size=(4, 6, 6, 1)).astype('float32')
  stripped = tf_dsr.strip_dynamic_sparsity(model)
  assert isinstance(stripped, keras.Model)
  assert not tf_dsr.collect_wrappers(stripped)
  assert [l.name for l in stripped.layers[1:]] == ['conv', 'bn', 'flat', 'fc']
  np.testing.assert_array_equal(stripped.predict(x, verbose=0),
                                model.predict(x, verbose=0))
  kernels = [stripped.get_layer('conv').kernel, stripped.get_layer('fc').kernel]
  for plain, (kernel, mask) in zip(kernels, pairs['keras3']):
    np.testing.assert_array_equal(plain.numpy(),
                                  kernel.numpy() * mask.numpy())
  assert not set(map(id, stripped.weights)) & set(map(id, model.weights))
  sequential = tf_dsr.sparsify(keras.Sequential([
      keras.Input((5,)), keras.layers.Dense(4, name='a')]), 0.5)
  plain = tf_dsr.strip_dynamic_sparsity(sequential)
  assert isinstance(plain, keras.Sequential)
  assert [l.name for l in plain.layers] == ['a']


def test_keras3_report_equals_the_tf_keras_report():
  models, _ = _twins()
  for model in models.values():  # The DSR state variables are not counted.
    tf_dsr.Reallocator(model, target_pruned=12, optimizer=False,
                       initial_threshold=0.5).reallocate(1)
  ours, theirs = (tf_dsr.sparsity_report(models[name])
                  for name in ('keras3', 'tf_keras'))
  assert ours.tensors == theirs.tensors
  assert (ours.sparse_active, ours.sparse_total, ours.model_active,
          ours.model_total) == (theirs.sparse_active, theirs.sparse_total,
                                theirs.model_active, theirs.model_total)
  assert ours.stored_bytes == theirs.stored_bytes
  assert theirs.flops is not None and ours.flops == theirs.flops
  assert 'dynamic_sparse_conv/kernel' in str(ours)


# ------------------------------------- compiled steps, replicas, precision
def _mlp():
  keras.utils.set_random_seed(0)
  return tf_dsr.sparsify(keras.Sequential([
      keras.Input((16,)), keras.layers.Dense(32, activation='relu', name='a'),
      keras.layers.Dense(10, name='b')]), 0.7, seed=1)


def _fit_mlp(jit_compile=False):
  """16 steps of SGD with momentum; reallocations at steps 4, 8, 12, 16."""
  rng = np.random.default_rng(0)
  x = rng.normal(size=(64, 16)).astype('float32')
  y = rng.integers(0, 10, 64)
  model = _mlp()
  model.compile(keras.optimizers.SGD(0.1, momentum=0.9),
                keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                jit_compile=jit_compile)
  callback = tf_dsr.ReallocationCallback(period=4, target_pruned=20,
                                         initial_threshold=0.02, seed=0)
  model.fit(x, y, batch_size=8, epochs=2, verbose=0, shuffle=False,
            callbacks=[callback])
  return model, callback


def test_keras3_xla_compiled_train_step_gives_the_same_masks():
  runs = {jit: _fit_mlp(jit_compile=jit) for jit in (False, True)}
  assert runs[True][0].jit_compile and not runs[False][0].jit_compile
  histories = [[(s.step, s.pruned, s.threshold_used) for s in c.history]
               for _, c in runs.values()]
  assert histories[0] == histories[1]
  assert [s[0] for s in histories[0]] == [4, 8, 12, 16]
  assert all(s[1] > 0 for s in histories[0])
  pairs = [[p for w in tf_dsr.collect_wrappers(m) for p in w.sparse_weights]
           for m, _ in runs.values()]
  for (k0, m0), (k1, m1) in zip(*pairs):
    np.testing.assert_array_equal(m0.numpy(), m1.numpy())
    # XLA fuses the step differently: weights equal up to float rounding.
    np.testing.assert_allclose(k0.numpy(), k1.numpy(), atol=1e-6)


def test_keras3_mixed_float16_trains_with_the_callback():
  keras.mixed_precision.set_global_policy('mixed_float16')
  try:
    model, callback = _fit_mlp()
  finally:
    keras.mixed_precision.set_global_policy('float32')
  optimizer = model.optimizer
  assert isinstance(optimizer, keras.optimizers.LossScaleOptimizer)
  assert model.layers[0].compute_dtype == 'float16'
  assert [s.step for s in callback.history] == [4, 8, 12, 16]
  assert all(s.pruned > 0 for s in callback.history)
  for wrapper in tf_dsr.collect_wrappers(model):
    for kernel, mask in wrapper.sparse_weights:
      assert kernel.dtype == 'float32'
      mask = mask.numpy()
      assert set(np.unique(mask)) <= {0, 1}
      assert not kernel.numpy()[mask == 0].any()
      slots, = tf_dsr.kerases.KERAS3.slot_variables(optimizer, [kernel])
      inner = {id(v.value) for v in optimizer.inner_optimizer.variables}
      assert len(slots) == 1 and id(slots[0]) in inner
      # Reset where weights moved; no gradient reaches an inactive entry.
      assert not slots[0].numpy()[mask == 0].any()
