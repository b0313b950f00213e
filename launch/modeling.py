"""From a config to a compiled Keras model: architecture, sparse policy, method.

Each method is a small object with two steps: `build` makes the model (sparse
ones through `tf_dsr.sparsify`, or tfmot's `prune_low_magnitude` for `prune`,
on the paper's sparse policy `models.sparse_kernel_layers`), and `attach`
binds what keeps its masks (frozen masks for `static`, a
`ReallocationCallback` running the config's `tf_dsr.rules` rule with its
`options` for every other rule, or tfmot's `UpdatePruningStep`). `method(name)`
gives `Dense`, `Thin`, `Prune` and `Static` for the launcher's own methods and
a `DynamicSparse` for any other registered rule. `attach` must run before a
checkpoint is restored, since it creates the state the checkpoint holds.

The model is built with the Keras `config.keras` names (`keras_module`):
tf_keras, or Keras 3 for the methods it runs (`configs.KERAS3_METHODS`);
`models` builds either, and `tf_dsr` picks its path from the model.

The controls of the follow-up study (docs/algorithm.md section 7) are `static` runs
with `masks_from`: the masks a run exported at its end, with a fresh
initialisation or (`initial_values='saved'`) that run's values at step 0.
"""

import contextlib
import dataclasses
import math
import os
from typing import Optional

import keras as keras3
import numpy as np
import tensorflow as tf
import tensorflow_model_optimization as tfmot
import tf_dsr
from tf_dsr import keras

import models
from launch import configs
from launch.errors import LaunchError

THIN_TOLERANCE = 0.02  # Relative gap allowed between thin and sparse counts.
_GRID = 10_000  # Width multipliers are searched in steps of 1 / _GRID.


def keras_module(config):
  """The Keras module of `config.keras`: tf_keras or Keras 3."""
  return keras3 if config.keras == 'keras3' else keras


def _wide_resnet(config, input_shape, num_classes, width_multiplier):
  return models.wide_resnet(
      depth=config.depth, width=config.width, num_classes=num_classes,
      input_shape=input_shape, weight_decay=config.weight_decay,
      width_multiplier=width_multiplier, keras=keras_module(config))


def _resnet50(config, input_shape, num_classes, width_multiplier):
  return models.resnet50(
      num_classes=num_classes, width_multiplier=width_multiplier,
      input_shape=input_shape, weight_decay=config.weight_decay,
      keras=keras_module(config))


def _mobilenet_v1(config, input_shape, num_classes, width_multiplier):
  return models.mobilenet_v1(
      num_classes=num_classes, alpha=width_multiplier, input_shape=input_shape,
      weight_decay=config.weight_decay, keras=keras_module(config))


def _lenet_300_100(config, input_shape, num_classes, width_multiplier):
  return models.lenet_300_100(input_shape=input_shape, num_classes=num_classes,
                              width_multiplier=width_multiplier,
                              keras=keras_module(config))


def _small_cnn(config, input_shape, num_classes, width_multiplier):
  return models.small_cnn(input_shape=input_shape, num_classes=num_classes,
                          width_multiplier=width_multiplier,
                          keras=keras_module(config))


_ARCHS = {
    'lenet_300_100': _lenet_300_100,
    'mobilenet_v1': _mobilenet_v1,
    'resnet50': _resnet50,
    'small_cnn': _small_cnn,
    'wide_resnet': _wide_resnet,
}


def _size(variable):
  """Number of entries of a variable of either Keras."""
  return int(np.prod(variable.shape))


def variable_name(variable):
  """A variable's unique name: its path in Keras 3 (whose `name` is only
  the last part, `kernel`), its name in tf_keras."""
  return getattr(variable, 'path', None) or variable.name


def trainable_count(model):
  """Number of trainable parameters of `model`."""
  return sum(_size(w) for w in model.trainable_weights)


def build_dense(config, input_shape, num_classes, width_multiplier=1.0):
  """The plain model of `config.arch` (logits in float32 under mixed precision)."""
  model = _ARCHS[config.arch](config, tuple(input_shape), num_classes,
                              width_multiplier)
  k = keras_module(config)
  if k.mixed_precision.global_policy().compute_dtype != 'float32':
    logits = k.layers.Activation('linear', dtype='float32',
                                 name='logits_float32')(model.output)
    model = k.Model(model.input, logits, name=model.name)
  return model


