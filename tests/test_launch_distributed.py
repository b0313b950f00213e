"""Distribution strategies: two CPU replicas end to end, and the setup errors.

Logical devices must be configured before TensorFlow initialises its devices,
so the MirroredStrategy run happens in a fresh process.
"""

import json
import os
import subprocess
import sys
import textwrap

import pytest
import tensorflow as tf

from launch import strategy
from launch.errors import ClusterError
from launch.errors import LaunchError

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

_MIRRORED_MAIN = textwrap.dedent('''
    import sys
    import tensorflow as tf
    cpu = tf.config.list_physical_devices('CPU')[0]
    tf.config.set_logical_device_configuration(
        cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
    import tensorflow_datasets as tfds
    from absl import app
    from launch import train
    with tfds.testing.mock_data(num_examples=40):
      app.run(train.main, argv=['train'] + sys.argv[1:])
''')


def _env():
  return dict(os.environ, TF_CPP_MIN_LOG_LEVEL='2', PYTHONPATH=REPO)


def test_mirrored_two_cpus_end_to_end(tmp_path):
  model_dir = tmp_path / 'run'
  done = subprocess.run(
      [sys.executable, '-c', _MIRRORED_MAIN, '--config=wrn28_2_cifar10_dsr_s0.9',
       f'--model_dir={model_dir}', '--strategy=mirrored', '-v', '1',
       # Global batch 8 = 4 per replica; reallocations at steps 3 and 6.
       *[f'--override={item}' for item in (
           'depth=10', 'width=1', 'sparsity=0.5', 'batch_size=8',
           'steps_per_epoch=4', 'eval_steps=2', 'period=3', 'target_pruned=40',
           'epochs=2')]],
      capture_output=True, text=True, cwd=REPO, env=_env())
  assert done.returncode == 0, done.stderr[-3000:]
  results = json.loads((model_dir / 'results.json').read_text())
  assert results['strategy'] == 'MirroredStrategy' and results['replicas'] == 2
  assert results['steps'] == 8 and results['dsr']['reallocations'] == 2
  # At -v 1, one line per reallocation, from the callback.
  assert done.stdout.count('[tf_dsr] step ') == 2
  params = results['params']
  assert params['sparse_active'] == params['sparse_total'] // 2  # Kept exactly.
  assert (model_dir / 'saved_model' / 'saved_model.pb').exists()
  assert sorted(p.name for p in (model_dir / 'checkpoints').iterdir()
                if p.suffix == '.index') == ['ckpt-1.index', 'ckpt-2.index']


def test_unreachable_tpu_exits_2_and_writes_nothing(tmp_path):
  model_dir = tmp_path / 'run'
  done = subprocess.run(
      [sys.executable, '-m', 'launch.train', '--config=small_cnn_digits_dsr',
       f'--model_dir={model_dir}', '--strategy=tpu', '--tpu=local'],
      capture_output=True, text=True, cwd=REPO, env=_env())
  assert done.returncode == 2
  assert "error: --strategy=tpu: no TPU reachable as --tpu='local'" in done.stderr
  assert '--tpu=<TPU name>' in done.stderr and 'Traceback' not in done.stderr
  assert not model_dir.exists()


@pytest.mark.parametrize('value, message', [
    (None, 'needs the TF_CONFIG environment variable, which is not set'),
    ('{"cluster": ', 'TF_CONFIG is not valid JSON'),
    ('{"task": {"type": "worker", "index": 0}}', 'TF_CONFIG needs "cluster"'),
    ('{"cluster": {"worker": []}, "task": {"type": "worker", "index": 0}}',
     'TF_CONFIG needs "cluster"'),
    ('{"cluster": {"worker": ["a:1"]}}', 'TF_CONFIG needs "task"'),
    ('{"cluster": {"worker": ["a:1"]}, "task": {"type": "worker", "index": 1}}',
     'TF_CONFIG needs "task"'),
    ('{"cluster": {"worker": ["a:1"]}, "task": {"type": "chief", "index": 0}}',
     r"one of \['worker'\]"),
])
def test_multi_worker_needs_a_valid_tf_config(monkeypatch, value, message):
  if value is None:
    monkeypatch.delenv('TF_CONFIG', raising=False)
  else:
    monkeypatch.setenv('TF_CONFIG', value)
  with pytest.raises(LaunchError, match=message) as info:
    strategy.create('multi_worker')
  assert 'for example TF_CONFIG=' in str(info.value)


