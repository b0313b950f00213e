"""Experiment grids: methods x sparsities x seeds, one run directory each, and a report.

  python -m launch.experiment --suite=small --out=runs/small
  python -m launch.experiment --suite=small --out=runs/small --report_only
  python -m launch.experiment --suite=controls --family=lenet_digits --out=runs/c
  python -m launch.experiment --suite=small --methods=dense,dsr --seeds=1 \
      --override epochs=1 --out=/tmp/smoke

Every run goes through `launch.runner.run` into `OUT/RUN_ID/` (see
`launch.outputs`), next to an `experiment.json` naming its grid cell. The
grid is resumable: a run with `results.json` is skipped, one with a
checkpoint is resumed. `report.md` and the PNG plots are then rebuilt from the
run directories alone (`--report_only` does only that):

- a table: model, method, variant, sparsity, active parameters, test top-1
  as mean ± sample std over seeds, mean wall time per run;
- `accuracy_vs_sparsity_{family}.png`: top-1 against sparsity per method;
- `dsr_density_{family}.png`: each sparse layer's density over training in a
  DSR run (from its `logs/dsr` TensorBoard scalars `dsr_density/*`): the
  layer-wise redistribution of Mostafa & Wang 2019, figure 4;
- `accuracy_vs_stop_epoch_{family}.png` for the stop-epoch sweep.

Suites (docs/algorithm.md sections 5-7): `wrn28_2_cifar10` (every method at 0.5-0.9,
5 seeds), `resnet50_imagenet` (0.8 and 0.9, one seed), `controls` (DSR, its
final structure re-initialised at random, with its own initial values, and
static sparse), `stop_epoch_sweep` (DSR frozen after epoch E), and `small`
(every method on scikit-learn's digits with LeNet-300-100 and a small conv
net; 3 seeds; minutes on a CPU). The paper-scale suites need accelerators.
"""

# First, before anything loads TensorFlow: quiets its start-up log.
from launch import quiet  # pylint: disable=unused-import,g-bad-import-order

import dataclasses
import json
import os
import re
import statistics
import sys
import time
from typing import Tuple

from absl import app
from absl import flags
from absl import logging

from launch import configs
from launch import progress as progress_lib
from launch.errors import LaunchError

# The order of the methods in grids, tables and plots; rules registered later
# follow them (`method_order()`). Labels are `configs.label`.
METHOD_ORDER = ('dense', 'thin', 'static', 'snip', 'deepr', 'set', 'snfs',
                'rigl', 'prune', 'dsr')
# The method whose runs the controls re-use, the stop-epoch sweep stops early
# and the density plot shows (docs/algorithm.md section 7; Mostafa & Wang, figure 4).
SOURCE_METHOD = 'dsr'
EXPERIMENT_FILE = 'experiment.json'
REPORT_FILE = 'report.md'


@dataclasses.dataclass(frozen=True)
class Run:
  """One cell of a grid.

  Attributes:
    run_id: the run's directory name inside the experiment directory.
    config: the registered config name.
    overrides: `key=value` changes to the config.
    family: model and data, e.g. 'wrn28_2_cifar10'.
    method: a method of `configs.methods()`.
    sparsity: the sparsity (0 for dense).
    seed: the seed.
    variant: what else distinguishes the run ('' for none), e.g. a control.
  """
  run_id: str
  config: str
  overrides: Tuple[str, ...]
  family: str
  method: str
  sparsity: float
  seed: int
  variant: str = ''


def _config_name(family, method, sparsity):
  """The registered config of `family` and `method`, plus a sparsity override."""
  if method == 'dense':
    return f'{family}_dense', ()
  exact = f'{family}_{method}_s{sparsity:g}'
  if exact in configs.CONFIGS:
    return exact, ()
  name = f'{family}_{method}'
  if name not in configs.CONFIGS:
    raise LaunchError(f'no config for family {family!r} and method {method!r}.')
  return name, (f'sparsity={sparsity:g}',)