def sparse_active_count(model, arch, sparsity):
  """Trainable parameters left active when the policy's kernels start at `sparsity`.

  Each sparse kernel of n entries keeps max(1, round((1 - sparsity) n)), as
  `tf_dsr.sparsify` does; every other parameter counts as active.
  """
  active = trainable_count(model)
  for name in models.sparse_kernel_layers(model, arch):
    size = _size(model.get_layer(name).kernel)
    active -= size - tf_dsr.distributions.uniform_count(size, sparsity)
  return active


def search_width(count, target, tolerance=THIN_TOLERANCE, max_probes=30):
  """Finds a width multiplier m in (0, 1] with count(m) within `tolerance` of target.

  A binary search over multipliers on a grid of 1e-4, sped up by first trying
  the multiplier a quadratic model predicts (parameters grow about like m**2)
  whenever it falls inside the current bracket. It stops once a probe is
  within a quarter of the tolerance, or when the bracket holds no grid point
  (channel counts are integers, so the count moves in steps and the target
  may fall between two of them).

  Args:
    count: m -> trainable parameter count of the model at multiplier m,
      non-decreasing in m.
    target: the parameter count to match.
    tolerance: the relative gap that is accepted.
    max_probes: most calls to `count`.

  Returns:
    `(multiplier, params)` of the closest probe.

  Raises:
    LaunchError: when no probe came within `tolerance`.
  """
  low, high = 0, _GRID  # In grid units: the multiplier is units / _GRID.
  units, best = _GRID, None
  for _ in range(max_probes):
    params = count(units / _GRID)
    if best is None or abs(params - target) < abs(best[1] - target):
      best = (units / _GRID, params)
    if abs(params - target) <= tolerance * target / 4:
      break
    if params < target:
      low = units
    else:
      high = units
    units = round(units * math.sqrt(target / params))
    if not low < units < high:
      units = (low + high) // 2
      if units == low:
        break  # No grid point left between the bracket's ends.
  if abs(best[1] - target) > tolerance * target:
    raise LaunchError(f'no width multiplier gives {target:,} parameters within '
                      f'{tolerance:.0%}; the closest is {best[0]:.4f} with '
                      f'{best[1]:,}.')
  return best


@dataclasses.dataclass(frozen=True)
class Built:
  """A built model and what the method chose.

  Attributes:
    model: the (possibly sparsified) Keras model, not compiled.
    width_multiplier: the thin model's multiplier (None for other methods).
    target_params: the active parameter count a thin model was matched to.
    reference_flops: the full dense model's inference FLOPs when `model` is
      another architecture (thin); None: `model`'s own dense FLOPs.
  """
  model: keras.Model
  width_multiplier: Optional[float] = None
  target_params: Optional[int] = None
  reference_flops: Optional[int] = None


def freeze_masks(model, method='static'):
  """Static sparse training: a callback that keeps the masks where they are.

  `fit` on a model with wrappers needs a `tf_dsr.ReallocationCallback`; a
  static rule ('static', or 'snip' to label SNIP's masks) with `stop_step=0`
  never reallocates, so the masks stay as built. It also attaches the state
  to the model.

  Returns:
    The callback, to pass to `fit`.
  """
  callback = tf_dsr.ReallocationCallback(method=method, stop_step=0)
  callback.set_model(model)
  return callback


# What a run exports for the controls (see `launch.outputs`).
INITIAL_WEIGHTS = 'initial_weights.npz'
FINAL_MASKS = 'final_masks.npz'


def weights_by_name(model):
  """`{variable name: value}` of every weight of `model` (masks included)."""
  return {variable_name(v): v.numpy() for v in model.weights}


def masks_by_name(model):
  """`{mask variable name: value}` of every DynamicSparseWrapper mask."""
  return {variable_name(mask): mask.numpy()
          for wrapper in tf_dsr.collect_wrappers(model)
          for _, mask in wrapper.sparse_weights}


def load_arrays(path):
  """The arrays of an `.npz` file as a dict; LaunchError if it is missing."""
  if not tf.io.gfile.exists(path):
    raise LaunchError(f'{path} does not exist: `masks_from` must name the '
                      'model_dir of a finished run of a sparse method.')
  with tf.io.gfile.GFile(path, 'rb') as f:
    with np.load(f) as arrays:
      return {k: arrays[k] for k in arrays.files}


