"""The checks of `launch.train`'s command line that need no TensorFlow.

`launch.train` runs them before it imports TensorFlow (which takes seconds),
so a model directory it cannot use, `--resume` of a run that does not exist,
a malformed `TF_CONFIG` or an unknown config name is reported at once. The
launcher checks the same things again where it uses them
(`launch.outputs.RunDir.check_writable`, `launch.strategy.create`,
`launch.configs.get`), with the same functions and messages. This module
imports nothing heavy.

The config names are read from `launch/config_names.txt`, the output of
`python -m launch.configs` (which imports TensorFlow, through the rules that
make the configs); tests/test_launch_configs.py checks that the file lists
exactly `launch.configs.names()`. `python -m launch.precheck NAME` exits with
status 2 and `error: unknown config ...` unless NAME is a config (the Cloud
TPU scripts check their argument so).
"""

import json
import os
import sys

from launch.errors import LaunchError

# `launch.configs.names()`, one a line: `python -m launch.configs > FILE`.
CONFIG_NAMES_FILE = os.path.join(os.path.dirname(os.path.abspath(__file__)),
                                 'config_names.txt')
# The names of `launch.strategy`'s strategies (its `NAMES`).
STRATEGIES = ('default', 'mirrored', 'multi_worker', 'tpu')

_TF_CONFIG_EXAMPLE = (
    'TF_CONFIG=\'{"cluster": {"worker": ["host1:12345", "host2:12345"]}, '
    '"task": {"type": "worker", "index": 0}}\'')


def check_model_dir(path):
  """Raises LaunchError unless the model directory can be created and written.

  Checked before anything is written: a path that is a file, lies under a
  file or a missing directory, or cannot be written. Only local paths are
  probed (a `gs://` bucket is checked by its first write). The probe
  creates and removes one empty directory, so nothing is left behind.
  """
  if '://' in path:
    return
  absolute = os.path.abspath(path)
  if os.path.exists(absolute) and not os.path.isdir(absolute):
    raise LaunchError(f'--model_dir {path} is a file, not a directory.')
  parent = os.path.dirname(absolute)
  if not os.path.exists(absolute):
    if os.path.exists(parent) and not os.path.isdir(parent):
      raise LaunchError(f'--model_dir {path}: its parent {parent} is a '
                        'file, not a directory.')
    if not os.path.isdir(parent):
      raise LaunchError(f'--model_dir {path}: its parent directory '
                        f'{parent} does not exist; create it first.')
  probe = os.path.join(absolute if os.path.isdir(absolute) else parent,
                       f'.tf_dsr_write_probe_{os.getpid()}')
  try:
    os.mkdir(probe)
    os.rmdir(probe)
  except OSError as error:
    raise LaunchError(f'--model_dir {path} is not writable: '
                      f'{error.strerror or error}.') from None


def no_checkpoint_message(path):
  """What `--resume` says when the model directory `path` holds no run."""
  return (f'--resume: no checkpoint in {os.path.join(path, "checkpoints")} '
          f'(nor a backup in {os.path.join(path, "backup")}); start the run '
          'without --resume.')


def parse_tf_config(text):
  """Validates the JSON of a `TF_CONFIG` variable and returns it as a dict.

  Args:
    text: the variable's value, or None when it is not set.

  Returns:
    The parsed dict, with a non-empty `cluster` and a `task` in it.

  Raises:
    LaunchError: naming what is missing or malformed, with an example.
  """
  hint = f' Set it on every worker, for example {_TF_CONFIG_EXAMPLE}.'
  if not text:
    raise LaunchError('--strategy=multi_worker needs the TF_CONFIG environment '
                      'variable, which is not set.' + hint)
  try:
    spec = json.loads(text)
  except json.JSONDecodeError as error:
    raise LaunchError(f'TF_CONFIG is not valid JSON ({error}): {text!r}.' +
                      hint) from None
  cluster = spec.get('cluster') if isinstance(spec, dict) else None
  if (not isinstance(cluster, dict) or not cluster or not all(
      isinstance(v, list) and v and all(isinstance(a, str) for a in v)
      for v in cluster.values())):
    raise LaunchError('TF_CONFIG needs "cluster": a dict from job name to a '
                      'non-empty list of "host:port" strings; got '
                      f'{text!r}.' + hint)
  task = spec.get('task')
  if (not isinstance(task, dict) or task.get('type') not in cluster or
      not isinstance(task.get('index'), int) or
      not 0 <= task['index'] < len(cluster[task['type']])):
    raise LaunchError('TF_CONFIG needs "task": {"type": one of '
                      f'{sorted(cluster)}, "index": a position in that job\'s '
                      f'list}}; got {text!r}.' + hint)
  return spec


def config_names():
  """The names of `launch.configs.CONFIGS`, sorted, read without TensorFlow."""
  with open(CONFIG_NAMES_FILE) as names:
    return names.read().split()


def unknown_config_message(name, names):
  """What the launcher says of a config `name` not among `names`."""
  return (f'unknown config {name!r}; valid configs are:\n  ' +
          '\n  '.join(names))


def check_config_name(name):
  """Raises LaunchError, listing the valid names, unless `name` is a config."""
  names = config_names()
  if name not in names:
    raise LaunchError(unknown_config_message(name, names))


def check_command_line(model_dir, strategy, resume=False, environ=None,
                       config=None):
  """The checks of `launch.train`'s flags that need no TensorFlow.

  Args:
    model_dir: --model_dir, or None.
    strategy: --strategy.
    resume: --resume.
    environ: the environment (default `os.environ`), for `TF_CONFIG`.
    config: --config, or None (not checked).

  Raises:
    LaunchError: an unusable model directory, `--resume` with a local model
      directory that does not exist (so it holds no checkpoint), a missing
      or malformed `TF_CONFIG` with --strategy=multi_worker, or an unknown
      config name.
  """
  environ = os.environ if environ is None else environ
  if model_dir:
    check_model_dir(model_dir)
    if resume and '://' not in model_dir and not os.path.exists(model_dir):
      raise LaunchError(no_checkpoint_message(model_dir))
  if strategy == 'multi_worker':
    parse_tf_config(environ.get('TF_CONFIG'))
  if config is not None:
    check_config_name(config)


if __name__ == '__main__':
  if len(sys.argv) != 2:
    sys.exit('usage: python -m launch.precheck CONFIG_NAME')
  try:
    check_config_name(sys.argv[1])
  except LaunchError as error:
    print(f'error: {error}', file=sys.stderr)
    sys.exit(2)
