"""The reallocation engine: one compiled program for every rule and model.

The `Reallocator` finds a model's sparse tensors, lays them out in one flat
index space (`tf_dsr.layout`), and compiles one program that reads every
kernel, mask and auxiliary variable, asks the rule (`tf_dsr.rules`) what to
drop, regrows uniformly at random, and assigns the results. It is the only
place that assigns masks, kernels, optimizer state and the model-wide state.

The program is traced once per `Reallocator`: its size does not depend on
the number of sparse tensors (beyond reading and writing them), everything
that changes from call to call is an argument, and nothing is set on Python
objects while it is traced. It runs in cross-replica context, once per local
copy of the variables, so under `tf.distribute` every replica computes the
same new values from its own copies; its random numbers are stateless and
keyed by (seed, reallocation index), so any process computes the same masks
from the same weights.
"""

import collections
import dataclasses
from typing import Dict

import tensorflow as tf

from tf_dsr import binding as binding_lib
from tf_dsr import gradients as gradients_lib
from tf_dsr import kerases
from tf_dsr import layout as layout_lib
from tf_dsr import masks as masks_lib
from tf_dsr import reallocation
from tf_dsr import rules as rules_lib
from tf_dsr import state as state_lib
from tf_dsr import validation
from tf_dsr.wrapper import DynamicSparseWrapper


def collect_wrappers(model):
  """The `DynamicSparseWrapper` layers of `model`, nested models included.

  `model` may be a tf_keras or a Keras 3 model (or a single wrapper).
  """
  found = []
  for layer in (model.layers if isinstance(model, kerases.MODEL_TYPES)
                else [model]):
    if isinstance(layer, DynamicSparseWrapper):
      found.append(layer)
    elif isinstance(layer, kerases.MODEL_TYPES):
      found.extend(collect_wrappers(layer))
  return found


def default_jit_compile():
  """The default `jit_compile` of a reallocation on this machine.

  A reallocation is a flat core and the writes, each compiled with XLA.
  `jit_compile=True` compiles the whole as one XLA program, as TPUs need.
  Elsewhere False: the core and the writes are compiled as separate
  programs, and tensors of the same shape share a compiled write,
  so the compile time grows with the number of distinct shapes rather than
  of tensors. Measured on a 2-core CPU with
  `python -m benchmarks.first_reallocation` (see the README), one program
  makes the first call 1.14x (WRN-28-2) and 1.07x (ResNet-50) as long, and
  later calls no faster (1.25x and 1.11x the time).
  """
  return bool(tf.config.list_logical_devices('TPU'))


def check_seed_and_jit_compile(seed, jit_compile):
  """Raises ValueError naming `seed` or `jit_compile` when it is not valid."""
  validation.check_int('seed', seed)
  if jit_compile is not None and not isinstance(jit_compile, bool):
    raise ValueError(f'`jit_compile` must be True, False or None, got '
                     f'{jit_compile!r}.')


