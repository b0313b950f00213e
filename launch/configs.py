"""Named, typed experiment configs: every run of the DSR paper in one place.

Mostafa & Wang, ICML 2019, https://arxiv.org/abs/1902.05967; the settings are
those of DSR_SPEC.md section 5. Names read `{model}_{dataset}_{method}[_s{sparsity}]`:

- `wrn28_2_cifar10_dense` and `wrn28_2_cifar10_{METHOD}_s{0.5,...,0.9}`
- `resnet50_imagenet_dense` and `resnet50_imagenet_{METHOD}_s{0.8,0.9}`
- `lenet_digits_{dense,METHOD}` (the quick start; sparsity 0.9) and
  `lenet_mnist_{dense,static,dsr}`
- `small_cnn_digits_{dense,METHOD}`: a few seconds on a CPU, for tests, smoke
  runs and the `small` experiment suite (sparsity 0.5)

Methods (the comparisons of DSR_SPEC sections 6-8): `dense` trains the full
model; `dsr` trains it sparse with Dynamic Sparse Reparameterization; `static`
trains it sparse with the random initial mask frozen (or, with `masks_from`,
a run's exported final masks: the controls of section 7); `set` (Mocanu et
al. 2018) and `deepr` (Bellec et al. 2018) are the other dynamic sparse
rules; `prune` trains dense and prunes by magnitude to the target sparsity
(Zhu & Gupta 2017, tfmot's `PolynomialDecay`); `thin` trains a narrower dense
model with as many parameters as the sparse model has active ones (the width
is searched at launch unless `width_multiplier` is given).

`python -m launch.configs` lists the names; `python -m launch.configs NAME`
prints one config. This module does not import TensorFlow.
"""

import dataclasses
import json
import math
import sys
from typing import Dict, Optional

from launch.errors import LaunchError

ARCHS = ('lenet_300_100', 'resnet50', 'small_cnn', 'wide_resnet')
DATASETS = ('cifar10', 'digits', 'imagenet2012', 'mnist')
METHODS = ('dense', 'deepr', 'dsr', 'prune', 'set', 'static', 'thin')
SPARSE_METHODS = ('deepr', 'dsr', 'prune', 'set', 'static', 'thin')
# Methods that move masks with a tf_dsr reallocation rule on a period.
REALLOCATING = ('deepr', 'dsr', 'set')
INITIAL_VALUES = ('random', 'saved')
# Archs whose builder has a `weight_decay` argument / a width multiplier.
_DECAY_ARCHS = ('resnet50', 'wide_resnet')
_WIDTH_ARCHS = ('lenet_300_100', 'resnet50', 'small_cnn', 'wide_resnet')
_AUGMENTED = ('cifar10', 'imagenet2012')  # Datasets with the paper's augmentation.


