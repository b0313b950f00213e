"""How the cost of one DSR reallocation grows with the number of sparse weights.

For each size (1M, 5M and 25M sparse weights by default) a model of two 3x3
convs and two dense layers, about half the weights in each kind, is wrapped
with `tf_dsr.sparsify` at sparsity 0.8, and `target_pruned` is 1.76% of the
sparse weights (ResNet-50's 400,000 of 22.7M in the paper). The active
kernels are drawn from N(0, 0.02) and H starts where N_p of them fall below
it, so every run prunes and regrows about N_p weights.

Each timed run restores the same kernels, masks and H first (untimed), then
times one `Reallocator.reallocate()` call until its stats reach the host.
Runs are interleaved over sizes and over `jit_compile=True` ("jit": the
whole program compiled) and `jit_compile=False` ("core": only the flat core
compiled, the CPU default); the order of the two modes alternates between
rounds, and medians are reported, since
the machine is shared and noisy. The exponent is the least-squares slope of
log(time) against log(weights) for each mode: 1 means linear cost. The
optimizer-state reset is not included (no optimizer); see
`benchmarks.reallocation_cost` for it.

    python -m benchmarks.reallocation_scaling [--sizes 1 5 25] [--repeats 7]
"""

# First, before anything loads TensorFlow: quiets its start-up log.
from launch import quiet  # pylint: disable=unused-import,g-bad-import-order

import argparse
import math
import statistics
import time

import numpy as np
import tensorflow as tf

import tf_dsr

keras = tf_dsr.keras

STDDEV = 0.02


def layer_sizes(num_weights):
  """Conv channels `c` and dense width `u` giving about `num_weights` kernels.

  Two 3x3 convs c -> c hold 18 c^2 weights and two dense layers c -> u -> u
  hold c u + u^2; each half gets about `num_weights / 2`.
  """
  channels = max(1, round(math.sqrt(num_weights / 36)))
  units = max(1, round((-channels + math.sqrt(channels**2 + 2 * num_weights))
                       / 2))
  return channels, units


def build(num_weights, sparsity, seed):
  """A sparsified model with about `num_weights` sparse weights."""
  channels, units = layer_sizes(num_weights)
  keras.utils.set_random_seed(seed)
  inputs = keras.Input((4, 4, channels))
  x = keras.layers.Conv2D(channels, 3, padding='same', name='conv_a')(inputs)
  x = keras.layers.Conv2D(channels, 3, padding='same', name='conv_b')(x)
  x = keras.layers.GlobalAveragePooling2D()(x)
  x = keras.layers.Dense(units, name='dense_a')(x)
  outputs = keras.layers.Dense(units, name='dense_b')(x)
  return tf_dsr.sparsify(keras.Model(inputs, outputs), sparsity, seed=seed)


class Case:
  """One model size: its reallocators and a way back to the same start."""

  def __init__(self, num_weights, sparsity, pruned_fraction, seed):
    self.model = build(num_weights, sparsity, seed)
    self.num_weights = sum(
        mask.shape.num_elements()
        for wrapper in tf_dsr.collect_wrappers(self.model)
        for _, mask in wrapper.sparse_weights)
    self.target_pruned = round(pruned_fraction * self.num_weights)
    self.reallocators = {
        jit: tf_dsr.Reallocator(self.model, target_pruned=self.target_pruned,
                                optimizer=False, jit_compile=jit, seed=seed)
        for jit in (True, False)}
    tensors = self.reallocators[True].sparse_tensors()
    self.kernels = [k for _, k, _ in tensors]
    self.masks = [m for _, _, m in tensors]
    self.num_tensors = len(tensors)
    for k, m in zip(self.kernels, self.masks):
      k.assign(tf.random.normal(k.shape, stddev=STDDEV, seed=seed) *
               tf.cast(m, k.dtype))
    active = sum(int(tf.math.count_nonzero(m)) for m in self.masks)
    # |w| < H for a fraction N_p / active of N(0, STDDEV) weights.
    fraction = min(self.target_pruned / active, 0.99)
    self.initial_threshold = STDDEV * statistics.NormalDist().inv_cdf(
        0.5 + fraction / 2)
    self._saved = [tf.Variable(v, trainable=False)
                   for v in self.kernels + self.masks]
    self._restore = tf.function(self._assign_saved)

  def _assign_saved(self):
    for variable, saved in zip(self.kernels + self.masks, self._saved):
      variable.assign(saved)

  def timed(self, jit):
    """Seconds for one reallocation from the saved start, and its K."""
    self._restore()
    self.reallocators[jit].state.threshold.assign(self.initial_threshold)
    _ = self.masks[-1][0, 0].numpy()  # The restore has finished.
    start = time.perf_counter()
    stats = self.reallocators[jit].reallocate()
    return time.perf_counter() - start, stats.pruned


