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


class Reallocator:
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
    if not _tfmot.is_tf_keras_object(model):
      raise ValueError(_tfmot.foreign_keras_message(model, 'model'))
    validate_dsr_arguments(target_pruned, tolerance, initial_threshold, seed)
    wrappers = collect_wrappers(model)
    if not wrappers:
      raise ValueError(
          f'`model` {model.name!r} has no DynamicSparseWrapper layer; wrap it '
          'with `tf_dsr.sparsify(model, sparsity=...)` first.')
    self.model = model
    self.target_pruned = target_pruned
    self.tolerance = float(tolerance)
    self.seed = int(seed)
    self.jit_compile = jit_compile
    self._optimizer = optimizer
    self._wrappers = wrappers
    self.state = state_lib.get_or_create(model, float(initial_threshold))
    for wrapper in wrappers:
      wrapper._reallocation_bound = True  # pylint: disable=protected-access
    self._function = None

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

  def draws_per_round(self, sizes):
    """Static draw counts of the uniform growth: about twice the expected regrowth."""
    total = sum(sizes)
    return [min(n, 64 + math.ceil(2 * self.target_pruned * n / total))
            for n in sizes]

  def plan(self, weights, masks, threshold, seed, counts):
    """The drop-and-grow rule: tensors in, a `reallocation.Reallocation` out.

    Args:
      weights: float32 kernels.
      masks: bool masks.
      threshold: H.
      seed: `[2]` seed of this reallocation.
      counts: `reallocation.count_entries` of each tensor at H.
    """
    return reallocation.reallocate(
        weights, masks, threshold, seed,
        target_pruned=self.target_pruned, tolerance=self.tolerance,
        draws_per_round=self.draws_per_round(
            [w.shape.num_elements() for w in weights]), counts=counts)

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
    if self._function is None:
      self._function = self._build_function()
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
