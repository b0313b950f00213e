"""How long the first reallocation takes (trace + compile + run), and later ones.

For the paper's two sparse sets at sparsity 0.9 (WRN-28-2: 24 tensors,
1,451,520 weights; ResNet-50: 49 tensors, 22,724,608 weights), with the
default DSR settings of each (N_p 20,000 and 400,000) and an SGD optimizer
with Nesterov momentum (so the momentum reset is included), each case runs in
a fresh Python process: build the model (not timed), time the first
`Reallocator.reallocate()` until its stats reach the host, then time
`--later` more calls and report their median; then build a second model of
the same architecture in the same process (a rebuilt or reloaded model, or
the next run of a sweep) and time its first call, which reuses the compiled
program. Two modes: `xla`
(`jit_compile=True`: one XLA program, as on TPUs) and `split`
(`jit_compile=False`: the flat core and the writes compiled as separate XLA
programs, one write per distinct tensor shape; the CPU default). Cases are interleaved
(model x mode) over `--rounds` rounds and medians of the rounds reported,
since the machine is shared and noisy.

    python -m benchmarks.first_reallocation [--rounds 3] [--later 10]
"""

# First, before anything loads TensorFlow: quiets its start-up log.
from launch import quiet  # pylint: disable=unused-import,g-bad-import-order

import argparse
import json
import statistics
import subprocess
import sys
import time

MODELS = {
    # arch -> N_p, the paper's target per reallocation
    'wrn28_2': 20_000,
    'resnet50': 400_000,
}


def _case(arch, jit, later, sparsity):
  """Runs in the child process: returns a dict of timings."""
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  import models  # pylint: disable=g-import-not-at-top
  import tf_dsr  # pylint: disable=g-import-not-at-top

  tf.get_logger().setLevel('ERROR')

  def build(seed):
    if arch == 'wrn28_2':
      model = models.wide_resnet(depth=28, width=2, input_shape=(32, 32, 3))
      policy = 'wide_resnet'
    else:
      model = models.resnet50()
      policy = 'resnet50'
    names = set(models.sparse_kernel_layers(model, policy))
    model = tf_dsr.sparsify(model, sparsity, seed=seed,
                            exclude=lambda layer: layer.name not in names)
    optimizer = tf_dsr.keras.optimizers.SGD(0.1, momentum=0.9, nesterov=True)
    optimizer.build(model.trainable_variables)
    return tf_dsr.Reallocator(model, target_pruned=MODELS[arch],
                              optimizer=optimizer, jit_compile=jit, seed=seed)

  realloc = build(seed=1)
  layout = realloc.layout
  start = time.perf_counter()
  realloc.reallocate(1)
  first = time.perf_counter() - start
  times = []
  for step in range(later):
    start = time.perf_counter()
    stats = realloc.reallocate(step + 2)
    times.append(time.perf_counter() - start)
  second = build(seed=2)
  start = time.perf_counter()
  second.reallocate(1)
  second_first = time.perf_counter() - start
  return {'tensors': layout.num_tensors, 'weights': sum(layout.sizes),
          'first': first, 'later': statistics.median(times),
          'second_model_first': second_first,
          'traces': second.trace_count, 'pruned': stats.pruned}


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--rounds', type=int, default=3)
  parser.add_argument('--later', type=int, default=10)
  parser.add_argument('--sparsity', type=float, default=0.9)
  parser.add_argument('--models', default='wrn28_2,resnet50')
  parser.add_argument('--child', help=argparse.SUPPRESS)
  args = parser.parse_args()
  if args.child:
    arch, jit = args.child.split(':')
    print(json.dumps(_case(arch, jit == 'xla', args.later, args.sparsity)))
    return

  cases = [(arch, mode) for arch in args.models.split(',')
           for mode in ('xla', 'split')]
  results = {case: [] for case in cases}
  for round_index in range(args.rounds):
    order = cases if round_index % 2 == 0 else cases[::-1]
    for arch, mode in order:
      print(f'round {round_index + 1}/{args.rounds}: {arch}, {mode}: timing '
            f'the first and {args.later} later reallocations in a fresh '
            'process ...', flush=True)
      output = subprocess.run(
          [sys.executable, '-m', 'benchmarks.first_reallocation',
           f'--child={arch}:{mode}', f'--later={args.later}',
           f'--sparsity={args.sparsity}'],
          check=True, capture_output=True, text=True).stdout
      results[(arch, mode)].append(json.loads(output.strip().splitlines()[-1]))

  print(f'\nsparsity {args.sparsity}, medians of {args.rounds} rounds '
        f'(later: median of {args.later} calls each)')
  print(f'{"model":<10}{"tensors":>8}{"weights":>12}{"mode":>8}'
        f'{"first s":>9}{"later ms":>10}{"2nd model first s":>19}'
        f'{"traces":>7}')
  for (arch, mode), runs in results.items():
    first = statistics.median(r['first'] for r in runs)
    later = statistics.median(r['later'] for r in runs)
    print(f'{arch:<10}{runs[0]["tensors"]:>8}{runs[0]["weights"]:>12,}'
          f'{mode:>8}{first:>9.2f}{1e3 * later:>10.1f}'
          f'{statistics.median(r["second_model_first"] for r in runs):>19.3f}'
          f'{max(r["traces"] for r in runs):>7}')
  for arch in args.models.split(','):
    xla = statistics.median(r['first'] for r in results[(arch, 'xla')])
    plain = statistics.median(r['first'] for r in results[(arch, 'split')])
    xla_later = statistics.median(r['later'] for r in results[(arch, 'xla')])
    plain_later = statistics.median(
        r['later'] for r in results[(arch, 'split')])
    print(f'{arch}: first call xla / split = {xla / plain:.2f}; later calls '
          f'xla / split = {xla_later / plain_later:.2f}')


if __name__ == '__main__':
  main()
