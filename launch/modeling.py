"""From a config to a compiled Keras model: architecture, sparse policy, method.

Each method (`dense`, `dsr`, `static`, `thin`) is a small class with two
steps: `build` makes the model (sparse ones through `tf_dsr.sparsify` with the
paper's sparse policy, `models.sparse_kernel_layers`), and `attach` binds what
keeps its masks (DSR's `ReallocationCallback`, or frozen masks). `attach` must
run before a checkpoint is restored, since it creates the DSR state the
checkpoint holds.
"""

import contextlib
import dataclasses
import math
from typing import Optional

import tensorflow as tf
import tf_dsr
from tf_dsr import keras

import models
from launch.errors import LaunchError

THIN_TOLERANCE = 0.02  # Relative gap allowed between thin and sparse counts.
_GRID = 10_000  # Width multipliers are searched in steps of 1 / _GRID.


def _wide_resnet(config, input_shape, num_classes, width_multiplier):
  return models.wide_resnet(
      depth=config.depth, width=config.width, num_classes=num_classes,
      input_shape=input_shape, weight_decay=config.weight_decay,
      width_multiplier=width_multiplier)


def _resnet50(config, input_shape, num_classes, width_multiplier):
  return models.resnet50(
      num_classes=num_classes, width_multiplier=width_multiplier,
      input_shape=input_shape, weight_decay=config.weight_decay)


def _lenet_300_100(config, input_shape, num_classes, width_multiplier):
  del config, width_multiplier
  return models.lenet_300_100(input_shape=input_shape, num_classes=num_classes)


def _small_cnn(config, input_shape, num_classes, width_multiplier):
  del config, width_multiplier
  return models.small_cnn(input_shape=input_shape, num_classes=num_classes)


_ARCHS = {
    'lenet_300_100': _lenet_300_100,
    'resnet50': _resnet50,
    'small_cnn': _small_cnn,
    'wide_resnet': _wide_resnet,
}


def trainable_count(model):
  """Number of trainable parameters of `model`."""
  return sum(w.shape.num_elements() for w in model.trainable_weights)


def build_dense(config, input_shape, num_classes, width_multiplier=1.0):
  """The plain model of `config.arch` (logits in float32 under mixed precision)."""
  model = _ARCHS[config.arch](config, tuple(input_shape), num_classes,
                              width_multiplier)
  if keras.mixed_precision.global_policy().compute_dtype != 'float32':
    logits = keras.layers.Activation('linear', dtype='float32',
                                     name='logits_float32')(model.output)
    model = keras.Model(model.input, logits, name=model.name)
  return model


