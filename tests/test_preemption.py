"""Preemption: a run killed with SIGKILL again and again finishes exactly as one
that never stopped.

One uninterrupted `launch.train` run (small CNN, DSR, 16 epochs of 4 steps,
a reallocation every 3 steps, a mid-epoch backup every 2 steps) is the
reference. The same run is then started and killed 6 times in a row, each
restart with `--resume`, at points drawn with a fixed seed from six kinds,
once each (`tests/preemption_run.py`): during a training step, during a
reallocation, during the write of a mid-epoch backup or of an epoch
checkpoint, and between writing either's files and updating its index. After every kill, every
checkpoint and backup listed in an index loads completely (no half-written
checkpoint is ever listed). Finally the run is resumed to its end, and:

- the final epoch checkpoint holds bit-identical values to the reference's
  for every variable (weights, masks, H, reallocation count, last step,
  optimizer step and slots, epoch counter);
- the final digests (masks, H, step, weights, optimizer) are equal;
- every reallocation any of the 7 processes completed and logged has the
  digest the reference logged at that step;
- results.json reports the same steps and DSR state; final_masks.npz is equal.

The processes run one after another, but each is started (to import
TensorFlow) while the one before it runs, and told to go on once that one
has ended, which about halves the test's time.
"""

import json
import os
import random
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf

from launch import digests

pytestmark = pytest.mark.slow

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPT = os.path.join(REPO, 'tests', 'preemption_run.py')
EPOCHS, STEPS_PER_EPOCH = 16, 4
OVERRIDES = [f'epochs={EPOCHS}', f'steps_per_epoch={STEPS_PER_EPOCH}',
             'batch_size=24', 'period=3', 'eval_steps=1', 'validation_freq=0']
# How many kills of each kind, and the range of the event count to die at.
# Small counts keep each process's progress small (a kill at an epoch
# checkpoint costs up to an epoch), so all 6 happen before the run ends.
_PLAN = {'step': (1, (1, 2)), 'reallocation': (1, (1, 1)),
         'backup_write': (1, (1, 2)), 'backup_index': (1, (1, 2)),
         'checkpoint_write': (1, (1, 1)), 'checkpoint_index': (1, (1, 1))}
KILLS = sum(count for count, _ in _PLAN.values())


def _start(phase, n, seed, model_dir, digest_dir):
  """Starts a run that imports TensorFlow, then waits for `_finish`."""
  args = [sys.executable, SCRIPT, phase, str(n), str(seed),
          '--wait_for_stdin', '--config=small_cnn_digits_dsr',
          f'--model_dir={model_dir}', f'--digest_dir={digest_dir}',
          '--backup_steps=2', *[f'--override={o}' for o in OVERRIDES]]
  return subprocess.Popen(
      args, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
      stderr=subprocess.PIPE, text=True, cwd=REPO,
      env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL='2', PYTHONPATH=REPO))


def _finish(process, resume):
  """Lets a started run go on (with `--resume` or not) and waits for its end.

  Returns a `subprocess.CompletedProcess`.
  """
  try:
    out, err = process.communicate(
        json.dumps(['--resume'] if resume else []) + '\n', timeout=300)
  except subprocess.TimeoutExpired:
    process.kill()
    process.communicate()
    raise
  return subprocess.CompletedProcess(process.args, process.returncode, out,
                                     err)


def _kill_all(processes):
  for process in processes:
    if process.poll() is None:
      process.kill()
      process.communicate()


def _listed_checkpoints(directory):
  state = tf.train.get_checkpoint_state(str(directory))
  return list(state.all_model_checkpoint_paths) if state else []


def _assert_loads_completely(path):
  reader = tf.train.load_checkpoint(path)
  for name in reader.get_variable_to_shape_map():
    reader.get_tensor(name)  # Raises on a truncated or missing shard.


def _checkpoint_values(path):
  reader = tf.train.load_checkpoint(path)
  return {name: reader.get_tensor(name)
          for name in reader.get_variable_to_shape_map()
          # How many times this process saved: not training state.
          if not name.startswith('save_counter')}


