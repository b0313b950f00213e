"""DSR under mixed precision: bool masks, float32 master weights, loss scaling.

Under `mixed_float16` and `mixed_bfloat16` the wrapped layers compute in a
16-bit dtype while their kernels stay float32 variables (Keras
`AutoCastVariable`s, cast when read inside a layer call). DSR must keep
working on the float32 values: the masks are plain bool variables, masked kernel entries are exactly 0, the pruning comparison
`|w| < H` and the values written back use the float32 master weights (never
their 16-bit cast), and under `mixed_float16` the optimizer Keras wraps in a
`LossScaleOptimizer` still has its per-weight state found and reset, and
steps it skips because their gradients overflowed change no weight, leave no
inf behind and still count in the reallocation schedule.
"""

import numpy as np
import pytest
import tensorflow as tf

import tf_dsr
from tf_dsr import keras
from tests.helpers import assert_reset_where_moved
from tests.helpers import masks_of
from tests.helpers import sparse_pairs
from tests.helpers import sparse_tiny_cnn
from tests.helpers import tiny_data

POLICIES = ['mixed_float16', 'mixed_bfloat16']

OPTIMIZERS = {
    'sgd_momentum': lambda: keras.optimizers.SGD(0.05, momentum=0.9),
    'adam': lambda: keras.optimizers.Adam(1e-2),
    'legacy_adam': lambda: keras.optimizers.legacy.Adam(1e-2),
}
# Per-weight state each keeps per kernel: momentum, or Adam's two moments.
NUM_SLOTS = {'sgd_momentum': 1, 'adam': 2, 'legacy_adam': 2}


@pytest.fixture(params=POLICIES)
def policy(request):
  """Sets the global mixed-precision policy for one test, then float32 again."""
  keras.mixed_precision.set_global_policy(request.param)
  try:
    yield keras.mixed_precision.global_policy()
  finally:
    keras.mixed_precision.set_global_policy('float32')


def _true_values(kernel):
  """The float32 master value of a kernel (never its 16-bit cast)."""
  return kernel.numpy()


def _assert_float32_variables(model, policy):
  for wrapper in tf_dsr.collect_wrappers(model):
    # The policy really applies: the layer computes in 16 bits.
    assert wrapper.layer.compute_dtype == policy.compute_dtype
  for kernel, mask in sparse_pairs(model):
    # Kernels are autocast variables whose storage is float32 ...
    assert kernel.true_dtype == tf.float32, kernel.name
    # ... and masks plain bool variables (no autocast, not trainable).
    assert mask.dtype == tf.bool, mask.name
    assert not hasattr(mask, 'true_dtype'), mask.name
    assert not mask.trainable, mask.name


class _CheckInvariants(keras.callbacks.Callback):
  """After every step (and any reallocation at it), checks the DSR invariants.

  Placed after the `ReallocationCallback` in `fit`'s list, so a step at which
  a reallocation runs is checked after it.
  """

  def __init__(self, total_active):
    super().__init__()
    self.total_active = total_active
    self.steps = 0

  def on_train_batch_end(self, batch, logs=None):
    total = 0
    for kernel, mask in sparse_pairs(self.model):
      m = mask.numpy()
      assert m.dtype == bool
      assert set(np.unique(m)) <= {0.0, 1.0}, mask.name
      assert m.sum() >= 1, f'{mask.name} is empty'
      values = _true_values(kernel)
      assert values.dtype == np.float32
      assert (values[m == 0] == 0).all(), kernel.name
      assert np.isfinite(values).all(), kernel.name
      total += int(m.sum())
    assert total == self.total_active
    self.steps += 1