def _assign_by_name(variables, values, what):
  by_name = {variable_name(v): v for v in variables}
  missing = sorted(set(by_name) - set(values))
  if missing:
    raise LaunchError(f'{what} has no value for {missing[:3]}...: it comes from '
                      'a different architecture or sparse policy.')
  for name, variable in by_name.items():
    if tuple(variable.shape) != values[name].shape:
      raise LaunchError(f'{what}: {name} has shape {values[name].shape}, the '
                        f'model {tuple(variable.shape)}.')
    variable.assign(values[name])


def apply_exported_structure(model, config, fresh_kernels):
  """Sets the masks (and values) of a control run from `config.masks_from`.

  Args:
    model: the sparsified model, built.
    config: the run's config (`masks_from`, `initial_values`).
    fresh_kernels: `{kernel name: value}` of this run's dense initialisation.
  """
  masks = load_arrays(os.path.join(config.masks_from, FINAL_MASKS))
  if config.initial_values == 'saved':
    initial = load_arrays(os.path.join(config.masks_from, INITIAL_WEIGHTS))
    _assign_by_name(model.weights, initial, INITIAL_WEIGHTS)
  wrappers = tf_dsr.collect_wrappers(model)
  _assign_by_name([m for w in wrappers for _, m in w.sparse_weights], masks,
                  FINAL_MASKS)
  for wrapper in wrappers:
    for kernel, mask in wrapper.sparse_weights:
      if config.initial_values == 'saved':
        value = kernel.numpy()
      else:  # Fresh values, scaled for the loaded mask as at build.
        value = fresh_kernels[variable_name(kernel)]
        if config.init_scale == 'sparse_fan_in':
          value = value * tf_dsr.wrapper.initial_scale(mask).numpy()
      kernel.assign(value * mask.numpy())


class Dense:
  """The full dense model.

  `build(config, input_shape, num_classes, scope, steps_per_epoch)` creates
  the model's variables under `scope()` (a distribution strategy's scope);
  any scratch models a method builds on the way are created outside it.
  """

  def build(self, config, input_shape, num_classes, scope=contextlib.nullcontext,
            steps_per_epoch=None):
    del steps_per_epoch
    with scope():
      return Built(build_dense(config, input_shape, num_classes))

  def attach(self, model, config, log_dir=None, verbose=True,
             steps_per_epoch=None):
    del model, config, log_dir, verbose, steps_per_epoch
    return []

  def training_flops(self, config, report, steps, reallocations,
                     steps_per_epoch):
    """FLOPs of an average training step (`tf_dsr.flops` conventions).

    Args:
      config: the run's config.
      report: the trained model's `tf_dsr.FlopsReport`.
      steps: training steps of the run.
      reallocations: reallocations the run made (0 for other methods).
      steps_per_epoch: training steps per epoch.
    """
    del config, steps, reallocations, steps_per_epoch
    return tf_dsr.flops.dense_training_flops(report.dense)


class Thin(Dense):
  """A narrower dense model with as many parameters as the sparse model's active ones."""

  def build(self, config, input_shape, num_classes, scope=contextlib.nullcontext,
            steps_per_epoch=None):
    del steps_per_epoch
    full = build_dense(config, input_shape, num_classes)
    target = sparse_active_count(full, config.arch, config.sparsity)
    counts = {1.0: trainable_count(full)}
    reference_flops = tf_dsr.flops_report(full).dense
    del full

    def count(multiplier):
      if multiplier not in counts:
        counts[multiplier] = trainable_count(build_dense(
            config, input_shape, num_classes, width_multiplier=multiplier))
      return counts[multiplier]

    if config.width_multiplier is not None:
      multiplier = config.width_multiplier
    else:
      multiplier, _ = search_width(count, target)
    with scope():
      model = build_dense(config, input_shape, num_classes, multiplier)
    return Built(model, width_multiplier=multiplier, target_params=target,
                 reference_flops=reference_flops)


