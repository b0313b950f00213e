"""Training-step time: WRN-28-2 with tf_dsr at 0.9 vs dense vs tfmot pruning.

The same batch (CIFAR-10 shaped, random) goes through four models: the dense
WRN-28-2, the same model with the paper's 24 sparse kernels wrapped by
`tf_dsr.sparsify` at sparsity 0.9 (bool masks, and float32 masks as before
they were bool), and the same kernels wrapped by tfmot's
`prune_low_magnitude` at constant sparsity 0.9. Also printed: the training
state per sparse weight (`SparsityReport.training_bytes_per_sparse_weight`). Runs are interleaved (a few
steps of each model in turn, repeated) and the medians of per-step times are
compared, since the machine is shared and noisy. No reallocation falls inside
the timed steps (its cost is measured by `benchmarks.reallocation_cost`).

    python -m benchmarks.step_time [--batch 100] [--rounds 5] [--steps 6]
"""

# First, before anything loads TensorFlow: quiets its start-up log.
from launch import quiet  # pylint: disable=unused-import,g-bad-import-order

import argparse
import statistics
import time

import numpy as np
import tensorflow as tf
import tensorflow_model_optimization as tfmot

import tf_dsr
from models import sparse_kernel_layers
from models import wide_resnet

keras = tf_dsr.keras


class _StepTimer(keras.callbacks.Callback):

  def __init__(self):
    super().__init__()
    self.times = []
    self._start = None

  def on_train_batch_begin(self, batch, logs=None):
    self._start = time.perf_counter()

  def on_train_batch_end(self, batch, logs=None):
    self.times.append(time.perf_counter() - self._start)


def _compile(model):
  model.compile(
      keras.optimizers.SGD(0.1, momentum=0.9, nesterov=True),
      keras.losses.SparseCategoricalCrossentropy(from_logits=True))
  return model


def build_models(sparsity):
  keras.utils.set_random_seed(0)
  dense = wide_resnet(depth=28, width=2, num_classes=10)
  names = set(sparse_kernel_layers(dense, 'wide_resnet'))
  dsr = tf_dsr.sparsify(wide_resnet(depth=28, width=2, num_classes=10),
                        sparsity, exclude=lambda l: l.name not in names)
  dsr_float32 = tf_dsr.sparsify(
      wide_resnet(depth=28, width=2, num_classes=10), sparsity,
      exclude=lambda l: l.name not in names, mask_dtype='float32')
  schedule = tfmot.sparsity.keras.ConstantSparsity(sparsity, begin_step=0,
                                                   frequency=100)

  def prune(layer):
    if layer.name in names:
      return tfmot.sparsity.keras.prune_low_magnitude(
          layer, pruning_schedule=schedule)
    return layer

  pruned = keras.models.clone_model(
      wide_resnet(depth=28, width=2, num_classes=10), clone_function=prune)
  models = {'dense': _compile(dense), 'tf_dsr 0.9': _compile(dsr),
            'tf_dsr float32 masks': _compile(dsr_float32),
            'tfmot prune 0.9': _compile(pruned)}
  callbacks = {
      'dense': [],
      # A period longer than the run: the wrappers are bound, none reallocates
      # inside the timed steps.
      'tf_dsr 0.9': [tf_dsr.ReallocationCallback(target_pruned=20_000,
                                                 period=10**9)],
      'tf_dsr float32 masks': [tf_dsr.ReallocationCallback(
          target_pruned=20_000, period=10**9)],
      'tfmot prune 0.9': [tfmot.sparsity.keras.UpdatePruningStep()],
  }
  return models, callbacks


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--batch', type=int, default=100)
  parser.add_argument('--rounds', type=int, default=5)
  parser.add_argument('--steps', type=int, default=6)
  parser.add_argument('--sparsity', type=float, default=0.9)
  args = parser.parse_args()

  rng = np.random.default_rng(0)
  x = rng.normal(size=(args.batch, 32, 32, 3)).astype('float32')
  y = rng.integers(0, 10, size=args.batch)
  data = tf.data.Dataset.from_tensors((x, y)).repeat()
  print('building WRN-28-2: dense, tf_dsr and tfmot ...', flush=True)
  models, callbacks = build_models(args.sparsity)
  times = {name: [] for name in models}
  for name, model in models.items():  # trace and warm up
    print(f'tracing and warming up (untimed): {name} ...', flush=True)
    model.fit(data, steps_per_epoch=2, epochs=1, verbose=0,
              callbacks=callbacks[name])
  for round_index in range(args.rounds):
    print(f'round {round_index + 1}/{args.rounds}: timing {args.steps} '
          f'training steps of each model ...', flush=True)
    for name, model in models.items():
      timer = _StepTimer()
      model.fit(data, steps_per_epoch=args.steps, epochs=1, verbose=0,
                callbacks=callbacks[name] + [timer])
      times[name] += timer.times[1:]  # the first step of a fit call waits on setup
  dense_ms = 1e3 * statistics.median(times['dense'])
  print(f'WRN-28-2, batch {args.batch}, {args.rounds} interleaved rounds of '
        f'{args.steps} steps, medians')
  float32_ms = 1e3 * statistics.median(times['tf_dsr float32 masks'])
  print(f'{"model":<22}{"ms/step":>10}{"x dense":>9}{"x float32 masks":>17}'
        f'{"state B/sparse w":>18}')
  for name, values in times.items():
    ms = 1e3 * statistics.median(values)
    report = tf_dsr.sparsity_report(models[name])
    state = report.training_bytes_per_sparse_weight
    if name == 'dense':
      state = _dense_bytes(models['tf_dsr 0.9'])
    print(f'{name:<22}{ms:>10.1f}{ms / dense_ms:>9.3f}'
          f'{ms / float32_ms:>17.3f}{state:>18g}')


def _dense_bytes(sparse_model):
  return tf_dsr.sparsity_report(sparse_model).dense_training_bytes_per_weight


if __name__ == '__main__':
  main()
