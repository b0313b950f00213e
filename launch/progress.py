"""Progress lines for long command-line jobs: elapsed time and what is left.

`Progress(total)` counts finished units of work (runs of a grid, of the quick
start); `eta()` is the mean time of the finished ones times the number still
to do, None before the first has finished.
"""

import time


def format_duration(seconds):
  """`seconds` as `42 s`, `3 min 05 s` or `2 h 07 min`."""
  seconds = int(round(seconds))
  if seconds < 60:
    return f'{seconds} s'
  minutes, seconds = divmod(seconds, 60)
  if minutes < 60:
    return f'{minutes} min {seconds:02d} s'
  hours, minutes = divmod(minutes, 60)
  return f'{hours} h {minutes:02d} min'


class Progress:
  """Elapsed time and an estimate of the time left over `total` units.

  Args:
    total: the number of units to do, >= 0.
    clock: returns seconds; `time.monotonic` unless a test passes its own.
  """

  def __init__(self, total, clock=time.monotonic):
    if total < 0:
      raise ValueError(f'total must be >= 0, got {total}')
    self.total = total
    self.done = 0
    self._clock = clock
    self._start = clock()

  def elapsed(self):
    """Seconds since the `Progress` was made."""
    return self._clock() - self._start

  def finish_one(self):
    """Records that one more unit finished."""
    self.done += 1

  def eta(self):
    """Seconds left, estimated from the finished units; None before the first."""
    if not self.done:
      return None
    return self.elapsed() / self.done * (self.total - self.done)

  def status(self):
    """`elapsed 1 min 05 s, about 3 min 10 s left` (or `, time left unknown`)."""
    eta = self.eta()
    left = 'time left unknown' if eta is None else f'about {format_duration(eta)} left'
    return f'elapsed {format_duration(self.elapsed())}, {left}'
