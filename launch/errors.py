"""The launcher's one error type: bad input the user can fix."""


class LaunchError(ValueError):
  """A bad config name, override, flag, data directory or model directory.

  `launch.train` prints its message (no traceback) and exits with status 2;
  nothing has been written to the model directory when it is raised before
  training starts.
  """
