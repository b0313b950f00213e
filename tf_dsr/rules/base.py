"""The rule interface: what one drop-and-grow decides, with typed options.

A rule is a small frozen dataclass. Its fields are its options (checked when
it is made), and it overrides at most a few hooks over flat tensors of a
`tf_dsr.layout.Layout`; it holds no model, no variable and no state. The
engine (`tf_dsr.Reallocator`) reads the variables, calls the hooks inside one
compiled program, regrows uniformly at random (`reallocation.drop_and_grow`)
and is the only place that assigns anything.

The hooks:
- `drop(inputs)` chooses the entries to deactivate (required);
- `budget(num_pruned, survivors, capacity, seed)` spreads the regrowth over
  the tensors (by default each tensor regrows what it dropped);
- `next_threshold(threshold, candidates)` adapts the global threshold H (by
  default unchanged).
`training_flops(sparse_flops, dense_flops, period)` gives the FLOPs of an
average training step (3 f_S by default; rules with dense-gradient steps
override it).
Regrowth: the engine regrows at weight 0, so `init_scale='sparse_fan_in'`
(`tf_dsr.wrapper.initial_scale`) has nothing to scale after the start. A
rule that regrows with non-zero values must scale them by that factor (the
kernel's `1 / sqrt(density)`) when the wrappers were made with it.
Rules that need more declare `auxiliary` (per-entry variables the engine
keeps, such as DeepR's signs), `call_inputs` (per-call scalars, such as the
learning rate) or `dense_gradients` (the loss gradient at every entry,
active or not, as RigL and SNFS use), and give `expected_regrowth` to size
the random draws. A `drop` may also say where to grow (`Drop.grow_keys`)
and how much per tensor (`Drop.regrow`).
"""

import copy
import dataclasses
from typing import (Any, Callable, ClassVar, Dict, Mapping, NamedTuple,
                    Optional, Tuple)

import tensorflow as tf

from tf_dsr import _keras3
from tf_dsr import reallocation
from tf_dsr import validation


@dataclasses.dataclass(frozen=True)
class RuleInputs:
  """What a rule's `drop` sees of one reallocation (all tensors).

  Attributes:
    layout: the `Layout` of the flat tensors.
    flags: uint8 flat `reallocation.entry_flags` of every entry, found in
      one pass over the kernels and masks; read them as `masks` and `below`.
    active: int64 `[T]` active entries per tensor.
    num_below: int64 `[T]`, the True entries of `below` per tensor.
    threshold: float32 scalar, the current H.
    step: int64 scalar, the global step of the call.
    seed: `[2]` seed of this reallocation.
    auxiliary: kind -> flat tensor of the rule's auxiliary values.
    values: name -> float32 scalar from `call_inputs`.
    row_segments: `layout.row_segments()`, to pass to layout helpers.
    gradients: float32 flat dense gradients (`Rule.dense_gradients` 'last')
      or their momentum ('momentum'), averaged over replicas; None for rules
      that declare neither.
    read_weights: callable returning the float32 flat weights; read them
      as `weights`.
  """
  layout: Any
  flags: tf.Tensor
  active: tf.Tensor
  num_below: tf.Tensor
  threshold: tf.Tensor
  step: tf.Tensor
  seed: tf.Tensor
  auxiliary: Mapping[str, tf.Tensor]
  values: Mapping[str, tf.Tensor]
  row_segments: tf.Tensor
  read_weights: Callable[[], tf.Tensor]
  gradients: Optional[tf.Tensor] = None

  # Read where they are used, from `flags`: a rule that needs them only in
  # a branch passes the branch the flags alone.
  @property
  def masks(self):
    """bool flat masks, True where active."""
    return reallocation.unpack_flags(self.flags)[0]

  @property
  def below(self):
    """bool flat tensor, the active entries with `|w| < threshold` (what DSR
    prunes)."""
    return reallocation.unpack_flags(self.flags)[1]

  @property
  def weights(self):
    """float32 flat weights (0 where inactive).

    Laid out in the flat space where they are read: a rule that reads them
    only inside a branch (DSR, when a tensor would be emptied) costs the
    copy of every kernel only when that branch runs.
    """
    return self.read_weights()


class Drop(NamedTuple):
  """A rule's decision: the entries to deactivate, and optional new values.

  Attributes:
    pruned: bool flat tensor, a subset of the masks.
    num_pruned: int64 `[T]`, its True entries per tensor.
    weights: float32 flat weights that replace the current ones before the
      drop (DeepR's update); None to keep them.
    auxiliary: kind -> new flat auxiliary values; None to keep them.
    grow_keys: int32 flat keys (`reallocation.magnitude_keys`): grow at the
      entries inactive after the drop with the largest keys; None to grow
      uniformly at random among the entries inactive before.
    regrow: int64 `[T]` regrowth per tensor (with `grow_keys` only); None
      to ask `budget`.
  """
  pruned: tf.Tensor
  num_pruned: tf.Tensor
  weights: Optional[tf.Tensor] = None
  auxiliary: Optional[Mapping[str, tf.Tensor]] = None
  grow_keys: Optional[tf.Tensor] = None
  regrow: Optional[tf.Tensor] = None


