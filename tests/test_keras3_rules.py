"""DeepR, RigL, SNFS and SNIP on Keras 3 (the `keras` package, TensorFlow backend).

- The Keras 3 wrapper carries rule variables (`add_auxiliary`): weights of
  the layer, named in its config (so a clone or a loaded model has them
  before its weights load), saved in `.weights.h5`; `sum_on_read` ones are
  synchronised on read with aggregation SUM.
- Twins: the same model in both Kerases (same kernels, masks and seed) gives
  the same masks, kernels, rule variables and stats under DeepR, RigL and
  SNFS, with gradients recorded by the wrappers' hook in a custom loop and
  in `fit`; `tf_dsr.snip` gives the same masks.
- In `fit`, the dense gradient is recorded only in the step before a RigL
  update; RigL gives the same masks with an XLA-compiled train step; DeepR,
  RigL and SNFS train under `mixed_float16`.
- A `.keras` round-trip of a DeepR and an SNFS run resumes bit-identical to
  an uninterrupted run.
- Every rule class round-trips through Keras 3's serialization.

DSR, DeepR, RigL and SNFS on Keras 3 under MirroredStrategy are tested in
tests/test_distribution.py (tests/keras3_mirrored_run.py's models, trained in
the subprocess that also runs the tf_keras ones).
"""

import json

import keras
import numpy as np
import pytest
import tensorflow as tf

import tf_dsr
from tf_dsr import keras as tf_keras

KERASES = {'keras3': keras, 'tf_keras': tf_keras}


def _pairs(model):
  return [p for w in tf_dsr.collect_wrappers(model) for p in w.sparse_weights]


# ----------------------------------------------------------------- wrapper
def test_keras3_wrapper_rule_variables_are_weights_named_in_its_config(
    tmp_path):
  wrapper = tf_dsr.DynamicSparseWrapper(keras.layers.Dense(3, name='d'),
                                        sparsity=0.5, seed=1)
  with pytest.raises(ValueError, match='not built'):
    wrapper.add_auxiliary('sign')
  wrapper.build((None, 4))
  signs = wrapper.add_auxiliary('sign', 'float32', False,
                                [-np.ones((4, 3), 'float32')])
  momentum = wrapper.add_auxiliary('dense_momentum', tf.float32, True)
  # A second call returns the same variables; another spec is refused.
  assert wrapper.add_auxiliary('sign') == signs
  with pytest.raises(ValueError, match=r"'sign'.*'sum_on_read': True"):
    wrapper.add_auxiliary('sign', sum_on_read=True)
  with pytest.raises(ValueError, match=r'`sum_on_read` must be .*got 1'):
    wrapper.add_auxiliary('other', sum_on_read=1)
  with pytest.raises(ValueError, match=r"`dtype` .*'other'.*got 'nope'"):
    wrapper.add_auxiliary('other', dtype='nope')
  assert 'other' not in wrapper.auxiliary_weights
  np.testing.assert_array_equal(signs[0].numpy(), -np.ones((4, 3)))
  assert not momentum[0].numpy().any()
  assert [v.path for v in signs + momentum] == [
      'dynamic_sparse_d/kernel_sign', 'dynamic_sparse_d/kernel_dense_momentum']
  assert momentum[0].synchronization == 'on_read'
  assert momentum[0].aggregation == 'sum'
  assert signs[0].synchronization != 'on_read'
  assert all(any(v is w for w in wrapper.non_trainable_weights)
             for v in signs + momentum)
  config = wrapper.get_config()
  assert config['auxiliary'] == {
      'sign': {'dtype': 'float32', 'sum_on_read': False},
      'dense_momentum': {'dtype': 'float32', 'sum_on_read': True}}
  # Rebuilt from its config: the same variables (zeros) before loading.
  rebuilt = type(wrapper).from_config(
      keras.saving.serialize_keras_object(wrapper)['config'])
  rebuilt.build((None, 4))
  assert sorted(rebuilt.auxiliary_weights) == ['dense_momentum', 'sign']
  assert rebuilt.auxiliary_weights['dense_momentum'][0].synchronization == (
      'on_read')
  # `.weights.h5` carries them; a model without them is told what to do.
  model = keras.Sequential([keras.Input((4,)), wrapper])
  momentum[0].assign(np.full((4, 3), 2.0, 'float32'))
  path = str(tmp_path / 'w.weights.h5')
  model.save_weights(path)
  twin = keras.Sequential([keras.Input((4,)), rebuilt])
  twin.load_weights(path)
  for ours, theirs in zip(twin.weights, model.weights):
    np.testing.assert_array_equal(ours.numpy(), theirs.numpy())
  bare = keras.Sequential([keras.Input((4,)), tf_dsr.DynamicSparseWrapper(
      keras.layers.Dense(3, name='d'), sparsity=0.5, seed=1)])
  with pytest.raises(ValueError, match=r"2 more variables for layer "
                     r"'dynamic_sparse_d'.*callback\.set_model\(model\)"):
    bare.load_weights(path)