def sparse_active_count(model, arch, sparsity):
  """Trainable parameters left active when the policy's kernels start at `sparsity`.

  Each sparse kernel of n entries keeps max(1, round((1 - sparsity) n)), as
  `tf_dsr.sparsify` does; every other parameter counts as active.
  """
  active = trainable_count(model)
  for name in models.sparse_kernel_layers(model, arch):
    size = model.get_layer(name).kernel.shape.num_elements()
    active -= size - max(1, round((1.0 - sparsity) * size))
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
  """
  model: keras.Model
  width_multiplier: Optional[float] = None
  target_params: Optional[int] = None


def freeze_masks(model):
  """Static sparse training: bind the model's wrappers to masks that never move.

  A `tf_dsr.StaticReallocator` marks the wrappers as managed (so training is
  allowed) and attaches the state to the model; nothing ever calls it, as it
  would change nothing.

  Returns:
    The reallocator (kept only so that callers may inspect it).
  """
  return tf_dsr.StaticReallocator(model)


class Dense:
  """The full dense model.

  `build(config, input_shape, num_classes, scope)` creates the model's
  variables under `scope()` (a distribution strategy's scope); any scratch
  models a method builds on the way are created outside it.
  """

  def build(self, config, input_shape, num_classes, scope=contextlib.nullcontext):
    with scope():
      return Built(build_dense(config, input_shape, num_classes))

  def attach(self, model, config, log_dir=None, verbose=True):
    del model, config, log_dir, verbose
    return []


class Thin(Dense):
  """A narrower dense model with as many parameters as the sparse model's active ones."""

  def build(self, config, input_shape, num_classes, scope=contextlib.nullcontext):
    full = build_dense(config, input_shape, num_classes)
    target = sparse_active_count(full, config.arch, config.sparsity)
    counts = {1.0: trainable_count(full)}
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
    return Built(model, width_multiplier=multiplier, target_params=target)


class Static(Dense):
  """The sparse model with its random initial masks frozen (static sparse)."""

  def build(self, config, input_shape, num_classes, scope=contextlib.nullcontext):
    with scope():
      model = build_dense(config, input_shape, num_classes)
      sparse = set(models.sparse_kernel_layers(model, config.arch))
      return Built(tf_dsr.sparsify(
          model, config.sparsity, exclude=lambda layer: layer.name not in sparse,
          seed=config.seed))

  def attach(self, model, config, log_dir=None, verbose=True):
    del config, log_dir, verbose
    freeze_masks(model)
    return []


class DynamicSparse(Static):
  """The sparse model trained with Dynamic Sparse Reparameterization."""

  def attach(self, model, config, log_dir=None, verbose=True):
    callback = tf_dsr.ReallocationCallback(
        target_pruned=config.target_pruned, tolerance=config.tolerance,
        initial_threshold=config.initial_threshold, period=dict(config.period),
        stop_epoch=config.stop_epoch, seed=config.seed, log_dir=log_dir,
        verbose=verbose)
    callback.set_model(model)  # Creates the DSR state before any restore.
    return [callback]


METHODS = {
    'dense': Dense(),
    'dsr': DynamicSparse(),
    'static': Static(),
    'thin': Thin(),
}


def method(name):
  """The method object for `name` ('dense', 'dsr', 'static' or 'thin')."""
  if name not in METHODS:
    raise LaunchError(f'unknown method {name!r}; valid methods are {list(METHODS)}.')
  return METHODS[name]


@keras.utils.register_keras_serializable(package='launch')
class PiecewiseByEpoch(keras.optimizers.schedules.LearningRateSchedule):
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


def compile_model(model, config, steps_per_epoch, steps_per_execution=1):
  """Compiles with the paper's SGD, the by-epoch learning rate and top-1/top-5."""
  optimizer = keras.optimizers.SGD(
      learning_rate=PiecewiseByEpoch(config.learning_rate, steps_per_epoch),
      momentum=config.momentum, nesterov=config.nesterov)
  model.compile(
      optimizer=optimizer,
      loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
      metrics=[keras.metrics.SparseCategoricalAccuracy(name='top1'),
               keras.metrics.SparseTopKCategoricalAccuracy(k=5, name='top5')],
      steps_per_execution=steps_per_execution)
  optimizer.build(model.trainable_variables)  # Slots exist before a restore.


def parameter_counts(model):
  """Total and active trainable parameters, overall and per layer.

  Returns:
    A JSON-friendly dict: total, active, sparse_total, sparse_active, and
    per_layer: [{name, active, total, sparse}] for every layer with trainable
    weights (a wrapped layer is listed under its own name).
  """
  report = tf_dsr.sparsity_report(model)
  inactive = {}
  for tensor in report.tensors:
    wrapper = tensor.name.split('/')[0]
    inactive[wrapper] = inactive.get(wrapper, 0) + tensor.total - tensor.active
  per_layer = []
  for layer in model.layers:
    total = trainable_count(layer)
    if not total:
      continue
    sparse = isinstance(layer, tf_dsr.DynamicSparseWrapper)
    per_layer.append({
        'name': layer.layer.name if sparse else layer.name,
        'active': total - inactive.get(layer.name, 0),
        'total': total,
        'sparse': sparse,
    })
  return {'total': report.model_total, 'active': report.model_active,
          'sparse_total': report.sparse_total,
          'sparse_active': report.sparse_active, 'per_layer': per_layer}
