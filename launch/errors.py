"""The launcher's error types: bad input the user can fix, and a lost cluster."""


class LaunchError(ValueError):
  """A bad config name, override, flag, data directory or model directory.

  `launch.train` prints its message (no traceback) and exits with status 2;
  nothing has been written to the model directory when it is raised before
  training starts.
  """


class ClusterError(RuntimeError):
  """A multi-worker run lost a worker (it crashed, was killed or hangs).

  `launch.train` prints its message (no traceback) and exits with status 1.
  TensorFlow's coordination service notices a worker that stops sending
  heartbeats within seconds and aborts every collective, so the surviving
  workers stop instead of waiting forever. The checkpoints written so far are
  intact: restart every worker with `--resume`.
  """