def test_killed_at_random_points_resumes_to_the_same_end(tmp_path):
  model_dir, digest_dir = tmp_path / 'run', tmp_path / 'run_dig'
  rng = random.Random(20261124)
  kinds = [kind for kind, (count, _) in _PLAN.items() for _ in range(count)]
  rng.shuffle(kinds)
  plan = [(kind, rng.randint(*_PLAN[kind][1]), rng.randrange(2**31))
          for kind in kinds] + [('none', 0, 0)]
  # The chain is sequential, but each process imports TensorFlow (seconds)
  # while the one before it runs: the next one is started ahead.
  reference = _start('none', 0, 0, tmp_path / 'reference',
                     tmp_path / 'ref_dig')
  started = [_start(*plan[0], model_dir, digest_dir)]
  try:
    done = _finish(reference, resume=False)
    assert done.returncode == 0, done.stderr[-3000:]
    killed = []
    for i, (phase, n, _) in enumerate(plan[:-1]):
      started.append(_start(*plan[i + 1], model_dir, digest_dir))
      done = _finish(started[i],
                     resume=(model_dir / 'config.json').exists())
      marker = f'[fault] SIGKILL {phase} {n}'
      assert done.returncode == -9 and marker in done.stderr, (
          f'kill {i} ({phase} {n}) did not happen: exit {done.returncode}\n'
          f'{done.stderr[-3000:]}')
      assert 'Traceback' not in done.stderr, done.stderr[-3000:]
      killed.append(phase)
      for directory in (model_dir / 'checkpoints',
                        model_dir / 'backup' / 'chief'):
        for path in _listed_checkpoints(directory):
          _assert_loads_completely(path)
    final = _finish(started[-1], resume=True)
  finally:
    _kill_all([reference] + started)

  assert len(killed) == KILLS == 6 and set(killed) == set(_PLAN)
  assert final.returncode == 0, final.stderr[-3000:]
  assert not (model_dir / 'backup').exists()  # Removed when training ended.

  # The last epoch checkpoint: every variable bit-identical.
  last = f'ckpt-{EPOCHS}'
  ours = _checkpoint_values(str(model_dir / 'checkpoints' / last))
  theirs = _checkpoint_values(str(tmp_path / 'reference' / 'checkpoints' /
                                  last))
  assert sorted(ours) == sorted(theirs)
  assert any('mask' in name for name in ours)
  assert any('threshold' in name for name in ours)
  for name, value in theirs.items():
    np.testing.assert_array_equal(ours[name], value, err_msg=name)

  run_records = digests.read(str(digest_dir / 'worker-0.jsonl'))
  ref_records = digests.read(str(tmp_path / 'ref_dig' / 'worker-0.jsonl'))
  assert run_records[-1] == ref_records[-1]
  assert ref_records[-1]['iterations'] == 64
  assert ref_records[-1]['reallocations'] == 21  # Steps 3, 6, ..., 63.
  # Each reallocation logged by any process of the chain (some were redone
  # after a kill) has the state the reference had after that reallocation.
  by_step = {r['step']: r for r in ref_records if r['event'] == 'reallocation'}
  logged = [r for r in run_records if r['event'] == 'reallocation']
  assert {r['step'] for r in logged} == set(by_step)
  for record in logged:
    assert record == by_step[record['step']]

  results = json.loads((model_dir / 'results.json').read_text())
  expected = json.loads((tmp_path / 'reference' / 'results.json').read_text())
  assert results['steps'] == expected['steps'] == 64
  assert results['dsr'] == expected['dsr']
  assert results['top1'] == expected['top1']
  with np.load(model_dir / 'final_masks.npz') as a, np.load(
      tmp_path / 'reference' / 'final_masks.npz') as b:
    assert sorted(a.files) == sorted(b.files)
    for name in a.files:
      np.testing.assert_array_equal(a[name], b[name])
