"""When to reallocate: a piecewise-constant period and a point where it stops.

The period P (in training steps) is constant, or piecewise constant by epoch or
by step. A reallocation is due at global step g > 0 when g % P == 0 and g is
before the stop point (docs/algorithm.md section 4).

Keras runs `steps_per_execution` steps between two callbacks, so the callback
sees only the last step of each execution. `PeriodSchedule.due` answers for a
whole interval of steps: a reallocation that falls due anywhere in it happens
once, at its end (so with `steps_per_execution = k` a reallocation can be late
by up to k - 1 steps, and several due in one execution collapse into one).
With P a multiple of k nothing is rounded.
"""

import numbers

from tf_dsr import _tfmot

keras = _tfmot.keras

_UNITS = ('epoch', 'step')


def _is_int(value):
  return isinstance(value, numbers.Integral) and not isinstance(value, bool)


@keras.utils.register_keras_serializable(package='tf_dsr')
class PeriodSchedule:
  """A reallocation period, constant or piecewise constant by epoch or step.

  Example:
    ```python
    PeriodSchedule({0: 100, 25: 200, 80: 400, 140: 800})          # by epoch
    PeriodSchedule({0: 1000, 50_000: 2000}, unit='step')          # by step
    PeriodSchedule(100)                                           # constant
    ```

  Args:
    period: a positive int, or a dict from the first epoch (or step) of a piece
      to its period, with strictly increasing keys starting at 0.
    unit: 'epoch' or 'step', what the dict's keys count.
  """

  def __init__(self, period, unit='epoch'):
    if not isinstance(unit, str) or unit not in _UNITS:
      raise ValueError(f'`unit` must be one of {_UNITS}, got {unit!r}.')
    if _is_int(period):
      pieces = {0: period}
    elif isinstance(period, dict):
      pieces = dict(period)
    else:
      raise ValueError(
          '`period` must be a positive int or a dict {first %s: period}, got %r.'
          % (unit, period))
    if not pieces:
      raise ValueError(f'`period` must not be empty, got {period!r}.')
    keys = list(pieces)
    bad = [k for k in keys if not _is_int(k)]
    if bad:
      raise ValueError(f'`period` keys must be ints (first {unit} of each '
                       f'piece); {bad[0]!r} is not, in {period!r}.')
    if any(b <= a for a, b in zip(keys, keys[1:])):
      ordered = {k: pieces[k] for k in sorted(keys)}
      raise ValueError(
          f'`period` keys must be strictly increasing, got them in the order '
          f'{keys} in {period!r}; write {ordered!r}.')
    if keys[0] < 0:
      raise ValueError(f'`period` keys must be >= 0 ({unit}s count from 0); '
                       f'{keys[0]!r} is not, in {period!r}.')
    if keys[0] != 0:
      raise ValueError(
          f'`period` must start at {unit} 0: its first key is {keys[0]!r}, so '
          f'no period is set before {unit} {keys[0]!r}; got {period!r}.')
    for key, value in pieces.items():
      if not _is_int(value) or value <= 0:
        raise ValueError(
            f'`period` values must be positive ints (steps); the value of key '
            f'{key!r} is {value!r}, in {period!r}.')
    self.unit = unit
    self.pieces = {int(k): int(v) for k, v in pieces.items()}

  def period(self, epoch, step):
    """The period in force at `epoch` (0-based) and global `step`."""
    position = epoch if self.unit == 'epoch' else step
    current = None
    for start, value in self.pieces.items():
      if start > position:
        break
      current = value
    return current

  def due(self, epoch, first_step, last_step):
    """True when some step g in [first_step, last_step], g > 0, has g % P == 0.

    Args:
      epoch: the epoch (0-based) the steps belong to.
      first_step: first global step of the interval.
      last_step: last global step of the interval (inclusive).
    """
    first_step = max(first_step, 1)
    if last_step < first_step:
      return False
    if self.unit == 'epoch':
      period = self.period(epoch, last_step)
      return last_step // period > (first_step - 1) // period
    starts = list(self.pieces)
    for i, start in enumerate(starts):
      end = starts[i + 1] - 1 if i + 1 < len(starts) else last_step
      low, high = max(first_step, start), min(last_step, end)
      if low <= high:
        period = self.pieces[start]
        if high // period > (low - 1) // period:
          return True
    return False

  def get_config(self):
    return {'period': {str(k): v for k, v in self.pieces.items()},
            'unit': self.unit}

  @classmethod
  def from_config(cls, config):
    return cls({int(k): v for k, v in config['period'].items()},
               unit=config['unit'])

  def __eq__(self, other):
    return (isinstance(other, PeriodSchedule) and self.unit == other.unit and
            self.pieces == other.pieces)

  def __repr__(self):
    return f'PeriodSchedule({self.pieces!r}, unit={self.unit!r})'


def as_schedule(period, argument='period'):
  """A `PeriodSchedule` from an int, an epoch-keyed dict or a schedule."""
  if isinstance(period, PeriodSchedule):
    return period
  try:
    return PeriodSchedule(period)
  except ValueError as error:
    raise ValueError(str(error).replace('`period`', f'`{argument}`')) from None
