"""MirroredStrategy over 2 logical CPUs: replicas agree after every reallocation.

DSR with an uncompiled and an XLA-compiled reallocation, then DeepR, RigL
and SNFS, all in one subprocess (tests/mirrored_run.py), so TensorFlow
starts once for the five runs.
"""

import json
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


MODES = ('graph', 'jit')
_METHODS = ('deepr', 'rigl', 'snfs')
_RUNS = tuple(f'{mode}:dsr' for mode in MODES) + tuple(
    f'graph:{method}' for method in _METHODS)


@pytest.fixture(scope='module')
def mirrored_runs():
  """The runs of `_RUNS`, one after another in one subprocess
  (tests/mirrored_run.py): 'MODE:METHOD' -> its findings."""
  env = dict(os.environ, PYTHONPATH=ROOT, TF_CPP_MIN_LOG_LEVEL='2')
  proc = subprocess.run(
      [sys.executable, '-m', 'tests.mirrored_run', *_RUNS], cwd=ROOT, env=env,
      capture_output=True, text=True, timeout=600, check=False)
  assert proc.returncode == 0, proc.stderr[-3000:]
  results = [json.loads(line) for line in proc.stdout.strip().splitlines()
             if line.startswith('{')]
  assert [r['run'] for r in results] == list(_RUNS), proc.stdout[-3000:]
  return dict(zip(_RUNS, results))


@pytest.mark.parametrize('mode', MODES)
def test_mirrored_replicas_hold_identical_state(mirrored_runs, mode):
  result = mirrored_runs[f'{mode}:dsr']
  assert result['replicas'] == 2
  assert result['jit'] == (mode == 'jit')
  assert result['mirrored_masks']
  assert result['reallocations'] == 8  # 16 steps, P = 2
  assert result['checked'] == 8
  assert result['pruned'] > 0
  assert result['disagreements'] == []
  assert result['masked_nonzero'] == 0


def test_deepr_replicas_agree_under_mirrored_strategy(mirrored_runs):
  """Signs, masks, kernels and slots are identical on 2 replicas after every step."""
  result = mirrored_runs['graph:deepr']
  assert result['replicas'] == 2 and result['mirrored_masks']
  assert result['mirrored_signs'] == [True, True]  # One per sparse tensor.
  assert result['reallocations'] == result['checked'] == 16  # Every step.
  assert result['pruned'] > 0  # Some connections crossed zero and moved.
  assert result['disagreements'] == []
  assert result['masked_nonzero'] == 0


@pytest.mark.parametrize('method, reallocations', [('rigl', 7), ('snfs', 2)])
def test_gradient_rules_replicas_agree_under_mirrored_strategy(
    mirrored_runs, method, reallocations):
  """RigL and SNFS grow by the replica-summed gradient: masks stay identical."""
  result = mirrored_runs[f'graph:{method}']
  assert result['replicas'] == 2 and result['mirrored_masks']
  # RigL: steps 2, 4, ..., 14 (none from end_step 16); SNFS: 2 epoch ends.
  assert result['reallocations'] == result['checked'] == reallocations
  assert result['pruned'] > 0
  assert result['disagreements'] == []
  assert result['masked_nonzero'] == 0
