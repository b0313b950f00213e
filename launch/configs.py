"""Named, typed experiment configs: every run of the DSR paper in one place.

Mostafa & Wang, ICML 2019, https://arxiv.org/abs/1902.05967; the settings are
those of docs/algorithm.md section 5. Names read `{model}_{dataset}_{method}[_s{sparsity}]`:

- `wrn28_2_cifar10_dense` and `wrn28_2_cifar10_{METHOD}_s{0.5,...,0.9}`
- `resnet50_imagenet_dense` and `resnet50_imagenet_{METHOD}_s{0.8,0.9}`
- `mobilenet_v1_imagenet_dense` and `mobilenet_v1_imagenet_{METHOD}_s{0.75,0.9}`
  (RigL's MobileNet v1 runs; the DSR paper has none)
- `lenet_digits_{dense,METHOD}` (the quick start; sparsity 0.9) and
  `lenet_mnist_{dense,static,dsr}`
- `small_cnn_digits_{dense,METHOD}`: a few seconds on a CPU, for tests, smoke
  runs and the `small` experiment suite (sparsity 0.5)

Methods (the comparisons of docs/algorithm.md sections 6-8). The launcher's own:
`dense` trains the full model; `prune` trains it dense and prunes by magnitude
to the target sparsity (Zhu & Gupta 2017, tfmot's `PolynomialDecay`); `thin`
trains a narrower dense model with as many parameters as the sparse model has
active ones (the width is searched at launch unless `width_multiplier` is
given). Every other method is a reallocation rule of `tf_dsr.rules.REGISTRY`
and trains the sparse model: `static` keeps the random initial mask frozen
(or, with `masks_from`, a run's exported final masks: the controls of section
7), and every other rule (`dsr`: Dynamic Sparse Reparameterization; `set`:
Mocanu et al. 2018; `deepr`: Bellec et al. 2018; and any rule registered
later) moves the masks on the config's `period` through
`tf_dsr.ReallocationCallback(method=NAME, **options)`.

Options. A rule's settings are the config field `options`, a dict from the
rule's option names (the fields of its dataclass, `Rule.options()`) to values,
checked by the rule itself (`tf_dsr.rules.make`), so the launcher knows no
option by name. A value given as a dict `{first epoch: value}` (int keys
increasing from 0) is piecewise constant by epoch: the launcher passes the
rule a callable from the global step (`ByEpoch`), so only options that accept
a callable (such as DeepR's `temperature`) take one. `options` is empty for
`dense`, `prune` and `thin`. `--override NAME=value` sets one option (see
`launch.overrides`).

Adding a method is a module in `tf_dsr/rules`: it gets configs in every
family here (but `lenet_mnist`) with the family's reallocation schedule and
its default options; a rule with a required option that has no value in
`_FAMILIES` gets no named config (add its settings there, or run it with
`--override method=NAME --override options={...}`).

`python -m launch.configs` lists the names; `python -m launch.configs NAME`
prints one config. Importing this module imports TensorFlow (through
`tf_dsr.rules`, which declares the options). launch/config_names.txt is the
list, for `launch.precheck`, which checks a name without TensorFlow: after
a change to the configs or the rules, write it again with
`python -m launch.configs > launch/config_names.txt` (a test checks it).
"""

# First, before anything loads TensorFlow: quiets its start-up log.
from launch import quiet  # pylint: disable=unused-import,g-bad-import-order

import bisect
import copy
import dataclasses
import json
import math
import sys
import typing
from typing import Any, Dict, Optional

from tf_dsr import distributions as tf_dsr_distributions
from tf_dsr import rules
from tf_dsr import wrapper as tf_dsr_wrapper

from launch import precheck
from launch.errors import LaunchError

ARCHS = ('lenet_300_100', 'mobilenet_v1', 'resnet50', 'small_cnn',
         'wide_resnet')
DATASETS = ('cifar10', 'digits', 'imagenet2012', 'mnist')
# The launcher's own methods, which are not reallocation rules.
OWN_METHODS = ('dense', 'prune', 'thin')
OWN_LABELS = {'dense': 'dense', 'prune': 'compressed sparse',
              'thin': 'thin dense'}
# The rule the launcher builds itself (frozen masks, or `masks_from`).
STATIC = 'static'
INITIAL_VALUES = ('random', 'saved')
# The Kerases a run can build its model with, and the methods each runs.
# Keras 3 (`import keras`, TensorFlow backend) runs every reallocation rule;
# tfmot's pruning and the thin model's FLOPs matching are tf_keras's.
KERASES = ('tf_keras', 'keras3')
KERAS3_METHODS = ('dense', 'dsr', 'set', 'deepr', 'rigl', 'snfs', 'snip',
                  STATIC)
