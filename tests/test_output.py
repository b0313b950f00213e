"""What the command-line tools print, and what importing the library leaves alone.

- `launch.progress`: elapsed time and the estimate of the time left, worked by
  hand on a fake clock.
- `launch.quiet` sets TensorFlow's C++ log level only when the user has not,
  and every entry point of `launch/` and `benchmarks/` loads TensorFlow with
  no C++ log line but those no setting removes.
- `import tf_dsr` changes no process-wide setting beyond what importing
  TensorFlow and tfmot themselves change.
- `launch.train` with the C++ log level unset: only the start-up lines that no
  setting removes come from TensorFlow's C++ log, each Python warning comes out
  once, Keras' progress bar is shown, and reallocation lines appear at `-v 1`
  and not without it.
- A benchmark says what it is building and timing.
"""

import os
import re
import subprocess
import sys

import pytest

from launch import progress

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# The lines TensorFlow 2.21's shared libraries log as they load, before any
# setting is read (launch/quiet.py).
UNREMOVABLE = ('port.cc:', 'cudart_stub.cc:')
CPP_LOG = re.compile(r'^[IWEF]\d{4} [\d:.]+ +\d+ (\S+)\]')


def _env(**extra):
  env = {k: v for k, v in os.environ.items() if k != 'TF_CPP_MIN_LOG_LEVEL'}
  env.update(PYTHONPATH=REPO, **extra)
  return env


def _run(*args, **extra_env):
  return subprocess.run([sys.executable, *args], capture_output=True,
                        text=True, cwd=REPO, env=_env(**extra_env))


# ------------------------------------------------------------------ progress
class _Clock:

  def __init__(self):
    self.now = 100.0

  def __call__(self):
    return self.now


def test_progress_estimates_time_left_from_finished_units():
  clock = _Clock()
  work = progress.Progress(4, clock=clock)
  assert work.eta() is None
  assert work.status() == 'elapsed 0 s, time left unknown'
  clock.now += 30  # 2 units in 30 s: 15 s each, 2 left -> 30 s.
  work.finish_one()
  work.finish_one()
  assert work.eta() == 30
  assert work.status() == 'elapsed 30 s, about 30 s left'
  clock.now += 95  # 3 units in 125 s, 1 left -> 41.7 s.
  work.finish_one()
  assert work.status() == 'elapsed 2 min 05 s, about 42 s left'


@pytest.mark.parametrize('seconds, text', [
    (0, '0 s'), (59.4, '59 s'), (60, '1 min 00 s'), (3599, '59 min 59 s'),
    (3600, '1 h 00 min'), (7620, '2 h 07 min')])
def test_durations_read_as_seconds_minutes_or_hours(seconds, text):
  assert progress.format_duration(seconds) == text


def test_progress_rejects_a_negative_total():
  with pytest.raises(ValueError, match='total must be >= 0, got -1'):
    progress.Progress(-1)


# --------------------------------------------------------------------- quiet
@pytest.mark.parametrize('given, expected', [(None, '3'), ('0', '0')])
def test_quiet_sets_the_cpp_log_level_only_if_unset(given, expected):
  extra = {} if given is None else {'TF_CPP_MIN_LOG_LEVEL': given}
  done = _run('-c', 'import os, sys; from launch import quiet; '
              'print(os.environ["TF_CPP_MIN_LOG_LEVEL"], '
              '"tensorflow" in sys.modules)', **extra)
  assert done.returncode == 0, done.stderr
  assert done.stdout.split() == [expected, 'False']


_GLOBALS = '''
import json, logging, os, sys, warnings
import numpy as np
def snapshot():
  import tensorflow as tf
  from tensorflow_model_optimization.python.core.keras.compat import keras
  return {
      'environ': dict(os.environ),
      'logging': {name: [logging.getLogger(name).level,
                         logging.getLogger(name).propagate,
                         len(logging.getLogger(name).handlers)]
                  for name in ['', 'tensorflow', 'absl']},
      'warnings': [str(f) for f in warnings.filters],
      'numpy': str(np.get_printoptions()) + str(np.geterr()),
      'policy': keras.mixed_precision.global_policy().name,
      'floatx': keras.backend.floatx(),
      'eager': tf.executing_eagerly(),
      'functions_eager': tf.config.functions_run_eagerly(),
      'soft_placement': tf.config.get_soft_device_placement(),
      'jit': tf.config.optimizer.get_jit(),
      'threads': [tf.config.threading.get_inter_op_parallelism_threads(),
                  tf.config.threading.get_intra_op_parallelism_threads()],
      'recursion': sys.getrecursionlimit(),
  }
before = snapshot()
import tf_dsr
after = snapshot()
print(json.dumps([k for k in before if before[k] != after[k]]))
'''