@dataclasses.dataclass(frozen=True)
class ExperimentConfig:
  """One experiment: model, data, sparsity method, optimizer and schedules.

  Schedules are dicts from the first (0-based) epoch of a piece to its value,
  starting at epoch 0. Every field can be changed from the command line with
  `--override key=value` (see `launch.overrides`).

  Attributes:
    name: the registry name the config was created under.
    arch: model builder: 'wide_resnet', 'resnet50', 'lenet_300_100' or
      'small_cnn' (the builders of `models`; their sparse policy picks the
      kernels DSR makes sparse).
    dataset: 'cifar10', 'imagenet2012', 'mnist' (tfds) or 'digits'
      (scikit-learn, no download).
    method: one of `METHODS` (see the module docstring).
    sparsity: initial fraction of zeros in each sparse kernel ('dsr', 'set',
      'deepr', 'static'); the final one for 'prune'; for 'thin', the sparse
      model whose active parameter count the thin model matches. 0 for
      'dense'.
    depth: WRN depth (wide_resnet only).
    width: WRN widening factor (wide_resnet only).
    width_multiplier: 'thin' only: the channel multiplier; None searches the
      one whose parameter count matches the sparse model's active count.
    weight_decay: SGD weight decay on the kernels (wide_resnet and resnet50).
    image_size: input side for imagenet2012 (None: 224); other datasets keep
      their native size.
    target_pruned: N_p, the weights each DSR reallocation aims to prune
      ('dsr'; for 'set' it sets the default drop fraction N_p / active).
    tolerance: DSR's tolerance delta around N_p.
    initial_threshold: DSR's initial pruning threshold H.
    period: reallocation period in steps, by epoch ('dsr', 'set', 'deepr').
    stop_epoch: no reallocation from this 0-based epoch on (None: never
      stop); the masks stay frozen after it.
    drop_fraction: 'set' only: fraction of each tensor's active weights
      dropped per reallocation (None: N_p / active count, DSR's churn).
    l1: 'deepr' only: the L1 coefficient alpha.
    temperature: 'deepr' only: the temperature T of the noise, by epoch.
    prune_begin_epoch: 'prune' only: the epoch gradual pruning starts.
    prune_end_epoch: 'prune' only: the epoch it reaches `sparsity`.
    prune_frequency: 'prune' only: steps between mask updates.
    masks_from: 'static' only: a model_dir whose exported final masks
      (`final_masks.npz`) the run freezes instead of random ones.
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
      every DSR period so that no reallocation is late.
    seed: seed of weights, masks, data order, augmentation and DSR.
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
  target_pruned: Optional[int] = None
  tolerance: float = 0.1
  initial_threshold: float = 1e-3
  period: Optional[Dict[int, int]] = None
  stop_epoch: Optional[int] = None
  drop_fraction: Optional[float] = None
  l1: Optional[float] = None
  temperature: Optional[Dict[int, float]] = None
  prune_begin_epoch: Optional[int] = None
  prune_end_epoch: Optional[int] = None
  prune_frequency: Optional[int] = None
  masks_from: Optional[str] = None
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

  def __post_init__(self):
    _validate(self)

  def to_dict(self):
    """The config as JSON-friendly data (dict keys become strings in JSON)."""
    return dataclasses.asdict(self)


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


def _check_by_epoch(config, field, value_ok, expected):
  value = getattr(config, field)
  what = (f'a dict {{first epoch: {expected}}} with int keys increasing from 0')
  if not isinstance(value, dict) or not value:
    _fail(field, value, what)
  keys = list(value)
  if (not all(_is_int(k) for k in keys) or keys[0] != 0 or
      any(b <= a for a, b in zip(keys, keys[1:])) or
      not all(value_ok(v) for v in value.values())):
    _fail(field, value, what)


# Fields that only some methods use; None for every other method.
METHOD_FIELDS = {
    'target_pruned': ('dsr', 'set'),
    'period': REALLOCATING,
    'stop_epoch': REALLOCATING,
    'drop_fraction': ('set',),
    'l1': ('deepr',),
    'temperature': ('deepr',),
    'prune_begin_epoch': ('prune',),
    'prune_end_epoch': ('prune',),
    'prune_frequency': ('prune',),
    'masks_from': ('static',),
}


def _validate(c):
  """Raises LaunchError naming the first bad field of config `c`."""
  for field, choices in (('arch', ARCHS), ('dataset', DATASETS),
                         ('method', METHODS)):
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
  for field, methods in METHOD_FIELDS.items():
    if c.method not in methods and getattr(c, field) is not None:
      _fail(field, getattr(c, field), 'None: it applies only to method' +
            (f' {methods[0]!r}' if len(methods) == 1 else f's {list(methods)}'))
  if c.method in REALLOCATING:
    _check_by_epoch(c, 'period', lambda v: _is_int(v) and v > 0, 'steps > 0')
    _check_int(c, 'stop_epoch', 0, optional=True)
  if c.method == 'dsr':
    _check_int(c, 'target_pruned', 1)
    if not _is_number(c.tolerance) or not 0 < c.tolerance < 1:
      _fail('tolerance', c.tolerance, 'in (0, 1)')
    if not _is_number(c.initial_threshold) or c.initial_threshold <= 0:
      _fail('initial_threshold', c.initial_threshold, 'a number > 0')
  if c.method == 'set':
    _check_int(c, 'target_pruned', 1, optional=c.drop_fraction is not None)
    if c.drop_fraction is not None and not (
        _is_number(c.drop_fraction) and 0 < c.drop_fraction < 1):
      _fail('drop_fraction', c.drop_fraction, 'in (0, 1) or None')
  if c.method == 'deepr':
    if not _is_number(c.l1) or c.l1 < 0:
      _fail('l1', c.l1, 'a number >= 0')
    _check_by_epoch(c, 'temperature', lambda v: _is_number(v) and v >= 0,
                    'T >= 0')
  if c.method == 'prune':
    _check_int(c, 'prune_begin_epoch', 0)
    _check_int(c, 'prune_end_epoch', c.prune_begin_epoch + 1)
    _check_int(c, 'prune_frequency', 1)
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


# ------------------------------------------------------------------ the registry
def _name(prefix, method, sparsity):
  return f'{prefix}_{method}' + (f'_s{sparsity:g}' if method != 'dense' else '')


def _method_fields(method, target_pruned, period, stop_epoch, deepr, prune):
  """The method-specific fields of a family's config.

  Args:
    method: a method of `METHODS`.
    target_pruned, period, stop_epoch: DSR's N_p, period by epoch and stop
      epoch; SET uses the same, so that its churn equals DSR's (its drop
      fraction defaults to N_p / active count).
    deepr: `(l1, temperature by epoch)`; DeepR runs after every step and never
      stops, as in Bellec et al. 2018.
    prune: `(begin epoch, end epoch, frequency in steps)` of gradual pruning.
  """
  if method in ('dsr', 'set'):
    return dict(target_pruned=target_pruned, period=dict(period),
                stop_epoch=stop_epoch)
  if method == 'deepr':
    return dict(period={0: 1}, l1=deepr[0], temperature=dict(deepr[1]))
  if method == 'prune':
    return dict(prune_begin_epoch=prune[0], prune_end_epoch=prune[1],
                prune_frequency=prune[2])
  return {}


def _wrn28_2_cifar10(method, sparsity=0.0):
  """WRN-28-2 on CIFAR-10 (DSR_SPEC section 5, left column).

  DeepR: alpha 1e-5 and T annealed to 0 at the learning-rate drops; gradual
  pruning from epoch 5 to 100, every 100 steps (Zhu & Gupta prune over the
  first half of training).
  """
  return ExperimentConfig(
      name=_name('wrn28_2_cifar10', method, sparsity),
      arch='wide_resnet', depth=28, width=2, dataset='cifar10', method=method,
      sparsity=sparsity, weight_decay=5e-4, epochs=200, batch_size=100,
      learning_rate={0: 0.1, 60: 0.02, 120: 0.004, 160: 0.0008},
      shuffle_buffer=50_000,
      **_method_fields(method, 20_000, {0: 100, 25: 200, 80: 400, 140: 800},
                       190, (1e-5, {0: 1e-7, 60: 1e-8, 120: 0.0}),
                       (5, 100, 100)))


def _resnet50_imagenet(method, sparsity=0.0):
  """ResNet-50 on ImageNet (DSR_SPEC section 5, right column).

  The paper's thin baselines used width multipliers 0.54 (s0.8) and 0.46
  (s0.9); the launcher searches the multiplier that matches the parameter
  count of this code's sparse model instead (override `width_multiplier` to
  use the paper's). Gradual pruning runs from epoch 2 to 50 every 2,000 steps.
  """
  return ExperimentConfig(
      name=_name('resnet50_imagenet', method, sparsity),
      arch='resnet50', dataset='imagenet2012', method=method, sparsity=sparsity,
      weight_decay=1e-4, epochs=100, batch_size=256,
      learning_rate={0: 0.1, 30: 0.01, 60: 0.001, 90: 0.0001},
      shuffle_buffer=10_000,
      **_method_fields(method, 400_000, {0: 1000, 25: 2000, 50: 4000, 75: 8000},
                       95, (1e-6, {0: 1e-8, 30: 1e-9, 60: 0.0}),
                       (2, 50, 2000)))


def _lenet_digits(method):
  """LeNet-300-100 on scikit-learn's 8x8 digits: the quick start (no download).

  1,347 training images, batch 32: 42 steps per epoch, 1,260 in 30 epochs for
  every method. DSR settings are scaled to this tiny model: at sparsity 0.9
  it has 5,020 active kernel weights, so N_p = 250 (5%; the paper's WRN-28-2
  prunes 2.8%-14% of its active weights per reallocation) every 20 steps,
  which gives 50 reallocations before they stop after epoch 24, leaving the
  last 20% of training to the frozen masks (the paper: the last 5% of a run
  with about 370 reallocations). SET uses the same N_p and period; DeepR
  alpha 1e-4 and T 1e-6 until epoch 20; pruning from epoch 2 to 20.
  """
  return ExperimentConfig(
      name=f'lenet_digits_{method}', arch='lenet_300_100', dataset='digits',
      method=method, sparsity=0.0 if method == 'dense' else 0.9,
      epochs=30, batch_size=32, learning_rate={0: 0.05, 20: 0.01},
      augment=False, shuffle_buffer=2_000,
      **_method_fields(method, 250, {0: 20}, 24,
                       (1e-4, {0: 1e-6, 20: 0.0}), (2, 20, 10)))


def _lenet_mnist(method):
  """LeNet-300-100 on MNIST at sparsity 0.9 (266,200 sparse weights)."""
  return ExperimentConfig(
      name=f'lenet_mnist_{method}', arch='lenet_300_100', dataset='mnist',
      method=method, sparsity=0.0 if method == 'dense' else 0.9,
      epochs=20, batch_size=100, learning_rate={0: 0.05, 10: 0.01},
      augment=False, shuffle_buffer=60_000,
      **_method_fields(method, 1_000, {0: 100}, 18,
                       (1e-4, {0: 1e-6, 15: 0.0}), (1, 12, 50)))


def _small_cnn_digits(method):
  """A tiny conv net on digits (8x8x1 images): the cheapest end-to-end runs.

  Sparse methods at 0.5 (2,464 active of 4,928 sparse weights); 30 epochs of
  42 steps, and the same DSR/SET/DeepR/pruning timing as `lenet_digits`.
  """
  return ExperimentConfig(
      name=f'small_cnn_digits_{method}', arch='small_cnn', dataset='digits',
      method=method, sparsity=0.0 if method == 'dense' else 0.5, epochs=30,
      batch_size=32, learning_rate={0: 0.1, 20: 0.02}, augment=False,
      shuffle_buffer=2_000,
      **_method_fields(method, 50, {0: 10}, 24, (1e-4, {0: 1e-6, 20: 0.0}),
                       (2, 20, 10)))


def _build_registry():
  configs = [_wrn28_2_cifar10('dense'), _resnet50_imagenet('dense')]
  for method in SPARSE_METHODS:
    configs += [_wrn28_2_cifar10(method, s) for s in (0.5, 0.6, 0.7, 0.8, 0.9)]
    configs += [_resnet50_imagenet(method, s) for s in (0.8, 0.9)]
  for method in ('dense',) + SPARSE_METHODS:
    configs += [_lenet_digits(method), _small_cnn_digits(method)]
  for method in ('dense', 'static', 'dsr'):
    configs.append(_lenet_mnist(method))
  return {c.name: c for c in sorted(configs, key=lambda c: c.name)}


CONFIGS = _build_registry()


def names():
  """The names of all registered configs, sorted."""
  return list(CONFIGS)


def get(name):
  """The registered config `name`.

  Raises:
    LaunchError: for an unknown name; the message lists the valid ones.
  """
  if name not in CONFIGS:
    raise LaunchError(f'unknown config {name!r}; valid configs are:\n  ' +
                      '\n  '.join(CONFIGS))
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