# Archs whose builder has a `weight_decay` argument / a width multiplier.
_DECAY_ARCHS = ('mobilenet_v1', 'resnet50', 'wide_resnet')
_WIDTH_ARCHS = ('lenet_300_100', 'mobilenet_v1', 'resnet50', 'small_cnn',
                'wide_resnet')
_AUGMENTED = ('cifar10', 'imagenet2012')  # Datasets with the paper's augmentation.


def methods():
  """Every method: the launcher's own, then the registered rules, sorted."""
  return OWN_METHODS + tuple(sorted(rules.REGISTRY))


def is_rule(method):
  """Whether `method` is a reallocation rule of `tf_dsr.rules.REGISTRY`."""
  return method in rules.REGISTRY and method not in OWN_METHODS


def reallocating():
  """The methods whose rule moves masks: every rule but the static ones."""
  return tuple(m for m in sorted(rules.REGISTRY)
               if not issubclass(rules.get_rule(m), rules.Static) and
               m not in OWN_METHODS)


def on_period():
  """The reallocating methods that run on the config's `period` (not SNFS,
  which reallocates at epoch ends)."""
  return tuple(m for m in reallocating() if not rules.get_rule(m).at_epoch_end)


def sparse_methods():
  """Every method but dense."""
  return tuple(m for m in methods() if m != 'dense')


def label(method):
  """How reports name `method`: the rule's `label`, or the launcher's own."""
  if method in OWN_LABELS:
    return OWN_LABELS[method]
  if method in rules.REGISTRY:
    return rules.get_rule(method).label
  return method


def option_types(method):
  """`{option name: type}` of the rule `method`; {} for other methods."""
  if not is_rule(method):
    return {}
  cls = rules.get_rule(method)
  hints = typing.get_type_hints(cls)
  return {name: hints.get(name, Any) for name in cls.options()}


# The methods as of import; `methods()` also sees rules registered later.
METHODS = methods()


class ByEpoch:
  """A by-epoch option value as a callable from the global step.

  Args:
    values: dict from the first (0-based) epoch of a piece to its value, with
      increasing int keys starting at 0.
    steps_per_epoch: training steps per epoch.
  """

  def __init__(self, values, steps_per_epoch):
    self.values = dict(values)
    self.steps_per_epoch = max(int(steps_per_epoch or 1), 1)
    self._starts = sorted(self.values)

  def __call__(self, step):
    epoch = int(step) // self.steps_per_epoch
    piece = max(bisect.bisect_right(self._starts, epoch) - 1, 0)
    return self.values[self._starts[piece]]

  def __eq__(self, other):
    return (isinstance(other, ByEpoch) and self.values == other.values and
            self.steps_per_epoch == other.steps_per_epoch)

  def __hash__(self):
    # Hashable, so a rule holding a ByEpoch (DeepR's `temperature`) is too:
    # tf_dsr shares one traced and compiled reallocation program between the
    # calls of a hashable rule, and builds a new one at every call otherwise.
    return hash((tuple(sorted(self.values.items())), self.steps_per_epoch))

  def __repr__(self):
    return (f'ByEpoch({self.values!r}, steps_per_epoch='
            f'{self.steps_per_epoch})')


def rule_options(config, steps_per_epoch):
  """The keyword options of `config`'s rule, by-epoch values as `ByEpoch`."""
  return {name: ByEpoch(value, steps_per_epoch) if isinstance(value, dict)
          else value for name, value in config.options.items()}


