"""RigL, SNFS and SNIP on hand-worked tensors; the dense-gradient recorder."""

import numpy as np
import pytest
import tensorflow as tf

import tf_dsr
from tf_dsr import keras
from tf_dsr import optimizer_state
from tf_dsr import reallocation


def _wrapped_dense(inputs, units, name, kernel, mask):
  wrapper = tf_dsr.DynamicSparseWrapper(
      keras.layers.Dense(units, name=name, use_bias=False), 0.5)
  outputs = wrapper(inputs)
  (k, m), = wrapper.sparse_weights
  k.assign(np.array(kernel, np.float32).reshape(k.shape))
  m.assign(np.array(mask, np.float32).reshape(m.shape))
  return outputs, k, m


def _momentum_optimizer(model):
  optimizer = keras.optimizers.SGD(0.1, momentum=0.9)
  optimizer.build(model.trainable_variables)
  slots = [slot for v in model.trainable_variables
           for slot in optimizer_state.slot_variables(optimizer, [v])[0]]
  for slot in slots:
    slot.assign(tf.fill(slot.shape, 7.0))
  return optimizer, slots


def test_rigl_drops_smallest_and_grows_largest_gradients():
  # index:   0     1    2    3     4    5    6    7
  kernel = [0.5, -0.1, 0.0, 0.3, -0.02, 0.0, 0.0, 0.9]
  mask = [1, 1, 0, 1, 1, 0, 0, 1]                  # 5 active
  grads = [0.0, 5.0, 0.3, 0.0, 0.1, -0.7, 0.2, 0.0]
  inputs = keras.Input((4,))
  outputs, k, m = _wrapped_dense(inputs, 2, 'd', kernel, mask)
  model = keras.Model(inputs, outputs)
  optimizer, (slot,) = _momentum_optimizer(model)
  realloc = tf_dsr.Reallocator(model, 'rigl', drop_fraction=0.5,
                               schedule='constant', optimizer=optimizer)
  realloc.gradient_recorder.values[0].assign(
      np.array(grads, np.float32).reshape(4, 2))
  stats = realloc.reallocate(step=10)
  # floor(0.5 * 5) = 2 smallest active go: 4 (0.02) and 1 (0.1). Entries
  # inactive after the drop are 1, 2, 4, 5, 6 with |g| 5, 0.3, 0.1, 0.7,
  # 0.2: 1 and 5 grow. Entry 1 was dropped and grown again: it keeps its
  # weight and momentum; 5 is new at 0 with zero momentum; 4 is gone.
  assert stats.pruned == 2
  assert stats.regrown == {'dynamic_sparse_d/kernel': 2}
  np.testing.assert_array_equal(m.numpy().reshape(-1), [1, 1, 0, 1, 0, 1, 0, 1])
  np.testing.assert_allclose(k.numpy().reshape(-1),
                             [0.5, -0.1, 0, 0.3, 0, 0, 0, 0.9])
  np.testing.assert_array_equal(slot.numpy().reshape(-1),
                                [7, 7, 0, 7, 0, 0, 0, 7])


def test_rigl_ties_go_to_the_first_entries_and_counts_stay_per_tensor():
  # All active weights tie, all gradients tie: the first entries in flat
  # order are dropped, and the first free ones grow.
  inputs = keras.Input((4,))
  outputs, k, m = _wrapped_dense(inputs, 2, 'd', [0.2, 0, 0.2, 0, 0.2, 0,
                                                  0.2, 0],
                                 [1, 0, 1, 0, 1, 0, 1, 0])
  model = keras.Model(inputs, outputs)
  realloc = tf_dsr.Reallocator(model, 'rigl', drop_fraction=0.5,
                               schedule='constant', optimizer=False)
  realloc.gradient_recorder.values[0].assign(tf.ones([4, 2]))
  realloc.reallocate()
  # Dropped: 0 and 2. Free after the drop: 0, 1, 2, 3, 5, 7 -> 0 and 1 grow
  # (0 dropped and grown again keeps its 0.2; 1 is new at 0).
  np.testing.assert_array_equal(m.numpy().reshape(-1), [1, 1, 0, 0, 1, 0, 1, 0])
  np.testing.assert_allclose(k.numpy().reshape(-1),
                             [0.2, 0, 0, 0, 0.2, 0, 0.2, 0])