# ------------------------------------------------------------------- twins
def _mlp(keras_module):
  layers = keras_module.layers
  inputs = keras_module.Input((6,))
  x = layers.Dense(8, activation='tanh', name='a')(inputs)
  outputs = layers.Dense(4, name='b')(x)
  return tf_dsr.sparsify(keras_module.Model(inputs, outputs), 0.6, seed=2)


def _twins():
  """The same sparse MLP in both Kerases, with equal weights and masks."""
  models = {name: _mlp(module) for name, module in KERASES.items()}
  rng = np.random.default_rng(0)
  for w3, w2 in zip(tf_dsr.collect_wrappers(models['keras3']),
                    tf_dsr.collect_wrappers(models['tf_keras'])):
    (k3, m3), = w3.sparse_weights
    (k2, m2), = w2.sparse_weights
    np.testing.assert_array_equal(m3.numpy(), m2.numpy())
    value = rng.normal(size=k2.shape).astype('float32') * m2.numpy()
    k3.assign(value)
    k2.assign(value)
    bias = rng.normal(size=w2.layer.bias.shape).astype('float32')
    w3.layer.bias.assign(bias)
    w2.layer.bias.assign(bias)
  return models


def _batch(seed=0):
  rng = np.random.default_rng(seed)
  return (rng.normal(size=(16, 6)).astype('float32'),
          rng.normal(size=(16, 4)).astype('float32'))


def _loss(model, x, y):
  return tf.reduce_mean(tf.square(model(x, training=True) - y))


def _assert_twins_equal(models):
  for (k3, m3), (k2, m2) in zip(_pairs(models['keras3']),
                                _pairs(models['tf_keras'])):
    np.testing.assert_array_equal(m3.numpy(), m2.numpy())
    np.testing.assert_array_equal(k3.numpy(), k2.numpy())
  for kind in ('sign', 'dense_momentum'):
    ours = [v for w in tf_dsr.collect_wrappers(models['keras3'])
            for v in w.auxiliary_weights.get(kind, [])]
    theirs = [v for w in tf_dsr.collect_wrappers(models['tf_keras'])
              for v in w.auxiliary_weights.get(kind, [])]
    assert len(ours) == len(theirs)
    for a, b in zip(ours, theirs):
      np.testing.assert_array_equal(a.numpy(), b.numpy())


def test_keras3_deepr_equals_the_tf_keras_deepr():
  models = _twins()
  reallocators = {
      name: tf_dsr.Reallocator(model, 'deepr', optimizer=False, seed=4,
                               alpha=0.05, temperature=1e-3,
                               learning_rate=0.5)
      for name, model in models.items()}
  signs = models['keras3'].dynamic_sparsity_state.sign
  assert len(signs) == 2 and signs[0].path == 'dynamic_sparse_a/kernel_sign'
  _assert_twins_equal(models)  # The initial signs too.
  pruned = 0
  for step in range(1, 6):
    stats = {name: r.reallocate(step) for name, r in reallocators.items()}
    assert stats['keras3'] == stats['tf_keras']
    pruned += stats['keras3'].pruned
  # With alpha * lr = 0.025 per call, weights near 0 cross it: DeepR moved.
  assert pruned > 0
  assert reallocators['keras3'].state.reallocations.numpy() == 5
  _assert_twins_equal(models)
  assert reallocators['keras3'].trace_count == 1