@dataclasses.dataclass(frozen=True)
class ExperimentConfig:
  """One experiment: model, data, sparsity method, optimizer and schedules.

  Schedules are dicts from the first (0-based) epoch of a piece to its value,
  starting at epoch 0. Every field, and every option of the config's rule,
  can be changed from the command line with `--override key=value` (see
  `launch.overrides`).

  Attributes:
    name: the registry name the config was created under.
    arch: model builder: 'wide_resnet', 'resnet50', 'mobilenet_v1',
      'lenet_300_100' or 'small_cnn' (the builders of `models`; their sparse
      policy picks the kernels made sparse).
    dataset: 'cifar10', 'imagenet2012', 'mnist' (tfds) or 'digits'
      (scikit-learn, no download).
    method: one of `methods()` (see the module docstring).
    sparsity: initial fraction of zeros in each sparse kernel (the rules);
      the final one for 'prune'; for 'thin', the sparse model whose active
      parameter count the thin model matches. 0 for 'dense'.
    depth: WRN depth (wide_resnet only).
    width: WRN widening factor (wide_resnet only).
    width_multiplier: 'thin' only: the channel multiplier; None searches the
      one whose parameter count matches the sparse model's active count.
    weight_decay: SGD weight decay on the kernels (wide_resnet, resnet50
      and mobilenet_v1).
    image_size: input side for imagenet2012 (None: 224); other datasets keep
      their native size.
    options: the options of the method's rule (`tf_dsr.rules`), name ->
      value; a dict {first epoch: value} is piecewise constant by epoch.
      Empty for the launcher's own methods (see the module docstring).
    period: reallocation period in steps, by epoch (the reallocating rules:
      `reallocating()`).
    stop_epoch: no reallocation from this 0-based epoch on (None: never
      stop); the masks stay frozen after it.
    prune_begin_epoch: 'prune' only: the epoch gradual pruning starts.
    prune_end_epoch: 'prune' only: the epoch it reaches `sparsity`.
    prune_frequency: 'prune' only: steps between mask updates.
    masks_from: 'static' only: a model_dir whose exported final masks
      (`final_masks.npz`) the run freezes instead of random ones.
    distribution: the rules only: how the initial budget is spread over
      the sparse kernels, 'uniform' (the paper's), 'er' or 'erk'
      (`tf_dsr.sparsify`); the total active count is the same.
    erk_power_scale: the rules with 'er' or 'erk' only: the power on the
      raw densities (1 is the published rule).
    init_scale: the rules only: 'dense' (the paper's) or 'sparse_fan_in'
      (initial kernels times 1 / sqrt(density)).
    initial_values: 'random' (a fresh initialisation) or 'saved' (with
      `masks_from`: that run's initial values, `initial_weights.npz`).
    epochs: training epochs.
    batch_size: global batch size, split evenly across replicas.
    learning_rate: learning rate by epoch.
    momentum: SGD momentum.
    nesterov: Nesterov momentum.
    augment: the paper's training augmentation for the dataset.
    shuffle_buffer: training shuffle buffer, in examples.
    steps_per_epoch: training steps per epoch (None: one pass over the
      training set with the last partial batch dropped).
    eval_steps: evaluation batches (None: the whole evaluation set).
    validation_freq: evaluate every this many epochs during training (0: only
      at the end).
    tpu_steps_per_execution: training steps per TPU execution; must divide
      every reallocation period so that no reallocation is late.
    seed: seed of weights, masks, data order, augmentation and the rule.
    keras: the Keras the model is built and trained with: 'tf_keras' (Keras
      2, tfmot's; every method) or 'keras3' (`import keras` on the
      TensorFlow backend; the methods of `KERAS3_METHODS`).
  """
  name: str
  arch: str
  dataset: str
  method: str
  sparsity: float = 0.0
  depth: Optional[int] = None
  width: Optional[int] = None
  width_multiplier: Optional[float] = None
  weight_decay: float = 0.0
  image_size: Optional[int] = None
  options: Dict[str, Any] = dataclasses.field(default_factory=dict)
  period: Optional[Dict[int, int]] = None
  stop_epoch: Optional[int] = None
  prune_begin_epoch: Optional[int] = None
  prune_end_epoch: Optional[int] = None
  prune_frequency: Optional[int] = None
  masks_from: Optional[str] = None
  distribution: str = 'uniform'
  erk_power_scale: float = 1.0
  init_scale: str = 'dense'
  initial_values: str = 'random'
  epochs: int = 1
  batch_size: int = 32
  learning_rate: Dict[int, float] = dataclasses.field(
      default_factory=lambda: {0: 0.1})
  momentum: float = 0.9
  nesterov: bool = True
  augment: bool = True
  shuffle_buffer: int = 10_000
  steps_per_epoch: Optional[int] = None
  eval_steps: Optional[int] = None
  validation_freq: int = 1
  tpu_steps_per_execution: int = 100
  seed: int = 0
  keras: str = 'tf_keras'

  def __post_init__(self):
    _validate(self)

  def to_dict(self):
    """The config as JSON-friendly data (dict keys become strings in JSON)."""
    return dataclasses.asdict(self)


def default_settings():
  """`{field: default}` (JSON form) of the fields that have a default."""
  return json.loads(json.dumps({
      f.name: f.default if f.default_factory is dataclasses.MISSING else
              f.default_factory()
      for f in dataclasses.fields(ExperimentConfig)
      if f.default is not dataclasses.MISSING or
      f.default_factory is not dataclasses.MISSING}))