def test_rigl_cosine_schedule_and_options():
  rule = tf_dsr.rules.make('rigl', end_step=100)
  assert (rule.drop_fraction, rule.schedule, rule.stop_step) == (0.3, 'cosine',
                                                                 100)
  fraction = lambda step: rule.call_inputs(step, None)['drop_fraction']
  assert fraction(0) == pytest.approx(0.3)
  assert fraction(50) == pytest.approx(0.15)
  assert fraction(25) == pytest.approx(0.15 * (1 + np.cos(np.pi / 4)))
  assert fraction(100) == pytest.approx(0.0) and fraction(150) == 0.0
  constant = tf_dsr.rules.make('rigl', schedule='constant', drop_fraction=0.2)
  assert constant.call_inputs(10**6, None)['drop_fraction'] == 0.2
  assert constant.stop_step is None
  # Without end_step, the callback sets it from the fit's length.
  open_ended = tf_dsr.rules.make('rigl')
  assert open_ended.stop_step is None
  with pytest.raises(ValueError, match=r"RigL's cosine schedule needs "
                     r"`end_step`"):
    open_ended.call_inputs(5, None)
  assert open_ended.for_training(1000).end_step == 750
  assert rule.for_training(1000) is rule and constant.for_training(9).end_step \
      == 6
  with pytest.raises(ValueError, match=r'`end_fraction` must be .* got 0'):
    tf_dsr.rules.make('rigl', end_fraction=0)
  with pytest.raises(ValueError, match=r"`schedule` must be one of .*'linear'"):
    tf_dsr.rules.make('rigl', schedule='linear', end_step=5)
  with pytest.raises(ValueError, match=r'`end_step` must be .* got 0'):
    tf_dsr.rules.make('rigl', end_step=0)
  with pytest.raises(ValueError, match=r'`drop_fraction` must be .* got 1.5'):
    tf_dsr.rules.make('rigl', drop_fraction=1.5, end_step=5)
  with pytest.raises(TypeError, match=r"'rigl' takes no option 'target_pruned'"):
    tf_dsr.ReallocationCallback(method='rigl', end_step=5, target_pruned=3)


def test_snfs_redistributes_by_mean_momentum_and_grows_by_momentum():
  inputs = keras.Input((2,))
  # a: 2x3 = 6 entries, b: 3x2 = 6 entries; 4 active each.
  hidden, ka, ma = _wrapped_dense(inputs, 3, 'a', [0.9, 0.1, 0.2, 0.8, 0, 0],
                                  [1, 1, 1, 1, 0, 0])
  outputs, kb, mb = _wrapped_dense(hidden, 2, 'b',
                                   [0.7, 0.05, 0.6, 0.04, 0, 0],
                                   [1, 1, 1, 1, 0, 0])
  model = keras.Model(inputs, outputs)
  realloc = tf_dsr.Reallocator(model, 'snfs', prune_rate=0.5,
                               schedule='constant', optimizer=False)
  momentum_a, momentum_b = model.dynamic_sparsity_state.dense_momentum
  momentum_a.assign(np.reshape([1.0, 1.2, 0.8, 1.0, 0.5, 0.1], (2, 3)))
  momentum_b.assign(np.reshape([3.0, 3.0, 3.0, 3.0, 2.0, 1.0], (3, 2)))
  stats = realloc.reallocate(step=4)
  # ceil(0.5 * 4) = 2 smallest go from each: a 1, 2; b 3, 1. Mean |m| of the
  # active entries: a 1.0, b 3.0, so the 4 regrow as 1 (a) and 3 (b).
  # a grows at the largest |m| of its free entries 1, 2, 4, 5 (1.2, 0.8,
  # 0.5, 0.1): 1, which was just dropped and keeps 0.1. b's free entries
  # 1, 3, 4, 5 have |m| 3, 3, 2, 1: 1 and 3 come back as they were, 4 is new.
  assert stats.pruned == 4
  assert stats.regrown == {'dynamic_sparse_a/kernel': 1,
                           'dynamic_sparse_b/kernel': 3}
  assert stats.active == {'dynamic_sparse_a/kernel': 3,
                          'dynamic_sparse_b/kernel': 5}
  np.testing.assert_array_equal(ma.numpy().reshape(-1), [1, 1, 0, 1, 0, 0])
  np.testing.assert_array_equal(mb.numpy().reshape(-1), [1, 1, 1, 1, 1, 0])
  np.testing.assert_allclose(ka.numpy().reshape(-1), [0.9, 0.1, 0, 0.8, 0, 0])
  np.testing.assert_allclose(kb.numpy().reshape(-1),
                             [0.7, 0.05, 0.6, 0.04, 0, 0])


