"""Reallocators: apply a drop-and-grow rule to every dynamic-sparse layer.

A reallocator owns the "how" of one reallocation for a model: it gathers the
(kernel, mask) pairs of the model's `DynamicSparseWrapper`s, runs the pure math
of `tf_dsr.reallocation` in one compiled TensorFlow function, and is the one
place that assigns masks, kernels, optimizer state and the model-wide state.
It is called in cross-replica context, so under `tf.distribute` every replica
receives the same new values; its random numbers are stateless and keyed by
(seed, reallocation index, tensor index), so any process computes the same
masks from the same weights.
"""

import dataclasses
import math
import numbers
from typing import Dict

import tensorflow as tf

from tf_dsr import _tfmot
from tf_dsr import optimizer_state
from tf_dsr import reallocation
from tf_dsr import state as state_lib
from tf_dsr.wrapper import DynamicSparseWrapper

keras = _tfmot.keras


def collect_wrappers(model):
  """The `DynamicSparseWrapper` layers of `model`, nested models included."""
  found = []
  for layer in model.layers if isinstance(model, keras.Model) else [model]:
    if isinstance(layer, DynamicSparseWrapper):
      found.append(layer)
    elif isinstance(layer, keras.Model):
      found.extend(collect_wrappers(layer))
  return found


def validate_dsr_arguments(target_pruned, tolerance, initial_threshold, seed):
  """Raises ValueError naming the first bad DSR argument and its value."""
  if (isinstance(target_pruned, bool) or
      not isinstance(target_pruned, numbers.Real) or not target_pruned > 0):
    raise ValueError(
        f'`target_pruned` must be a positive number, got {target_pruned!r}.')
  if (isinstance(tolerance, bool) or not isinstance(tolerance, numbers.Real) or
      not 0.0 < tolerance < 1.0):
    raise ValueError(f'`tolerance` must be in (0, 1), got {tolerance!r}.')
  if (isinstance(initial_threshold, bool) or
      not isinstance(initial_threshold, numbers.Real) or
      not math.isfinite(initial_threshold) or not initial_threshold > 0):
    raise ValueError(
        '`initial_threshold` must be a positive finite number, got '
        f'{initial_threshold!r}.')
  if isinstance(seed, bool) or not isinstance(seed, numbers.Integral):
    raise ValueError(f'`seed` must be an int, got {seed!r}.')


@dataclasses.dataclass(frozen=True)
class ReallocationStats:
  """What one reallocation did.

  Attributes:
    step: the global step it ran at (-1 when not given).
    pruned: K, the number of weights pruned (and regrown).
    candidates: active weights that were below H (equals `pruned` unless
      skipped).
    threshold_used: H used to prune.
    threshold: H after adaptation, used by the next reallocation.
    active: active weights per sparse tensor, by name.
    regrown: weights regrown per sparse tensor, by name.
    total_active: sum of `active` (unchanged by a reallocation).
    skipped: True when K exceeded the free positions and nothing moved.
  """
  step: int
  pruned: int
  candidates: int
  threshold_used: float
  threshold: float
  active: Dict[str, int]
  regrown: Dict[str, int]
  total_active: int
  skipped: bool


