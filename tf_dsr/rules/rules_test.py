"""The rules on hand-worked tensors: SET, static, DeepR; the registry."""

import dataclasses

import numpy as np
import pytest
import tensorflow as tf

import tf_dsr
from tf_dsr import keras


def _dense_model(kernel, mask):
  """One Dense layer (4 -> 2) wrapped, with the given kernel and mask."""
  inputs = keras.Input((4,))
  wrapper = tf_dsr.DynamicSparseWrapper(keras.layers.Dense(2, name='d'), 0.5)
  model = keras.Model(inputs, wrapper(inputs))
  (k, m), = wrapper.sparse_weights
  k.assign(np.array(kernel, np.float32).reshape(4, 2))
  m.assign(np.array(mask, np.float32).reshape(4, 2))
  return model, k, m


def test_set_drops_the_smallest_active_weights_of_each_tensor():
  # index:   0    1     2    3     4    5    6    7
  kernel = [0.5, -0.1, 0.0, 0.3, -0.02, 0.0, 0.0, 0.9]
  mask = [1, 1, 0, 1, 1, 0, 0, 1]  # 5 active
  model, k, m = _dense_model(kernel, mask)
  realloc = tf_dsr.Reallocator(model, 'set', optimizer=False, drop_fraction=0.4, seed=1)
  stats = realloc.reallocate()
  # round(0.4 * 5) = 2 smallest active: |-0.02| (4) and |-0.1| (1) go; two
  # of the inactive entries 2, 5, 6 come back at 0.
  new = m.numpy().reshape(-1)
  assert stats.pruned == 2
  assert new[[0, 3, 7]].tolist() == [1, 1, 1]
  assert new[[1, 4]].tolist() == [0, 0]
  assert new[[2, 5, 6]].sum() == 2
  np.testing.assert_array_equal(k.numpy().reshape(-1)[[1, 4, 2, 5, 6]], 0)
  assert k.numpy().reshape(-1)[[0, 3, 7]].tolist() == pytest.approx(
      [0.5, 0.3, 0.9])


def test_set_fraction_defaults_to_dsr_churn():
  kernel = np.linspace(-1, 1, 8)
  model, _, m = _dense_model(kernel, [1, 1, 1, 1, 0, 0, 0, 0])
  realloc = tf_dsr.Reallocator(model, 'set', optimizer=False, target_pruned=1)
  assert realloc.reallocate().pruned == 1  # 1 / 4 active -> 1 per call
  assert int(m.numpy().sum()) == 4


def test_static_never_changes_the_mask():
  model, k, m = _dense_model(np.full(8, 1e-9), [1, 0, 1, 0, 1, 0, 1, 0])
  realloc = tf_dsr.Reallocator(model, 'static', optimizer=False)
  for _ in range(3):
    assert realloc.reallocate().pruned == 0
  np.testing.assert_array_equal(m.numpy().reshape(-1), [1, 0, 1, 0, 1, 0, 1, 0])


def test_registry_names_and_unknown_name():
  rules = tf_dsr.rules
  assert rules.get_rule('dsr') is rules.DSR
  assert rules.get_rule('set') is rules.SET
  assert rules.get_rule('static') is rules.Static
  assert rules.get_rule('deepr') is rules.DeepR
  assert sorted(rules.REGISTRY) == ['deepr', 'dsr', 'rigl', 'set', 'snfs',
                                    'snip', 'static']
  with pytest.raises(ValueError, match=r"`method`.*\['deepr', 'dsr', .*'nope'"):
    rules.get_rule('nope')
  with pytest.raises(ValueError, match='`method`'):
    tf_dsr.ReallocationCallback(method='nope')