def cell(family, method, sparsity, seed, variant='', extra=()):
  """The `Run` of one grid cell."""
  name, overrides = _config_name(family, method, sparsity)
  sparsity = 0.0 if method == 'dense' else sparsity
  run_id = (f'{family}_{method}' + (f'_s{sparsity:g}' if sparsity else '') +
            (f'_{variant}' if variant else '') + f'_seed{seed}')
  return Run(run_id, name, tuple(overrides) + (f'seed={seed}',) + tuple(extra),
             family, method, sparsity, seed, variant)


def method_order():
  """`METHOD_ORDER`, then every other method (rules registered later), sorted."""
  return METHOD_ORDER + tuple(m for m in configs.methods()
                              if m not in METHOD_ORDER)


def _methods_of(family):
  """The methods that have a named config in `family`, in `method_order()`."""
  present = {c.method for name, c in configs.CONFIGS.items()
             if name.startswith(family + '_')}
  return [m for m in method_order() if m in present]


def grid(families, methods, seeds):
  """Every method at every sparsity of its family, once per seed; dense once per seed.

  Args:
    families: dict family -> sparsities.
    methods: method names.
    seeds: seeds.
  """
  runs = []
  for family, sparsities in families.items():
    for seed in seeds:
      if 'dense' in methods:
        runs.append(cell(family, 'dense', 0.0, seed))
      for sparsity in sparsities:
        runs += [cell(family, m, sparsity, seed) for m in methods
                 if m != 'dense']
  return runs


def _wrn(out, family, methods, seeds):
  del out, family
  return grid({'wrn28_2_cifar10': (0.5, 0.6, 0.7, 0.8, 0.9)},
              methods or _methods_of('wrn28_2_cifar10'), range(seeds or 5))


def _resnet50(out, family, methods, seeds):
  del out, family
  return grid({'resnet50_imagenet': (0.8, 0.9)},
              methods or _methods_of('resnet50_imagenet'), range(seeds or 1))


# The `small` suite's ERK column: these methods again with ERK layer
# densities (`distribution=erk`), as RigL's comparison does.
SMALL_ERK_METHODS = ('static', 'rigl')


def _small(out, family, methods, seeds):
  del out
  families = {'lenet_digits': (0.8, 0.9), 'small_cnn_digits': (0.5, 0.8)}
  if family:
    families = {family: families[family]}
  runs = []
  for name, sparsities in families.items():
    chosen = methods or _methods_of(name)
    runs += grid({name: sparsities}, chosen, range(seeds or 3))
    runs += [cell(name, method, sparsity, seed, 'erk', ('distribution=erk',))
             for seed in range(seeds or 3) for sparsity in sparsities
             for method in SMALL_ERK_METHODS if method in chosen]
  return runs


def _family_sparsities(family):
  return {'wrn28_2_cifar10': (0.8, 0.9), 'resnet50_imagenet': (0.8, 0.9),
          'lenet_digits': (0.9,), 'small_cnn_digits': (0.8,)}[family]


def _controls(out, family, methods, seeds):
  """docs/algorithm.md section 7, controls 1-4, for each sparsity and seed.

  The structure controls read the masks and step-0 weights the DSR run of the
  same sparsity and seed exported, so that run comes first in the grid.
  """
  del methods
  family = family or 'wrn28_2_cifar10'
  runs = []
  for sparsity in _family_sparsities(family):
    for seed in range(seeds or 5):
      source = cell(family, SOURCE_METHOD, sparsity, seed)
      source_dir = os.path.join(os.path.abspath(out), source.run_id)
      runs.append(source)
      # A fresh initialisation needs a different seed from the source's.
      runs.append(cell(family, configs.STATIC, sparsity, seed,
                       'dsr_structure_random_init',
                       (f'masks_from={source_dir}', 'initial_values=random',
                        f'seed={seed + 1000}')))
      runs.append(cell(family, configs.STATIC, sparsity, seed,
                       'dsr_structure_saved_init',
                       (f'masks_from={source_dir}', 'initial_values=saved')))
      runs.append(cell(family, configs.STATIC, sparsity, seed))
  return runs