def test_snfs_options():
  rule = tf_dsr.rules.make('snfs', end_step=10)
  assert (rule.prune_rate, rule.momentum, rule.at_epoch_end) == (0.5, 0.9,
                                                                 True)
  assert rule.gradient_momentum == 0.9 and rule.stop_step is None
  with pytest.raises(ValueError, match=r'`momentum` must be .* got 1.0'):
    tf_dsr.rules.make('snfs', momentum=1.0, end_step=10)
  with pytest.raises(ValueError, match=r'`prune_rate` must be .* got 0'):
    tf_dsr.rules.make('snfs', prune_rate=0, end_step=10)


def _mlp_data():
  rng = np.random.default_rng(0)
  return (rng.normal(size=(8, 4)).astype('float32'),
          rng.normal(size=(8, 2)).astype('float32'))


def test_recorder_holds_the_dense_gradient_of_the_step_before_an_update():
  x, t = _mlp_data()
  inputs = keras.Input((4,))
  outputs, k, m = _wrapped_dense(inputs, 2, 'd',
                                 np.linspace(-1, 1, 8), [1, 0] * 4)
  model = keras.Model(inputs, outputs)
  model.compile(keras.optimizers.SGD(0.0), 'mse')
  weights_before = len(model.weights)
  kernel, mask = k.numpy(), m.numpy()
  cb = tf_dsr.ReallocationCallback(method='rigl', schedule='constant',
                                   drop_fraction=0.25, period=2, end_step=100)
  model.fit(x, t, batch_size=4, epochs=1, shuffle=False, verbose=0,
            callbacks=[cb])
  assert [s.step for s in cb.history] == [2]
  # Step 2 saw samples 4..7. For y = x (K * M) and the mean squared error
  # over 4 x 2 outputs, d loss / d (K * M) = x^T 2 (y - t) / 8 at every
  # entry, inactive ones included.
  xb, tb = x[4:], t[4:]
  expected = xb.T @ (2.0 * (xb @ (kernel * mask) - tb) / 8.0)
  recorded = cb.reallocator.gradient_recorder.values[0].numpy()
  np.testing.assert_allclose(recorded, expected, rtol=1e-5, atol=1e-7)
  assert (recorded[mask == 0] != 0).all()
  # Recording is off between updates and adds no weight to the model.
  assert not cb.reallocator.gradient_recorder.recording.numpy()
  # (The DSR state is a weight of the wrappers from the start.)
  assert len(model.weights) == weights_before


def _sparse_mlp(jit_compile=None):
  """A 4-8-2 MLP at sparsity 0.5 (16 and 8 active), compiled with momentum."""
  inputs = keras.Input((4,))
  hidden = keras.layers.Dense(8, name='a')(inputs)
  model = tf_dsr.sparsify(keras.Model(inputs, keras.layers.Dense(2, name='b')(
      hidden)), 0.5, seed=3)
  model.compile(keras.optimizers.SGD(0.1, momentum=0.9), 'mse',
                jit_compile=jit_compile)
  return model