def test_callback_runs_set_and_keeps_per_layer_counts():
  inputs = keras.Input((6,))
  x = keras.layers.Dense(8, name='a')(inputs)
  model = tf_dsr.sparsify(keras.Model(inputs, keras.layers.Dense(3, name='b')(x)),
                          0.5)
  model.compile('sgd', keras.losses.SparseCategoricalCrossentropy(True))
  before = [int(m.numpy().sum()) for w in
            tf_dsr.collect_wrappers(model)
            for _, m in w.sparse_weights]
  data = np.random.default_rng(0).normal(size=(32, 6)).astype('float32')
  labels = np.zeros(32)
  cb = tf_dsr.ReallocationCallback(method='set', drop_fraction=0.2, period=2)
  model.fit(data, labels, batch_size=8, epochs=1, verbose=0, callbacks=[cb])
  # Kernels 6x8 and 8x3 at 0.5: 24 and 12 active -> round(4.8) + round(2.4).
  assert [s.pruned for s in cb.history] == [5 + 2, 5 + 2]
  after = [int(m.numpy().sum()) for w in
           tf_dsr.collect_wrappers(model)
           for _, m in w.sparse_weights]
  assert after == before


def test_deepr_removes_connections_that_change_sign():
  # index:    0     1     2    3     4    5    6    7
  kernel = [0.5, -0.1, 0.0, -0.3, 0.02, 0.0, 0.0, 0.9]
  mask = [1, 1, 0, 1, 1, 0, 0, 1]  # 5 active
  sign = [1, -1, 1, 1, -1, 1, -1, 1]
  # Active entries 3 (-0.3 with sign +1) and 4 (0.02 with sign -1) have
  # crossed zero since their sign was fixed: both go, and two of the dormant
  # entries 2, 5, 6 come back at 0 with a fresh random sign. No L1 term and
  # T = 0, so the other weights are untouched.
  model, k, m = _dense_model(kernel, mask)
  realloc = tf_dsr.Reallocator(model, 'deepr', optimizer=False, alpha=0.0, temperature=0.0,
                               learning_rate=0.1, seed=3)
  # The signs are made with the Reallocator: those of the weights (a random
  # one where a weight is 0), so the first call drops nothing.
  (sign_var,) = model.dynamic_sparsity_state.sign
  np.testing.assert_array_equal(sign_var.numpy().reshape(-1)[[0, 1, 3, 4, 7]],
                                [1, -1, -1, 1, 1])
  realloc.reallocate()
  np.testing.assert_array_equal(m.numpy().reshape(-1), mask)
  sign_var.assign(np.array(sign, np.float32).reshape(4, 2))
  stats = realloc.reallocate(step=5)
  new = m.numpy().reshape(-1)
  assert stats.pruned == 2 and stats.total_active == 5
  assert new[[0, 1, 7]].tolist() == [1, 1, 1]
  assert new[[3, 4]].tolist() == [0, 0]
  assert new[[2, 5, 6]].sum() == 2
  values = k.numpy().reshape(-1)
  np.testing.assert_array_equal(values[[2, 3, 4, 5, 6]], 0)
  assert values[[0, 1, 7]].tolist() == pytest.approx([0.5, -0.1, 0.9])
  signs = sign_var.numpy().reshape(-1)
  assert signs[[0, 1, 7]].tolist() == [1, -1, 1]  # Kept while active.
  assert set(np.abs(signs).tolist()) == {1.0}  # Fresh +-1 everywhere else.


def test_deepr_l1_and_noise_keep_inactive_weights_zero():
  kernel = [0.5, -0.5, 0.0, 0.0, 0.5, -0.5, 0.0, 0.0]
  mask = [1, 1, 0, 0, 1, 1, 0, 0]
  model, k, m = _dense_model(kernel, mask)
  # L1 only: every active weight moves lr * alpha = 0.01 towards 0.
  realloc = tf_dsr.Reallocator(model, 'deepr', optimizer=False, alpha=0.1, temperature=0.0,
                               learning_rate=0.1)
  realloc.reallocate()
  np.testing.assert_allclose(k.numpy().reshape(-1),
                             [0.49, -0.49, 0, 0, 0.49, -0.49, 0, 0], atol=1e-7)
  # Noise with a temperature schedule: sqrt(2 lr T) = 0.1 at T = 0.05.
  realloc = tf_dsr.Reallocator(model, optimizer=False, method=tf_dsr.rules.DeepR(
      alpha=0.0, temperature=lambda step: 0.05 if step >= 10 else 0.0,
      learning_rate=0.1))
  before = k.numpy().copy()
  realloc.reallocate(step=9)
  np.testing.assert_array_equal(k.numpy(), before)  # T = 0 before step 10.
  realloc.reallocate(step=10)
  moved = k.numpy().reshape(-1) - before.reshape(-1)
  active = m.numpy().reshape(-1) > 0
  assert (k.numpy().reshape(-1)[~active] == 0).all()
  assert int(active.sum()) == 4
  assert np.abs(moved).max() > 1e-3