@pytest.mark.parametrize('method, options', [
    ('rigl', {'drop_fraction': 0.3, 'schedule': 'constant'}),
    ('snfs', {'prune_rate': 0.3, 'schedule': 'constant'}),
])
def test_keras3_gradient_rules_equal_the_tf_keras_ones_in_a_custom_loop(
    method, options):
  models = _twins()
  reallocators = {name: tf_dsr.Reallocator(model, method, optimizer=False,
                                           seed=3, **options)
                  for name, model in models.items()}
  pruned = 0
  for step in range(1, 4):
    x, y = _batch(step)
    for name, model in models.items():
      realloc = reallocators[name]
      if method == 'rigl':
        realloc.record_gradients(True)
      variables = [k for k, _ in _pairs(model)]
      with tf.GradientTape() as tape:
        loss = _loss(model, x, y)
      grads = tape.gradient(loss, variables)
      if method == 'rigl':
        realloc.record_gradients(False)
        # The recorded gradient is d loss / d (kernel * mask): times the
        # mask, it is the kernel's own gradient; it is dense.
        recorded = realloc.gradient_recorder.read()
        for (_, mask), g, r in zip(_pairs(model), grads, recorded):
          np.testing.assert_allclose(r.numpy() * mask.numpy(), g.numpy(),
                                     rtol=1e-6)
          assert r.numpy()[mask.numpy() == 0].any()
      for v, g in zip(variables, grads):  # Plain SGD, the same in both.
        v.assign(v.numpy() - 0.1 * g.numpy())
    stats = {name: r.reallocate(step) for name, r in reallocators.items()}
    assert stats['keras3'] == stats['tf_keras']
    pruned += stats['keras3'].pruned
    _assert_twins_equal(models)
  assert pruned > 0
  if method == 'snfs':
    momentum = models['keras3'].dynamic_sparsity_state.dense_momentum
    assert momentum[0].path == 'dynamic_sparse_a/kernel_dense_momentum'
    assert momentum[0].numpy().any()


def _fit_twin(name, model, method, jit_compile=False, epochs=2, **options):
  x, y = _batch(7)
  model.compile(KERASES[name].optimizers.SGD(0.1), 'mse',
                jit_compile=jit_compile)
  callback = tf_dsr.ReallocationCallback(method=method, seed=3, **options)
  model.fit(np.tile(x, (2, 1)), np.tile(y, (2, 1)), batch_size=8,
            epochs=epochs, shuffle=False, verbose=0, callbacks=[callback])
  return callback


@pytest.mark.parametrize('method, options', [
    ('rigl', {'period': 2, 'drop_fraction': 0.3, 'end_step': 8,
              'schedule': 'constant'}),
    ('snfs', {'prune_rate': 0.3, 'schedule': 'constant'}),
])
def test_keras3_gradient_rules_in_fit_equal_the_tf_keras_ones(method, options):
  models = _twins()
  histories = {name: _fit_twin(name, model, method, **options).history
               for name, model in models.items()}
  assert histories['keras3'] == histories['tf_keras']
  steps = {'rigl': [2, 4, 6], 'snfs': [4, 8]}[method]
  assert [s.step for s in histories['keras3']] == steps
  assert all(s.pruned > 0 for s in histories['keras3'])
  _assert_twins_equal(models)


def test_keras3_fit_records_the_dense_gradient_only_before_a_rigl_update():
  rng = np.random.default_rng(3)
  x = rng.normal(size=(12, 4)).astype('float32')
  t = rng.normal(size=(12, 2)).astype('float32')
  wrapper = tf_dsr.DynamicSparseWrapper(
      keras.layers.Dense(2, use_bias=False, name='d'), 0.5)
  model = keras.Sequential([keras.Input((4,)), wrapper])
  (k, m), = wrapper.sparse_weights
  k.assign(np.linspace(-1, 1, 8).reshape(4, 2).astype('float32'))
  m.assign(np.array([1, 0] * 4, bool).reshape(4, 2))
  kernel, mask = k.numpy(), m.numpy().astype('float32')
  model.compile(keras.optimizers.SGD(0.0), 'mse')
  callback = tf_dsr.ReallocationCallback(
      method='rigl', schedule='constant', drop_fraction=0.25, period=2,
      end_step=100)
  model.fit(x, t, batch_size=4, epochs=1, shuffle=False, verbose=0,
            callbacks=[callback])
  assert [s.step for s in callback.history] == [2]
  # Three steps; recording is on only in step 2 (samples 4..7), the step
  # before the update. For y = x (K * M) and the mean squared error over
  # 4 x 2 outputs, d loss / d (K * M) = x^T 2 (y - t) / 8 at every entry,
  # inactive ones included; step 3's gradient (samples 8..11) differs.
  def gradient(xb, tb):
    return xb.T @ (2.0 * (xb @ (kernel * mask) - tb) / 8.0)

  recorder = callback.reallocator.gradient_recorder
  recorded = recorder.values[0].numpy()
  np.testing.assert_allclose(recorded, gradient(x[4:8], t[4:8]), rtol=1e-5,
                             atol=1e-7)
  assert not np.allclose(recorded, gradient(x[8:], t[8:]), atol=1e-3)
  assert (recorded[mask == 0] != 0).all()
  assert not recorder.recording.numpy()