def _fail(field, value, expected):
  raise LaunchError(f'config field `{field}` must be {expected}, got {value!r}.')


def _is_int(value):
  return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value):
  return (isinstance(value, (int, float)) and not isinstance(value, bool) and
          math.isfinite(value))


def _check_int(config, field, minimum, optional=False):
  value = getattr(config, field)
  if optional and value is None:
    return
  if not _is_int(value) or value < minimum:
    _fail(field, value, f'an int >= {minimum}' + (' or None' if optional else ''))


def _is_by_epoch(value, value_ok=lambda v: True):
  if not isinstance(value, dict) or not value:
    return False
  keys = list(value)
  return (all(_is_int(k) for k in keys) and keys[0] == 0 and
          all(b > a for a, b in zip(keys, keys[1:])) and
          all(value_ok(v) for v in value.values()))


def _check_by_epoch(config, field, value_ok, expected):
  value = getattr(config, field)
  if not _is_by_epoch(value, value_ok):
    _fail(field, value, f'a dict {{first epoch: {expected}}} with int keys '
          'increasing from 0')


def method_fields():
  """The launcher's fields that only some methods use (None for the others).

  A rule's own settings are in `options` instead.
  """
  return {
      'period': on_period(),
      'stop_epoch': reallocating(),
      'prune_begin_epoch': ('prune',),
      'prune_end_epoch': ('prune',),
      'prune_frequency': ('prune',),
      'masks_from': (STATIC,),
  }


# Fields of the sparse initialisation, which only the rules use (through
# `tf_dsr.sparsify`); other methods keep their defaults.
SPARSE_INIT_DEFAULTS = {'distribution': 'uniform', 'erk_power_scale': 1.0,
                        'init_scale': 'dense'}


def applies(key, method):
  """Whether the `--override` key `key` concerns `method`.

  An experiment grid mixes methods, so an override of one method's field
  (say `period=2`) or of a rule's option (`target_pruned=100`, or
  `options.NAME=...`) is given only to the methods that have it; every other
  key (including unknown ones, which the config then rejects) to all.
  """
  explicit = key.startswith('options.')
  name = key[len('options.'):] if explicit else key
  fields = method_fields()
  if not explicit and name in fields:
    return method in fields[name]
  if not explicit and name in SPARSE_INIT_DEFAULTS:
    return is_rule(method)
  if not explicit and name == 'options':
    return bool(option_types(method))
  if not explicit and name in {f.name for f in dataclasses.fields(
      ExperimentConfig)}:
    return True
  owners = [m for m in methods() if name in option_types(m)]
  return method in owners if owners else True


def _make_rule(c, options, where=''):
  try:
    rules.make(c.method, **options)
  except (TypeError, ValueError) as error:
    raise LaunchError(f'config field `options` is invalid for method '
                      f'{c.method!r} (options {c.options!r}){where}: '
                      f'{error}') from None


def _check_options(c):
  """Checks `c.options` by making the rule, piece by piece for by-epoch values."""
  if not isinstance(c.options, dict) or not all(
      isinstance(k, str) for k in c.options):
    _fail('options', c.options, 'a dict from option name to value')
  if not is_rule(c.method):
    if c.options:
      _fail('options', c.options, f'empty for method {c.method!r}, which is '
            'not a reallocation rule')
    return
  plain, by_epoch = {}, {}
  for name, value in c.options.items():
    if isinstance(value, dict):
      if not _is_by_epoch(value):
        _fail('options', c.options, f'a dict whose by-epoch value of '
              f'`{name}` is {{first epoch: value}} with int keys increasing '
              'from 0')
      by_epoch[name] = value
      value = next(iter(value.values()))
    plain[name] = value
  _make_rule(c, plain)
  for name, value in by_epoch.items():
    for epoch, piece in value.items():
      _make_rule(c, dict(plain, **{name: piece}),
                 f', with `{name}` from epoch {epoch}')
    _make_rule(c, dict(plain, **{name: ByEpoch(value, 1)}),
               f'; option `{name}` takes no by-epoch value (a callable of '
               'the step)')