def test_tf_config_accepted():
  spec = strategy.parse_tf_config(
      '{"cluster": {"worker": ["a:1", "b:2"]}, "task": {"type": "worker", '
      '"index": 1}}')
  assert spec['task'] == {'type': 'worker', 'index': 1}


def test_unknown_strategy():
  with pytest.raises(LaunchError, match=r"unknown strategy 'gpu'; valid "
                     r"strategies are \['default', 'mirrored', 'multi_worker', "
                     r"'tpu'\]"):
    strategy.create('gpu')


def test_malformed_tf_config_cli_exits_2_and_writes_nothing(tmp_path):
  model_dir = tmp_path / 'run'
  done = subprocess.run(
      [sys.executable, '-m', 'launch.train', '--config=small_cnn_digits_dsr',
       f'--model_dir={model_dir}', '--strategy=multi_worker'],
      capture_output=True, text=True, cwd=REPO,
      env=_env() | {'TF_CONFIG': '{"cluster": {"worker": ["127.0.0.1:1"]'})
  assert done.returncode == 2
  assert 'error: TF_CONFIG is not valid JSON' in done.stderr
  assert 'for example TF_CONFIG=' in done.stderr
  assert 'Traceback' not in done.stderr and not model_dir.exists()


# What TensorFlow raises in a survivor when its peer is gone (abridged).
_PEER_RESET = """Graph execution error:

Detected at node CollectiveReduceV2 defined at (most recent call last):
<stack traces unavailable>
Collective ops is aborted by: recvmsg:Connection reset by peer
Additional GRPC error information from remote target /job:worker/replica:0/task:0 while calling /tensorflow.WorkerService/CompleteInstance:
:UNKNOWN:Error received from peer  {grpc_status:14}
\t [[{{node CollectiveReduceV2}}]] [Op:__inference_test_function_4301]"""
_NO_HEARTBEAT = """Collective ops is aborted by: Error reported from /job:worker/task:1: The following tasks are unhealthy (stopped sending heartbeats):
/job:worker/replica:0/task:1
The tasks have crashed. Check the task logs for an earlier error."""


@pytest.mark.parametrize('error, lost, reason', [
    (tf.errors.UnavailableError(None, None, _PEER_RESET),
     '/job:worker/replica:0/task:0', 'recvmsg:Connection reset by peer'),
    (tf.errors.UnavailableError(None, None, _NO_HEARTBEAT),
     '/job:worker/replica:0/task:1', 'tasks are unhealthy'),
    (tf.errors.DeadlineExceededError(None, None, 'Collective timed out'),
     None, 'Collective timed out'),
])
def test_lost_worker_errors_become_one_clear_cluster_error(error, lost, reason):
  multi_worker = tf.distribute.MultiWorkerMirroredStrategy.__new__(
      tf.distribute.MultiWorkerMirroredStrategy)  # Only its type is used.
  with pytest.raises(ClusterError) as info:
    with strategy.lost_workers_stop_cleanly(multi_worker, '/runs/a'):
      raise error
  message = str(info.value)
  assert message.startswith('the multi-worker cluster lost a worker')
  assert reason in message and type(error).__name__ in message
  assert (f'(unresponsive: {lost})' in message) if lost else (
      'unresponsive' not in message)
  assert message.endswith('Restart every worker with --resume to continue '
                          'from the last checkpoint in /runs/a.')


def test_other_strategies_keep_tensorflow_errors():
  error = tf.errors.UnavailableError(None, None, 'no device')
  with pytest.raises(tf.errors.UnavailableError):
    with strategy.lost_workers_stop_cleanly(tf.distribute.get_strategy()):
      raise error