def test_fit_with_reallocation_keeps_invariants(policy):
  # The paper's optimizer; Adam and the legacy optimizers are covered by
  # test_optimizer_state_is_found_and_reset.
  model = sparse_tiny_cnn(optimizer=OPTIMIZERS['sgd_momentum']())
  x, y = tiny_data()
  _assert_float32_variables(model, policy)
  is_float16 = policy.compute_dtype == 'float16'
  # Keras wraps the optimizer for loss scaling under mixed_float16 only.
  assert isinstance(model.optimizer,
                    keras.mixed_precision.LossScaleOptimizer) == is_float16
  total_active = sum(int(m.sum()) for m in masks_of(model))
  dense_before = model.get_layer('conv1').kernel.numpy()

  check = _CheckInvariants(total_active)
  # Reallocate every 2 steps with a large H so that many weights move.
  cb = tf_dsr.ReallocationCallback(target_pruned=30, period=2,
                                   initial_threshold=5e-2)
  history = model.fit(x, y, batch_size=16, epochs=2, verbose=0,
                      callbacks=[cb, check])

  assert check.steps == 8
  assert [s.step for s in cb.history] == [2, 4, 6, 8]
  assert sum(s.pruned for s in cb.history) > 0
  assert all(s.total_active == total_active for s in cb.history)
  assert all(min(s.active.values()) >= 1 for s in cb.history)
  assert np.isfinite(history.history['loss']).all()
  # The optimizer really updated the weights (loss-scaled steps were not all
  # skipped as overflows).
  assert (model.get_layer('conv1').kernel.numpy() != dense_before).any()
  if is_float16:
    assert model.optimizer.dynamic
    scale = float(model.optimizer.loss_scale.numpy())
    assert np.isfinite(scale) and scale >= 1.0
  _assert_float32_variables(model, policy)


@pytest.mark.parametrize('name', sorted(OPTIMIZERS))
def test_optimizer_state_is_found_and_reset(policy, name):
  model = sparse_tiny_cnn(optimizer=OPTIMIZERS[name]())
  x, y = tiny_data()
  model.fit(x, y, batch_size=16, epochs=1, verbose=0,
            callbacks=[tf_dsr.ReallocationCallback(target_pruned=5,
                                                   period=1000)])
  optimizer = model.optimizer
  inner = getattr(optimizer, 'inner_optimizer', optimizer)
  if policy.compute_dtype == 'float16':
    assert inner is not optimizer
  # `variables` is a method of the legacy optimizers, a property otherwise.
  variables = inner.variables
  inner_variables = {id(v) for v in (
      variables() if callable(variables) else variables)}
  pairs = sparse_pairs(model)
  slots = tf_dsr.optimizer_state.slot_variables(
      optimizer, [kernel for kernel, _ in pairs])
  for (kernel, _), group in zip(pairs, slots):
    # Found through the loss-scale wrapper: the inner optimizer's own slots,
    # float32 and shaped like the kernel.
    assert group, f'no optimizer state found for {kernel.name}'
    assert len(group) == NUM_SLOTS[name]
    for slot in group:
      assert id(slot) in inner_variables
      assert slot.dtype == tf.float32
      assert slot.shape == kernel.shape
    slot_ids = [id(s) for s in group]
    assert slot_ids == [id(s) for s in tf_dsr.optimizer_state.slot_variables(
        inner, [kernel])[0]]

  for group in slots:
    for slot in group:
      slot.assign(tf.ones_like(slot))
  before = masks_of(model)
  realloc = tf_dsr.Reallocator(model, target_pruned=50, seed=3)
  realloc.state.threshold.assign(5e-2)
  stats = realloc.reallocate()
  assert stats.pruned > 0
  assert assert_reset_where_moved(pairs, slots, before,
                                  read=_true_values) == stats.pruned


def _probes(compute_dtype):
  """Weights and thresholds on which a float32 and a 16-bit read disagree.

  With `g` a value exactly representable in the compute dtype and `u` that
  dtype's spacing at `g`, a value rounds to the nearer of `g - u` and `g`:

  - `below` = g - 3u/8 with `H_below` = g - u/4: in float32 `below < H`, so it
    is pruned; cast to 16 bits it becomes `g >= H` and would survive.
  - `above` = g - 5u/8 with `H_above` = g - 3u/4: in float32 `above >= H`, so
    it survives; cast to 16 bits it becomes `g - u < H` and would be pruned.

  Every number here is a multiple of u/8, exact in float32.

  Returns:
    dict of Python floats: below, h_below, above, h_above.
  """
  mantissa_bits = {'float16': 10, 'bfloat16': 7}[compute_dtype]
  g = 2.0**-7 * (1 + 4 * 2.0**-mantissa_bits)
  u = 2.0**-7 * 2.0**-mantissa_bits
  probes = dict(below=g - 3 * u / 8, h_below=g - u / 4,
                above=g - 5 * u / 8, h_above=g - 3 * u / 4)
  # The probes discriminate: the 16-bit reads land on the other side of H.
  cast = lambda v: float(tf.cast(tf.cast(v, compute_dtype), tf.float32))
  assert probes['below'] < probes['h_below'] <= cast(probes['below'])
  assert cast(probes['above']) < probes['h_above'] <= probes['above']
  for value in probes.values():
    assert float(np.float32(value)) == value
  return probes