def _check_sparse_init(c):
  """`distribution`, `erk_power_scale`, `init_scale`: valid, and set only for rules."""
  if not is_rule(c.method):
    for field, default in SPARSE_INIT_DEFAULTS.items():
      if getattr(c, field) != default:
        _fail(field, getattr(c, field), f'{default!r}: it applies only to the '
              'reallocation rules')
    return
  try:
    tf_dsr_distributions.validate(c.distribution, c.erk_power_scale)
    tf_dsr_wrapper.validate_init_scale(c.init_scale)
  except ValueError as error:
    field = next(f for f in SPARSE_INIT_DEFAULTS if f'`{f}`' in str(error))
    raise LaunchError(f'config field `{field}` is invalid: {error}') from None


def _validate(c):
  """Raises LaunchError naming the first bad field of config `c`."""
  for field, choices in (('arch', ARCHS), ('dataset', DATASETS),
                         ('method', methods())):
    if getattr(c, field) not in choices:
      _fail(field, getattr(c, field), f'one of {list(choices)}')
  if c.method == 'dense':
    if c.sparsity != 0:
      _fail('sparsity', c.sparsity, "0 for method 'dense' (use a dsr, static or "
            'thin config for a sparse run)')
  elif not _is_number(c.sparsity) or not 0 < c.sparsity < 1:
    _fail('sparsity', c.sparsity, f'in (0, 1) for method {c.method!r}')
  if c.arch == 'wide_resnet':
    _check_int(c, 'depth', 10)
    if (c.depth - 4) % 6:
      _fail('depth', c.depth, 'such that (depth - 4) % 6 == 0 (10, 16, 22, 28, ...)')
    _check_int(c, 'width', 1)
  elif c.depth is not None or c.width is not None:
    _fail('depth' if c.depth is not None else 'width',
          c.depth if c.depth is not None else c.width,
          "None: it applies only to arch 'wide_resnet'")
  if c.width_multiplier is not None:
    if c.method != 'thin' or c.arch not in _WIDTH_ARCHS:
      _fail('width_multiplier', c.width_multiplier,
            f"None: it applies only to method 'thin' with arch in {list(_WIDTH_ARCHS)}")
    if not _is_number(c.width_multiplier) or c.width_multiplier <= 0:
      _fail('width_multiplier', c.width_multiplier, 'a number > 0 or None')
  if c.method == 'thin' and c.arch not in _WIDTH_ARCHS:
    _fail('method', c.method, f"not 'thin' for arch {c.arch!r}, which has no width "
          'multiplier')
  if not _is_number(c.weight_decay) or c.weight_decay < 0:
    _fail('weight_decay', c.weight_decay, 'a number >= 0')
  if c.weight_decay and c.arch not in _DECAY_ARCHS:
    _fail('weight_decay', c.weight_decay, f'0 for arch {c.arch!r}, whose builder '
          'has no weight decay')
  if c.image_size is not None:
    if c.dataset != 'imagenet2012':
      _fail('image_size', c.image_size, "None: only 'imagenet2012' can be resized")
    _check_int(c, 'image_size', 32)
  for field, owners in method_fields().items():
    if c.method not in owners and getattr(c, field) is not None:
      _fail(field, getattr(c, field), 'None: it applies only to method' +
            (f' {owners[0]!r}' if len(owners) == 1 else f's {list(owners)}'))
  if c.method in on_period():
    _check_by_epoch(c, 'period', lambda v: _is_int(v) and v > 0, 'steps > 0')
  if c.method in reallocating():
    _check_int(c, 'stop_epoch', 0, optional=True)
  _check_options(c)
  if c.method == 'prune':
    _check_int(c, 'prune_begin_epoch', 0)
    _check_int(c, 'prune_end_epoch', c.prune_begin_epoch + 1)
    _check_int(c, 'prune_frequency', 1)
  _check_sparse_init(c)
  if c.initial_values not in INITIAL_VALUES:
    _fail('initial_values', c.initial_values, f'one of {list(INITIAL_VALUES)}')
  if c.initial_values == 'saved' and c.masks_from is None:
    _fail('initial_values', c.initial_values, "'random' unless `masks_from` "
          'names the run whose initial values to use')
  if c.masks_from is not None and (not isinstance(c.masks_from, str) or
                                   not c.masks_from):
    _fail('masks_from', c.masks_from, 'a model_dir or None')
  _check_int(c, 'epochs', 1)
  _check_int(c, 'batch_size', 1)
  _check_by_epoch(c, 'learning_rate', lambda v: _is_number(v) and v > 0,
                  'rate > 0')
  if not _is_number(c.momentum) or not 0 <= c.momentum < 1:
    _fail('momentum', c.momentum, 'in [0, 1)')
  for field in ('nesterov', 'augment'):
    if not isinstance(getattr(c, field), bool):
      _fail(field, getattr(c, field), 'true or false')
  if c.augment and c.dataset not in _AUGMENTED:
    _fail('augment', c.augment, f'false for dataset {c.dataset!r}: only '
          f'{list(_AUGMENTED)} have a training augmentation')
  _check_int(c, 'shuffle_buffer', 1)
  _check_int(c, 'steps_per_epoch', 1, optional=True)
  _check_int(c, 'eval_steps', 1, optional=True)
  _check_int(c, 'validation_freq', 0)
  _check_int(c, 'tpu_steps_per_execution', 1)
  _check_int(c, 'seed', 0)
  if c.keras not in KERASES:
    _fail('keras', c.keras, f'one of {list(KERASES)}')
  if c.keras == 'keras3' and c.method not in KERAS3_METHODS:
    _fail('keras', c.keras, f"'tf_keras' for method {c.method!r}: Keras 3 "
          f'runs only the methods {list(KERAS3_METHODS)}')


