"""launch.experiment: suites, resumable grids, and reports rebuilt from run directories.

A tiny grid (LeNet-300-100 on digits; dense and DSR at two sparsities; two
seeds; 6 steps per run) is run once; the tests check that finished runs are
skipped, an unfinished one is rerun, and that report.md and the PNG plots are
rebuilt from a copy of the run directories alone.
"""

import json
import os
import re
import shutil
import statistics
import subprocess
import sys

import pytest
from matplotlib import image as mpimg

from launch import configs
from launch import experiment
from launch import runner
from launch.errors import LaunchError

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = ['epochs=2', 'steps_per_epoch=3', 'validation_freq=0', 'eval_steps=2',
        'period=2', 'stop_epoch=none']


def _grid(out):
  return experiment.suite_runs('small', out, family='lenet_digits',
                               methods=['dense', 'dsr'], seeds=2)


@pytest.fixture(scope='module')
def finished(tmp_path_factory):
  out = str(tmp_path_factory.mktemp('experiment'))
  runs = _grid(out)
  # `period` and `stop_epoch` reach the DSR runs only.
  ran, _ = experiment.run_grid(runs, out, TINY, verbose=False)
  return out, runs, ran


def test_suites_resolve_to_valid_configs(tmp_path):
  counts = {}
  for suite in experiment.SUITES:
    runs = experiment.suite_runs(suite, str(tmp_path))
    counts[suite] = len(runs)
    assert len({r.run_id for r in runs}) == len(runs), suite
    for run in runs:
      config = runner.resolve(run.config, run.overrides)
      assert (config.method, config.seed) == (run.method, run.seed) or (
          run.variant == 'dsr_structure_random_init')
      assert config.sparsity == run.sparsity
  # WRN-28-2: 5 seeds x (dense + 9 methods x 5 sparsities).
  assert counts['wrn28_2_cifar10'] == 5 * (1 + 9 * 5)
  assert counts['resnet50_imagenet'] == 1 + 9 * 2
  # digits: 3 seeds x 2 models x (dense + 9 methods x 2 sparsities), and
  # static and RigL again with ERK densities.
  assert counts['small'] == 3 * 2 * (1 + 9 * 2 + 2 * 2)
  # Controls: per sparsity and seed, DSR, the two structure controls, static;
  # each control's source DSR run comes earlier in the grid.
  controls = experiment.suite_runs('controls', str(tmp_path))
  assert counts['controls'] == 2 * 5 * 4
  seen = set()
  for run in controls:
    seen.add(run.run_id)
    for item in run.overrides:
      if item.startswith('masks_from='):
        assert os.path.basename(item.split('=', 1)[1]) in seen
  sweep = experiment.suite_runs('stop_epoch_sweep', str(tmp_path))
  stops = sorted(configs.get('wrn28_2_cifar10_dsr_s0.9').stop_epoch
                 if not r.variant else int(r.variant[4:])
                 for r in sweep if r.method == 'dsr' and r.seed == 0)
  assert stops == [10, 20, 50, 100, 150, 190]
  with pytest.raises(LaunchError, match="unknown suite 'nope'"):
    experiment.suite_runs('nope', str(tmp_path))


def test_grid_runs_each_cell_once_and_skips_finished_runs(finished, capsys):
  out, runs, ran = finished
  assert ran == [r.run_id for r in runs] and len(runs) == 6
  results = os.path.join(out, runs[1].run_id, 'results.json')
  stamp = os.path.getmtime(results)
  ran_again, skipped = experiment.run_grid(runs, out, TINY, verbose=False)
  assert ran_again == [] and skipped == [r.run_id for r in runs]
  assert os.path.getmtime(results) == stamp
  # A run without results.json (interrupted after its checkpoint) is redone.
  dense = runs[0]
  os.remove(os.path.join(out, dense.run_id, 'results.json'))
  capsys.readouterr()
  ran_again, skipped = experiment.run_grid(runs, out, TINY, verbose=True)
  assert ran_again == [dense.run_id] and len(skipped) == 5
  assert os.path.exists(os.path.join(out, dense.run_id, 'results.json'))
  # Progress: what is left, then "run i of N" with the run's name and the
  # time so far (no estimate before a run has finished), then its result.
  lines = capsys.readouterr().out.splitlines()
  assert lines[0] == f'[experiment] 6 runs in {out}: 5 finished earlier, 1 to run'
  assert re.fullmatch(rf'\[experiment\] run 1 of 1: {re.escape(dense.run_id)} '
                      r'\(elapsed \d+ s, time left unknown\)', lines[1]), lines
  assert re.fullmatch(rf'\[experiment\] run 1 of 1: {re.escape(dense.run_id)}: '
                      r'top-1 [\d.]+ in [\d.]+ s', lines[2]), lines
  assert len(lines) == 3, lines