def _set_probes(model, value):
  """Active weights to +-1 except one probe +-value per sparse tensor.

  Returns:
    The flat index of the probe in each tensor.
  """
  positions = []
  for i, (kernel, mask) in enumerate(sparse_pairs(model)):
    m = mask.numpy().reshape(-1)
    active = np.flatnonzero(m)
    sign = np.where(np.arange(m.size) % 2 == 0, 1.0, -1.0)
    values = sign * m
    position = active[len(active) // 2]
    values[position] = value * (-1.0 if i % 2 else 1.0)
    kernel.assign(values.reshape(kernel.shape).astype(np.float32))
    positions.append(position)
  return positions


def test_reallocation_reads_float32_master_weights(policy):
  probes = _probes(policy.compute_dtype)
  model = sparse_tiny_cnn()
  realloc = tf_dsr.Reallocator(model, target_pruned=10, seed=1)

  # Phase 1: a probe just below H that a 16-bit read would round up to H.
  positions = _set_probes(model, probes['below'])
  realloc.state.threshold.assign(probes['h_below'])
  before = masks_of(model)
  stats = realloc.reallocate()
  assert stats.threshold_used == probes['h_below']
  # Exactly the probes are pruned (every other active weight is +-1).
  assert stats.pruned == len(positions)
  for (kernel, mask), old, position in zip(sparse_pairs(model), before,
                                           positions):
    assert old.reshape(-1)[position] == 1
    assert mask.numpy().reshape(-1)[position] == 0, kernel.name
    assert _true_values(kernel).reshape(-1)[position] == 0

  # Phase 2: a probe just above H that a 16-bit read would round below H.
  positions = _set_probes(model, probes['above'])
  realloc.state.threshold.assign(probes['h_above'])
  stats = realloc.reallocate()
  assert stats.pruned == 0
  for i, ((kernel, mask), position) in enumerate(zip(sparse_pairs(model),
                                                     positions)):
    assert mask.numpy().reshape(-1)[position] == 1, kernel.name
    # Written back bit-exact, not through a 16-bit cast.
    expected = np.float32(probes['above'] * (-1.0 if i % 2 else 1.0))
    assert _true_values(kernel).reshape(-1)[position] == expected


def test_compiled_reallocation_is_traced_once(policy):
  """Mixed-precision kernels must not retrace (and recompile) every call.

  tf_keras gives an `AutoCastVariable` a trace type equal only to itself, so a
  function that takes the kernels as `AutoCastVariable` arguments is traced
  and XLA-compiled again at every reallocation (seconds each, and a cache
  that grows without bound).
  """
  model = sparse_tiny_cnn()
  realloc = tf_dsr.Reallocator(model, target_pruned=30, seed=2)
  for _ in range(3):
    realloc.state.threshold.assign(5e-2)
    assert realloc.reallocate().pruned > 0
  assert realloc.trace_count == 1


def test_reallocation_during_fit_reads_float32_master_weights(policy):
  probes = _probes(policy.compute_dtype)
  # A learning rate of 0 keeps the probes where they are through the step.
  model = sparse_tiny_cnn(optimizer=keras.optimizers.SGD(0.0))
  positions = _set_probes(model, probes['below'])
  x, y = tiny_data()
  cb = tf_dsr.ReallocationCallback(target_pruned=10, period=1,
                                   initial_threshold=probes['h_below'])
  model.fit(x, y, batch_size=len(x), epochs=1, verbose=0, callbacks=[cb])
  [stats] = cb.history
  assert stats.threshold_used == probes['h_below']
  assert stats.pruned == len(positions)
  for (kernel, mask), position in zip(sparse_pairs(model), positions):
    assert mask.numpy().reshape(-1)[position] == 0, kernel.name
    values = _true_values(kernel)
    assert values.reshape(-1)[position] == 0
    # The other active weights kept their exact float32 values.
    active = mask.numpy() > 0
    assert set(np.unique(np.abs(values[active]))) <= {0.0, 1.0}


def test_initial_kernels_keep_float32_precision(policy):
  """Wrapping must not round the initial float32 kernels to the compute dtype."""
  keras.mixed_precision.set_global_policy('float32')
  reference = sparse_tiny_cnn(seed=7)
  keras.mixed_precision.set_global_policy(policy)
  model = sparse_tiny_cnn(seed=7)
  assert model.get_layer('conv1').compute_dtype == policy.compute_dtype
  # Same seed, same initial values: the dense conv1 matches exactly ...
  np.testing.assert_array_equal(model.get_layer('conv1').kernel.numpy(),
                                reference.get_layer('conv1').kernel.numpy())
  # ... and so must the sparse kernels (and their masks).
  for (kernel, mask), (ref_kernel, ref_mask) in zip(sparse_pairs(model),
                                                    sparse_pairs(reference)):
    np.testing.assert_array_equal(mask.numpy(), ref_mask.numpy())
    values = _true_values(kernel)
    np.testing.assert_array_equal(values, ref_kernel.numpy(),
                                  err_msg=kernel.name)
    active = values[mask.numpy() > 0]
    rounded = tf.cast(tf.cast(active, policy.compute_dtype), tf.float32)
    assert (rounded.numpy() != active).any(), (
        f'{kernel.name}: every active weight is a {policy.compute_dtype} value')


class _RecordSteps(keras.callbacks.Callback):
  """Per step: the loss scale, and whether the optimizer moved any weight.

  Placed after the `ReallocationCallback`: a reallocation also changes
  kernels (pruned entries are set to 0), so only entries active both before
  and after the step are compared.
  """

  def on_train_begin(self, logs=None):
    self.rows = []
    self._before = self._read()

  def _read(self):
    return [(k.numpy(), m.numpy()) for k, m in sparse_pairs(self.model)]

  def on_train_batch_end(self, batch, logs=None):
    after = self._read()
    updated = any(
        (k0[(m0 > 0) & (m1 > 0)] != k1[(m0 > 0) & (m1 > 0)]).any()
        for (k0, m0), (k1, m1) in zip(self._before, after))
    slots_finite = all(np.isfinite(v.numpy()).all()
                       for v in self.model.optimizer.variables)
    self.rows.append({
        'step': int(self.model.optimizer.iterations.numpy()),
        'scale': float(self.model.optimizer.loss_scale.numpy()),
        'updated': updated,
        'finite': slots_finite and all(np.isfinite(k).all() for k, _ in after),
    })
    self._before = after


def test_overflowing_loss_scaled_steps_are_skipped_and_reallocation_goes_on():
  """mixed_float16 with a loss scale far too large: the first steps'
  gradients overflow float16, so the `LossScaleOptimizer` skips them and
  halves the scale each time. DSR must neither see nor write an inf, and its
  schedule must count the skipped steps (Keras's optimizer counts them)."""
  keras.mixed_precision.set_global_policy('mixed_float16')
  try:
    initial_scale = 2.0**24
    optimizer = keras.mixed_precision.LossScaleOptimizer(
        keras.optimizers.SGD(0.05, momentum=0.9), initial_scale=initial_scale)
    model = sparse_tiny_cnn(optimizer=optimizer)
    total_active = sum(int(m.sum()) for m in masks_of(model))
    x, y = tiny_data()
    cb = tf_dsr.ReallocationCallback(target_pruned=30, period=2,
                                     initial_threshold=5e-2)
    check, record = _CheckInvariants(total_active), _RecordSteps()
    model.fit(x, y, batch_size=16, epochs=4, verbose=0,
              callbacks=[cb, check, record])
  finally:
    keras.mixed_precision.set_global_policy('float32')

  rows = record.rows
  assert [r['step'] for r in rows] == list(range(1, 17))
  scales = [initial_scale] + [r['scale'] for r in rows]
  skipped = [r['scale'] == previous / 2
             for r, previous in zip(rows, scales)]
  # Some steps overflowed, then training went on at a scale that fits
  # (growth only comes after 2000 good steps, so it stays put).
  assert skipped[:3] == [True] * 3 and not skipped[-1]
  first_good = skipped.index(False)
  assert not any(skipped[first_good:])
  assert all(r['scale'] == initial_scale / 2**first_good
             for r in rows[first_good:])
  # An overflowing step leaves every weight as it was; a good one moves them.
  assert [r['updated'] for r in rows] == [not s for s in skipped]
  assert all(r['finite'] for r in rows)
  # Reallocations ran on schedule through the skipped steps, and pruned.
  assert [s.step for s in cb.history] == list(range(2, 17, 2))
  assert all(s.pruned > 0 and s.total_active == total_active
             for s in cb.history)
  assert check.steps == 16
