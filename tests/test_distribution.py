"""MirroredStrategy over 2 logical CPUs: replicas agree after every reallocation."""

import json
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


MODES = ('graph', 'jit')


@pytest.fixture(scope='module')
def mirrored_runs():
  """DSR with an uncompiled and an XLA-compiled reallocation, one after
  another in one subprocess (tests/mirrored_run.py): mode -> its findings."""
  env = dict(os.environ, PYTHONPATH=ROOT, TF_CPP_MIN_LOG_LEVEL='2')
  proc = subprocess.run(
      [sys.executable, '-m', 'tests.mirrored_run',
       *[f'{mode}:dsr' for mode in MODES]], cwd=ROOT, env=env,
      capture_output=True, text=True, timeout=600, check=False)
  assert proc.returncode == 0, proc.stderr[-3000:]
  results = [json.loads(line) for line in proc.stdout.strip().splitlines()
             if line.startswith('{')]
  assert [r['run'] for r in results] == [f'{mode}:dsr' for mode in MODES], (
      proc.stdout[-3000:])
  return dict(zip(MODES, results))


@pytest.mark.parametrize('mode', MODES)
def test_mirrored_replicas_hold_identical_state(mirrored_runs, mode):
  result = mirrored_runs[mode]
  assert result['replicas'] == 2
  assert result['jit'] == (mode == 'jit')
  assert result['mirrored_masks']
  assert result['reallocations'] == 8  # 16 steps, P = 2
  assert result['checked'] == 8
  assert result['pruned'] > 0
  assert result['disagreements'] == []
  assert result['masked_nonzero'] == 0