def test_report_is_rebuilt_from_run_directories_alone(finished, tmp_path):
  out, runs, _ = finished
  copy = str(tmp_path / 'copy')
  shutil.copytree(out, copy, ignore=shutil.ignore_patterns('*.png', '*.md'))
  done = subprocess.run(
      [sys.executable, '-m', 'launch.experiment', '--report_only',
       f'--out={copy}'], capture_output=True, text=True, cwd=REPO,
      env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL='2', PYTHONPATH=REPO))
  assert done.returncode == 0, done.stderr
  report = open(os.path.join(copy, 'report.md')).read()
  rows = re.findall(r'^\| lenet_digits \| (\S+) \| - \| ([\d.]+) \| ([\d,]+) \| '
                    r'([\d.]+)x \| ([\d.]+)x \| '
                    r'([\d.]+) ± ([\d.]+) \| (\d) \| ([\d.]+) s \|$', report,
                    re.MULTILINE)
  assert [(r[0], r[1]) for r in rows] == [('dense', '0'), ('DSR', '0.8'),
                                          ('DSR', '0.9')]
  # FLOPs: LeNet-300-100's kernels are all sparse and Dense (each entry used
  # once), so f_S / f_D is the kept fraction: 10,040 / 100,400 = 0.1 at 0.9
  # (2 * (1,920 + 3,000 + 100) of 2 * (19,200 + 30,000 + 1,000)), 0.2 at
  # 0.8; DSR trains at 3 f_S, so its training multiplier is the same.
  assert [(r[3], r[4]) for r in rows] == [('1.000', '1.000'),
                                          ('0.200', '0.200'),
                                          ('0.100', '0.100')]
  for method, sparsity, active, _, _, mean, std, seeds, _ in rows:
    results = [json.load(open(os.path.join(copy, r.run_id, 'results.json')))
               for r in runs if r.sparsity == float(sparsity) and
               configs.label(r.method) == method]
    accuracies = [100 * r['top1'] for r in results]
    assert seeds == '2' and len(results) == 2
    assert float(mean) == pytest.approx(statistics.mean(accuracies), abs=0.006)
    assert float(std) == pytest.approx(statistics.stdev(accuracies), abs=0.006)
    assert int(active.replace(',', '')) == results[0]['params']['active']
  # LeNet-300-100 on digits: 50,610 parameters; at 0.9 the kernels keep
  # 1,920 + 3,000 + 100 plus 410 biases.
  assert rows[0][2] == '50,610' and rows[2][2] == '5,430'

  for name in ('accuracy_vs_sparsity_lenet_digits.png',
               'dsr_density_lenet_digits.png'):
    assert f']({name})' in report
    pixels = mpimg.imread(os.path.join(copy, name))
    assert pixels.shape == (440, 640, 4), name
    assert pixels[..., :3].std() > 0.05  # Not a blank canvas.
  # The density plot has one line per sparse layer, from the DSR scalars.
  series = experiment.read_scalars(
      os.path.join(copy, 'lenet_digits_dsr_s0.9_seed0', 'logs', 'dsr'),
      'dsr_density/')
  assert len(series) == 3
  assert [s for s, _ in next(iter(series.values()))] == [2, 4, 6]


def test_grid_runs_keras3_configs_into_one_model_dir_each(tmp_path):
  """A Keras 3 grid (`--override keras=keras3`): each run writes its
  model_dir (checkpoints, results with FLOPs); the runs resume and skip like
  tf_keras ones, and the report is built from them."""
  out = str(tmp_path / 'keras3')
  runs = experiment.suite_runs('small', out, family='lenet_digits',
                               methods=['dense', 'dsr'], seeds=1)
  runs = [r for r in runs if r.sparsity in (0.0, 0.9)]
  overrides = TINY + ['keras=keras3']
  ran, skipped = experiment.run_grid(runs, out, overrides, verbose=False)
  assert ran == [r.run_id for r in runs] and not skipped and len(runs) == 2
  for run in runs:
    run_dir = os.path.join(out, run.run_id)
    results = json.load(open(os.path.join(run_dir, 'results.json')))
    assert 'keras=keras3' in results['overrides']
    assert results['flops']['inference_fraction'] == pytest.approx(
        1.0 if run.method == 'dense' else 0.1)
    assert os.path.exists(os.path.join(run_dir, 'checkpoints', 'ckpt-2.index'))
    assert not os.path.exists(os.path.join(run_dir, 'saved_model'))
  assert experiment.run_grid(runs, out, overrides, verbose=False) == (
      [], [r.run_id for r in runs])
  experiment.write_report(out)
  report = open(os.path.join(out, 'report.md')).read()
  assert re.search(r'^\| lenet_digits \| DSR \| - \| 0.9 \| 5,430 \| '
                   r'0.100x \| 0.100x \|', report, re.MULTILINE), report


def test_report_without_runs_is_an_error(tmp_path):
  done = subprocess.run(
      [sys.executable, '-m', 'launch.experiment', '--report_only',
       f'--out={tmp_path}'], capture_output=True, text=True, cwd=REPO,
      env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL='2', PYTHONPATH=REPO))
  assert done.returncode == 2 and 'error: no finished run' in done.stderr


def test_rows_from_runs_without_flops_show_a_dash():
  # results.json written before FLOPs were recorded has no `flops`.
  row = {'family': 'f', 'method': 'dense', 'variant': '', 'sparsity': 0.0,
         'active': 10, 'mean': 0.5, 'std': 0.0, 'seeds': 1, 'seconds': 1.0,
         'inference_flops': None, 'training_flops': None}
  assert '| 10 | - | - | 50.00 ± 0.00 |' in experiment.format_table([row])
  assert experiment._mean_flops(  # pylint: disable=protected-access
      [{'flops': {'inference_fraction': 0.2}}, {}], 'inference_fraction') is None
  assert experiment._mean_flops(  # pylint: disable=protected-access
      [{'flops': {'inference_fraction': 0.2}},
       {'flops': {'inference_fraction': 0.4}}],
      'inference_fraction') == pytest.approx(0.3)