class BaseReallocator:
  """The shared drop-and-grow machinery; a subclass states its rule in hooks.

  A reallocation rule is three hooks over tensors (no variables, no
  assignment): `drop` chooses the entries to deactivate, `budget` spreads the
  regrowth over the tensors, and `next_threshold` adapts H (for rules that
  use it). Regrowth is always uniform among entries inactive before the call,
  at value 0, with the optimizer's per-weight state zeroed wherever an entry
  moved; the total active count never changes. This class gathers the
  `DynamicSparseWrapper`s of a model, runs the rule in one compiled function
  per local replica, and is the one place that assigns masks, kernels,
  optimizer state and the model-wide state.

  Args:
    model: a tf_keras model containing `DynamicSparseWrapper` layers.
    seed: integer seed of the reallocations' random streams.
    optimizer: the optimizer whose per-weight state is reset; defaults to
      `model.optimizer` at the time of each call.
    jit_compile: compile the reallocation with XLA (as TPUs require).
    initial_threshold: H for a model that has no DSR state yet.
  """


  def __init__(self, model, seed=0, optimizer=None, jit_compile=True,
               initial_threshold=1e-3):
    if not _tfmot.is_tf_keras_object(model):
      raise ValueError(_tfmot.foreign_keras_message(model, 'model'))
    if isinstance(seed, bool) or not isinstance(seed, numbers.Integral):
      raise ValueError(f'`seed` must be an int, got {seed!r}.')
    wrappers = collect_wrappers(model)
    if not wrappers:
      raise ValueError(
          f'`model` {model.name!r} has no DynamicSparseWrapper layer; wrap it '
          'with `tf_dsr.sparsify(model, sparsity=...)` first.')
    self.model = model
    self.seed = int(seed)
    self.jit_compile = jit_compile
    self._optimizer = optimizer
    self._wrappers = wrappers
    self.state = state_lib.get_or_create(model, float(initial_threshold))
    for wrapper in wrappers:
      wrapper._reallocation_bound = True  # pylint: disable=protected-access
    self._function = None
    self._function_key = None

  # Hooks: tensors in, tensors out.

  def drop(self, weights, masks, threshold, counts):
    """Chooses the entries to deactivate.

    Args:
      weights: float32 kernels.
      masks: bool masks.
      threshold: float32 H.
      counts: `reallocation.count_entries(w, m, H)` per tensor.

    Returns:
      `(pruned, num_pruned)`: a bool mask per tensor (a subset of its mask)
      and an int64 vector of their sizes.
    """
    raise NotImplementedError

  def budget(self, num_pruned, survivors, capacity, seed):
    """Regrowth per tensor; by default each tensor regrows what it dropped.

    Args:
      num_pruned: int64 vector of entries dropped per tensor.
      survivors: int64 vector of entries still active per tensor.
      capacity: int64 vector of entries inactive before the call.
      seed: `[2]` seed.

    Returns:
      int64 vector summing to `sum(num_pruned)`, each at most its capacity.
    """
    return reallocation.cap_to_capacity(num_pruned, survivors, capacity, seed)

  def next_threshold(self, threshold, candidates):
    """H for the next call; by default unchanged."""
    del candidates
    return threshold

  def plan(self, weights, masks, threshold, seed, counts):
    """One reallocation with this rule: tensors in, a `Reallocation` out."""
    pruned, num_pruned = self.drop(weights, masks, threshold, counts)
    result = reallocation.drop_and_grow(
        masks, pruned, num_pruned, tf.stack([a for a, _, _ in counts]),
        self.budget, seed,
        self.draws_per_round([w.shape.num_elements() for w in weights]))
    return result._replace(
        threshold=self.next_threshold(threshold, result.candidates))

  @property
  def optimizer(self):
    return self._optimizer if self._optimizer is not None else getattr(
        self.model, 'optimizer', None)

  def sparse_tensors(self):
    """`(name, kernel, mask)` for every sparse kernel, in a fixed order."""
    tensors = []
    for wrapper in self._wrappers:
      if not wrapper.built:
        raise ValueError(
            f'Layer {wrapper.name!r} is not built; build the model (call it on '
            'data or give it an input shape) before reallocating.')
      for kernel, mask in wrapper.sparse_weights:
        name = f'{wrapper.name}/{kernel.name.split("/")[-1].split(":")[0]}'
        tensors.append((name, kernel, mask))
    return tensors

  def expected_regrowth_fraction(self, num_weights):
    """Expected fraction of the sparse weights one call regrows.

    It sizes the static draw buffers of the uniform growth
    (`draws_per_round`); a wrong guess costs time, never correctness.

    Args:
      num_weights: the number of sparse weights (active or not).
    """
    del num_weights
    return 0.02

  def draws_per_round(self, sizes):
    """Static draw counts of the uniform growth: about twice the expected regrowth."""
    fraction = self.expected_regrowth_fraction(sum(sizes))
    return [min(n, 64 + math.ceil(2 * fraction * n)) for n in sizes]

  def trace_key(self, masks):
    """A hashable value that changes when the compiled function must be rebuilt.

    Args:
      masks: the mask variables, for rules whose trace depends on their
        values (read them only if so).
    """
    del masks
    return None

  def _build_function(self):
    """The compiled reallocation; it takes one replica's variables as arguments."""

    def apply(step, kernels, masks, slots, threshold_var, count_var, step_var):
      values = [tf.convert_to_tensor(k) for k in kernels]
      weights = [tf.cast(v, tf.float32) for v in values]
      old = [m > 0.5 for m in masks]
      threshold = tf.convert_to_tensor(threshold_var)
      counts = [reallocation.count_entries(w, m, threshold)
                for w, m in zip(weights, old)]
      nonfinite = tf.stack([c[2] for c in counts])

      # A non-finite weight anywhere leaves everything as it was. Selecting
      # with `ok` inside the update passes costs nothing, where a tf.cond
      # around them would split XLA's fusions.
      ok = tf.reduce_all(nonfinite == 0)
      seed = tf.random.experimental.stateless_fold_in(
          tf.constant([self.seed, 0], tf.int64), count_var)
      result = self.plan(weights, old, threshold, seed, counts)
      for i, (kernel, mask) in enumerate(zip(kernels, masks)):
        kept = (result.masks[i] & ~result.grown_masks[i]) | ~ok
        mask.assign(tf.cast(tf.where(ok, result.masks[i], old[i]), mask.dtype))
        kernel.assign(tf.where(kept, values[i], tf.zeros_like(values[i])))
        for slot in slots[i]:
          slot.assign(tf.where(kept, slot, tf.zeros_like(slot)))
      threshold_var.assign(tf.where(ok, result.threshold, threshold))
      count_var.assign_add(tf.cast(ok, tf.int64))
      step_var.assign(tf.where(ok, step, step_var))
      zero = tf.constant(0, tf.int64)
      return (tf.where(ok, result.pruned, zero),
              tf.where(ok, result.candidates, zero), threshold,
              tf.where(ok, result.threshold, threshold), result.active,
              result.regrown, result.skipped, nonfinite)

    return tf.function(apply, jit_compile=self.jit_compile, autograph=False)

  def _run_on_every_replica(self, step, tensors, slots):
    """Runs the reallocation once per local copy of the variables.

    Under `tf.distribute` each variable has one copy per local device. Every
    copy holds the same values and the random numbers are stateless, so each
    device computes the same new masks from its own copies, with no
    communication; this also keeps each XLA computation on a single device,
    as TPUs and XLA require. Returns the first replica's outputs.
    """
    def copies(variable):
      # Mixed precision: pass the float32 variable that a Keras
      # AutoCastVariable wraps. Its trace type equals only itself, so passing
      # the wrapper would retrace (and recompile) at every call.
      if hasattr(variable, 'true_dtype'):
        variable = variable._variable  # pylint: disable=protected-access
      return list(getattr(variable, 'values', None) or [variable])

    state = self.state
    kernels = [copies(k) for _, k, _ in tensors]
    masks = [copies(m) for _, _, m in tensors]
    slot_copies = [[copies(s) for s in group] for group in slots]
    state_copies = [copies(v) for v in (state.threshold, state.reallocations,
                                        state.last_step)]
    outputs = None
    for r in range(len(state_copies[0])):
      with tf.device(state_copies[0][r].device):
        result = self._function(
            tf.constant(step, tf.int64), [k[r] for k in kernels],
            [m[r] for m in masks], [[s[r] for s in group] for group in slot_copies],
            *[v[r] for v in state_copies])
      if outputs is None:
        outputs = result
    return outputs

  def reallocate(self, step=-1):
    """Runs one reallocation now and returns its `ReallocationStats`.

    Args:
      step: the global step, recorded in the state and the stats.

    Returns:
      `ReallocationStats`.

    Raises:
      FloatingPointError: when a sparse kernel holds NaN or Inf; nothing is
        changed and the message names the layers.
    """
    tensors = self.sparse_tensors()
    optimizer = self.optimizer
    slots = [tuple(optimizer_state.slot_variables(optimizer, kernel))
             for _, kernel, _ in tensors]
    key = self.trace_key([mask for _, _, mask in tensors])
    if self._function is None or key != self._function_key:
      self._function = self._build_function()
      self._function_key = key
    (pruned, candidates, threshold_used, threshold, active, regrown, skipped,
     nonfinite) = self._run_on_every_replica(step, tensors, slots)
    names = [name for name, _, _ in tensors]
    nonfinite = nonfinite.numpy()
    if nonfinite.any():
      bad = [f'{name} ({int(count)} entries)'
             for name, count in zip(names, nonfinite) if count]
      raise FloatingPointError(
          'Refusing to reallocate: non-finite (NaN or Inf) weights in '
          + ', '.join(bad) + '. Masks, weights and H are unchanged; lower the '
          'learning rate or check the inputs.')
    active = [int(a) for a in active.numpy()]
    return ReallocationStats(
        step=int(step),
        pruned=int(pruned),
        candidates=int(candidates),
        threshold_used=float(threshold_used),
        threshold=float(threshold),
        active=dict(zip(names, active)),
        regrown=dict(zip(names, (int(g) for g in regrown.numpy()))),
        total_active=sum(active),
        skipped=bool(skipped))