# ------------------------------------------------------------------ the registry
def _GRADIENT_RULES(period):  # pylint: disable=invalid-name
  """The published settings of RigL and SNFS, for every family.

  RigL (Evci et al. 2020): drop fraction 0.3 annealed by cosine, an update
  every `period` steps (100 in the paper), none in the last 25% of training
  (the rule stops itself, so no `stop_epoch`). SNFS (Dettmers & Zettlemoyer
  2019): prune rate 0.5 annealed by cosine over training, momentum 0.9, at
  every epoch end. SNIP needs no settings.
  """
  return {
      'rigl': dict(period={0: period}, stop_epoch=None, options=dict(
          drop_fraction=0.3, schedule='cosine', end_fraction=0.75)),
      'snfs': dict(stop_epoch=None, options=dict(
          prune_rate=0.5, momentum=0.9, schedule='cosine')),
  }


# Per family: `fields` every method shares; `sparsities` (named `_s{s}`) or
# one `sparsity` (no suffix); `schedule`, the `period` and `stop_epoch` of the
# reallocating rules; `methods`, each method's own settings (a rule's
# `options`, and any field it sets differently); `only`, to restrict the
# methods. A registered rule without an entry in `methods` gets the schedule
# and its default options, or no config when it has a required option.
_FAMILIES = {
    # WRN-28-2 on CIFAR-10 (docs/algorithm.md section 5, left column). SET uses DSR's
    # N_p, period and stop epoch, so that its churn equals DSR's (its drop
    # fraction defaults to N_p / active count). DeepR: alpha 1e-5 and T
    # annealed to 0 at the learning-rate drops, after every step and never
    # stopping, as in Bellec et al. 2018. Gradual pruning from epoch 5 to
    # 100, every 100 steps (Zhu & Gupta prune over the first half of
    # training).
    'wrn28_2_cifar10': dict(
        fields=dict(arch='wide_resnet', depth=28, width=2, dataset='cifar10',
                    weight_decay=5e-4, epochs=200, batch_size=100,
                    learning_rate={0: 0.1, 60: 0.02, 120: 0.004, 160: 0.0008},
                    shuffle_buffer=50_000),
        sparsities=(0.5, 0.6, 0.7, 0.8, 0.9),
        schedule=dict(period={0: 100, 25: 200, 80: 400, 140: 800},
                      stop_epoch=190),
        methods={
            'dsr': dict(options=dict(target_pruned=20_000, tolerance=0.1,
                                     initial_threshold=1e-3)),
            'set': dict(options=dict(target_pruned=20_000)),
            'deepr': dict(options=dict(
                alpha=1e-5, temperature={0: 1e-7, 60: 1e-8, 120: 0.0}),
                          period={0: 1}, stop_epoch=None),
            'prune': dict(prune_begin_epoch=5, prune_end_epoch=100,
                          prune_frequency=100),
            **_GRADIENT_RULES(period=100),
        }),
    # ResNet-50 on ImageNet (docs/algorithm.md section 5, right column). The paper's
    # thin baselines used width multipliers 0.54 (s0.8) and 0.46 (s0.9); the
    # launcher searches the multiplier that matches the parameter count of
    # this code's sparse model instead (override `width_multiplier` to use
    # the paper's). Gradual pruning runs from epoch 2 to 50 every 2,000 steps.
    'resnet50_imagenet': dict(
        fields=dict(arch='resnet50', dataset='imagenet2012', weight_decay=1e-4,
                    epochs=100, batch_size=256,
                    learning_rate={0: 0.1, 30: 0.01, 60: 0.001, 90: 0.0001},
                    shuffle_buffer=10_000),
        sparsities=(0.8, 0.9),
        # RigL's comparison: each method also with ERK layer densities.
        erk=('rigl', 'snfs', 'snip', 'static', 'dsr'),
        schedule=dict(period={0: 1000, 25: 2000, 50: 4000, 75: 8000},
                      stop_epoch=95),
        methods={
            'dsr': dict(options=dict(target_pruned=400_000, tolerance=0.1,
                                     initial_threshold=1e-3)),
            'set': dict(options=dict(target_pruned=400_000)),
            'deepr': dict(options=dict(
                alpha=1e-6, temperature={0: 1e-8, 30: 1e-9, 60: 0.0}),
                          period={0: 1}, stop_epoch=None),
            'prune': dict(prune_begin_epoch=2, prune_end_epoch=50,
                          prune_frequency=2000),
            **_GRADIENT_RULES(period=100),
        }),
    # MobileNet v1 on ImageNet, as RigL trains it (Evci et al. 2020): the
    # 13 pointwise convs and the fc sparse (4,163,584 weights), at
    # sparsities 0.75 and 0.9, uniform and ERK. Weight decay 4e-5, TF-Slim's
    # MobileNet v1 value; the rest as ResNet-50 here. DSR's and SET's N_p is
    # ResNet-50's scaled by the sparse weight count (400,000 of 22.7M, 1.76%).
    'mobilenet_v1_imagenet': dict(
        fields=dict(arch='mobilenet_v1', dataset='imagenet2012',
                    weight_decay=4e-5, epochs=100, batch_size=256,
                    learning_rate={0: 0.1, 30: 0.01, 60: 0.001, 90: 0.0001},
                    shuffle_buffer=10_000),
        sparsities=(0.75, 0.9),
        erk=('rigl', 'snfs', 'snip', 'static', 'dsr'),
        schedule=dict(period={0: 1000, 25: 2000, 50: 4000, 75: 8000},
                      stop_epoch=95),
        methods={
            'dsr': dict(options=dict(target_pruned=73_000, tolerance=0.1,
                                     initial_threshold=1e-3)),
            'set': dict(options=dict(target_pruned=73_000)),
            'deepr': dict(options=dict(
                alpha=1e-6, temperature={0: 1e-8, 30: 1e-9, 60: 0.0}),
                          period={0: 1}, stop_epoch=None),
            'prune': dict(prune_begin_epoch=2, prune_end_epoch=50,
                          prune_frequency=2000),
            **_GRADIENT_RULES(period=100),
        }),
    # LeNet-300-100 on scikit-learn's 8x8 digits: the quick start (no
    # download). 1,347 training images, batch 32: 42 steps per epoch, 1,260
    # in 30 epochs for every method. DSR settings are scaled to this tiny
    # model: at sparsity 0.9 it has 5,020 active kernel weights, so N_p = 250
    # (5%; the paper's WRN-28-2 prunes 2.8%-14% of its active weights per
    # reallocation) every 20 steps, which gives 50 reallocations before they
    # stop after epoch 24, leaving the last 20% of training to the frozen
    # masks (the paper: the last 5% of a run with about 370 reallocations).
    # SET uses the same N_p and period; DeepR alpha 1e-4 and T 1e-6 until
    # epoch 20; pruning from epoch 2 to 20.
    'lenet_digits': dict(
        fields=dict(arch='lenet_300_100', dataset='digits', epochs=30,
                    batch_size=32, learning_rate={0: 0.05, 20: 0.01},
                    augment=False, shuffle_buffer=2_000),
        sparsity=0.9,
        schedule=dict(period={0: 20}, stop_epoch=24),
        methods={
            'dsr': dict(options=dict(target_pruned=250, tolerance=0.1,
                                     initial_threshold=1e-3)),
            'set': dict(options=dict(target_pruned=250)),
            'deepr': dict(options=dict(alpha=1e-4,
                                       temperature={0: 1e-6, 20: 0.0}),
                          period={0: 1}, stop_epoch=None),
            'prune': dict(prune_begin_epoch=2, prune_end_epoch=20,
                          prune_frequency=10),
            **_GRADIENT_RULES(period=20),
        }),
    # LeNet-300-100 on MNIST at sparsity 0.9 (266,200 sparse weights).
    'lenet_mnist': dict(
        fields=dict(arch='lenet_300_100', dataset='mnist', epochs=20,
                    batch_size=100, learning_rate={0: 0.05, 10: 0.01},
                    augment=False, shuffle_buffer=60_000),
        sparsity=0.9,
        schedule=dict(period={0: 100}, stop_epoch=18),
        methods={
            'dsr': dict(options=dict(target_pruned=1_000, tolerance=0.1,
                                     initial_threshold=1e-3)),
        },
        only=('dense', 'static', 'dsr')),
    # A tiny conv net on digits (8x8x1 images): the cheapest end-to-end runs.
    # Sparse methods at 0.5 (2,464 active of 4,928 sparse weights); 30 epochs
    # of 42 steps, and the same DSR/SET/DeepR/pruning timing as
    # `lenet_digits`.
    'small_cnn_digits': dict(
        fields=dict(arch='small_cnn', dataset='digits', epochs=30,
                    batch_size=32, learning_rate={0: 0.1, 20: 0.02},
                    augment=False, shuffle_buffer=2_000),
        sparsity=0.5,
        schedule=dict(period={0: 10}, stop_epoch=24),
        methods={
            'dsr': dict(options=dict(target_pruned=50, tolerance=0.1,
                                     initial_threshold=1e-3)),
            'set': dict(options=dict(target_pruned=50)),
            'deepr': dict(options=dict(alpha=1e-4,
                                       temperature={0: 1e-6, 20: 0.0}),
                          period={0: 1}, stop_epoch=None),
            'prune': dict(prune_begin_epoch=2, prune_end_epoch=20,
                          prune_frequency=10),
            **_GRADIENT_RULES(period=10),
        }),
}


