"""MirroredStrategy over 2 logical CPUs: replicas agree after every reallocation.

In tf_keras, DSR with an uncompiled and an XLA-compiled reallocation, then
DeepR, RigL and SNFS; in Keras 3 (tests/keras3_mirrored_run.py's model, the
reallocation XLA-compiled), DSR, DeepR, RigL and SNFS; then the runs of
tests/compiled_run.py (see tests/test_compiled_steps.py for the
single-device ones):

* `mirrored`: with `steps_per_execution=2` and the reallocation compiled,
  both replicas hold identical masks, kernels, optimizer slots and DSR state
  after training, and the same masks, H and K as with the reallocation
  uncompiled. The same holds when each replica's forward and backward pass
  is also XLA-compiled (`compiled_run.ReplicaCompiled`).
* `mirrored_xla_step`: the limit that keeps the Keras train step uncompiled
  under MirroredStrategy on CPUs: `fit` with `jit_compile=True` fails there
  in TF 2.21 (a test asserts the failure, so a TensorFlow that lifts it is
  noticed). It runs last: it fails half-way through a training step.

The eleven runs share two subprocesses (tests/mirrored_run.py, one
MirroredStrategy each), run at the same time: tf_keras's runs in one, Keras
3's and compiled_run's in the other.
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
        f'keras3:{method}' for method in _KERAS3_METHODS) + (
            'compiled:mirrored', 'compiled:mirrored_xla_step')


# Two subprocesses at the same time, about as long as each other: a
# MirroredStrategy run over 2 logical CPUs keeps about one core busy (its
# replicas wait on each other), so one subprocess alone would leave a core
# idle for most of its minute.
_SECOND = ('keras3:', 'compiled:')
_GROUPS = (tuple(r for r in _RUNS if not r.startswith(_SECOND)),
           tuple(r for r in _RUNS if r.startswith(_SECOND)))


@pytest.fixture(scope='module')
def mirrored_runs():
  """The runs of `_RUNS`, in two groups (`_GROUPS`) run at the same time, each
  one run after another in one subprocess (tests/mirrored_run.py):
  'MODE:METHOD' -> its findings."""
  env = {k: v for k, v in os.environ.items() if k != 'TF_USE_LEGACY_KERAS'}
  env.update(PYTHONPATH=ROOT, TF_CPP_MIN_LOG_LEVEL='2')
  processes = [
      subprocess.Popen([sys.executable, '-m', 'tests.mirrored_run', *group],
                       cwd=ROOT, env=env, stdout=subprocess.PIPE,
                       stderr=subprocess.PIPE, text=True)
      for group in _GROUPS]
  results = {}
  try:
    for group, process in zip(_GROUPS, processes):
      out, err = process.communicate(timeout=600)
      assert process.returncode == 0, err[-3000:]
      found = [json.loads(line) for line in out.strip().splitlines()
               if line.startswith('{')]
      assert [r['run'] for r in found] == list(group), out[-3000:]
      results.update((r['run'], r) for r in found)
  finally:
    for process in processes:
      if process.poll() is None:
        process.kill()
        process.communicate()
  return results


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


# ------------------------------------ tests/compiled_run.py: compiled steps
@pytest.fixture(scope='module')
def distributed(mirrored_runs):  # pylint: disable=redefined-outer-name
  """compiled_run's findings: {mode: findings}."""
  result = {mode: mirrored_runs[f'compiled:{mode}']
            for mode in ('mirrored', 'mirrored_xla_step')}
  assert [r['replicas'] for r in result.values()] == [2, 2]
  return result


@pytest.fixture
def mirrored(distributed):  # pylint: disable=redefined-outer-name
  return distributed['mirrored']


@pytest.mark.parametrize('name', ['uncompiled', 'compiled',
                                  'replica_compiled'])
def test_mirrored_replicas_agree(mirrored, name):
  run = mirrored[name]
  assert run['jit'] == (name != 'uncompiled')
  # The replica-compiled step traced its XLA function once per replica.
  assert run['replica_step_traces'] == (2 if name == 'replica_compiled' else 0)
  # Every checked variable is distributed (one copy per replica): the
  # state, each kernel and mask, the optimizer's iterations and slots.
  assert all(run['mirrored'])
  assert len(run['checked']) == 12
  # 128 examples, global batch 16 (8 per replica): 8 steps per epoch, 2
  # epochs; executions of 2 steps; P = 4.
  assert run['history_steps'] == [4, 8, 12, 16]
  assert all(p > 0 for p in run['pruned'])
  assert run['reallocations'] == [4, 4]  # per replica
  assert run['last_step'] == [16, 16]
  assert run['disagreements'] == []
  assert run['masked_nonzero'] == 0


@pytest.mark.parametrize('name', ['compiled', 'replica_compiled'])
def test_mirrored_compiled_masks_match_uncompiled(mirrored, name):
  """A compiled reallocation, alone or after XLA-compiled per-replica
  forward and backward passes, chooses the uncompiled run's masks."""
  comparison = mirrored[f'{name}_vs_uncompiled']
  assert comparison['mask_differences'] == [0, 0]
  assert comparison['thresholds'][0] == comparison['thresholds'][1]
  assert mirrored[name]['pruned'] == mirrored['uncompiled']['pruned']
  assert comparison['kernel_max_difference'] < 1e-5


def test_mirrored_xla_train_step_fails_on_cpu_devices(distributed):
  """Documents a TensorFlow limit; not a tf_dsr behaviour to keep.

  `model.fit` with `compile(jit_compile=True)` under MirroredStrategy over 2
  logical CPUs fails in TF 2.21. TF takes the merge_call-free path under XLA
  only when every device is a GPU (`MirroredExtended._use_merge_call`), so
  the compiled step reaches across devices to the other replica's variables
  ("Trying to access resource fc1/kernel/replica_1/... located in device
  CPU:1 from device CPU:0"). Forcing the merge_call-free path (patching
  `_use_merge_call`) still gave that error here; it has also been seen to
  fail with "Collectives are not yet implemented for CPU devices when
  compiling with XLA". Either message passes. That is why the
  MirroredStrategy tests compile the reallocation and each replica's forward
  and backward pass (`compiled_run.ReplicaCompiled`), not the whole step.

  If this test fails because `fit` succeeded, TensorFlow has lifted the
  limit: extend the MirroredStrategy tests to a compiled train step (and
  drop this one).
  """
  result = distributed['mirrored_xla_step']
  assert result['error_type'] is not None, (
      'fit with jit_compile=True now works under MirroredStrategy on CPUs: '
      f'test it for real (reallocations at {result.get("history_steps")}).')
  message = result['error']
  device_problem = ('Trying to access resource' in message and
                    'located in device' in message)
  collectives = 'Collectives are not yet implemented for CPU' in message
  assert device_problem or collectives, (result['error_type'], message[-2000:])