def test_rigl_in_fit_keeps_counts_and_zeros_and_traces_once():
  x, t = _mlp_data()
  model = _sparse_mlp()
  counts = lambda: [int(m.numpy().sum()) for w in tf_dsr.collect_wrappers(model)
                    for _, m in w.sparse_weights]
  before = counts()
  cb = tf_dsr.ReallocationCallback(method='rigl', period=1)
  model.fit(np.tile(x, (4, 1)), np.tile(t, (4, 1)), batch_size=4, epochs=1,
            verbose=0, callbacks=[cb])
  # 8 steps: end_step = 0.75 * 8 = 6 (set by the callback), so updates at
  # steps 1..5; 16 and 8 active:
  # floor(f * 16) + floor(f * 8) with f = 0.15 (1 + cos(pi t / 6)).
  fractions = [0.15 * (1 + np.cos(np.pi * s / 6)) for s in range(1, 6)]
  assert [s.step for s in cb.history] == [1, 2, 3, 4, 5]
  assert [s.pruned for s in cb.history] == [
      int(np.floor(f * 16)) + int(np.floor(f * 8)) for f in fractions]
  assert counts() == before
  for wrapper in tf_dsr.collect_wrappers(model):
    for kernel, mask in wrapper.sparse_weights:
      assert (kernel.numpy()[mask.numpy() == 0] == 0).all()
  assert cb.reallocator.trace_count == 1


def test_rigl_masks_are_the_same_compiled_or_not():
  def run(jit_compile):
    keras.utils.set_random_seed(1)
    x, t = _mlp_data()
    model = _sparse_mlp(jit_compile)
    cb = tf_dsr.ReallocationCallback(method='rigl', end_step=8, period=2,
                                     jit_compile=jit_compile)
    model.fit(np.tile(x, (4, 1)), np.tile(t, (4, 1)), batch_size=4, epochs=1,
              shuffle=False, verbose=0, callbacks=[cb])
    assert len(cb.history) == 3
    return [m.numpy() for w in tf_dsr.collect_wrappers(model)
            for _, m in w.sparse_weights]

  for plain, compiled in zip(run(False), run(True)):
    np.testing.assert_array_equal(plain, compiled)


def test_snfs_in_fit_reallocates_at_epoch_ends():
  x, t = _mlp_data()
  model = _sparse_mlp()
  total = lambda: sum(int(m.numpy().sum()) for w in tf_dsr.collect_wrappers(
      model) for _, m in w.sparse_weights)
  before = total()
  cb = tf_dsr.ReallocationCallback(method='snfs')  # end_step: all 6 steps.
  model.fit(x, t, batch_size=4, epochs=3, verbose=0, callbacks=[cb])
  assert cb.rule.end_step == 6
  assert [s.step for s in cb.history] == [2, 4, 6]
  # ceil(p * a) per tensor with p = 0.25 (1 + cos(pi t / 6)); at step 6 p = 0.
  assert cb.history[0].pruned == 2 * 0 + int(np.ceil(0.375 * 16)) + int(
      np.ceil(0.375 * 8))
  assert cb.history[-1].pruned == 0
  assert total() == before
  # The momentum is non-zero at inactive entries: it saw dense gradients.
  for wrapper, momentum in zip(
      [p for w in tf_dsr.collect_wrappers(model) for p in w.sparse_weights],
      model.dynamic_sparsity_state.dense_momentum):
    assert (momentum.numpy()[wrapper[1].numpy() == 0] != 0).any()


def test_snip_keeps_the_most_sensitive_weight_by_hand():
  # y = x . w with x = (1, 1, 3), w = (0.5, -2, 1), target 0: y = 1.5 and
  # d mse / d w_i = 2 * 1.5 * x_i, so |g w| = 3 |x_i w_i| = (1.5, 6, 9).
  inputs = keras.Input((3,))
  model = keras.Model(inputs, keras.layers.Dense(1, use_bias=False,
                                                 name='d')(inputs))
  model.layers[-1].kernel.assign([[0.5], [-2.0], [1.0]])
  sparse = tf_dsr.snip(model, 0.6, np.array([[1.0, 1.0, 3.0]], np.float32),
                       np.zeros((1, 1), np.float32), 'mse')
  (kernel, mask), = tf_dsr.collect_wrappers(sparse)[0].sparse_weights
  # round(0.4 * 3) = 1 active weight: the third, at its initial value.
  np.testing.assert_array_equal(mask.numpy().reshape(-1), [0, 0, 1])
  np.testing.assert_array_equal(kernel.numpy().reshape(-1), [0, 0, 1.0])


