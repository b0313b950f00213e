"""Offline quick start: dense vs static sparse vs DSR on scikit-learn's digits.

  python -m launch.quickstart

Trains LeNet-300-100 on the 8x8 handwritten digits that ship with
scikit-learn (nothing is downloaded): the dense model, the model at sparsity
0.9 with its random mask frozen (static sparse), and the same sparse model
trained with Dynamic Sparse Reparameterization, each for the same number of
steps (configs `lenet_digits_{dense,static,dsr}`), once per seed; then DSR
again with the model built and trained in Keras 3 (`lenet_digits_dsr` with
`keras=keras3`). It prints the active parameter count and the mean and
sample standard deviation of the test accuracy over the seeds. Each run goes
through `launch.runner.run`, the code path of the full experiments.
"""

# First, before anything loads TensorFlow: quiets its start-up log.
from launch import quiet  # pylint: disable=unused-import,g-bad-import-order

import dataclasses
import statistics
import sys
import time
from typing import Tuple

from absl import app
from absl import flags
from absl import logging

import keras as keras3
from tf_dsr import keras

from launch import configs
from launch import progress as progress_lib
from launch import runner
from launch.errors import LaunchError


@dataclasses.dataclass(frozen=True)
class Row:
  """One row of the table: config `lenet_digits_{method}` with `overrides`."""
  method: str
  overrides: Tuple[str, ...] = ()
  suffix: str = ''  # Added to the method's label.

  @property
  def label(self):
    return configs.label(self.method) + self.suffix


ROWS = (Row('dense'), Row('static'), Row('dsr'),
        Row('dsr', ('keras=keras3',), ' (Keras 3)'))

FLAGS = flags.FLAGS
flags.DEFINE_integer('seeds', 3, 'Runs per method, with seeds 0, 1, ...')
flags.DEFINE_multi_string('override', [], 'key=value change applied to every '
                          'run (for example epochs=2 for a smoke test).')


def compare(seeds=3, overrides=(), rows=ROWS, say=None):
  """Trains every row's config once per seed with the same step budget.

  Args:
    seeds: number of seeds (0 .. seeds - 1).
    overrides: `key=value` strings applied to every config (after a row's
      own).
    rows: the `Row`s to train.
    say: if set, called with one progress line after each run: its number,
      label, seed, accuracy and time, the elapsed time and an estimate of
      the time left.

  Returns:
    One dict per row: its label, active and total parameters, steps, the
    test accuracies (one per seed), and the wall time in seconds.
  """
  table = []
  progress = progress_lib.Progress(len(rows) * seeds)
  for row in rows:
    accuracies, start = [], time.time()
    for seed in range(seeds):
      keras.backend.clear_session()
      keras3.backend.clear_session()
      config = runner.resolve(f'lenet_digits_{row.method}',
                              list(row.overrides) + list(overrides) +
                              [f'seed={seed}'])
      run_start = time.time()
      results = runner.run(config, verbose=0)
      accuracies.append(results['top1'])
      progress.finish_one()
      if say:
        say(f'[quickstart] run {progress.done} of {progress.total}: '
            f'{row.label}, seed {seed}: test accuracy '
            f'{results["top1"]:.4f} in {time.time() - run_start:.0f} s; '
            f'{progress.status()}')
    table.append({'label': row.label, 'active': results['params']['active'],
                  'total': results['params']['total'],
                  'steps': results['steps'], 'accuracies': accuracies,
                  'seconds': round(time.time() - start, 1)})
  return table


def format_table(rows):
  """The comparison as a text table: accuracy as mean +- sample std over seeds."""
  lines = [f'{"method":<16} {"active / total params":>22} {"steps":>6} '
           f'{"test accuracy":>22} {"seeds":>5}']
  for row in rows:
    values = row['accuracies']
    spread = statistics.stdev(values) if len(values) > 1 else float('nan')
    params = f'{row["active"]:,} / {row["total"]:,}'
    accuracy = f'{statistics.mean(values):.4f} +- {spread:.4f}'
    lines.append(f'{row["label"]:<16} {params:>22} '
                 f'{row["steps"]:>6} {accuracy:>22} {len(values):>5}')
  return '\n'.join(lines)


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'unexpected arguments: {argv[1:]}')
  if FLAGS.seeds < 1:
    raise app.UsageError(f'--seeds must be >= 1, got {FLAGS.seeds}')
  logging.set_verbosity(logging.WARNING)
  start = time.time()
  try:
    print(f'[quickstart] {len(ROWS) * FLAGS.seeds} runs: '
          f'{", ".join(row.label for row in ROWS)} x {FLAGS.seeds} '
          'seeds', flush=True)
    rows = compare(FLAGS.seeds, FLAGS.override,
                   say=lambda line: print(line, flush=True))
  except LaunchError as error:
    print(f'error: {error}', file=sys.stderr)
    sys.exit(2)
  print('LeNet-300-100 on scikit-learn digits (1,347 train / 450 test images), '
        'sparsity 0.9 for static sparse and DSR (the last row in Keras 3):')
  print(format_table(rows))
  print(f'total wall time {time.time() - start:.0f} s')


if __name__ == '__main__':
  app.run(main)