@pytest.fixture
def without_op_determinism():
  """Op determinism off for one test, as it was afterwards.

  Keras 3 silently trains without XLA while it is on, and other tests of
  the process (tests/test_save_paths.py) turn it on for good.
  """
  from tensorflow.python.framework import config  # pylint: disable=g-direct-tensorflow-import,g-import-not-at-top
  enabled = config.is_op_determinism_enabled()
  config.disable_op_determinism()
  yield
  if enabled:
    config.enable_op_determinism()


def test_keras3_rigl_in_fit_gives_the_same_masks_xla_compiled(
    without_op_determinism):  # pylint: disable=redefined-outer-name,unused-argument
  def run(jit_compile):
    model = _twins()['keras3']
    callback = _fit_twin('keras3', model, 'rigl', jit_compile=jit_compile,
                         period=2, drop_fraction=0.3, end_step=8)
    assert model.jit_compile == jit_compile
    assert callback.reallocator.trace_count == 1
    return callback.history, [m.numpy() for _, m in _pairs(model)]

  plain, compiled = run(False), run(True)
  assert [(s.step, s.pruned, s.regrown) for s in plain[0]] == [
      (s.step, s.pruned, s.regrown) for s in compiled[0]]
  for a, b in zip(plain[1], compiled[1]):
    np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize('method, options', [
    # alpha * lr = 5e-3 per step: some weights cross 0 (1e-3 was too small
    # for every seed to move one).
    ('deepr', {'period': 1, 'alpha': 0.05}),
    ('rigl', {'period': 2, 'drop_fraction': 0.3, 'schedule': 'constant',
              'end_step': 100}),
    ('snfs', {'prune_rate': 0.3}),
])
def test_keras3_rules_train_under_mixed_float16(method, options):
  keras.utils.set_random_seed(0)
  keras.mixed_precision.set_global_policy('mixed_float16')
  try:
    model = _mlp(keras)
  finally:
    keras.mixed_precision.set_global_policy('float32')
  assert tf_dsr.collect_wrappers(model)[0].compute_dtype == 'float16'
  callback = _fit_twin('keras3', model, method, **options)
  assert isinstance(model.optimizer, keras.optimizers.LossScaleOptimizer)
  assert len(callback.history) == {'deepr': 8, 'rigl': 4, 'snfs': 2}[method]
  assert sum(s.pruned for s in callback.history) > 0
  for wrapper in tf_dsr.collect_wrappers(model):
    for kind, variables in wrapper.auxiliary_weights.items():
      for variable, (kernel, mask) in zip(variables, wrapper.sparse_weights):
        assert variable.dtype == 'float32'
        if kind == 'dense_momentum':  # Dense: it saw every entry's gradient.
          assert variable.numpy()[~mask.numpy()].any()
    for kernel, mask in wrapper.sparse_weights:
      assert kernel.dtype == 'float32'
      assert not kernel.numpy()[~mask.numpy()].any()


def test_keras3_snip_gives_the_tf_keras_masks():
  rng = np.random.default_rng(0)
  dense = {}
  for name, module in KERASES.items():
    layers = module.layers
    inputs = module.Input((6,))
    x = layers.Dense(8, activation='tanh', name='a')(inputs)
    dense[name] = module.Model(inputs, layers.Dense(4, name='b')(x))
  for v3, v2 in zip(dense['keras3'].weights, dense['tf_keras'].weights):
    value = rng.normal(size=v2.shape).astype('float32')
    v3.assign(value)
    v2.assign(value)
  x, y = _batch(1)
  sparse = {name: tf_dsr.snip(model, 0.75, x, y, 'mse')
            for name, model in dense.items()}
  assert isinstance(sparse['keras3'], keras.Model)
  pairs = {name: _pairs(model) for name, model in sparse.items()}
  # 48 + 32 weights at sparsity 0.75: round(0.25 * 48) + round(0.25 * 32).
  assert sum(int(m.numpy().sum()) for _, m in pairs['keras3']) == 12 + 8
  for (k3, m3), (k2, m2) in zip(pairs['keras3'], pairs['tf_keras']):
    np.testing.assert_array_equal(m3.numpy(), m2.numpy())
    np.testing.assert_array_equal(k3.numpy(), k2.numpy())
  # The most sensitive entry |g * w| of each kernel is kept.
  with tf.GradientTape() as tape:
    loss = tf.reduce_mean(tf.square(dense['keras3'](x) - y))
  kernels = [dense['keras3'].get_layer(n).kernel for n in ('a', 'b')]
  for kernel, g, (_, mask) in zip(kernels, tape.gradient(loss, kernels),
                                  pairs['keras3']):
    top = np.argmax(np.abs(g.numpy() * kernel.numpy()))
    assert mask.numpy().ravel()[top]