def test_deepr_signs_are_checkpointed(tmp_path):
  model, _, _ = _dense_model(np.linspace(-1, 1, 8), [1, 1, 1, 1, 0, 0, 0, 0])
  tf_dsr.Reallocator(model, 'deepr', optimizer=False, learning_rate=0.1).reallocate()
  (sign,) = model.dynamic_sparsity_state.sign
  sign.assign(-sign)
  path = tf.train.Checkpoint(model=model).write(str(tmp_path / 'ckpt'))
  names = [n for n, _ in tf.train.list_variables(path)]
  # A weight of the wrapper, beside its kernel and mask.
  assert any('kernel_sign' in n for n in names), names
  other, _, _ = _dense_model(np.zeros(8), [1] * 4 + [0] * 4)
  tf.train.Checkpoint(model=other).read(path)
  # Restored when the Reallocator makes them (deferred restoration).
  tf_dsr.Reallocator(other, 'deepr', optimizer=False, learning_rate=0.1)
  np.testing.assert_array_equal(other.dynamic_sparsity_state.sign[0].numpy(),
                                sign.numpy())


def test_deepr_signs_of_a_model_rebuilt_from_its_config_start_as_the_weights():
  # The wrapper's config names its rule variables, so a clone has them (at
  # 0, never set); a DeepR Reallocator on it sets them from its own weights.
  model, _, _ = _dense_model([0.5, -0.1, 0.0, -0.3, 0.02, 0.0, 0.0, 0.9],
                             [1, 1, 0, 1, 1, 0, 0, 1])
  tf_dsr.Reallocator(model, 'deepr', optimizer=False, learning_rate=0.1)
  clone = keras.models.clone_model(model)
  (wrapper,) = tf_dsr.collect_wrappers(clone)
  assert wrapper.get_config()['auxiliary'] == {
      'sign': {'dtype': 'float32', 'sum_on_read': False}}
  (kernel, mask), = wrapper.sparse_weights
  kernel.assign(np.array([-1, 2, 0, 3, -4, 0, 0, 5], np.float32).reshape(4, 2))
  mask.assign(np.array([1, 1, 0, 1, 1, 0, 0, 1], np.float32).reshape(4, 2))
  (sign,) = wrapper.auxiliary_weights['sign']
  assert not sign.numpy().any()
  tf_dsr.Reallocator(clone, 'deepr', optimizer=False, learning_rate=0.1)
  signs = sign.numpy().reshape(-1)
  assert signs[[0, 1, 3, 4, 7]].tolist() == [-1, 1, 1, -1, 1]
  assert set(np.abs(signs).tolist()) == {1.0}


def test_a_rule_is_a_few_typed_options():
  rule = tf_dsr.rules.make('dsr', target_pruned=np.int64(20), tolerance=0.2)
  assert rule.options() == ('target_pruned', 'tolerance', 'initial_threshold')
  assert type(rule)(**rule.get_config()) == rule
  with pytest.raises(dataclasses.FrozenInstanceError):
    rule.tolerance = 0.3  # Rules hold no state that could change.
  with pytest.raises(ValueError, match='`temperature`.*-1'):
    tf_dsr.rules.DeepR(temperature=-1.0)
  with pytest.raises(ValueError, match='SET needs `drop_fraction` or'):
    tf_dsr.rules.SET()


def test_set_counts_follow_the_active_counts_without_retracing():
  kernel = np.linspace(-1, 1, 8)
  model, _, m = _dense_model(kernel, [1, 1, 1, 1, 0, 0, 0, 0])
  realloc = tf_dsr.Reallocator(model, 'set', optimizer=False, drop_fraction=0.5)
  assert realloc.reallocate().pruned == 2  # round(0.5 * 4)
  m.assign(np.array([1, 1, 0, 0, 0, 0, 0, 0], np.float32).reshape(4, 2))
  assert realloc.reallocate().pruned == 1  # round(0.5 * 2), same trace
  assert realloc.trace_count == 1