def test_importing_the_library_changes_no_global_setting():
  done = _run('-c', _GLOBALS)
  assert done.returncode == 0, done.stderr[-3000:]
  assert done.stdout.strip().splitlines()[-1] == '[]'


ENTRY_POINTS = ['launch.configs', 'launch.experiment', 'launch.prepare_data',
                'launch.quickstart', 'launch.train',
                'benchmarks.first_reallocation', 'benchmarks.reallocation_cost',
                'benchmarks.reallocation_profile',
                'benchmarks.reallocation_scaling', 'benchmarks.step_time',
                'benchmarks.tflite_sparse']


# `benchmarks.reallocation_scaling`'s smallest run: what
# test_benchmark_says_what_it_is_timing reads, and, for
# test_entry_points_load_tensorflow_quietly, a start-up of the module.
_SCALING_RUN = ('-m', 'benchmarks.reallocation_scaling', '--sizes', '0.01',
                '--repeats', '1')


@pytest.fixture(scope='module')
def scaling_run():
  return _run(*_SCALING_RUN)


@pytest.mark.parametrize('module', ENTRY_POINTS)
def test_entry_points_load_tensorflow_quietly(module, request):
  """`--help` loads every module (and TensorFlow), then stops (absl's with
  status 1). `launch.train` imports TensorFlow only once its command line has
  passed `launch.precheck`, after `--help`; its TensorFlow start-up is checked
  by test_train_shows_progress_bar_and_reallocations_at_v1 below.
  `benchmarks.reallocation_scaling` is checked on its smallest run (the
  `scaling_run` that test_benchmark_says_what_it_is_timing reads), which
  loads the module and TensorFlow the same way before it runs, rather than in
  another process of its own."""
  if module == 'benchmarks.reallocation_scaling':
    done = request.getfixturevalue('scaling_run')
  else:
    # launch.configs has no --help; without arguments it lists the configs.
    done = _run('-m', module,
                *([] if module == 'launch.configs' else ['--help']))
  assert done.returncode in (0, 1) and 'Traceback' not in done.stderr, (
      done.stderr[-3000:])
  sources = [m.group(1) for m in map(CPP_LOG.match, done.stderr.splitlines())
             if m]
  assert all(s.startswith(UNREMOVABLE) for s in sources), done.stderr


# ------------------------------------------------------------ launch.train
_TRAIN = ['-m', 'launch.train', '--config=lenet_digits_dsr',
          '--override=epochs=1', '--override=steps_per_epoch=6',
          '--override=period=2', '--override=stop_epoch=none',
          '--override=validation_freq=0']


@pytest.mark.parametrize('verbosity', [None, '1'])
def test_train_shows_progress_bar_and_reallocations_at_v1(tmp_path, verbosity):
  args = _TRAIN + [f'--model_dir={tmp_path / "run"}']
  if verbosity:
    args += ['-v', verbosity]
  done = _run(*args)
  assert done.returncode == 0, done.stderr[-3000:]
  out = done.stdout.replace('\r', '\n')
  assert re.search(r'^6/6 \[=+\]', out, re.MULTILINE), out  # Keras' bar.
  reallocations = re.findall(r'^\[tf_dsr\] step (\d+): H ', out, re.MULTILINE)
  assert reallocations == (['2', '4', '6'] if verbosity else []), out
  assert re.search(r'^\[launch\] lenet_digits_dsr: top-1 ', out, re.MULTILINE)
  # TensorFlow's C++ log: only the lines no setting removes.
  sources = [m.group(1) for m in map(CPP_LOG.match, done.stderr.splitlines())
             if m]
  assert all(s.startswith(UNREMOVABLE) for s in sources), done.stderr
  # Each Python warning once (TensorFlow's handler, not absl's as well).
  warnings_seen = [line for line in done.stderr.splitlines()
                   if line.startswith('WARNING:tensorflow:')]
  assert len(warnings_seen) == len(set(warnings_seen)), done.stderr
  assert not re.search(r'^W\d{4} .*\.py:\d+\]', done.stderr, re.MULTILINE), (
      done.stderr)


# ----------------------------------------------------------------- benchmark
def test_benchmark_says_what_it_is_timing(scaling_run):  # pylint: disable=redefined-outer-name
  done = scaling_run
  assert done.returncode == 0, done.stderr[-3000:]
  lines = done.stdout.splitlines()
  assert lines[0] == ('building and compiling (untimed) the 0.01M-weight '
                      'model, both jit_compile modes ...')
  assert lines[1].startswith('built 10,242 sparse weights in 4 tensors')
  assert lines[2] == ('round 1/1: timing one reallocation per size and '
                      'jit_compile mode ...')
  assert re.search(r'^ +10,242 ', done.stdout, re.MULTILINE)