def _stop_epoch_sweep(out, family, methods, seeds):
  """docs/algorithm.md section 7, control 5: DSR frozen after epoch E, E over the run."""
  del out, methods
  family = family or 'wrn28_2_cifar10'
  sparsity = _family_sparsities(family)[-1]
  epochs = configs.get(_config_name(family, SOURCE_METHOD, sparsity)[0]).epochs
  stops = sorted({max(1, round(f * epochs))
                  for f in (0.05, 0.1, 0.25, 0.5, 0.75)})
  runs = []
  for seed in range(seeds or 3):
    runs.append(cell(family, configs.STATIC, sparsity, seed))
    for stop in stops:
      runs.append(cell(family, SOURCE_METHOD, sparsity, seed, f'stop{stop}',
                       (f'stop_epoch={stop}',)))
    runs.append(cell(family, SOURCE_METHOD, sparsity, seed))
  return runs


SUITES = {
    'controls': _controls,
    'resnet50_imagenet': _resnet50,
    'small': _small,
    'stop_epoch_sweep': _stop_epoch_sweep,
    'wrn28_2_cifar10': _wrn,
}


def suite_runs(suite, out, family=None, methods=None, seeds=None):
  """The `Run`s of a suite, optionally restricted to a family, methods, a seed count."""
  if suite not in SUITES:
    raise LaunchError(f'unknown suite {suite!r}; valid suites are '
                      f'{sorted(SUITES)}.')
  for method in methods or ():
    if method not in configs.methods():
      raise LaunchError(f'unknown method {method!r}; valid methods are '
                        f'{list(configs.methods())}.')
  return SUITES[suite](out, family, methods, seeds)


# ------------------------------------------------------------------ running
def applicable(overrides, method):
  """The `key=value` overrides that apply to `method`.

  A grid mixes methods, so an override of a method's own field (say
  `period=2`, see `configs.method_fields`) or of a rule's option (say
  `target_pruned=100`) is given only to the methods that have it (see
  `configs.applies`).
  """
  return [item for item in overrides
          if configs.applies(item.partition('=')[0].strip(), method)]


def run_grid(runs, out, overrides=(), verbose=True):
  """Runs every `Run` into `out/run_id`, skipping finished ones.

  Args:
    runs: the `Run`s, in order (a control after the run it reads).
    out: the experiment directory.
    overrides: `key=value` strings for every run, each given to the methods
      it applies to (see `applicable`).
    verbose: print how many runs are finished already and, for each run to
      do, `run i of N: NAME` with the elapsed time and an estimate of the
      time left when it starts, and its accuracy and time when it ends.

  Returns:
    `(ran, skipped)`: run ids.
  """
  from launch import runner  # pylint: disable=g-import-not-at-top
  from tf_dsr import keras  # pylint: disable=g-import-not-at-top
  from launch import modeling  # pylint: disable=g-import-not-at-top
  from launch import outputs  # pylint: disable=g-import-not-at-top

  ran, skipped, todo = [], [], []
  for run in runs:
    run_dir = outputs.RunDir(os.path.join(out, run.run_id))
    if os.path.exists(run_dir.results):
      skipped.append(run.run_id)
    else:
      todo.append((run, run_dir))
  progress = progress_lib.Progress(len(todo))
  if verbose:
    print(f'[experiment] {len(runs)} runs in {out}: {len(skipped)} finished '
          f'earlier, {len(todo)} to run', flush=True)
  for index, (run, run_dir) in enumerate(todo):
    if verbose:
      print(f'[experiment] run {index + 1} of {len(todo)}: {run.run_id} '
            f'({progress.status()})', flush=True)
    all_overrides = list(run.overrides) + applicable(overrides, run.method)
    config = runner.resolve(run.config, all_overrides)
    resume = run_dir.latest_checkpoint() is not None
    run_dir.write_json(os.path.join(run_dir.path, EXPERIMENT_FILE),
                       dataclasses.asdict(run))
    keras.backend.clear_session()
    modeling.keras_module(config).backend.clear_session()  # Keras 3 too.
    start = time.time()
    results = runner.run(config, model_dir=run_dir.path, resume=resume,
                         overrides=all_overrides, verbose=0, export=False)
    ran.append(run.run_id)
    progress.finish_one()
    if verbose:
      print(f'[experiment] run {index + 1} of {len(todo)}: {run.run_id}: top-1 '
            f'{results["top1"]:.4f} in {time.time() - start:.1f} s', flush=True)
  return ran, skipped