@dataclasses.dataclass(frozen=True)
class Rule:
  """Base of the reallocation rules; subclasses are frozen dataclasses.

  Class attributes:
    name: the registry name (`method=` of the callback and the launcher).
    label: how reports and tables name the method.
    auxiliary: kind -> `(dtype, initializer)`, where `initializer(weights,
      masks, seed)` maps the flat float32 weights and bool masks to the
      initial flat values. The engine keeps one variable per sparse tensor
      and kind on `model.dynamic_sparsity_state` (so checkpoints carry them)
      and passes their flat values in `RuleInputs.auxiliary`.
    dense_gradients: None, or how the rule sees the loss gradient at every
      entry of a sparse kernel (`RuleInputs.gradients`): 'last' records it at
      the training step that ends just before a reallocation; 'momentum'
      accumulates `m = gradient_momentum * m + g` at every step (and the
      state keeps m, so checkpoints carry it).
    at_epoch_end: if True, the callback reallocates at the end of every
      epoch instead of on its step schedule.
    traced_options: the options the hooks read while the engine traces
      them (None: all). The others may reach the program only through
      `call_inputs`; rules that differ in them alone then share one
      compiled program (a sweep over RigL's drop fraction compiles once).
      The engine traces with those options replaced by a value that raises
      when used, so a wrong list fails at the first trace.
  """
  name: ClassVar[str] = ''
  label: ClassVar[str] = ''
  auxiliary: ClassVar[Mapping[str, Any]] = {}
  dense_gradients: ClassVar[Optional[str]] = None
  at_epoch_end: ClassVar[bool] = False
  traced_options: ClassVar[Optional[Tuple[str, ...]]] = None

  @property
  def initial_threshold(self):
    """H for a model that has no state yet (rules without H keep 1e-3)."""
    return 1e-3

  @property
  def gradient_momentum(self):
    """The decay of the recorded gradient momentum ('momentum' rules)."""
    return 0.0

  @property
  def stop_step(self):
    """No reallocation at or after this step (None: the callback decides)."""
    return None

  def for_training(self, total_steps):
    """This rule for a fit of `total_steps` steps (`ReallocationCallback`).

    Rules whose schedule spans the training (RigL, SNFS) return a copy with
    its length filled in; the others return `self`.
    """
    del total_steps
    return self

  def drop(self, inputs):
    """The entries to deactivate: a `Drop`, from a `RuleInputs`."""
    raise NotImplementedError

  def budget(self, num_pruned, survivors, capacity, seed):
    """Regrowth per tensor; by default each tensor regrows what it dropped.

    Args:
      num_pruned: int64 `[T]`, entries dropped per tensor.
      survivors: int64 `[T]`, entries still active per tensor.
      capacity: int64 `[T]`, entries inactive before the call.
      seed: `[2]` seed.

    Returns:
      int64 `[T]` summing to `sum(num_pruned)`, each at most its capacity.
    """
    return reallocation.cap_to_capacity(num_pruned, tf.maximum(survivors, 1),
                                        capacity, seed)

  def next_threshold(self, threshold, candidates):
    """H for the next call; by default unchanged."""
    del candidates
    return threshold

  def call_inputs(self, step, optimizer):
    """Per-call Python scalars (name -> float), passed without retracing.

    Args:
      step: the global step of the call.
      optimizer: the optimizer whose state the engine resets, or None.
    """
    del step, optimizer
    return {}

  def check_layout(self, layout):
    """Raises ValueError when an option cannot work on these sparse tensors.

    Called once the model's sparse tensors are known (by default nothing is
    checked).
    """
    del layout

  def expected_regrowth(self, layout):
    """Expected fraction of all sparse entries one call regrows.

    It sizes the static random draws of the regrowth; a wrong guess costs
    time, never correctness.
    """
    del layout
    return 0.02

  def training_flops(self, sparse_flops, dense_flops, period):
    """Average FLOPs of one training step (per example) under this rule.

    RigL's accounting (Evci et al., ICML 2020, arXiv 1911.11134, section 4;
    `tf_dsr.flops`): a step is a forward pass `f` and a backward pass `2f`
    (forward + backward = 3x forward), with `f` the sparse model's inference
    FLOPs. This default, `3 * sparse_flops`, holds for rules that need no
    dense gradient (static, SET, DSR, DeepR). A rule that computes dense
    gradients on its update steps overrides it (RigL: `(3 f_S P + 2 f_S +
    f_D) / (P + 1)`, SNFS: `2 f_S + f_D`; `tf_dsr.flops` has these
    formulas). The reallocation's own work is not counted.

    Args:
      sparse_flops: inference FLOPs of the sparse model, f_S.
      dense_flops: inference FLOPs of the dense model, f_D.
      period: training steps between reallocations, P (the mean over a run;
        math.inf when there are none).

    Returns:
      FLOPs of one average training step.
    """
    del dense_flops, period
    return 3 * sparse_flops

  @classmethod
  def options(cls):
    """The names of this rule's options, in order."""
    return tuple(field.name for field in dataclasses.fields(cls))

  def program_key(self):
    """What the traced program depends on: the type and `traced_options`."""
    names = self.options() if self.traced_options is None else (
        self.traced_options)
    return (type(self),) + tuple((name, getattr(self, name)) for name in names)

  def for_tracing(self):
    """This rule with every option not in `traced_options` unusable.

    The engine traces the hooks on this copy: an option the hooks read
    although it is not listed raises `TypeError` naming it, instead of
    being baked into a program that other rules then share.
    """
    if self.traced_options is None:
      return self
    traced = copy.copy(self)
    for name in self.options():
      if name not in self.traced_options:
        object.__setattr__(traced, name, _Untraced(type(self).__name__, name))
    return traced

  def get_config(self):
    """The options as a dict; `type(rule)(**rule.get_config())` is equal."""
    return {name: getattr(self, name) for name in self.options()}

  @classmethod
  def from_config(cls, config):
    """The rule of `get_config()`'s options (Keras's deserialization)."""
    return cls(**config)