class Static(Dense):
  """The sparse model with its initial masks frozen (static sparse).

  The masks are random, or with `config.masks_from` those another run
  exported (the controls of docs/algorithm.md section 7).
  """

  def build(self, config, input_shape, num_classes, scope=contextlib.nullcontext,
            steps_per_epoch=None):
    del steps_per_epoch
    with scope():
      model = build_dense(config, input_shape, num_classes)
      sparse = set(models.sparse_kernel_layers(model, config.arch))
      fresh = {variable_name(model.get_layer(name).kernel):
               model.get_layer(name).kernel.numpy() for name in sparse}
      model = tf_dsr.sparsify(
          model, config.sparsity, exclude=lambda layer: layer.name not in sparse,
          seed=config.seed, distribution=config.distribution,
          erk_power_scale=config.erk_power_scale, init_scale=config.init_scale)
      if config.masks_from:
        apply_exported_structure(model, config, fresh)
      return Built(model)

  def attach(self, model, config, log_dir=None, verbose=True,
             steps_per_epoch=None):
    del config, log_dir, verbose, steps_per_epoch
    return [freeze_masks(model)]

  def training_flops(self, config, report, steps, reallocations,
                     steps_per_epoch):
    del config, steps, reallocations, steps_per_epoch
    return tf_dsr.rules.make(configs.STATIC).training_flops(
        report.sparse, report.dense, math.inf)


class DynamicSparse(Static):
  """The sparse model with its masks moved by a `tf_dsr.rules` rule.

  The rule gets the config's `options` (by-epoch values as callables of the
  step, `configs.rule_options`) and runs on the config's `period`; the choice
  of XLA is the library's (`jit_compile=None`: per device).

  Args:
    name: a name of `tf_dsr.rules.REGISTRY` (but 'static', see `Static`).
  """

  def __init__(self, name):
    self.name = name

  def attach(self, model, config, log_dir=None, verbose=True,
             steps_per_epoch=None):
    # SNFS reallocates at epoch ends and has no period.
    period = dict(config.period) if config.period else 1
    callback = tf_dsr.ReallocationCallback(
        period=period, stop_epoch=config.stop_epoch,
        seed=config.seed, log_dir=log_dir,
        # One line per reallocation, unless the rule runs after every step.
        verbose=verbose and (not config.period or config.period[0] > 1),
        method=self.name,
        jit_compile=None, **configs.rule_options(config, steps_per_epoch))
    callback.set_model(model)  # Creates the state before any restore.
    return [callback]

  def training_flops(self, config, report, steps, reallocations,
                     steps_per_epoch):
    """The rule's `training_flops` at the final masks.

    The period is the run's mean number of steps per reallocation. For rules
    that move weights across layers (DSR, DeepR) f_S changes during training;
    the final masks' f_S stands for the whole run.
    """
    rule = tf_dsr.rules.make(self.name,
                             **configs.rule_options(config, steps_per_epoch))
    period = steps / reallocations if reallocations else math.inf
    return rule.training_flops(report.sparse, report.dense, period)


class Snip(Static):
  """SNIP: masks from connection sensitivity on one training batch, then static.

  Lee et al., ICLR 2019 (`tf_dsr.snip`): the dense model is built, its
  gradient taken on the first training batch, and the same kernels the
  other sparse methods use are made sparse with the most sensitive weights
  active (as many in all as the uniform random masks have).
  """

  needs_sample = True

  def build(self, config, input_shape, num_classes, scope=contextlib.nullcontext,
            steps_per_epoch=None, sample=None):
    del steps_per_epoch
    if sample is None:
      raise LaunchError("method 'snip' needs a batch of training data to "
                        'choose its masks.')
    inputs, targets = sample
    with scope():
      model = build_dense(config, input_shape, num_classes)
      sparse = set(models.sparse_kernel_layers(model, config.arch))
      # Global ranking (the paper's) for the uniform budget; per-layer
      # budgets for another distribution.
      layerwise = {} if config.distribution == 'uniform' else dict(
          distribution=config.distribution,
          erk_power_scale=config.erk_power_scale)
      model = tf_dsr.snip(model, config.sparsity, inputs, targets, loss(),
                          exclude=lambda layer: layer.name not in sparse,
                          seed=config.seed, init_scale=config.init_scale,
                          **layerwise)
      return Built(model)

  def attach(self, model, config, log_dir=None, verbose=True,
             steps_per_epoch=None):
    del config, log_dir, verbose, steps_per_epoch
    return [freeze_masks(model, method='snip')]


