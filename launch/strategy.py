"""Distribution strategies by name: one device, local GPUs, several workers, a TPU.

- `default`: TensorFlow's default strategy (one device).
- `mirrored`: `MirroredStrategy` over every local GPU (every logical CPU when
  there is no GPU, which is how the tests get two replicas on one CPU).
- `multi_worker`: `MultiWorkerMirroredStrategy` configured from the `TF_CONFIG`
  environment variable, which is validated first. Create it before any other
  TensorFlow work in the process.
- `tpu`: `TPUStrategy` through `TPUClusterResolver(tpu=...)`: 'local' on a TPU
  VM host, or the TPU's name for a pod slice.

Every failure to set a strategy up is a `LaunchError` with a message that says
what to fix.
"""

import contextlib
import os
import re

import tensorflow as tf

from launch import precheck
from launch.errors import ClusterError
from launch.errors import LaunchError

# Validates TF_CONFIG; in `launch.precheck`, which `launch.train` runs before
# it imports TensorFlow.
parse_tf_config = precheck.parse_tf_config


def _default(tpu):
  del tpu
  return tf.distribute.get_strategy()


def _mirrored(tpu):
  del tpu
  devices = (tf.config.list_logical_devices('GPU') or
             tf.config.list_logical_devices('CPU'))
  return tf.distribute.MirroredStrategy([d.name for d in devices])


def _multi_worker(tpu):
  del tpu
  parse_tf_config(os.environ.get('TF_CONFIG'))
  try:
    return tf.distribute.MultiWorkerMirroredStrategy()
  except RuntimeError as error:
    raise LaunchError(f'cannot create MultiWorkerMirroredStrategy: {error}. It '
                      'must be created before TensorFlow runs anything else in '
                      'the process.') from None


def _tpu(tpu):
  try:
    resolver = tf.distribute.cluster_resolver.TPUClusterResolver(tpu=tpu)
    tf.config.experimental_connect_to_cluster(resolver)
    tf.tpu.experimental.initialize_tpu_system(resolver)
  except Exception as error:  # pylint: disable=broad-except
    # The resolver raises ValueError, OSError (name lookups), tf.errors.* or
    # RuntimeError depending on where it fails; all mean "no TPU here".
    detail = str(error).strip().splitlines()[0] if str(error).strip() else ''
    raise LaunchError(
        f'--strategy=tpu: no TPU reachable as --tpu={tpu!r} '
        f'({type(error).__name__}: {detail[:300]}). On a Cloud TPU VM use '
        '--tpu=local (one host) or --tpu=<TPU name> (pod slice, from worker 0); '
        'elsewhere pick --strategy=default, mirrored or multi_worker.') from None
  return tf.distribute.TPUStrategy(resolver)


_FACTORIES = {
    'default': _default,
    'mirrored': _mirrored,
    'multi_worker': _multi_worker,
    'tpu': _tpu,
}
NAMES = precheck.STRATEGIES  # `launch.train` reads them before TensorFlow.
assert set(_FACTORIES) == set(NAMES), (sorted(_FACTORIES), NAMES)


def create(name, tpu='local'):
  """Creates the distribution strategy `name`.

  Args:
    name: one of `NAMES`.
    tpu: for 'tpu', the `TPUClusterResolver` target ('local', a TPU name or a
      grpc:// address).

  Returns:
    A `tf.distribute.Strategy`.

  Raises:
    LaunchError: for an unknown name or a strategy that cannot be set up.
  """
  if name not in _FACTORIES:
    raise LaunchError(f'unknown strategy {name!r}; valid strategies are '
                      f'{list(_FACTORIES)}.')
  return _FACTORIES[name](tpu)


def is_tpu(strategy):
  """True for a `TPUStrategy`: bfloat16, steps per execution, static batches."""
  return isinstance(strategy, tf.distribute.TPUStrategy)


def worker(strategy):
  """`(is_chief, task_id)`: whether this process writes the run's outputs.

  Only the chief of a multi-worker run writes checkpoints, logs and exports to
  the model directory; the other workers write theirs to a scratch directory.
  """
  if not isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy):
    return True, 0
  resolver = strategy.cluster_resolver
  task_type, task_id = resolver.task_type, resolver.task_id or 0
  jobs = resolver.cluster_spec().as_dict()
  chief = task_type in (None, 'chief') or (
      task_type == 'worker' and task_id == 0 and 'chief' not in jobs)
  return chief, task_id


# What TensorFlow raises in the survivors when a worker of the cluster is gone.
_LOST_WORKER_ERRORS = (tf.errors.UnavailableError, tf.errors.AbortedError,
                       tf.errors.CancelledError, tf.errors.DeadlineExceededError)


# Words of the line that says why, in TensorFlow's long error messages.
_CAUSES = ('unhealthy', 'heartbeat', 'connection', 'socket', 'peer',
           'unavailable', 'timed out', 'deadline', 'aborted')


def _lost_worker_message(error, model_dir):
  text = getattr(error, 'message', '') or str(error)
  tasks = sorted(set(re.findall(r'/job:\w+/replica:\d+/task:\d+', text)))
  lines = [l.strip() for l in text.splitlines() if l.strip()]
  noise = ('[[', 'File ', 'Detected at', 'Graph execution error', 'Stack',
           '<stack', 'Additional GRPC', ':UNKNOWN')
  plain = [l for l in lines if not l.startswith(noise)]
  reason = next((l for l in plain if any(k in l.lower() for k in _CAUSES)),
                plain[0] if plain else type(error).__name__)
  where = f' (unresponsive: {", ".join(tasks)})' if tasks else ''
  resume = (f' from the last checkpoint in {model_dir}' if model_dir else '')
  return (f'the multi-worker cluster lost a worker{where}: {reason[:300]} '
          f'[{type(error).__name__}]. Training stopped on this worker too. '
          f'Restart every worker with --resume to continue{resume}.')


@contextlib.contextmanager
def lost_workers_stop_cleanly(strategy, model_dir=None):
  """Turns TensorFlow's errors about a lost worker into a `ClusterError`.

  Under `MultiWorkerMirroredStrategy`, TensorFlow's coordination service
  notices within seconds that a worker stopped sending heartbeats and aborts
  the collectives of the others, which then raise `UnavailableError` (or
  `AbortedError`, `CancelledError`, `DeadlineExceededError`) from inside
  `fit`. This context turns those into a `ClusterError` that names the lost
  tasks and says how to resume. With other strategies it changes nothing.

  Args:
    strategy: the run's strategy.
    model_dir: the run's model directory, named in the message.

  Yields:
    Nothing.
  """
  try:
    yield
  except _LOST_WORKER_ERRORS as error:
    if not isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy):
      raise
    raise ClusterError(_lost_worker_message(error, model_dir)) from None
