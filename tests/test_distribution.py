"""MirroredStrategy over 2 logical CPUs: replicas agree after every reallocation."""

import json
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.mark.parametrize('mode', ['graph', 'jit'])
def test_mirrored_replicas_hold_identical_state(mode):
  env = dict(os.environ, PYTHONPATH=ROOT, TF_CPP_MIN_LOG_LEVEL='2')
  proc = subprocess.run(
      [sys.executable, '-m', 'tests.mirrored_run', mode], cwd=ROOT, env=env,
      capture_output=True, text=True, timeout=600, check=False)
  assert proc.returncode == 0, proc.stderr[-3000:]
  result = json.loads(proc.stdout.strip().splitlines()[-1])
  assert result['replicas'] == 2
  assert result['jit'] == (mode == 'jit')
  assert result['mirrored_masks']
  assert result['reallocations'] == 8  # 16 steps, P = 2
  assert result['checked'] == 8
  assert result['pruned'] > 0
  assert result['disagreements'] == []
  assert result['masked_nonzero'] == 0