def family_config(family, method, sparsity=None, distribution='uniform'):
  """The config of `family` (a key of `_FAMILIES`) and `method`.

  Args:
    family: the name prefix, e.g. 'wrn28_2_cifar10'.
    method: a method of `methods()`.
    sparsity: for families named by sparsity, one of its sparsities (ignored
      for 'dense').

  Raises:
    LaunchError: when the family's settings do not make a valid config (say,
      a rule with a required option the family gives no value).
  """
  spec = _FAMILIES[family]
  named = 'sparsities' in spec
  tag = '' if distribution == 'uniform' else f'_{distribution}'
  if method == 'dense':
    sparsity, name = 0.0, f'{family}_dense'
  elif named:
    name = f'{family}_{method}{tag}_s{sparsity:g}'
  else:
    sparsity, name = spec['sparsity'], f'{family}_{method}{tag}'
  fields = copy.deepcopy(spec['fields'])
  if distribution != 'uniform':
    fields['distribution'] = distribution
  if method in reallocating():
    fields.update(copy.deepcopy(spec['schedule']))
    if method not in on_period():
      fields.pop('period')
  fields.update(copy.deepcopy(spec['methods'].get(method, {})))
  return ExperimentConfig(name=name, method=method, sparsity=sparsity, **fields)


def build_registry():
  """Every named config, by name: each family for each of its methods.

  It reads the rule registry when called, so a rule registered after this
  module was imported has configs here (but not in `CONFIGS`).
  """
  configs = []
  for family, spec in _FAMILIES.items():
    for method in spec.get('only', methods()):
      for sparsity in (spec.get('sparsities', (None,)) if method != 'dense'
                       else (None,)):
        try:
          configs.append(family_config(family, method, sparsity))
        except LaunchError:
          if method in spec['methods'] or method not in reallocating():
            raise
          # A rule with a required option that has no value here.
    for method in spec.get('erk', ()):
      for sparsity in spec.get('sparsities', (None,)):
        configs.append(family_config(family, method, sparsity, 'erk'))
  return {c.name: c for c in sorted(configs, key=lambda c: c.name)}


CONFIGS = build_registry()


def names():
  """The names of all registered configs, sorted."""
  return list(CONFIGS)


def get(name):
  """The registered config `name`.

  Raises:
    LaunchError: for an unknown name; the message lists the valid ones.
  """
  if name not in CONFIGS:
    raise LaunchError(precheck.unknown_config_message(name, CONFIGS))
  return CONFIGS[name]


def main(argv):
  """Lists the config names, or prints the configs named in `argv` as JSON."""
  if not argv:
    print('\n'.join(CONFIGS))
    return 0
  try:
    for name in argv:
      print(json.dumps(get(name).to_dict(), indent=2))
  except LaunchError as error:
    print(f'error: {error}', file=sys.stderr)
    return 2
  return 0


if __name__ == '__main__':
  sys.exit(main(sys.argv[1:]))