# ------------------------------------------------------------------ report
def load_runs(out):
  """`(Run, results)` of every finished run directory in `out`, by run id."""
  found = []
  for name in sorted(os.listdir(out)):
    path = os.path.join(out, name)
    spec, results = (os.path.join(path, EXPERIMENT_FILE),
                     os.path.join(path, 'results.json'))
    if not (os.path.isfile(spec) and os.path.isfile(results)):
      continue
    with open(spec) as f:
      fields = json.load(f)
    fields['overrides'] = tuple(fields['overrides'])
    with open(results) as f:
      found.append((Run(**fields), json.load(f)))
  return found


def _order(method):
  order = method_order()
  return order.index(method) if method in order else len(order)


def _natural(text):
  """A sort key that orders 'stop2' before 'stop15'."""
  return [int(part) if part.isdigit() else part
          for part in re.split(r'(\d+)', text)]


def _mean_flops(group, key):
  """The mean of `results['flops'][key]` over a group; None if any lacks it."""
  values = [r.get('flops', {}).get(key) for r in group]
  return None if None in values else statistics.mean(values)


def _times(value):
  return '-' if value is None else f'{value:.3f}x'


def summarize(found):
  """Rows of the report: one per (family, method, variant, sparsity)."""
  groups = {}
  for run, results in found:
    key = (run.family, run.method, run.variant, run.sparsity)
    groups.setdefault(key, []).append(results)
  rows = []
  for (family, method, variant, sparsity), group in groups.items():
    accuracies = [r['top1'] for r in group]
    rows.append({
        'family': family, 'method': method, 'variant': variant,
        'sparsity': sparsity,
        'active': round(statistics.mean(r['params']['active'] for r in group)),
        'total': group[0]['params']['total'],
        'mean': statistics.mean(accuracies),
        'std': statistics.stdev(accuracies) if len(accuracies) > 1 else 0.0,
        'seeds': len(accuracies),
        'seconds': statistics.mean(r['wall_time_seconds'] for r in group),
        # Runs written before FLOPs were recorded have none.
        'inference_flops': _mean_flops(group, 'inference_fraction'),
        'training_flops': _mean_flops(group, 'training_multiplier'),
    })
  rows.sort(key=lambda r: (r['family'], r['sparsity'], _order(r['method']),
                           _natural(r['variant'])))
  return rows


def format_table(rows):
  """The rows as a Markdown table."""
  lines = ['| model | method | variant | sparsity | active params | inference '
           'FLOPs | training FLOPs | test top-1 (mean ± std) | seeds | wall '
           'time / run |',
           '|---|---|---|---|---|---|---|---|---|---|']
  for r in rows:
    lines.append(
        f'| {r["family"]} | {configs.label(r["method"])} | '
        f'{r["variant"] or "-"} | {r["sparsity"]:g} | {r["active"]:,} | '
        f'{_times(r.get("inference_flops"))} | '
        f'{_times(r.get("training_flops"))} | '
        f'{100 * r["mean"]:.2f} ± {100 * r["std"]:.2f} | {r["seeds"]} | '
        f'{r["seconds"]:.1f} s |')
  return '\n'.join(lines)