class Prune(Dense):
  """Compressed sparse: gradual magnitude pruning of the dense model.

  Zhu & Gupta, "To prune, or not to prune", 2017,
  https://arxiv.org/abs/1710.01878, with tfmot's `prune_low_magnitude` and
  `PolynomialDecay` (from 0 to `config.sparsity` between
  `prune_begin_epoch` and `prune_end_epoch`, every `prune_frequency` steps)
  on the same kernels the sparse methods make sparse.
  """

  def _schedule(self, config, steps_per_epoch):
    steps = max(int(steps_per_epoch or 1), 1)
    return tfmot.sparsity.keras.PolynomialDecay(
        initial_sparsity=0.0, final_sparsity=config.sparsity,
        begin_step=config.prune_begin_epoch * steps,
        end_step=config.prune_end_epoch * steps,
        frequency=config.prune_frequency)

  def sparsity_by_step(self, config, steps_per_epoch, steps):
    """The pruned kernels' sparsity during each of `steps` training steps.

    tfmot updates the masks at the steps `begin + k * frequency` up to
    `end`, to the schedule's value there, and keeps them between updates.
    """
    schedule = self._schedule(config, steps_per_epoch)
    begin, end = schedule.begin_step, schedule.end_step
    step = np.arange(steps)
    last = begin + (np.minimum(step, end) - begin) // schedule.frequency * (
        schedule.frequency)
    progress = np.clip((last - begin) / max(end - begin, 1), 0.0, 1.0)
    sparsity = schedule.final_sparsity + (
        schedule.initial_sparsity - schedule.final_sparsity) * (
            1 - progress)**schedule.power
    return np.where(step < begin, schedule.initial_sparsity, sparsity)

  def training_flops(self, config, report, steps, reallocations,
                     steps_per_epoch):
    del reallocations
    return tf_dsr.flops.gradual_pruning_training_flops(
        report.dense, report.masked_dense,
        self.sparsity_by_step(config, steps_per_epoch, steps))

  def build(self, config, input_shape, num_classes, scope=contextlib.nullcontext,
            steps_per_epoch=None):
    schedule = self._schedule(config, steps_per_epoch)
    with scope():
      model = build_dense(config, input_shape, num_classes)
      sparse = set(models.sparse_kernel_layers(model, config.arch))
      model = keras.models.clone_model(
          model, clone_function=lambda layer: (
              tfmot.sparsity.keras.prune_low_magnitude(
                  layer, pruning_schedule=schedule)
              if layer.name in sparse else layer))
    return Built(model)

  def attach(self, model, config, log_dir=None, verbose=True,
             steps_per_epoch=None):
    del model, config, log_dir, verbose, steps_per_epoch
    return [tfmot.sparsity.keras.UpdatePruningStep()]


# The launcher's own methods; every other registered rule is a DynamicSparse.
_OWN = {'dense': Dense(), 'prune': Prune(), configs.STATIC: Static(),
        'snip': Snip(),
        'thin': Thin()}


def method(name):
  """The method object for `name` (one of `configs.methods()`)."""
  if name in _OWN:
    return _OWN[name]
  if name in tf_dsr.rules.REGISTRY:
    return DynamicSparse(name)
  raise LaunchError(f'unknown method {name!r}; valid methods are '
                    f'{list(configs.methods())}.')


def loss(k=keras):
  """The training loss of every config: cross-entropy on logits (of Keras `k`)."""
  return k.losses.SparseCategoricalCrossentropy(from_logits=True)


class _PiecewiseByEpoch:
  """A learning rate that is constant within pieces that start at given epochs.

  Args:
    rates: dict from the first (0-based) epoch of a piece to its rate, with
      increasing int keys starting at 0.
    steps_per_epoch: training steps per epoch.
  """

  def __init__(self, rates, steps_per_epoch):
    super().__init__()
    self.rates = {int(k): float(v) for k, v in rates.items()}
    self.steps_per_epoch = int(steps_per_epoch)

  def __call__(self, step):
    starts = tf.constant([e * self.steps_per_epoch for e in self.rates],
                         tf.int64)
    piece = tf.reduce_sum(tf.cast(tf.cast(step, tf.int64) >= starts[1:],
                                  tf.int32))
    return tf.gather(tf.constant(list(self.rates.values()), tf.float32), piece)

  def get_config(self):
    return {'rates': {str(k): v for k, v in self.rates.items()},
            'steps_per_epoch': self.steps_per_epoch}