class _Untraced:
  """Stands for an option a rule's hooks must not read while traced."""

  def __init__(self, rule, option):
    self._what = (f'{rule}.{option} is not in {rule}.traced_options, so the '
                  'traced hooks must not read it; pass it through '
                  '`call_inputs` or list it in `traced_options`.')

  def __repr__(self):
    return '<not traced>'


def _refuse(self, *args, **kwargs):
  del args, kwargs
  raise TypeError(self._what)  # pylint: disable=protected-access


# Every way a traced hook could use the value raises.
for _name in ('__bool__', '__float__', '__int__', '__index__', '__eq__',
              '__ne__', '__lt__', '__le__', '__gt__', '__ge__', '__neg__',
              '__abs__', '__add__', '__radd__', '__sub__', '__rsub__',
              '__mul__', '__rmul__', '__truediv__', '__rtruediv__',
              '__floordiv__', '__rfloordiv__', '__mod__', '__pow__',
              '__rpow__', '__call__', '__iter__', '__len__', '__getitem__',
              '__array__', '__format__', '__str__', '__hash__'):
  setattr(_Untraced, _name, _refuse)
del _name


def check_target_pruned(target_pruned, layout):
  """Raises ValueError when `target_pruned` exceeds the sparse weights."""
  total = sum(layout.sizes)
  if target_pruned is not None and target_pruned > total:
    raise ValueError(
        f'`target_pruned` ({target_pruned!r}) is larger than the number of '
        f'sparse weights of the model ({total:,} in {layout.num_tensors} '
        'tensors), so no reallocation could ever prune that many.')


REGISTRY: Dict[str, type] = {}


def register(cls):
  """Class decorator: adds a rule to the registry under `cls.name`.

  The class is also registered with Keras 3's serialization (as
  `<package>>ClassName`, the package being that of its module: `tf_dsr>DSR`),
  so `keras.saving.serialize_keras_object(rule)` and
  `deserialize_keras_object` round-trip it (`get_config`, `from_config`).
  """
  if not cls.name or cls.name in REGISTRY:
    raise ValueError(f'A rule needs a new, non-empty `name`, got {cls.name!r}.')
  REGISTRY[cls.name] = cls
  return _keras3.register_serializable(cls)


def get_rule(name):
  """The rule class registered as `name`.

  Raises:
    ValueError: for an unknown name, listing the valid ones.
  """
  if not isinstance(name, str) or name not in REGISTRY:
    raise ValueError(f'`method` must be one of {sorted(REGISTRY)}, got '
                     f'{name!r}.')
  return REGISTRY[name]


def make(method, **options):
  """A rule from a registered name and its options, or a rule unchanged.

  Args:
    method: a name of the registry, or a `Rule` (then no options).
    **options: the rule's options.

  Raises:
    ValueError: for an unknown name or a bad option value.
    TypeError: for an option the rule does not take or a missing one, naming
      the rule's options.
  """
  if isinstance(method, Rule):
    if options:
      raise TypeError(
          f'Options {sorted(options)} were given with the rule object '
          f'{method!r}; set them on the rule instead.')
    return method
  cls = get_rule(method)
  valid = cls.options()
  unknown = sorted(set(options) - set(valid))
  if unknown:
    raise TypeError(
        f'Method {method!r} takes no option {", ".join(map(repr, unknown))}; '
        f'its options are {list(valid)}.')
  required = [field.name for field in dataclasses.fields(cls)
              if field.default is dataclasses.MISSING and
              field.default_factory is dataclasses.MISSING]
  missing = [name for name in required if name not in options]
  if missing:
    raise TypeError(
        f'Method {method!r} needs the option(s) {missing}; its options are '
        f'{list(valid)}.')
  return cls(**options)


# ------------------------------------------------------------ option checks
# One validator for every number tf_dsr takes (`tf_dsr.validation`); rules
# call it as `base.check_number`.
check_number = validation.check_number