def read_scalars(directory, prefix):
  """tag -> [(step, value)] of the TensorBoard scalars under `prefix` in `directory`."""
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  from tensorflow.core.util import event_pb2  # pylint: disable=g-import-not-at-top

  found = {}
  if not os.path.isdir(directory):
    return found
  for name in sorted(os.listdir(directory)):
    if 'tfevents' not in name:
      continue
    for record in tf.data.TFRecordDataset(os.path.join(directory, name)):
      event = event_pb2.Event.FromString(record.numpy())
      for value in event.summary.value:
        if not value.tag.startswith(prefix):
          continue
        scalar = (float(tf.make_ndarray(value.tensor))
                  if value.HasField('tensor') else float(value.simple_value))
        found.setdefault(value.tag[len(prefix):], []).append(
            (event.step, scalar))
  return {k: sorted(v) for k, v in found.items()}


def _plot_accuracy(rows, family, path, x_key, x_label, title):
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use('Agg')
  from matplotlib import pyplot as plt  # pylint: disable=g-import-not-at-top

  figure, axes = plt.subplots(figsize=(6.4, 4.4), dpi=100)
  by_line = {}
  for r in rows:
    if r['family'] == family:
      by_line.setdefault((r['method'], r['variant']), []).append(r)
  for (method, variant), line in sorted(by_line.items(),
                                        key=lambda kv: _order(kv[0][0])):
    label = configs.label(method) + (f' ({variant})' if variant else '')
    if method == 'dense' or line[0].get('reference'):
      mean = line[0]['mean'] * 100
      axes.axhline(mean, color={'dense': 'black', configs.STATIC: 'gray'}.get(
          method, 'tab:red'), linestyle='--', label=label)
      continue
    line.sort(key=lambda r: r[x_key])
    axes.errorbar([r[x_key] for r in line], [100 * r['mean'] for r in line],
                  yerr=[100 * r['std'] for r in line], marker='o', capsize=3,
                  label=label)
  axes.set_xlabel(x_label)
  axes.set_ylabel('test top-1 (%)')
  axes.set_title(title, fontsize=9)
  axes.grid(alpha=0.3)
  axes.legend(fontsize=7)
  figure.tight_layout()
  figure.savefig(path)
  plt.close(figure)


def _plot_density(series, path, title):
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use('Agg')
  from matplotlib import pyplot as plt  # pylint: disable=g-import-not-at-top

  figure, axes = plt.subplots(figsize=(6.4, 4.4), dpi=100)
  for name, points in series.items():
    axes.plot([p[0] for p in points], [p[1] for p in points], label=name)
  axes.set_xlabel('training step')
  axes.set_ylabel('density (active / total)')
  axes.set_title(title, fontsize=9)
  axes.grid(alpha=0.3)
  axes.legend(fontsize=6, ncol=2)
  figure.tight_layout()
  figure.savefig(path)
  plt.close(figure)


