"""Cost of one DSR reallocation on ResNet-50's sparse tensors vs a memory floor.

The sparse set is the paper's: the 48 bottleneck convs and the final FC of
ResNet-50, 22,724,608 weights, here at sparsity 0.8. The floor is the least
any reallocation must do: one XLA-compiled program that reads every kernel
and mask and writes both (XLA on CPU writes them in two passes, one per
variable, as the reallocation's writes do; the previous floor's mask write
was compiled away, and it is still timed, for comparison). Every timed run, floor or reallocation, ends by bringing
one small value to the host (one element, or the reallocation's scalar
stats). The reallocation runs with the default `jit_compile` of this device
and with `jit_compile=True`, without and with an optimizer whose momentum it
resets; RigL's (random dense gradients, drop fraction 0.3) for comparison.
Runs are interleaved (floor, reallocation, floor, ...) and medians
compared, since the machine is shared and noisy.

    python -m benchmarks.reallocation_cost [--repeats 15]
"""

# First, before anything loads TensorFlow: quiets its start-up log.
from launch import quiet  # pylint: disable=unused-import,g-bad-import-order

import argparse
import statistics
import time

import tensorflow as tf

import tf_dsr
from models import resnet50
from models import sparse_kernel_layers


def build(sparsity, optimizer):
  model = resnet50()
  names = set(sparse_kernel_layers(model, 'resnet50'))
  model = tf_dsr.sparsify(model, sparsity,
                          exclude=lambda layer: layer.name not in names)
  if optimizer is not None:
    optimizer.build(model.trainable_variables)
  return model


def median_ms(times):
  return 1e3 * statistics.median(times)


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--repeats', type=int, default=15)
  parser.add_argument('--sparsity', type=float, default=0.8)
  args = parser.parse_args()

  print(f'building ResNet-50 with its sparse set at sparsity {args.sparsity} ...',
        flush=True)
  optimizer = tf_dsr.keras.optimizers.SGD(0.1, momentum=0.9, nesterov=True)
  model = build(args.sparsity, optimizer)
  default_jit = tf_dsr.engine.default_jit_compile()
  reallocators = {}
  for jit in (default_jit, True):
    for name, opt in (('reallocation (masks, kernels)', False),
                      ('reallocation + momentum reset', optimizer)):
      reallocators[f'{name}, jit_compile={jit}'] = tf_dsr.Reallocator(
          model, target_pruned=400_000, optimizer=opt, jit_compile=jit, seed=1)
  # RigL at its first update (drop fraction 0.3, per-layer exact top-k drop
  # and growth by dense-gradient magnitude), momentum reset included, on a
  # copy of the model of its own (its zero-valued regrowth would otherwise
  # change what DSR prunes).
  rigl_optimizer = tf_dsr.keras.optimizers.SGD(0.1, momentum=0.9,
                                               nesterov=True)
  rigl_model = build(args.sparsity, rigl_optimizer)
  pairs = lambda m: [p for w in tf_dsr.collect_wrappers(m)
                     for p in w.sparse_weights]
  for (_, m), (rk, rm) in zip(pairs(model), pairs(rigl_model)):
    rk.assign(tf.random.normal(rk.shape, stddev=0.02) * tf.cast(m, rk.dtype))
    rm.assign(m)
  rigl = tf_dsr.Reallocator(rigl_model, 'rigl', schedule='constant',
                            optimizer=rigl_optimizer, jit_compile=default_jit)
  reallocators[f'RigL (f = 0.3) + momentum reset, jit_compile={default_jit}'] = (
      rigl)
  for value in rigl.gradient_recorder.values:
    value.assign(tf.random.normal(value.shape))
  any_reallocator = next(iter(reallocators.values()))
  tensors = any_reallocator.sparse_tensors()
  kernels = [k for _, k, _ in tensors]
  masks = [m for _, _, m in tensors]
  total = sum(m.shape.num_elements() for m in masks)
  print(f'{len(masks)} sparse tensors, {total:,} weights, sparsity '
        f'{args.sparsity}; default jit_compile here: {default_jit}')
  # Give the weights a spread so that about N_p of them fall below H.
  for k, m in zip(kernels, masks):
    k.assign(tf.random.normal(k.shape, stddev=0.02) * tf.cast(m, k.dtype))
  any_reallocator.state.threshold.assign(1e-3)

  @tf.function(jit_compile=True)
  def floor(keep_all):
    # Reads every kernel and mask, writes both (the values do not change).
    # The mask's new value depends on an argument, so that XLA must write
    # it: it compiled the previous floor's `where(|k| >= 0, m, 0)` to the
    # mask itself and wrote nothing.
    for k, m in zip(kernels, masks):
      keep = tf.cast(m, tf.bool)
      k.assign(tf.where(keep, k, tf.zeros_like(k)))
      m.assign(tf.cast(keep & keep_all, m.dtype))
    return kernels[-1][0, 0]

  @tf.function(jit_compile=True)
  def kernels_only():
    # The previous floor, as XLA compiles it: reads every kernel and mask,
    # writes the kernels only.
    for k, m in zip(kernels, masks):
      keep = tf.cast(m, tf.bool)
      k.assign(tf.where(keep, k, tf.zeros_like(k)))
    return kernels[-1][0, 0]

  def timed(fn):
    start = time.perf_counter()
    result = fn()
    if hasattr(result, 'pruned'):
      _ = result.pruned  # the stats are already on the host
    else:
      _ = result.numpy()
    return time.perf_counter() - start

  keep_all = tf.constant(True)
  runs = {'floor': lambda: floor(keep_all),
          'floor without the mask writes (the previous floor)': kernels_only}
  runs.update({name: r.reallocate for name, r in reallocators.items()})
  for name, fn in runs.items():  # compile and warm up
    print(f'compiling and warming up (untimed): {name} ...', flush=True)
    fn(); fn()
  times = {name: [] for name in runs}
  for round_index in range(args.repeats):
    print(f'round {round_index + 1}/{args.repeats}: timing the floor and '
          f'{len(reallocators)} reallocation variants, interleaved ...',
          flush=True)
    for name, fn in runs.items():
      times[name].append(timed(fn))
  stats = any_reallocator.reallocate()
  floor_ms = median_ms(times['floor'])
  print(f'last reallocation: K={stats.pruned}, H {stats.threshold_used:.3g} -> '
        f'{stats.threshold:.3g}, active {stats.total_active:,}')
  print(f'{"what":<55}{"median ms":>10}{"x floor":>9}')
  for name, values in times.items():
    ms = median_ms(values)
    print(f'{name:<55}{ms:>10.1f}{ms / floor_ms:>9.2f}')


if __name__ == '__main__':
  main()