def _snip_problem(seed):
  """A dense 6-8-3 MLP, a batch, its loss and each kernel's |g * w|."""
  rng = np.random.default_rng(seed)
  inputs = keras.Input((6,))
  hidden = keras.layers.Dense(8, name='a', use_bias=False)(inputs)
  model = keras.Model(inputs, keras.layers.Dense(3, name='b',
                                                 use_bias=False)(hidden))
  # Scale the second kernel down so that a global ranking prefers the first.
  model.get_layer('b').kernel.assign(model.get_layer('b').kernel * 1e-4)
  initial = [v.numpy() for v in model.trainable_variables]
  x = rng.normal(size=(16, 6)).astype('float32')
  y = rng.integers(0, 3, 16)
  loss = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
  with tf.GradientTape() as tape:
    value = loss(y, model(x))
  scores = [np.abs(g.numpy() * v.numpy()).ravel() for g, v in zip(
      tape.gradient(value, model.trainable_variables),
      model.trainable_variables)]
  return model, initial, x, y, loss, scores


def test_snip_ranks_globally_with_one_weight_per_kernel_at_least():
  model, initial, x, y, loss, scores = _snip_problem(2)
  sparse = tf_dsr.snip(model, 0.75, x, y, loss)
  pairs = [p for w in tf_dsr.collect_wrappers(sparse) for p in w.sparse_weights]
  masks = [m.numpy().ravel() > 0 for _, m in pairs]
  # The uniform budget: 12 of 48 and 6 of 24.
  assert sum(int(m.sum()) for m in masks) == 18
  assert all(m.sum() >= 1 for m in masks)
  # Apart from each kernel's best entry, the chosen entries are the most
  # sensitive of both kernels together.
  best = [np.argmax(s) for s in scores]
  rest = np.concatenate([np.delete(s, b) for s, b in zip(scores, best)])
  chosen = np.concatenate([np.delete(m, b) for m, b in zip(masks, best)])
  assert rest[chosen].min() >= rest[~chosen].max()
  for (kernel, mask), value in zip(pairs, initial):
    np.testing.assert_array_equal(kernel.numpy(), value * mask.numpy())
  sparse.compile('sgd', loss)
  sparse.fit(x, y, verbose=0,
             callbacks=[tf_dsr.ReallocationCallback(method='snip')])
  assert [m.numpy().ravel() > 0 for _, m in pairs][0].tolist() == masks[
      0].tolist()


def test_select_largest_matches_a_sort_on_random_ties():
  rng = np.random.default_rng(5)
  from tf_dsr import layout as layout_lib  # pylint: disable=g-import-not-at-top
  for trial in range(30):
    sizes = [int(n) for n in rng.integers(1, 300, rng.integers(1, 4))]
    layout = layout_lib.Layout(tuple(f't{i}' for i in range(len(sizes))),
                               tuple((n,) for n in sizes), (0.5,) * len(sizes))
    values = [rng.choice([0.0, 0.5, 1.0, 2.0], n) * rng.choice([-1, 1], n)
              for n in sizes]
    eligible = [rng.random(n) < 0.6 for n in sizes]
    counts = [int(rng.integers(0, e.sum() + 1)) for e in eligible]
    smallest = trial % 2 == 0
    keys = reallocation.magnitude_keys(
        layout.flatten([tf.constant(v, tf.float32) for v in values]),
        layout.flatten([tf.constant(e) for e in eligible], padding=False),
        smallest)
    chosen = layout.unflatten(reallocation.select_largest(
        layout, keys, tf.constant(counts, tf.int64)))
    for v, e, c, got in zip(values, eligible, counts, chosen):
      index = np.flatnonzero(e)
      magnitude = np.abs(v[index])
      order = np.lexsort((index, magnitude if smallest else -magnitude))
      expected = np.zeros(len(v), bool)
      expected[index[order[:c]]] = True
      np.testing.assert_array_equal(got.numpy(), expected)


