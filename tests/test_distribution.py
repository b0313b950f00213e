"""MirroredStrategy over 2 logical CPUs: replicas agree after every reallocation.

In tf_keras, DSR with an uncompiled and an XLA-compiled reallocation, then
DeepR, RigL and SNFS; in Keras 3 (tests/keras3_mirrored_run.py's model, the
reallocation XLA-compiled), DSR, DeepR, RigL and SNFS. All in one subprocess
(tests/mirrored_run.py), so TensorFlow starts once for the nine runs.
"""

import json
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


MODES = ('graph', 'jit')
_METHODS = ('deepr', 'rigl', 'snfs')
_KERAS3_METHODS = ('dsr',) + _METHODS
_RUNS = tuple(f'{mode}:dsr' for mode in MODES) + tuple(
    f'graph:{method}' for method in _METHODS) + tuple(
        f'keras3:{method}' for method in _KERAS3_METHODS)


@pytest.fixture(scope='module')
def mirrored_runs():
  """The runs of `_RUNS`, one after another in one subprocess
  (tests/mirrored_run.py): 'MODE:METHOD' -> its findings."""
  env = {k: v for k, v in os.environ.items() if k != 'TF_USE_LEGACY_KERAS'}
  env.update(PYTHONPATH=ROOT, TF_CPP_MIN_LOG_LEVEL='2')
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


# ------------------------------------------------------------------ Keras 3
def test_keras3_mirrored_replicas_stay_identical(mirrored_runs):
  # DSR. The reallocation is XLA-compiled (`python -m
  # tests.keras3_mirrored_run plain` runs it uncompiled, with the same
  # findings, in 12 s more).
  result = mirrored_runs['keras3:dsr']
  assert result['replicas'] == 2 and result['copies'] == [2]
  assert result['jit']
  assert result['reallocations'] == result['checked'] == 8  # 16 steps, P = 2
  assert result['pruned'] > 0
  assert result['slots'] == [1]  # SGD's momentum, found on each kernel.
  assert result['disagreements'] == []
  assert result['masked_nonzero'] == 0


def test_keras3_deepr_rigl_snfs_mirrored_replicas_stay_identical(
    mirrored_runs):
  results = [mirrored_runs[f'keras3:{method}'] for method in _METHODS]
  for result in results:
    assert result['jit']
    assert result['replicas'] == 2 and result['copies'] == [2]
    assert result['pruned'] > 0, result
    assert result['slots'] == [1]  # SGD's momentum, on each kernel.
    assert result['disagreements'] == [], result
    assert result['masked_nonzero'] == 0, result
  deepr, rigl, snfs = results
  # 16 steps: DeepR every 2 steps; RigL every 2 steps before end_step 16
  # (steps 2, ..., 14); SNFS at the 2 epoch ends.
  assert deepr['reallocations'] == deepr['checked'] == 8
  assert rigl['reallocations'] == rigl['checked'] == 7
  assert snfs['reallocations'] == snfs['checked'] == 2
  # SNFS's momentum, summed over replicas, saw dense gradients.
  assert snfs['momentum_nonzero_where_inactive'] > 0