@dataclasses.dataclass(frozen=True)
class ReallocationStats:
  """What one reallocation did.

  Attributes:
    step: the global step it ran at (-1 when not given).
    pruned: K, the number of weights pruned (and regrown).
    candidates: entries the rule chose to drop (equals `pruned` unless
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


def _storage(variable):
  """The `tf.Variable` behind a tf_keras AutoCastVariable or a Keras 3 variable.

  Passing the wrapper would retrace (and recompile) at every call: its trace
  type equals only itself.
  """
  if hasattr(variable, 'true_dtype'):
    return variable._variable  # pylint: disable=protected-access
  return kerases.KERAS3.tf_variable(variable)


def _copies(variable):
  """The local copies of a (possibly distributed) variable."""
  variable = _storage(variable)
  return list(getattr(variable, 'values', None) or [variable])


def _write(kernels, masks, slots, codes):
  """Writes the reallocation of tensors of one shape; whole-tensor passes.

  For each tensor, `code` holds one byte per entry (shaped like the
  kernel), from the flat core (`reallocation.Reallocation.code`):
  `NEW_ACTIVE` set where the entry is active after the call, `KEEP` where
  its weight and optimizer state survive (active before and not dropped,
  or everything when the call is refused). Elsewhere they are zeroed, which
  also restores the invariant that inactive entries hold 0, and 0 it is
  even for an inf or NaN value (Adam's second moment of a huge gradient can
  be inf while the weight is finite): a select, not a multiplication. Each
  variable is read and written once.
  """
  for kernel, mask, kernel_slots, code in zip(kernels, masks, slots, codes):
    kept = tf.bitwise.bitwise_and(code, reallocation.KEEP) > 0
    for variable in [kernel] + list(kernel_slots):
      value = tf.convert_to_tensor(variable)
      variable.assign(tf.where(kept, value, tf.zeros_like(value)))
    new_active = tf.bitwise.bitwise_and(code, reallocation.NEW_ACTIVE) > 0
    mask.assign(tf.cast(new_active, mask.dtype))


def _write_groups(kernels, masks, slots):
  """Indices of the tensors `_write` takes together: same shape and dtypes."""
  groups = collections.OrderedDict()
  for i, (kernel, mask, kernel_slots) in enumerate(zip(kernels, masks, slots)):
    key = (tuple(kernel.shape), kernel.dtype, mask.dtype,
           tuple((tuple(slot.shape), slot.dtype) for slot in kernel_slots))
    groups.setdefault(key, []).append(i)
  return list(groups.values())


def _check_optimizer(model, optimizer, flavour):
  """Raises unless `optimizer` is None (the model's), False or an optimizer.

  An optimizer must be one of `flavour`'s, the Keras of `model`.
  """
  if optimizer is False:
    return
  if optimizer is None:
    if getattr(model, 'optimizer', None) is None:
      raise ValueError(
          f'`optimizer` is None and `model` {model.name!r} is not compiled, so '
          'the Reallocator cannot find the optimizer whose per-weight state '
          '(momentum, Adam moments) it must reset where weights move. Pass '
          '`optimizer=` the optimizer your training loop applies, or '
          '`optimizer=False` if it keeps no per-weight state.')
    return
  if isinstance(optimizer, bool) or not isinstance(optimizer,
                                                   flavour.optimizer_types):
    raise TypeError(
        f'`optimizer` must be a {flavour.label} optimizer (the Keras of the '
        'model), None (the model\'s) or False (no per-weight state), got '
        f'{optimizer!r}.')


def _check_step(step):
  """The step as a Python int, from a Python/NumPy int or an int tensor.

  Raises:
    RuntimeError: inside a `tf.function`.
    ValueError: for anything else, naming `step`.
  """
  if tf.inside_function():
    raise RuntimeError(
        '`Reallocator.reallocate` was called inside a `tf.function`. It assigns '
        'masks, weights and optimizer state and reads its results on the host, '
        'so call it eagerly between training steps: `train_step(x, y)` (your '
        'tf.function), then `realloc.reallocate(step)` outside it.')
  if isinstance(step, (tf.Tensor, tf.Variable)) or (
      hasattr(step, 'dtype') and hasattr(step, 'shape') and
      not validation.is_int(step)):
    dtype = tf.as_dtype(step.dtype) if hasattr(step, 'dtype') else None
    if dtype not in (tf.int32, tf.int64) or tuple(step.shape) != ():
      raise ValueError(
          '`step` must be an int, or a scalar int32/int64 tensor, got '
          f'{step!r}.')
    step = int(step.numpy() if hasattr(step, 'numpy') else step)
  return validation.check_int('step', step, low=-1)


# Programs by (the rule's `program_key`, layout, draws, jit_compile,
# argument signature). A program holds no model or variable (they are its
# arguments), so Reallocators of models with the same sparse tensors, rule
# and optimizer state share one, and only the first of them traces and
# compiles it: a model rebuilt or reloaded in the same process, a new
# callback per `fit`, many runs of one configuration, or a sweep over the
# options a rule passes as call inputs (`Rule.traced_options`). The
# signature (the dtypes and number of every argument) is part of the key,
# so each program is traced once.
_PROGRAMS = collections.OrderedDict()
_MAX_PROGRAMS = 16


def _signature(tensors, slots, auxiliary, values, gradients):
  """The structure and dtypes of a program's arguments, as a hashable key."""
  dtype = lambda v: tf.as_dtype(v.dtype).name
  return (tuple((dtype(k), dtype(m), tuple(dtype(s) for s in group))
                for (_, k, m), group in zip(tensors, slots)),
          tuple(sorted((kind, tuple(dtype(v) for v in group))
                       for kind, group in auxiliary.items())),
          tuple(sorted(values)), tuple(dtype(g) for g in gradients))


def _program(rule, layout, draws, jit_compile, signature, own):
  """The cached reallocation program for `rule` on `layout` (see `_make_program`).

  Args:
    rule, layout, draws, jit_compile: as `_make_program` takes them.
    signature: `_signature` of the arguments.
    own: the calling Reallocator's own cache (a dict), used for a rule that
      cannot be hashed (a user's rule with a list or dict option), which
      no other Reallocator can share; it still traces once per run.
  """
  key = (rule.program_key(), layout, tuple(draws), bool(jit_compile),
         signature)
  try:
    hash(key)
  except TypeError:
    own_key = key[1:]
    if own_key not in own:
      own[own_key] = _make_program(rule.for_tracing(), layout, draws,
                                   jit_compile)
    return own[own_key]
  if key not in _PROGRAMS:
    _PROGRAMS[key] = _make_program(rule.for_tracing(), layout, draws,
                                   jit_compile)
    while len(_PROGRAMS) > _MAX_PROGRAMS:
      _PROGRAMS.popitem(last=False)
  _PROGRAMS.move_to_end(key)
  return _PROGRAMS[key]


def _make_program(rule, layout, draws, jit_compile):
  """The reallocation program: a flat core, then the writes.

  The core works on the flat index space, so its size does not depend on
  the number of tensors beyond one small fusion per tensor that reads its
  kernel and mask into one byte of flags per entry; it returns one byte
  per entry that says what each tensor's write keeps and activates. Both
  are compiled with XLA, where their element-wise passes fuse into few:
  as one program when `jit_compile` is True (as TPUs need), otherwise as
  separate programs, the writes shared by tensors of the same shape
  (`default_jit_compile`). Everything that differs between models of the
  same layout (variables, seed, H, step) is an argument.
  """

  def core(seed_base, step, kernels, masks, auxiliary, values, gradients,
         threshold, count):
    seed = reallocation.fold_in(seed_base, count)
    row_segments = layout.row_segments()
    dense_gradients = None
    if gradients:
      dense_gradients = layout.flatten(gradients)
      # An overflowed step (mixed precision) must not steer the growth.
      dense_gradients = tf.where(tf.math.is_finite(dense_gradients),
                                 dense_gradients, 0.0)
    # One pass over every kernel and mask finds each entry's three flags
    # (active, active and below H, non-finite), one byte per entry; the
    # float32 weights are laid out flat only for a rule that reads them.
    flags = layout.flatten([reallocation.entry_flags(k, m, threshold)
                            for k, m in zip(kernels, masks)],
                           padding=reallocation.PADDING)
    old, below, nonfinite_entries = reallocation.unpack_flags(flags)
    auxiliary = {kind: layout.flatten(group)
                 for kind, group in auxiliary.items()}
    active, nonfinite, num_below = layout.count(
        old, nonfinite_entries, below, row_segments=row_segments)
    # A non-finite weight anywhere leaves everything as it was.
    ok = tf.reduce_all(nonfinite == 0)
    read_weights = lambda: layout.flatten([tf.cast(k, tf.float32)
                                           for k in kernels])
    decision = rule.drop(rules_lib.RuleInputs(
        layout=layout, flags=flags, active=active, num_below=num_below,
        threshold=threshold, step=step, seed=seed,
        auxiliary=auxiliary, values=values, row_segments=row_segments,
        read_weights=read_weights, gradients=dense_gradients))
    # What moves, one byte per entry for `_write`: nothing if the call is
    # refused.
    result = reallocation.drop_and_grow(
        layout, flags, decision.pruned, decision.num_pruned, active,
        rule.budget, seed, draws, row_segments, decision.grow_keys,
        decision.regrow, ok)
    new_weights = None
    if decision.weights is not None:
      new_weights = tf.where(ok, decision.weights, read_weights())
    new_auxiliary = {
        kind: tf.where(ok, tf.cast(decision.auxiliary[kind], value.dtype),
                       value)
        for kind, value in auxiliary.items()
        if decision.auxiliary and kind in decision.auxiliary}
    zero = tf.constant(0, tf.int64)
    stats = (tf.where(ok, result.pruned, zero),
             tf.where(ok, result.candidates, zero), threshold,
             tf.where(ok, rule.next_threshold(threshold, result.candidates),
                      threshold),
             tf.where(ok, result.active, active),
             tf.where(ok, result.regrown, tf.zeros_like(result.regrown)),
             result.skipped & ok, nonfinite, ok)
    return result.code, new_weights, new_auxiliary, stats

  core = tf.function(core, jit_compile=True, autograph=False)
  # The writes, compiled with XLA: one call per group of tensors of the
  # same shape and dtypes (a ResNet's repeated blocks), so that the
  # programs, cached by shapes and dtypes, are as few as the distinct
  # shapes, and the calls too (each costs about 0.1 ms on CPU). Each
  # variable is one pass: 1.4x faster than TensorFlow's kernels on
  # ResNet-50's sparse set with momentum (CPU, a scratch comparison). Made
  # per program: a function traced inside one program's trace must not be
  # called from another's.
  write = tf.function(_write, jit_compile=True, autograph=False)

  def program(seed_base, step, kernels, masks, slots, auxiliary, values,
              gradients, threshold_var, count_var, step_var):
    originals = [tf.convert_to_tensor(k) for k in kernels]
    code, new_weights, new_auxiliary, stats = core(
        seed_base, step, originals, [tf.convert_to_tensor(m) for m in masks],
        {kind: [tf.convert_to_tensor(v) for v in group]
         for kind, group in auxiliary.items()}, values, gradients,
        tf.convert_to_tensor(threshold_var),
        tf.convert_to_tensor(count_var))
    if new_weights is not None:
      for kernel, value in zip(kernels, layout.unflatten(new_weights)):
        kernel.assign(tf.cast(value, kernel.dtype))
    codes = layout.unflatten(code)
    for group in _write_groups(kernels, masks, slots):
      write(*([per_tensor[i] for i in group]
              for per_tensor in (kernels, masks, slots, codes)))
    for kind, value in new_auxiliary.items():
      for variable, part in zip(auxiliary[kind], layout.unflatten(value)):
        variable.assign(tf.cast(part, variable.dtype))
    ok = stats[-1]
    threshold_var.assign(stats[3])
    count_var.assign_add(tf.cast(ok, tf.int64))
    step_var.assign(tf.where(ok, step, step_var))
    return stats[:-1]

  return tf.function(program, jit_compile=jit_compile, autograph=False)


class Reallocator:
  """Runs a reallocation rule on every sparse tensor of a model.

  For `model.fit`, use `ReallocationCallback`, which calls this on a
  schedule; custom training loops call `reallocate(step)` themselves,
  eagerly, between training steps. A model with wrappers trains only with
  one of them: in Keras's own loop (`fit`, `train_on_batch`) a
  `ReallocationCallback` must be in that `fit`'s callbacks; a custom loop
  needs a `Reallocator`. A Reallocator that has run reallocations and a
  callback cannot both drive one model.

  Example:
    ```python
    realloc = tf_dsr.Reallocator(model, target_pruned=20_000)  # DSR
    realloc = tf_dsr.Reallocator(model, method='set', drop_fraction=0.3)
    for step, (x, y) in enumerate(dataset, 1):
      train_step(x, y)
      if step % 100 == 0:
        stats = realloc.reallocate(step)
    ```

  Args:
    model: a tf_keras or Keras 3 (TensorFlow backend) model containing
      `DynamicSparseWrapper` layers.
    method: a rule name of `tf_dsr.rules.REGISTRY` ('dsr', the default;
      'set', 'deepr', 'rigl', 'snfs', 'snip', 'static'), or a
      `tf_dsr.rules.Rule` object.
    seed: integer seed of the reallocations' random streams.
    optimizer: the optimizer whose per-weight state is reset wherever a
      weight is dropped or regrown. None (the default) uses
      `model.optimizer` at the time of each call, and then the model must
      be compiled; `False` says explicitly that training keeps no
      per-weight optimizer state (plain SGD), so nothing is reset.
    jit_compile: compile the reallocation as one XLA program, as TPUs need,
      rather than its core and per-shape writes as separate ones; None
      chooses per device (`default_jit_compile`).
    **options: the rule's options (for 'dsr': `target_pruned`, `tolerance`,
      `initial_threshold`).

  Raises:
    TypeError: for an option the rule does not take, naming its options, or
      an `optimizer` that is not one.
    ValueError: for a bad option value, a model without sparse layers, an
      uncompiled model with `optimizer=None`, or a `target_pruned` above the
      number of sparse weights.
  """

  def __init__(self, model, method='dsr', *, seed=0, optimizer=None,
               jit_compile=None, _callback=None, **options):
    rule = rules_lib.make(method, **options)
    flavour = kerases.of(model, 'model')
    check_seed_and_jit_compile(seed, jit_compile)
    wrappers = collect_wrappers(model)
    if not wrappers:
      raise ValueError(
          f'`model` {model.name!r} has no DynamicSparseWrapper layer; wrap it '
          'with `tf_dsr.sparsify(model, sparsity=...)` first.')
    if _callback is None:
      _check_optimizer(model, optimizer, flavour)
    self.model = model
    self._flavour = flavour
    self.rule = rule
    self.seed = int(seed)
    self.jit_compile = (default_jit_compile() if jit_compile is None
                        else jit_compile)
    self._optimizer = optimizer
    self._wrappers = wrappers
    self._state = None
    self._layout = None
    self._function = None
    # The concrete functions of `_concrete_of` (a program), by replica.
    self._concrete_of = None
    self._concrete = {}
    self._own_programs = {}  # Of an unhashable rule (see `_program`).
    self._draws = None
    self._checked_auxiliary = set()
    if all(wrapper.built for wrapper in wrappers):
      self._check_layout()
      self._resolve_state()
    self._callback = _callback
    self._binding = binding_lib.of(wrappers)
    if _callback is None:
      self._binding.add_reallocator(self)
    self._recorder = None
    if all(wrapper.built for wrapper in wrappers):
      # The rule's variables exist from now on, so weights saved with them
      # load into this model (`load_weights` after `callback.set_model`).
      self._auxiliary_variables()
      if rule.dense_gradients:
        self.gradient_recorder  # pylint: disable=pointless-statement

  @property
  def state(self):
    """The model's `DynamicSparsityState` (the model must be built)."""
    return self._resolve_state()

  def _resolve_state(self):
    if self._state is None:
      unbuilt = [w.name for w in self._wrappers if not w.built]
      if unbuilt:
        raise ValueError(
            f'Layers {unbuilt} are not built; build the model (call it on '
            'data or give it an input shape) before reallocating.')
      state = state_lib.get_or_create(self.model, self._wrappers)
      if int(state.reallocations.numpy()) == 0:
        # A state that never reallocated starts from this rule's H; a state
        # that has (a restored run) keeps its own.
        state.threshold.assign(float(self.rule.initial_threshold))
      self._state = state
    return self._state

  def _check_layout(self):
    """Lets the rule check its options against the sparse tensors' sizes."""
    self.rule.check_layout(self.layout)

  # ------------------------------------------------------ dense gradients
  @property
  def gradient_recorder(self):
    """The `GradientRecorder` of a rule that grows by gradient, else None.

    Made on first use (once the layers are built). Its hook is part of the
    layers' forward pass, so it must exist before the train step is traced:
    the `Reallocator` makes it at construction when it can, and drops a
    train function that Keras compiled earlier so that the next `fit`
    traces the hook in.
    """
    mode = self.rule.dense_gradients
    if mode is None:
      return None
    if self._recorder is None:
      values = None
      if mode == 'momentum':
        # The momentum is state: every save path carries it.
        values = self._auxiliary_variables(all_kinds=True)[
            gradients_lib.MOMENTUM_KIND]
      self._recorder = gradients_lib.GradientRecorder(
          self.model, self._wrappers, mode, self.rule.gradient_momentum,
          values)
      if mode == 'momentum':
        self._recorder.set_recording(True)
      # A train step Keras traced before has no hook: trace it again.
      self._flavour.forget_train_function(self.model)
    return self._recorder

  def record_gradients(self, on=True):
    """Records dense gradients in the following training steps (or stops).

    Rules with `dense_gradients == 'last'` (RigL) read the gradient of the
    last recorded step; the `ReallocationCallback` turns recording on for
    the step before each reallocation. A custom loop calls
    `record_gradients(True)` before the train step that precedes
    `reallocate` and `record_gradients(False)` after it. 'momentum' rules
    record every step and need no call.
    """
    recorder = self.gradient_recorder
    if recorder is None:
      raise ValueError(f'Method {self.rule.name!r} uses no dense gradients.')
    recorder.set_recording(on)

  # ------------------------------------------------------------ the model
  @property
  def optimizer(self):
    """The optimizer whose state is reset, or None (`optimizer=False`)."""
    if self._optimizer is False:
      return None
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
      for name, (kernel, mask) in zip(wrapper.sparse_names,
                                      wrapper.sparse_weights):
        tensors.append((name, self._flavour.tf_variable(kernel),
                        self._flavour.tf_variable(mask)))
    return tensors

  @property
  def layout(self):
    """The `Layout` of the model's sparse tensors (once they are built)."""
    if self._layout is None:
      tensors = self.sparse_tensors()
      # A wrapper's sparsity is one number, or one per kernel (a list;
      # Keras 3 tracks it as a `list` subclass).
      sparsities = [
          float(wrapper.sparsity[index]) if isinstance(wrapper.sparsity, list)
          else wrapper.sparsity
          for wrapper in self._wrappers
          for index in range(len(wrapper.sparse_weights))]
      self._layout = layout_lib.Layout(
          names=tuple(name for name, _, _ in tensors),
          shapes=tuple(tuple(k.shape.as_list()) for _, k, _ in tensors),
          sparsities=tuple(sparsities))
    return self._layout

  @property
  def trace_count(self):
    """How many times the program has been traced (1 after the first call).

    Reallocators of models with the same sparse tensors, rule and optimizer
    state share one program (traced and compiled by the first of them), so
    this counts the traces of the shared program.
    """
    if self._function is None:
      return 0
    return self._function.experimental_get_tracing_count()

  def draws(self):
    """Static positions each tensor visits per regrowth round.

    `grow_uniform` visits a tensor's positions in a random order over the
    power of two `D >= n` at or above its size `n`; a visit lands on a free
    entry with probability about `n / D` times the tensor's configured
    sparsity `s`. So a tensor expected to regrow `f * n` entries visits
    `1.25 * f * D / s` positions per round (plus 64): one round nearly
    always suffices, and a short round only costs another one.
    """
    layout = self.layout
    fraction = self.rule.expected_regrowth(layout)
    draws = []
    for n, s in zip(layout.sizes, layout.sparsities):
      domain = 2**reallocation.permutation_bits(n)
      draws.append(min(domain,
                       64 + int(1.25 * fraction * domain / max(s, 0.05)) + 1))
    return draws

  def _auxiliary_specs(self):
    """kind -> `(dtype, initializer, sum_on_read)` of every rule variable."""
    specs = {kind: (dtype, initializer, False)
             for kind, (dtype, initializer) in self.rule.auxiliary.items()}
    if self.rule.dense_gradients == 'momentum':
      specs[gradients_lib.MOMENTUM_KIND] = (
          tf.float32, lambda weights, masks, seed: tf.zeros_like(weights),
          True)
    return specs

  def _auxiliary_variables(self, all_kinds=False):
    """kind -> list of variables (one per tensor), created on first use.

    The variables are weights of the wrappers (`add_auxiliary`), made with
    the rule's initial values; a value restored from a checkpoint replaces
    them. Variables that a wrapper rebuilt from its config holds (zeros) get
    the initial values if the model has never reallocated.

    Args:
      all_kinds: include the recorded-gradient momentum, which the program
        reads through the `GradientRecorder` rather than as a rule input.
    """
    state = self.state
    found = {}
    for kind, (dtype, initializer, sum_on_read) in (
        self._auxiliary_specs().items()):
      dtype = tf.as_dtype(dtype)

      def initial_values(initializer=initializer, dtype=dtype):
        tensors = self.sparse_tensors()
        layout = self.layout
        weights = layout.flatten([tf.cast(tf.convert_to_tensor(k), tf.float32)
                                  for _, k, _ in tensors])
        masks = layout.flatten([masks_lib.active(m) for _, _, m in tensors],
                               padding=False)
        return [tf.cast(v, dtype) for v in layout.unflatten(initializer(
            weights, masks, tf.constant([self.seed, 0], tf.int64)))]

      if not all(kind in w.auxiliary_weights for w in self._wrappers):
        initial = initial_values()
        position = 0
        with self.model.distribute_strategy.scope():
          for wrapper in self._wrappers:
            count = len(wrapper.sparse_weights)
            wrapper.add_auxiliary(kind, dtype, sum_on_read,
                                  initial[position:position + count])
            position += count
      variables = [v for wrapper in self._wrappers
                   for v in wrapper.auxiliary_weights[kind]]
      if kind not in self._checked_auxiliary:
        # Variables a wrapper rebuilt from its config holds start at 0; if
        # the model never reallocated and no checkpoint set them, they get
        # the rule's initial values.
        self._checked_auxiliary.add(kind)
        if (int(state.reallocations.numpy()) == 0 and not any(
            bool(tf.reduce_any(tf.convert_to_tensor(v) != 0))
            for v in variables)):
          for variable, value in zip(variables, initial_values()):
            variable.assign(value)
      found[kind] = variables
    state_lib.attach_auxiliary(state, self._wrappers)
    if not all_kinds:
      found.pop(gradients_lib.MOMENTUM_KIND, None)
    return found

  # ------------------------------------------------------------ the program
  def _run_on_every_replica(self, step, tensors, slots, auxiliary, values,
                            gradients):
    """Runs the program once per local copy of the variables.

    Under `tf.distribute` each variable has one copy per local device. Every
    copy holds the same values and the random numbers are stateless, so each
    device computes the same new masks from its own copies, with no
    communication; this also keeps each XLA computation on a single device,
    as TPUs and XLA require. Returns the first replica's outputs.
    """
    state = self._resolve_state()
    kernels = [_copies(k) for _, k, _ in tensors]
    masks = [_copies(m) for _, _, m in tensors]
    slot_copies = [[_copies(s) for s in group] for group in slots]
    auxiliary_copies = {kind: [_copies(v) for v in group]
                        for kind, group in auxiliary.items()}
    values = {key: tf.constant(value, tf.float32)
              for key, value in values.items()}
    state_copies = [_copies(v) for v in (state.threshold, state.reallocations,
                                         state.last_step)]
    outputs = None
    for r in range(len(state_copies[0])):
      with tf.device(state_copies[0][r].device):
        args = (tf.constant([self.seed, 0], tf.int64),
                tf.constant(step, tf.int64), [k[r] for k in kernels],
                [m[r] for m in masks],
                [[s[r] for s in group] for group in slot_copies],
                {kind: [v[r] for v in group]
                 for kind, group in auxiliary_copies.items()},
                values, gradients, *[v[r] for v in state_copies])
        # The traced program itself: calling it skips matching the
        # arguments' types against every trace (a few ms for a model's
        # hundreds of variables), which cannot differ for one program.
        if self._concrete_of is not self._function:
          self._concrete_of, self._concrete = self._function, {}
        if r not in self._concrete:
          self._concrete[r] = self._function.get_concrete_function(*args)
        result = self._concrete[r](*args)
      if outputs is None:
        outputs = result
    return outputs

  def reallocate(self, step=-1):
    """Runs one reallocation now and returns its `ReallocationStats`.

    Call it eagerly, between training steps (not inside a `tf.function`).

    Args:
      step: the global step, recorded in the state and the stats: a Python
        or NumPy int, or a scalar int32/int64 tensor; -1 when not given.

    Returns:
      `ReallocationStats`.

    Raises:
      FloatingPointError: when a sparse kernel holds NaN or Inf; nothing is
        changed and the message names the layers.
      RuntimeError: inside a `tf.function`.
      ValueError: for a bad `step`, or when a `ReallocationCallback` drives
        this model's `fit` and this Reallocator is not its own.
    """
    step = _check_step(step)
    binding = self._binding
    if self._callback is None:
      if binding.callback is not None:
        raise ValueError(
            'A `tf_dsr.ReallocationCallback` is driving this model\'s `fit`; a '
            'second `Reallocator` reallocating it too would move the masks '
            'twice. Let the callback reallocate.')
      binding.mark_in_use(self)
    if self._layout is None:
      self._check_layout()
    self._resolve_state()
    tensors = self.sparse_tensors()
    optimizer = self.optimizer
    slots = [tuple(group) for group in self._flavour.slot_variables(
        optimizer, [kernel for _, kernel, _ in tensors])]
    auxiliary = self._auxiliary_variables()
    values = self.rule.call_inputs(step, optimizer)
    recorder = self.gradient_recorder
    # Read outside the replicas: summed over them (the all-reduced gradient).
    gradients = recorder.read() if recorder is not None else []
    if self._draws is None:
      self._draws = self.draws()
    self._function = _program(
        self.rule, self.layout, self._draws, self.jit_compile,
        _signature(tensors, slots, auxiliary, values, gradients),
        self._own_programs)
    (pruned, candidates, threshold_used, threshold, active, regrown, skipped,
     nonfinite) = self._run_on_every_replica(step, tensors, slots, auxiliary,
                                             values, gradients)
    names = self.layout.names
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