class Reallocator(BaseReallocator):
  """Dynamic Sparse Reparameterization for a model, for custom training loops.

  Mostafa & Wang, "Parameter Efficient Training of Deep Convolutional Neural
  Networks by Dynamic Sparse Reparameterization", ICML 2019,
  https://arxiv.org/abs/1902.05967.

  Each call to `reallocate()` prunes every active weight below the global
  threshold H, regrows the same number spread over the layers in proportion to
  their survivors (uniformly at random among positions inactive before the
  call), zeroes the optimizer state at every changed position, and halves or
  doubles H to keep the number pruned near `target_pruned`. `model.fit` users
  want `ReallocationCallback`, which calls this on a schedule.

  Example:
    ```python
    realloc = tf_dsr.Reallocator(model, target_pruned=20_000)
    for step, (x, y) in enumerate(dataset, 1):
      train_step(x, y)
      if step % 100 == 0:
        stats = realloc.reallocate(step)
    ```

  Args:
    model: a tf_keras model containing `DynamicSparseWrapper` layers.
    target_pruned: N_p, the number of weights each reallocation aims to prune.
    tolerance: delta in (0, 1); H changes when K leaves
      [(1 - delta) N_p, (1 + delta) N_p].
    initial_threshold: H before the first reallocation (when the model has no
      DSR state yet; a restored state is kept).
    seed: integer seed of the reallocations' random streams.
    optimizer: the optimizer whose per-weight state is reset; defaults to
      `model.optimizer` at the time of each call.
    jit_compile: compile the reallocation with XLA (as TPUs require).
  """

  def __init__(self, model, target_pruned, tolerance=0.1,
               initial_threshold=1e-3, seed=0, optimizer=None,
               jit_compile=True):
    validate_dsr_arguments(target_pruned, tolerance, initial_threshold, seed)
    super().__init__(model, seed=seed, optimizer=optimizer,
                     jit_compile=jit_compile,
                     initial_threshold=initial_threshold)
    self.target_pruned = target_pruned
    self.tolerance = float(tolerance)

  def expected_regrowth_fraction(self, num_weights):
    return min(1.0, self.target_pruned / max(num_weights, 1))

  def drop(self, weights, masks, threshold, counts):
    pruned = [reallocation._prune(w, m, threshold, active, below)  # pylint: disable=protected-access
              for w, m, (active, below, _) in zip(weights, masks, counts)]
    return [p for _, p, _ in pruned], tf.stack([k for _, _, k in pruned])

  def budget(self, num_pruned, survivors, capacity, seed):
    return reallocation.allocate(tf.reduce_sum(num_pruned), survivors,
                                 capacity, seed)

  def next_threshold(self, threshold, candidates):
    return tf.cast(reallocation.adapt_threshold(
        tf.cast(threshold, tf.float64), candidates, self.target_pruned,
        self.tolerance), tf.float32)