def exponent(sizes, seconds):
  """Least-squares slope of log(seconds) against log(sizes)."""
  slope, _ = np.polyfit(np.log(sizes), np.log(seconds), 1)
  return float(slope)


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--sizes', type=float, nargs='+', default=[1, 5, 25],
                      help='sparse weights per model, in millions')
  parser.add_argument('--repeats', type=int, default=7)
  parser.add_argument('--sparsity', type=float, default=0.8)
  parser.add_argument('--pruned_fraction', type=float, default=0.0176,
                      help='target_pruned as a fraction of the sparse weights')
  args = parser.parse_args()
  modes = (True, False)

  cases = []
  for millions in args.sizes:
    print(f'building and compiling (untimed) the {millions:g}M-weight model, '
          'both jit_compile modes ...', flush=True)
    start = time.perf_counter()
    case = Case(round(millions * 1e6), args.sparsity, args.pruned_fraction,
                seed=0)
    for jit in modes:  # compile and warm up
      case.timed(jit)
      case.timed(jit)
    cases.append(case)
    print(f'built {case.num_weights:,} sparse weights in '
          f'{case.num_tensors} tensors, N_p {case.target_pruned:,}, '
          f'H0 {case.initial_threshold:.3g} '
          f'({time.perf_counter() - start:.0f} s with warm-up)', flush=True)

  times = {(i, jit): [] for i in range(len(cases)) for jit in modes}
  pruned = {key: [] for key in times}
  for round_index in range(args.repeats):
    print(f'round {round_index + 1}/{args.repeats}: timing one reallocation '
          f'per size and jit_compile mode ...', flush=True)
    order = modes if round_index % 2 == 0 else modes[::-1]
    for i, case in enumerate(cases):
      for jit in order:
        seconds, k = case.timed(jit)
        times[i, jit].append(seconds)
        pruned[i, jit].append(k)

  medians = {key: statistics.median(values) for key, values in times.items()}
  print(f'\nsparsity {args.sparsity}, target_pruned {args.pruned_fraction:.2%}'
        f' of the weights, {args.repeats} interleaved runs, medians')
  print(f'{"sparse weights":>15}{"N_p":>10}{"median K":>10}'
        f'{"jit ms":>10}{"core ms":>11}{"core/jit":>12}'
        f'{"jit ns/w":>10}{"core ns/w":>13}')
  for i, case in enumerate(cases):
    xla, plain = medians[i, True], medians[i, False]
    k = int(statistics.median(pruned[i, True] + pruned[i, False]))
    print(f'{case.num_weights:>15,}{case.target_pruned:>10,}{k:>10,}'
          f'{1e3 * xla:>10.1f}{1e3 * plain:>11.1f}{plain / xla:>12.2f}'
          f'{1e9 * xla / case.num_weights:>10.2f}'
          f'{1e9 * plain / case.num_weights:>13.2f}')
  if len(cases) > 1:
    sizes = [case.num_weights for case in cases]
    for jit in modes:
      fitted = exponent(sizes, [medians[i, jit] for i in range(len(cases))])
      print(f'time ~ weights^{fitted:.2f} with jit_compile={jit}')


if __name__ == '__main__':
  main()