def test_snip_with_a_distribution_ranks_within_each_kernel():
  model, initial, x, y, loss, scores = _snip_problem(4)
  sparse = tf_dsr.snip(model, 0.75, x, y, loss, distribution='uniform',
                       init_scale='sparse_fan_in')
  pairs = [p for w in tf_dsr.collect_wrappers(sparse) for p in w.sparse_weights]
  # Uniform budgets 12 of 48 and 6 of 24, each the kernel's own top entries,
  # scaled by 1 / sqrt(density) = 2.
  for (kernel, mask), score, value, count in zip(pairs, scores, initial,
                                                 (12, 6)):
    chosen = mask.numpy().ravel() > 0
    assert chosen.sum() == count
    assert score[chosen].min() >= score[~chosen].max()
    np.testing.assert_allclose(kernel.numpy(), 2.0 * value * mask.numpy(),
                               rtol=1e-6)


def test_training_flops_of_the_gradient_rules():
  # f_S = 1, f_D = 10, an update every 100 steps.
  rigl = tf_dsr.rules.make('rigl')
  assert rigl.training_flops(1.0, 10.0, 100) == pytest.approx(
      (3 * 100 + 2 + 10) / 101)
  assert rigl.training_flops(1.0, 10.0, float('inf')) == 3.0
  assert tf_dsr.rules.make('snfs').training_flops(1.0, 10.0, 5) == 12.0
  assert tf_dsr.rules.make('snip').training_flops(1.0, 10.0, 5) == 3.0


def test_rigl_in_a_custom_loop_grows_by_the_recorded_gradient():
  # A custom GradientTape loop: make the Reallocator before tracing the step,
  # record the step before an update, then reallocate between steps.
  x, t = _mlp_data()
  inputs = keras.Input((4,))
  outputs, k, m = _wrapped_dense(inputs, 2, 'd', np.linspace(-1, 1, 8),
                                 [1, 0] * 4)
  model = keras.Model(inputs, outputs)
  optimizer = keras.optimizers.SGD(0.0)
  realloc = tf_dsr.Reallocator(model, 'rigl', drop_fraction=0.5,
                               schedule='constant', optimizer=optimizer)

  @tf.function
  def train_step(xb, tb):
    with tf.GradientTape() as tape:
      loss = tf.reduce_mean(tf.square(model(xb, training=True) - tb))
    grads = tape.gradient(loss, model.trainable_variables)
    optimizer.apply_gradients(zip(grads, model.trainable_variables))

  kernel, mask = k.numpy(), m.numpy()
  realloc.record_gradients(True)
  train_step(x, t)
  realloc.record_gradients(False)
  stats = realloc.reallocate(step=1)
  # d loss / d (K * M) = x^T 2 (y - t) / 16 at every entry; the 2 inactive
  # entries after dropping the 2 smallest of 4 with the largest |g| grow.
  gradient = x.T @ (2.0 * (x @ (kernel * mask) - t) / 16.0)
  flat_kernel, flat_mask = kernel.ravel(), mask.ravel() > 0
  active = np.flatnonzero(flat_mask)
  dropped = active[np.argsort(np.abs(flat_kernel[active]), kind='stable')[:2]]
  free = np.setdiff1d(np.flatnonzero(~flat_mask), []).tolist() + list(dropped)
  free = np.array(sorted(free))
  grown = free[np.argsort(-np.abs(gradient.ravel()[free]), kind='stable')[:2]]
  expected = flat_mask.copy()
  expected[dropped] = False
  expected[grown] = True
  assert stats.pruned == 2
  np.testing.assert_array_equal(m.numpy().ravel() > 0, expected)


def test_snip_refuses_bad_arguments_naming_them():
  model, _, x, y, loss, _ = _snip_problem(1)
  with pytest.raises(ValueError, match=r"`seed` must be .*got 'x'"):
    tf_dsr.snip(model, 0.5, x, y, loss, seed='x')
  with pytest.raises(ValueError, match=r'`model` must be a built tf_keras '
                     r'or Keras 3 model, got'):
    tf_dsr.snip(keras.Sequential([keras.layers.Dense(2)]), 0.5, x, y, loss)
  # Nothing was wrapped by the refused calls.
  assert not tf_dsr.collect_wrappers(model)