class StaticReallocator(BaseReallocator):
  """Static sparse training: the initial random mask, never changed.

  The baseline of Mostafa & Wang (ICML 2019, https://arxiv.org/abs/1902.05967)
  and of most sparse-training papers. It binds the wrappers (so training is
  allowed) and `reallocate()` leaves every mask as it is.

  Args:
    model: a tf_keras model containing `DynamicSparseWrapper` layers.
    seed: unused; accepted so every method shares one signature.
    **kwargs: as for `BaseReallocator`.
  """

  def expected_regrowth_fraction(self, num_weights):
    del num_weights
    return 0.0

  def drop(self, weights, masks, threshold, counts):
    return ([tf.zeros_like(m) for m in masks],
            tf.zeros([len(masks)], tf.int64))


class SETReallocator(BaseReallocator):
  """Sparse Evolutionary Training: per-layer drop of the smallest weights.

  Mocanu et al., "Scalable training of artificial neural networks with
  adaptive sparse connectivity inspired by network science", Nature
  Communications 2018, https://arxiv.org/abs/1707.04780. Each call drops, in
  every tensor, the `round(drop_fraction * active)` active weights of smallest
  magnitude and regrows as many in the same tensor, uniformly at random among
  entries that were inactive (so per-layer counts never change).

  Args:
    model: a tf_keras model containing `DynamicSparseWrapper` layers.
    drop_fraction: fraction of each tensor's active weights dropped per call,
      in (0, 1). When None, `target_pruned / total active`, which makes the
      churn equal DSR's with the same `target_pruned` (DSR_SPEC section 5).
    target_pruned: used only to derive `drop_fraction`.
    **kwargs: as for `BaseReallocator`.
  """

  def __init__(self, model, drop_fraction=None, target_pruned=None, **kwargs):
    if drop_fraction is None and target_pruned is None:
      raise ValueError('SET needs `drop_fraction` or `target_pruned`, got '
                       'neither.')
    if drop_fraction is not None and (
        isinstance(drop_fraction, bool) or
        not isinstance(drop_fraction, numbers.Real) or
        not 0.0 < drop_fraction < 1.0):
      raise ValueError(
          f'`drop_fraction` must be in (0, 1), got {drop_fraction!r}.')
    if drop_fraction is None:
      validate_dsr_arguments(target_pruned, 0.1, 1e-3, 0)
    super().__init__(model, **kwargs)
    self.drop_fraction = drop_fraction
    self.target_pruned = target_pruned
    self._drop_counts = None

  def expected_regrowth_fraction(self, num_weights):
    return sum(self._drop_counts) / max(num_weights, 1)

  def trace_key(self, masks):
    # The drop counts are static in the compiled function; SET keeps every
    # tensor's active count, so they change only if the masks are replaced.
    active = [int((m.numpy() > 0.5).sum()) for m in masks]
    fraction = self.drop_fraction
    if fraction is None:
      fraction = min(self.target_pruned / sum(active), 1.0)
    self._drop_counts = tuple(min(a - 1, round(fraction * a)) for a in active)
    return self._drop_counts

  def drop(self, weights, masks, threshold, counts):
    del threshold, counts
    pruned, sizes = [], []
    for weight, mask, count in zip(weights, masks, self._drop_counts):
      flat = tf.reshape(tf.where(mask, tf.abs(weight), math.inf), [-1])
      if count > 0:
        _, smallest = tf.math.top_k(-flat, count, sorted=False)
        chosen = tf.scatter_nd(smallest[:, None], tf.ones([count], tf.bool),
                               flat.shape)
      else:
        chosen = tf.zeros(flat.shape, tf.bool)
      pruned.append(tf.reshape(chosen, mask.shape) & mask)
      sizes.append(count)
    return pruned, tf.constant(sizes, tf.int64)


#: Reallocation rules by the names the launcher and callback use.
REALLOCATORS = {
    'dsr': Reallocator,
    'set': SETReallocator,
    'static': StaticReallocator,
}


def get_reallocator(name):
  """The reallocator class registered as `name`.

  Raises:
    ValueError: for an unknown name, listing the valid ones.
  """
  if name not in REALLOCATORS:
    raise ValueError(f'`method` must be one of {sorted(REALLOCATORS)}, got '
                     f'{name!r}.')
  return REALLOCATORS[name]