def write_report(out, title=None):
  """Writes `report.md` and the plots from the run directories in `out`.

  Returns:
    `(report path, [plot paths], rows)`.
  """
  found = load_runs(out)
  if not found:
    raise LaunchError(f'no finished run (experiment.json and results.json) in '
                      f'{out}.')
  rows = summarize(found)
  plots = []
  for family in sorted({r['family'] for r in rows}):
    family_rows = [r for r in rows if r['family'] == family]
    plain = [r for r in family_rows if not r['variant']]
    if len({r['sparsity'] for r in plain if r['method'] != 'dense'}) >= 1:
      path = os.path.join(out, f'accuracy_vs_sparsity_{family}.png')
      _plot_accuracy(plain, family, path, 'sparsity', 'sparsity',
                     f'{family}: accuracy vs sparsity')
      plots.append(path)
    stops = [dict(r, stop=int(r['variant'][4:])) for r in family_rows
             if r['variant'].startswith('stop') and r['variant'][4:].isdigit()]
    if stops:
      for r in stops:
        r['variant'] = ''
      # Full DSR and static sparse at the same sparsity, for reference.
      stops += [dict(r, stop=0, variant='reference', reference=True)
                for r in plain
                if r['method'] in (SOURCE_METHOD, configs.STATIC) and
                r['sparsity'] == stops[0]['sparsity']]
      path = os.path.join(out, f'accuracy_vs_stop_epoch_{family}.png')
      _plot_accuracy(stops, family, path, 'stop', 'DSR stopped after epoch',
                     f'{family}: DSR stopped early, frozen after')
      plots.append(path)
    dsr_runs = sorted(
        (run for run, _ in found if run.family == family and
         run.method == SOURCE_METHOD and not run.variant),
        key=lambda run: (-run.sparsity, run.seed))
    if dsr_runs:
      run = dsr_runs[0]
      series = read_scalars(os.path.join(out, run.run_id, 'logs', 'dsr'),
                            'dsr_density/')
      if series:
        path = os.path.join(out, f'dsr_density_{family}.png')
        _plot_density(series, path, f'{family}: per-layer density under DSR\n'
                      f'({run.run_id})')
        plots.append(path)
  lines = [f'# {title or os.path.basename(os.path.abspath(out))}', '',
           f'{len(found)} runs; test top-1 is the mean ± sample standard '
           'deviation over seeds; wall time is the mean per run. FLOPs are '
           'relative to the dense model (RigL\'s counting, `tf_dsr.flops`): '
           'inference at the final masks, training per step on average.', '',
           format_table(rows), '']
  for path in plots:
    lines += [f'![{os.path.basename(path)}]({os.path.basename(path)})', '']
  report = os.path.join(out, REPORT_FILE)
  with open(report, 'w') as f:
    f.write('\n'.join(lines))
  return report, plots, rows


# ------------------------------------------------------------------ CLI
FLAGS = flags.FLAGS
flags.DEFINE_string('suite', None, f'One of {sorted(SUITES)}.')
flags.DEFINE_string('out', None, 'Experiment directory (default runs/SUITE).')
flags.DEFINE_bool('report_only', False, 'Only rebuild report.md and the '
                  'plots from the run directories in --out.')
flags.DEFINE_string('family', None, 'Restrict the suite to one model family '
                    '(controls and stop_epoch_sweep: run them on it).')
flags.DEFINE_list('methods', None, 'Restrict the grid to these methods.')
flags.DEFINE_integer('seeds', None, 'Number of seeds (default: the suite\'s).')
flags.DEFINE_multi_string('override', [], 'key=value applied to every run '
                          'whose method has that field.')


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'unexpected arguments: {argv[1:]}')
  logging.set_verbosity(logging.WARNING)
  out = FLAGS.out or os.path.join('runs', FLAGS.suite or 'experiment')
  start = time.time()
  try:
    if not FLAGS.report_only:
      if not FLAGS.suite:
        raise LaunchError('--suite is required unless --report_only.')
      os.makedirs(out, exist_ok=True)
      runs = suite_runs(FLAGS.suite, out, FLAGS.family, FLAGS.methods,
                        FLAGS.seeds)
      ran, skipped = run_grid(runs, out, FLAGS.override)
      print(f'[experiment] ran {len(ran)}, skipped {len(skipped)} finished '
            f'runs, {time.time() - start:.0f} s')
    report, plots, _ = write_report(out, FLAGS.suite)
  except LaunchError as error:
    print(f'error: {error}', file=sys.stderr)
    sys.exit(2)
  with open(report) as f:
    print(f.read())
  print(f'wrote {report} and {len(plots)} plots')


if __name__ == '__main__':
  app.run(main)
