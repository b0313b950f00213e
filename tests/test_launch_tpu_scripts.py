"""The Cloud TPU scripts: they parse, name real configs, and issue the right gcloud calls.

They cannot reach Google Cloud here, so a stub `gcloud` on PATH records its
arguments and the tests check what the scripts would have run.
"""

import glob
import os
import re
import subprocess

import pytest

from launch import configs

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPTS = sorted(glob.glob(os.path.join(REPO, 'launch', 'tpu', '*.sh')))
# The variables of launch/tpu/common.sh: the caller's own values are dropped.
_SETTINGS = ('TPU_NAME', 'ZONE', 'PROJECT', 'ACCELERATOR_TYPE', 'RUNTIME_VERSION',
             'DATA_DIR', 'MODEL_ROOT')
_STUB = '#!/usr/bin/env bash\n{ printf "%s\\n" "$@"; echo ----; } >> "$GCLOUD_LOG"\n'


def test_scripts_parse():
  assert {os.path.basename(s) for s in SCRIPTS} == {
      'common.sh', 'create.sh', 'delete.sh', 'fetch.sh', 'install.sh',
      'train.sh'}
  for script in SCRIPTS:
    done = subprocess.run(['bash', '-n', script], capture_output=True, text=True)
    assert done.returncode == 0, (script, done.stderr)


def test_scripts_name_real_configs():
  pattern = re.compile(r'\b(?:wrn28_2_cifar10|resnet50_imagenet|lenet_digits|'
                       r'lenet_mnist|small_cnn_digits)_[a-z0-9_.]*[a-z0-9]')
  mentioned = set()
  for script in SCRIPTS:
    mentioned |= set(pattern.findall(open(script).read()))
  assert mentioned and mentioned <= set(configs.names()), mentioned


@pytest.fixture
def gcloud(tmp_path):
  """Runs a script with a recording `gcloud`; returns (status, calls, stdout)."""
  (tmp_path / 'bin').mkdir()
  stub = tmp_path / 'bin' / 'gcloud'
  stub.write_text(_STUB)
  stub.chmod(0o755)
  log = tmp_path / 'gcloud.log'

  def run(script, *args, **env):
    log.write_text('')
    environment = {k: v for k, v in os.environ.items() if k not in _SETTINGS}
    environment.update(GCLOUD_LOG=str(log),
                       PATH=f'{tmp_path / "bin"}:{os.environ["PATH"]}', **env)
    done = subprocess.run(['bash', os.path.join(REPO, 'launch', 'tpu', script),
                           *args], capture_output=True, text=True, env=environment,
                          cwd=str(tmp_path))
    calls = [c.strip('\n').split('\n') for c in log.read_text().split('----\n')
             if c.strip()]
    return done, calls

  return run


def _flag(call, name):
  return next(a.split('=', 1)[1] for a in call if a.startswith(f'--{name}='))


def test_create_install_delete(gcloud):
  done, calls = gcloud('create.sh', TPU_NAME='t1', ZONE='us-central1-a',
                       ACCELERATOR_TYPE='v3-32', PROJECT='p')
  assert done.returncode == 0, done.stderr
  assert calls == [['compute', 'tpus', 'tpu-vm', 'create', 't1',
                    '--accelerator-type=v3-32',
                    '--version=tpu-vm-tf-2.18.0-pjrt', '--zone=us-central1-a',
                    '--project=p']]
  done, calls = gcloud('install.sh', TPU_NAME='t1')
  assert done.returncode == 0, done.stderr
  (scp, ssh) = calls
  assert scp[:4] == ['compute', 'tpus', 'tpu-vm', 'scp'] and '--worker=all' in scp
  assert scp[4].endswith('tf_dsr.tar.gz') and scp[5] == 't1:tf_dsr.tar.gz'
  assert ssh[:5] == ['compute', 'tpus', 'tpu-vm', 'ssh', 't1']
  assert '--worker=all' in ssh
  remote = '\n'.join(ssh[ssh.index('--worker=all') + 1:-1])
  assert remote.startswith('--command=')
  remote = remote[len('--command='):]
  assert 'pip install --no-deps -e .' in remote and 'tensorboard' in remote
  assert subprocess.run(['bash', '-n', '-c', remote]).returncode == 0
  done, calls = gcloud('delete.sh', TPU_NAME='t1')
  assert calls == [['compute', 'tpus', 'tpu-vm', 'delete', 't1', '--quiet',
                    '--zone=europe-west4-a']]


def test_train_one_host_and_pod(gcloud):
  done, calls = gcloud('train.sh', 'resnet50_imagenet_dsr_s0.9', '--override',
                       'epochs=1', TPU_NAME='t1')
  assert done.returncode == 0, done.stderr
  (ssh,) = calls
  assert ssh[:5] == ['compute', 'tpus', 'tpu-vm', 'ssh', 't1']
  assert '--worker=0' in ssh
  command = _flag(ssh, 'command')
  assert subprocess.run(['bash', '-n', '-c', command]).returncode == 0
  assert ('python3 -m launch.train --config=resnet50_imagenet_dsr_s0.9 '
          '--strategy=tpu --tpu=local --model_dir=dsr_runs/'
          'resnet50_imagenet_dsr_s0.9 --override epochs=1') in command
  assert command.endswith('> ~/dsr_logs/resnet50_imagenet_dsr_s0.9.log 2>&1 '
                          '< /dev/null &')
  # A pod slice: one client on worker 0 reaches the TPU by name.
  done, calls = gcloud('train.sh', 'wrn28_2_cifar10_dsr_s0.9', TPU_NAME='pod',
                       ACCELERATOR_TYPE='v3-32', DATA_DIR='gs://b/tfds',
                       MODEL_ROOT='gs://b/runs')
  command = _flag(calls[0], 'command')
  assert 'TPU_NAME=pod TPU_LOAD_LIBRARY=0 python3 -m launch.train' in command
  assert ('--tpu=pod --model_dir=gs://b/runs/wrn28_2_cifar10_dsr_s0.9 '
          '--data_dir=gs://b/tfds') in command


def test_unknown_config_stops_before_gcloud(gcloud):
  for script in ('train.sh', 'fetch.sh'):
    done, calls = gcloud(script, 'resnet50_imagenet_dsr_s0.95')
    assert done.returncode == 2 and calls == []
    assert "unknown config 'resnet50_imagenet_dsr_s0.95'" in done.stderr
  done, calls = gcloud('train.sh')
  assert done.returncode != 0 and 'usage: train.sh CONFIG' in done.stderr


def test_fetch(gcloud, tmp_path):
  done, calls = gcloud('fetch.sh', 'wrn28_2_cifar10_dsr_s0.9', 'out',
                       TPU_NAME='t1')
  assert done.returncode == 0, done.stderr
  assert calls[0][3:] == ['scp', '--recurse',
                          't1:dsr_runs/wrn28_2_cifar10_dsr_s0.9', 'out/',
                          '--worker=0', '--zone=europe-west4-a']
  assert calls[1][4:6] == ['t1:dsr_logs/wrn28_2_cifar10_dsr_s0.9.log',
                           'out/wrn28_2_cifar10_dsr_s0.9/']
  done, calls = gcloud('fetch.sh', 'wrn28_2_cifar10_dsr_s0.9', 'out',
                       MODEL_ROOT='gs://b/runs')
  assert calls[0] == ['storage', 'cp', '-r',
                      'gs://b/runs/wrn28_2_cifar10_dsr_s0.9', 'out/']