# The schedule as each Keras's LearningRateSchedule.
@keras.utils.register_keras_serializable(package='launch')
class PiecewiseByEpoch(_PiecewiseByEpoch,
                       keras.optimizers.schedules.LearningRateSchedule):
  __doc__ = _PiecewiseByEpoch.__doc__


@keras3.saving.register_keras_serializable(package='launch')
class PiecewiseByEpochKeras3(_PiecewiseByEpoch,
                             keras3.optimizers.schedules.LearningRateSchedule):
  __doc__ = _PiecewiseByEpoch.__doc__


def compile_model(model, config, steps_per_epoch, steps_per_execution=1):
  """Compiles with the paper's SGD, the by-epoch learning rate and top-1/top-5."""
  k = keras_module(config)
  schedule = (PiecewiseByEpochKeras3 if k is keras3 else PiecewiseByEpoch)(
      config.learning_rate, steps_per_epoch)
  optimizer = k.optimizers.SGD(learning_rate=schedule,
                               momentum=config.momentum,
                               nesterov=config.nesterov)
  model.compile(
      optimizer=optimizer,
      loss=loss(k),
      metrics=[k.metrics.SparseCategoricalAccuracy(name='top1'),
               k.metrics.SparseTopKCategoricalAccuracy(k=5, name='top5')],
      steps_per_execution=steps_per_execution)
  optimizer.build(model.trainable_variables)  # Slots exist before a restore.


def flops_results(config, built, steps, reallocations, steps_per_epoch):
  """Inference and training FLOPs of a finished run, for `results.json`.

  Conventions of `tf_dsr.flops` (RigL's): per example, kernels only, a
  multiply-add is 2 FLOPs; both ratios are to the full dense model of the
  config (for `thin`, the full-width one).

  Returns:
    A dict: `inference` (f_S of the final model), `dense_inference` (f_D),
    `inference_fraction` (f_S / f_D) and `training_multiplier` (the mean
    training step's FLOPs over dense training's, 3 f_D), for a model of
    either Keras.
  """
  report = tf_dsr.flops_report(built.model)
  reference = built.reference_flops or report.dense
  training = method(config.method).training_flops(
      config, report, steps, reallocations, steps_per_epoch)
  return {
      'inference': report.sparse,
      'dense_inference': reference,
      'inference_fraction': report.sparse / reference,
      'training_multiplier': training / tf_dsr.flops.dense_training_flops(
          reference),
  }


def _pruned_kernels(layer):
  """`[(kernel, mask)]` of a tf_dsr or tfmot wrapper; [] for other layers."""
  if isinstance(layer, tf_dsr.DynamicSparseWrapper):
    return layer.sparse_weights
  if isinstance(layer, tf_dsr._tfmot.PruneLowMagnitude):  # pylint: disable=protected-access
    return [(weight, mask) for weight, mask, _ in layer.pruning_vars]
  return []


def parameter_counts(model):
  """Total and active trainable parameters, overall and per layer.

  A masked kernel (of tf_dsr's or tfmot's wrapper) counts its mask's active
  entries; every other parameter counts as active.

  Returns:
    A JSON-friendly dict: total, active, sparse_total, sparse_active, and
    per_layer: [{name, active, total, sparse}] for every layer with trainable
    weights (a wrapped layer is listed under its own name).
  """
  per_layer = []
  for layer in model.layers:
    total = trainable_count(layer)
    if not total:
      continue
    pairs = _pruned_kernels(layer)
    inactive = sum(int((np.asarray(m.numpy()) <= 0.5).sum()) for _, m in pairs)
    per_layer.append({
        'name': layer.layer.name if pairs else layer.name,
        'active': total - inactive,
        'total': total,
        'sparse': bool(pairs),
        'sparse_total': sum(_size(k) for k, _ in pairs),
    })
  sparse_total = sum(l.pop('sparse_total') for l in per_layer)
  total = sum(l['total'] for l in per_layer)
  active = sum(l['active'] for l in per_layer)
  return {'total': total, 'active': active, 'sparse_total': sparse_total,
          'sparse_active': sparse_total - (total - active),
          'per_layer': per_layer}
