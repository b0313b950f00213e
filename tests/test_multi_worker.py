"""Multi-worker training with worker processes on 127.0.0.1, and a lost worker.

- Three `launch.train --strategy=multi_worker` processes (the chief and two
  other workers), each with its own `TF_CONFIG`, train the small CNN with
  DSR. Every worker writes a
  digest of its masks, H, weights and optimizer state at the start, after
  every reallocation and at the end (`launch.digests`). All workers' digests
  are equal, line for line, and equal to a single-process run with the same
  global batch and seed: `MirroredStrategy` over as many logical CPU devices
  as there are workers, which splits each global batch the same way and sums
  gradients in the same order, so the runs agree bit for bit. Against the
  one-device default strategy (which sums the whole batch's gradient in
  another order) masks, H and steps agree; weights differ in the last bits.
- A worker killed with SIGKILL mid-run makes the other stop within seconds
  with `error: the multi-worker cluster lost a worker ...` and status 1,
  whether it is the chief or another worker (two 2-worker clusters, run at
  the same time so that their survivors' waits for the lost heartbeats
  overlap).

Every process is started and stopped by the test, with time limits.
"""

import json
import os
import signal
import socket
import subprocess
import sys
import textwrap
import time

import pytest

from launch import digests

pytestmark = pytest.mark.slow

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# 2 epochs of 6 steps of 24 digits, a reallocation every 2 steps: 6 of them.
SHORT = ['epochs=2', 'steps_per_epoch=6', 'batch_size=24', 'period=2',
         'eval_steps=1']
TIME_LIMIT = 240  # Seconds for a whole cluster run.

# One process with `n` logical CPU devices (argv[1]), then launch.train once
# per command line of argv[2] (a JSON list of flag lists), one after another.
_LOGICAL_DEVICES_MAIN = textwrap.dedent('''
    import json
    import sys
    import tensorflow as tf
    n = int(sys.argv[1])
    if n > 1:
      cpu = tf.config.list_physical_devices('CPU')[0]
      tf.config.set_logical_device_configuration(
          cpu, [tf.config.LogicalDeviceConfiguration()] * n)
    from absl import flags
    from launch import train
    from tf_dsr import keras
    for argv in json.loads(sys.argv[2]):
      keras.backend.clear_session()
      flags.FLAGS.unparse_flags()
      flags.FLAGS(['train'] + argv)
      train.main(['train'])
''')


def _env(**extra):
  return dict(os.environ, TF_CPP_MIN_LOG_LEVEL='2', PYTHONPATH=REPO, **extra)


def _free_ports(n):
  sockets = [socket.socket() for _ in range(n)]
  try:
    for s in sockets:
      s.bind(('127.0.0.1', 0))
    return [s.getsockname()[1] for s in sockets]
  finally:
    for s in sockets:
      s.close()


def _train_args(model_dir, digest_dir, overrides, strategy):
  return ['--config=small_cnn_digits_dsr', f'--model_dir={model_dir}',
          f'--strategy={strategy}', f'--digest_dir={digest_dir}',
          *[f'--override={o}' for o in overrides]]


class _Cluster:
  """`n` worker processes of one run on 127.0.0.1; killed on exit."""

  def __init__(self, n, tmp_path, overrides):
    tmp_path.mkdir(parents=True, exist_ok=True)
    ports = _free_ports(n)
    workers = [f'127.0.0.1:{p}' for p in ports]
    self.model_dir = tmp_path / 'run'
    self.digest_dir = tmp_path / 'digests'
    self.logs = [tmp_path / f'worker-{i}.log' for i in range(n)]
    self.processes = []
    for i in range(n):
      tf_config = json.dumps({'cluster': {'worker': workers},
                              'task': {'type': 'worker', 'index': i}})
      with open(self.logs[i], 'w') as log:
        self.processes.append(subprocess.Popen(
            [sys.executable, '-m', 'launch.train',
             *_train_args(self.model_dir, self.digest_dir, overrides,
                          'multi_worker')],
            stdout=log, stderr=subprocess.STDOUT, cwd=REPO,
            env=_env(TF_CONFIG=tf_config)))

  def wait(self, process, deadline):
    try:
      return process.wait(timeout=max(1.0, deadline - time.monotonic()))
    except subprocess.TimeoutExpired:
      self.kill()
      pytest.fail(f'worker did not finish in time; log:\n{self.log_tail()}')

  def log_tail(self):
    return '\n'.join(f'--- {p.name}\n{p.read_text()[-3000:]}' for p in self.logs)

  def digests(self, i):
    return digests.read(str(self.digest_dir / f'worker-{i}.jsonl'))

  def kill(self):
    for p in self.processes:
      if p.poll() is None:
        p.kill()
        p.wait()

  def __enter__(self):
    return self

  def __exit__(self, *exc):
    self.kill()


def _single_process(tmp_path, devices, strategies):
  """Runs SHORT once per strategy in one process with `devices` logical CPU
  devices (TensorFlow starts once); returns each run's digests."""
  runs = [(tmp_path / s / 'run', tmp_path / s / 'digests') for s in strategies]
  for model_dir, _ in runs:
    model_dir.parent.mkdir(parents=True)  # --model_dir's parent.
  done = subprocess.run(
      [sys.executable, '-c', _LOGICAL_DEVICES_MAIN, str(devices),
       json.dumps([_train_args(model_dir, digest_dir, SHORT, strategy)
                   for (model_dir, digest_dir), strategy in zip(runs,
                                                                strategies)])],
      capture_output=True, text=True, cwd=REPO, env=_env(),
      timeout=TIME_LIMIT)
  assert done.returncode == 0, done.stderr[-3000:]
  return [digests.read(str(digest_dir / 'worker-0.jsonl'))
          for _, digest_dir in runs]