# ------------------------------------------------------------------ saving
def _compiled_mlp():
  model = _twins()['keras3']
  model.compile(keras.optimizers.SGD(0.05, momentum=0.9), 'mse')
  return model


_RULES = {
    'deepr': dict(method='deepr', period=1, alpha=1e-3, temperature=1e-4),
    'snfs': dict(method='snfs', prune_rate=0.3, end_step=40),
}


def _all_weights(model):
  return [v.numpy() for v in model.weights] + [
      v.numpy() for v in model.optimizer.variables]


@pytest.mark.parametrize('rule', sorted(_RULES))
def test_keras3_rule_run_resumes_from_a_keras_file_bit_identically(
    tmp_path, rule):
  x, y = _batch(5)
  fit = dict(x=np.tile(x, (2, 1)), y=np.tile(y, (2, 1)), batch_size=8,
             verbose=0, shuffle=False)
  straight, straight_cb = _compiled_mlp(), tf_dsr.ReallocationCallback(
      **_RULES[rule])
  straight.fit(epochs=4, callbacks=[straight_cb], **fit)
  first, first_cb = _compiled_mlp(), tf_dsr.ReallocationCallback(
      **_RULES[rule])
  first.fit(epochs=2, callbacks=[first_cb], **fit)
  path = str(tmp_path / 'run.keras')
  first.save(path)
  resumed = keras.models.load_model(path)
  kind = {'deepr': 'sign', 'snfs': 'dense_momentum'}[rule]
  wrapper = tf_dsr.collect_wrappers(resumed)[0]
  assert list(wrapper.auxiliary_weights) == [kind]
  for ours, theirs in zip(_all_weights(resumed), _all_weights(first)):
    np.testing.assert_array_equal(ours, theirs)
  second_cb = tf_dsr.ReallocationCallback(**_RULES[rule])
  resumed.fit(epochs=4, initial_epoch=2, callbacks=[second_cb], **fit)
  assert [s.step for s in first_cb.history + second_cb.history] == [
      s.step for s in straight_cb.history]
  assert len(straight_cb.history) == {'deepr': 16, 'snfs': 4}[rule]
  assert sum(s.pruned for s in straight_cb.history) > 0
  for ours, theirs in zip(_all_weights(resumed), _all_weights(straight)):
    np.testing.assert_array_equal(ours, theirs)


# ----------------------------------------------------------- serialization
RULE_OPTIONS = {
    'deepr': {'alpha': 2e-4, 'temperature': 1e-5, 'learning_rate': 0.1},
    'dsr': {'target_pruned': 40, 'tolerance': 0.2},
    'rigl': {'drop_fraction': 0.2, 'end_step': 100},
    'set': {'drop_fraction': 0.25},
    'snfs': {'prune_rate': 0.4, 'momentum': 0.8, 'schedule': 'constant'},
    'snip': {},
    'static': {},
}


@pytest.mark.parametrize('name', sorted(tf_dsr.rules.REGISTRY))
def test_every_rule_round_trips_through_keras3_serialization(name):
  assert name in RULE_OPTIONS, 'a new rule needs its options listed here'
  rule = tf_dsr.rules.make(name, **RULE_OPTIONS[name])
  config = keras.saving.serialize_keras_object(rule)
  assert config['registered_name'] == f'tf_dsr>{type(rule).__name__}'
  # Through JSON, as a `.keras` file would store it.
  back = keras.saving.deserialize_keras_object(json.loads(json.dumps(config)))
  assert type(back) is type(rule)
  assert back == rule
  assert back.get_config() == rule.get_config()
  assert keras.saving.get_registered_object(
      config['registered_name']) is type(rule)
