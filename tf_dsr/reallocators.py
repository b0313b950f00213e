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
  use it). Rules with more state use three optional hooks:
  `auxiliary_variables` declares per-tensor variables (kept on the model's
  state, passed per replica into the compiled function, read through
  `self.auxiliary` and renewed by `update_auxiliary`), `call_inputs` gives
  per-call scalars such as the learning rate, and `update` changes the active
  weights before the drop (DeepR's L1 term and noise). Regrowth is always uniform among entries inactive before the call,
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
    # Whether `drop` must guard against emptying a tensor; see
    # `careful_drop_needed`. True outside tracing: always safe.
    self.careful_drop = True
    self._auxiliary = None  # kind -> one variable per sparse tensor.
    self._traced_auxiliary = None

  # Hooks: tensors in, tensors out.

  def auxiliary_variables(self):
    """Per-tensor auxiliary state a rule keeps between calls.

    Returns:
      A dict from a kind (an identifier, e.g. 'sign') to
      `(dtype, initializer)`, where `initializer(kernel, mask, seed)` maps one
      sparse tensor's float32 kernel, bool mask and `[2]` seed to the initial
      value. The base creates one variable per sparse tensor and kind, under
      the model's distribution strategy, attached to
      `model.dynamic_sparsity_state` as the list attribute `kind` (so
      checkpoints carry them), and passes each replica's copies to the
      compiled function; read them in hooks through `self.auxiliary`. By
      default, none.
    """
    return {}

  @property
  def auxiliary(self):
    """While the reallocation is traced: kind -> list of tensors (one per sparse tensor)."""
    if self._traced_auxiliary is None:
      raise RuntimeError('`auxiliary` is only available inside the hooks, while '
                         'the reallocation is traced.')
    return self._traced_auxiliary

  def call_inputs(self, step):
    """Per-call scalars (e.g. a learning rate), as a dict of float32 values.

    Computed in Python before each call and passed to the compiled function,
    so changing values cause no retrace. By default, none.

    Args:
      step: the global step of the call.
    """
    del step
    return {}

  def update(self, weights, masks, inputs, seed):
    """Changes the active weights before the drop; by default not at all.

    Args:
      weights: float32 kernels.
      masks: bool masks.
      inputs: the dict of float32 scalar tensors from `call_inputs`.
      seed: `[2]` seed of this call (fold in a tag and the tensor index).

    Returns:
      The new float32 kernels (inactive entries must stay 0).
    """
    del masks, inputs, seed
    return weights

  def update_auxiliary(self, result, seed):
    """New values of the auxiliary variables after a drop and grow.

    Args:
      result: the `reallocation.Reallocation` of this call.
      seed: `[2]` seed of this call.

    Returns:
      kind -> list of tensors; by default the values are unchanged.
    """
    del result, seed
    return self.auxiliary

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

  def _auxiliary_variables(self, tensors):
    """kind -> list of variables, created (and attached to the state) on first use."""
    if self._auxiliary is None:
      self._auxiliary = {}
      specs = self.auxiliary_variables()
      for kind, (dtype, initializer) in specs.items():
        existing = getattr(self.state, kind, None)
        if existing is None:
          values = []
          with self.model.distribute_strategy.scope():
            for i, (name, kernel, mask) in enumerate(tensors):
              seed = tf.constant([self.seed, i], tf.int64)
              initial = initializer(
                  tf.cast(tf.convert_to_tensor(kernel), tf.float32),
                  tf.convert_to_tensor(mask) > 0.5, seed)
              values.append(tf.Variable(
                  tf.cast(initial, dtype), trainable=False,
                  name=f'{kind}_{name.replace("/", "_")}'))
          setattr(self.state, kind, values)
          existing = getattr(self.state, kind)
        self._auxiliary[kind] = list(existing)
    return self._auxiliary

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
    """Static draw counts of the uniform growth, one per sparse tensor.

    A draw lands on a free entry with probability about the tensor's
    configured sparsity, so a tensor expected to regrow `f * n` entries gets
    `1.25 * f * n / sparsity` draws (plus 64): one round nearly always
    suffices, and a short round only costs a second one.

    Args:
      sizes: the number of entries of each sparse tensor.
    """
    fraction = self.expected_regrowth_fraction(sum(sizes))
    sparsities = [wrapper.sparsity for wrapper in self._wrappers
                  for _ in wrapper.sparse_weights]
    return [min(n, 64 + math.ceil(1.25 * fraction * n / max(s, 0.05)))
            for n, s in zip(sizes, sparsities)]

  def trace_key(self, masks):
    """A hashable value that changes when the compiled function must be rebuilt.

    Args:
      masks: the mask variables, for rules whose trace depends on their
        values (read them only if so).
    """
    del masks
    return None

  def careful_drop_needed(self, counts):
    """A bool tensor, True when `drop` must guard against emptying a tensor.

    The reallocation is traced twice, with `self.careful_drop` True and False,
    and runs the careful version only when this is True: rules whose guard
    costs a pass over the weights pay it only when it can matter. None (the
    default) means no guard is ever needed.

    Args:
      counts: `reallocation.count_entries` of each tensor at the current H.
    """
    del counts
    return None

  def _build_function(self):
    """The compiled reallocation; it takes one replica's variables as arguments."""

    def apply(step, kernels, masks, slots, auxiliary, inputs, threshold_var,
              count_var, step_var):
      seed = reallocation.fold_in(
          tf.constant([self.seed, 0], tf.int64), count_var)
      threshold = tf.convert_to_tensor(threshold_var)

      def read():
        # Each branch below reads the variables itself, so that no
        # weight-sized value has to be materialised as a branch operand.
        values = [tf.convert_to_tensor(k) for k in kernels]
        old = [m > 0.5 for m in masks]
        weights = self.update([tf.cast(v, tf.float32) for v in values], old,
                              inputs, seed)
        return values, old, weights

      def body(careful):
        values, old, weights = read()
        self.careful_drop = careful
        result = self.plan(weights, old, threshold, seed, counts)
        new_auxiliary = self.update_auxiliary(result, seed)
        for i, (kernel, mask) in enumerate(zip(kernels, masks)):
          kept = (result.masks[i] & ~result.grown_masks[i]) | ~ok
          new = tf.where(ok, tf.cast(weights[i], values[i].dtype), values[i])
          mask.assign(tf.cast(tf.where(ok, result.masks[i], old[i]),
                              mask.dtype))
          kernel.assign(tf.where(kept, new, tf.zeros_like(new)))
          for slot in slots[i]:
            slot.assign(tf.where(kept, slot, tf.zeros_like(slot)))
        for kind, group in auxiliary.items():
          for variable, value in zip(group, new_auxiliary[kind]):
            variable.assign(tf.where(ok, tf.cast(value, variable.dtype),
                                     tf.convert_to_tensor(variable)))
        threshold_var.assign(tf.where(ok, result.threshold, threshold))
        count_var.assign_add(tf.cast(ok, tf.int64))
        step_var.assign(tf.where(ok, step, step_var))
        zero = tf.constant(0, tf.int64)
        return (tf.where(ok, result.pruned, zero),
                tf.where(ok, result.candidates, zero),
                tf.where(ok, result.threshold, threshold), result.active,
                result.regrown, result.skipped)

      self._traced_auxiliary = {
          kind: [tf.convert_to_tensor(v) for v in group]
          for kind, group in auxiliary.items()}
      try:
        _, old, weights = read()
        counts = [reallocation.count_entries(w, m, threshold)
                  for w, m in zip(weights, old)]
        nonfinite = tf.stack([c[2] for c in counts])
        # A non-finite weight anywhere leaves everything as it was: the
        # updates select with `ok`, which costs nothing inside their passes.
        ok = tf.reduce_all(nonfinite == 0)
        careful = self.careful_drop_needed(counts)
        if careful is None:
          outputs = body(True)
        else:
          outputs = tf.cond(careful, lambda: body(True), lambda: body(False))
      finally:
        self._traced_auxiliary = None
        self.careful_drop = True
      pruned, candidates, new_threshold, active, regrown, skipped = outputs
      return (pruned, candidates, threshold, new_threshold, active, regrown,
              skipped, nonfinite)

    return tf.function(apply, jit_compile=self.jit_compile, autograph=False)

  def _run_on_every_replica(self, step, tensors, slots, auxiliary, inputs):
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
    auxiliary_copies = {kind: [copies(v) for v in group]
                        for kind, group in auxiliary.items()}
    inputs = {key: tf.constant(value, tf.float32)
              for key, value in inputs.items()}
    state_copies = [copies(v) for v in (state.threshold, state.reallocations,
                                        state.last_step)]
    outputs = None
    for r in range(len(state_copies[0])):
      with tf.device(state_copies[0][r].device):
        result = self._function(
            tf.constant(step, tf.int64), [k[r] for k in kernels],
            [m[r] for m in masks], [[s[r] for s in group] for group in slot_copies],
            {kind: [v[r] for v in group]
             for kind, group in auxiliary_copies.items()},
            inputs, *[v[r] for v in state_copies])
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
    auxiliary = self._auxiliary_variables(tensors)
    key = self.trace_key([mask for _, _, mask in tensors])
    if self._function is None or key != self._function_key:
      self._function = self._build_function()
      self._function_key = key
    (pruned, candidates, threshold_used, threshold, active, regrown, skipped,
     nonfinite) = self._run_on_every_replica(step, tensors, slots, auxiliary,
                                             self.call_inputs(step))
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

  def careful_drop_needed(self, counts):
    return reallocation.would_empty(counts)

  def drop(self, weights, masks, threshold, counts):
    pruned = [reallocation._prune(w, m, threshold, active, below,  # pylint: disable=protected-access
                                  keep_largest=self.careful_drop)
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


def _random_signs(shape, seed):
  """+1 or -1 with equal odds, from a stateless stream."""
  coin = reallocation.uniform(shape, seed) < 0.5
  return tf.where(coin, tf.ones(shape), -tf.ones(shape))


def _initial_signs(kernel, mask, seed):
  """The sign of each weight; a random sign where the weight is 0."""
  del mask
  return tf.where(kernel > 0, tf.ones_like(kernel), tf.where(
      kernel < 0, -tf.ones_like(kernel), _random_signs(kernel.shape, seed)))


class DeepRReallocator(BaseReallocator):
  """Deep Rewiring: fixed-sign connections that die when they cross zero.

  Bellec, Kappel, Maass & Legenstein, "Deep Rewiring: Training very sparse
  deep networks", ICLR 2018, https://arxiv.org/abs/1711.05136. Every weight
  carries a fixed sign s (kept in the auxiliary variables `sign` of
  `model.dynamic_sparsity_state`, one per sparse tensor, so checkpoints carry
  them). Each call, meant to run after every training step:

  1. applies the L1 term and the Langevin noise of DeepR to every active
     weight: `w <- w - lr * alpha * s + sqrt(2 * lr * T) * N(0, 1)`, with
     `lr` the optimizer's current learning rate and `T` the temperature;
  2. removes every active connection whose weight now has the opposite sign
     to s (its parameter theta = s * w crossed zero);
  3. activates as many dormant connections, uniformly at random over the
     whole network (each tensor's share proportional to its free entries),
     at weight 0 with a fresh random sign.

  The noise is stateless, keyed by (seed, reallocation index, tensor index),
  so every replica draws the same numbers. The total active count is fixed.

  Args:
    model: a tf_keras model containing `DynamicSparseWrapper` layers.
    alpha: the L1 coefficient, >= 0.
    temperature: T >= 0: a number, or a callable from the global step to T
      (a schedule).
    learning_rate: the lr of the update; None reads the optimizer's current
      learning rate at each call.
    **kwargs: as for `BaseReallocator` (seed, optimizer, jit_compile, ...).
  """

  def __init__(self, model, alpha=1e-4, temperature=0.0, learning_rate=None,
               **kwargs):
    for argument, value in (('alpha', alpha), ('learning_rate', learning_rate)):
      if value is None and argument == 'learning_rate':
        continue
      if (isinstance(value, bool) or not isinstance(value, numbers.Real) or
          not math.isfinite(value) or value < 0):
        raise ValueError(f'`{argument}` must be a finite number >= 0, got '
                         f'{value!r}.')
    if not callable(temperature) and (
        isinstance(temperature, bool) or
        not isinstance(temperature, numbers.Real) or
        not math.isfinite(temperature) or temperature < 0):
      raise ValueError('`temperature` must be a finite number >= 0 or a '
                       f'callable from step to temperature, got {temperature!r}.')
    super().__init__(model, **kwargs)
    self.alpha = float(alpha)
    self.temperature = temperature
    self.learning_rate = learning_rate

  def auxiliary_variables(self):
    return {'sign': (tf.float32, _initial_signs)}

  def expected_regrowth_fraction(self, num_weights):
    del num_weights
    return 0.005

  def current_learning_rate(self):
    """The lr of the update: the given one, or the optimizer's at its current step."""
    if self.learning_rate is not None:
      return float(self.learning_rate)
    optimizer = self.optimizer
    if optimizer is None:
      raise ValueError('DeepR needs `learning_rate` or a model compiled with an '
                       'optimizer.')
    lr = optimizer.learning_rate
    if callable(lr) and not isinstance(lr, tf.Variable):
      lr = lr(optimizer.iterations)
    return float(tf.convert_to_tensor(lr))

  def call_inputs(self, step):
    temperature = self.temperature
    if callable(temperature):
      temperature = temperature(max(int(step), 0))
    if not math.isfinite(temperature) or temperature < 0:
      raise ValueError(f'DeepR temperature at step {step} must be a finite '
                       f'number >= 0, got {temperature!r}.')
    return {'learning_rate': self.current_learning_rate(),
            'temperature': float(temperature)}

  def update(self, weights, masks, inputs, seed):
    lr, temperature = inputs['learning_rate'], inputs['temperature']
    scale = tf.sqrt(2.0 * lr * temperature)
    noise_seed = reallocation.fold_in(seed, 7919)
    updated = []
    for i, (weight, mask, sign) in enumerate(
        zip(weights, masks, self.auxiliary['sign'])):
      # Gaussian noise: equal on every replica (all run the same function),
      # but not bit-equal between a compiled and an uncompiled run.
      noise = tf.random.stateless_normal(
          weight.shape, reallocation.fold_in(noise_seed, i),
          alg=reallocation.RANDOM_ALG)
      step = -lr * self.alpha * sign + scale * noise
      updated.append(tf.where(mask, weight + step, tf.zeros_like(weight)))
    return updated

  def drop(self, weights, masks, threshold, counts):
    del threshold, counts
    flipped = [m & (w * s < 0)
               for w, m, s in zip(weights, masks, self.auxiliary['sign'])]
    return flipped, tf.stack(
        [tf.reduce_sum(tf.cast(f, tf.int64)) for f in flipped])

  def budget(self, num_pruned, survivors, capacity, seed):
    del survivors
    return reallocation.allocate(tf.reduce_sum(num_pruned),
                                 tf.maximum(capacity, 1), capacity, seed)

  def update_auxiliary(self, result, seed):
    sign_seed = reallocation.fold_in(seed, 104729)
    signs = []
    for i, (sign, grown) in enumerate(
        zip(self.auxiliary['sign'], result.grown_masks)):
      fresh = _random_signs(
          sign.shape, reallocation.fold_in(sign_seed, i))
      signs.append(tf.where(grown, fresh, sign))
    return {'sign': signs}


#: Reallocation rules by the names the launcher and callback use.
REALLOCATORS = {
    'deepr': DeepRReallocator,
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