def _decisions(records):
  """What DSR decided: events, steps, reallocation counts, H and masks."""
  keys = ('event', 'step', 'reallocations', 'threshold', 'masks', 'iterations')
  return [{k: r[k] for k in keys} for r in records]


# Three workers only: a chief and two non-chief workers cover everything a
# two-worker cluster did (a two-worker cluster also runs in the lost-worker
# test below), and each case starts as many processes as it has workers plus
# one for the single-process references.
@pytest.mark.parametrize('workers', [3])
def test_workers_agree_with_each_other_and_with_one_process(tmp_path, workers):
  with _Cluster(workers, tmp_path / 'cluster', SHORT) as cluster:
    deadline = time.monotonic() + TIME_LIMIT
    codes = [cluster.wait(p, deadline) for p in cluster.processes]
    assert codes == [0] * workers, cluster.log_tail()
    per_worker = [cluster.digests(i) for i in range(workers)]

  ours = per_worker[0]
  # start, 6 reallocations (steps 2, 4, ..., 12), end.
  assert [r['event'] for r in ours] == (
      ['start'] + ['reallocation'] * 6 + ['end'])
  assert [r['step'] for r in ours[1:-1]] == [2, 4, 6, 8, 10, 12]
  assert [r['reallocations'] for r in ours[1:-1]] == [1, 2, 3, 4, 5, 6]
  # The state really moved: every reallocation changed the weights, and the
  # masks changed at least once (digests of identical states are equal).
  assert len({r['weights'] for r in ours}) == len(ours) - 1  # end == last.
  assert len({r['masks'] for r in ours}) > 1
  for i, other in enumerate(per_worker[1:], 1):
    assert other == ours, f'worker {i} disagrees with worker 0'

  # The single-process references, one after the other in one process with
  # as many logical CPU devices as workers: MirroredStrategy over all of
  # them, then the default strategy, which uses one device.
  reference, one_device = _single_process(tmp_path / 'single', workers,
                                          ['mirrored', 'default'])
  assert reference == ours

  results = json.loads((tmp_path / 'cluster' / 'run' / 'results.json')
                       .read_text())
  assert results['strategy'] == 'MultiWorkerMirroredStrategy'
  assert results['replicas'] == workers and results['steps'] == 12
  assert results['dsr']['reallocations'] == 6
  assert float.fromhex(ours[-1]['threshold']) == results['dsr']['threshold']

  assert _decisions(one_device) == _decisions(ours)


_VICTIMS = {'worker': 1, 'chief': 0}


@pytest.fixture(scope='module')
def killed_runs(tmp_path_factory):
  """Two 2-worker clusters, run at the same time: in one the non-chief worker
  is killed with SIGKILL once training runs, in the other the chief.

  Each survivor then waits several seconds, idle, for the lost worker's
  heartbeats to time out; the two clusters share that wait. Returns
  {victim id: (victim index, survivor's exit status, seconds from the kill
  to the survivor's exit, survivor's log)}.
  """
  long_run = [o for o in SHORT if not o.startswith('epochs=')] + ['epochs=500']
  root = tmp_path_factory.mktemp('killed')
  clusters = {name: _Cluster(2, root / name, long_run) for name in _VICTIMS}
  try:
    deadline = time.monotonic() + TIME_LIMIT
    killed = {}
    # Kill each victim once training runs: it has written two reallocations.
    while len(killed) < len(clusters):
      for name, cluster in clusters.items():
        if name in killed:
          continue
        victim = _VICTIMS[name]
        dead, alive = cluster.processes[victim], cluster.processes[1 - victim]
        digest_file = cluster.digest_dir / f'worker-{victim}.jsonl'
        assert dead.poll() is None and alive.poll() is None, cluster.log_tail()
        assert time.monotonic() < deadline, cluster.log_tail()
        if (digest_file.exists() and
            digest_file.read_text().count('"reallocation"') >= 2):
          dead.send_signal(signal.SIGKILL)
          killed[name] = time.monotonic()
      time.sleep(0.2)
    # Each survivor's exit, timed as it happens (polled together).
    outcomes = {}
    while len(outcomes) < len(clusters):
      for name, cluster in clusters.items():
        victim = _VICTIMS[name]
        survivor = cluster.processes[1 - victim]
        if name in outcomes or survivor.poll() is None:
          if name not in outcomes and time.monotonic() > killed[name] + 120:
            cluster.kill()
            pytest.fail(f'{name}: the survivor did not stop within 120 s '
                        f'of the kill; log:\n{cluster.log_tail()}')
          continue
        outcomes[name] = (victim, survivor.returncode,
                          time.monotonic() - killed[name],
                          cluster.logs[1 - victim].read_text())
      time.sleep(0.1)
    return outcomes
  finally:
    for cluster in clusters.values():
      cluster.kill()


@pytest.mark.parametrize('name', list(_VICTIMS))
def test_a_killed_worker_stops_the_others_with_a_clear_error(killed_runs, name):
  victim, code, took, log = killed_runs[name]
  print(f'the survivor stopped {took:.1f} s after the kill')  # Shown with -s.
  assert code == 1, log[-3000:]
  assert took < 120
  assert 'error: the multi-worker cluster lost a worker' in log, log[-3000:]
  assert f'/job:worker/replica:0/task:{victim}' in log  # Names the lost one.
  assert 'Restart every worker with --resume' in log
  assert 'Traceback' not in log
