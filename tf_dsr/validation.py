"""One way to check the numbers users pass: Python or NumPy, named in errors.

Every constructor of tf_dsr (the wrapper, `sparsify`, the callback, the
`Reallocator`, the rules, the schedules) checks its numeric arguments here,
so a NumPy scalar (`np.float32(0.5)`, `np.int64(3)`) is accepted wherever
the equal Python number is, and a bad value gets one kind of message: it
names the argument and echoes the value. Booleans are not numbers here.
"""

import math
import numbers


def is_int(value):
  """True for a Python or NumPy integer (not a bool)."""
  return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def check_number(argument, value, *, low=None, high=None, low_open=False,
                 high_open=False, optional=False):
  """Raises ValueError naming `argument` unless `value` is a finite real in range.

  Args:
    argument: the argument's name, as the user wrote it.
    value: the value to check (Python or NumPy number).
    low: lower bound, or None.
    high: upper bound, or None.
    low_open: True to exclude `low` itself.
    high_open: True to exclude `high` itself.
    optional: True to accept None.
  """
  if value is None and optional:
    return
  ok = (not isinstance(value, bool) and isinstance(value, numbers.Real) and
        math.isfinite(value))
  if ok and low is not None:
    ok = value > low if low_open else value >= low
  if ok and high is not None:
    ok = value < high if high_open else value <= high
  if not ok:
    bounds = []
    if low is not None:
      bounds.append(f'{">" if low_open else ">="} {low:g}')
    if high is not None:
      bounds.append(f'{"<" if high_open else "<="} {high:g}')
    what = 'a finite number' + (' ' + ' and '.join(bounds) if bounds else '')
    raise ValueError(f'`{argument}` must be {what}'
                     f'{" or None" if optional else ""}, got {value!r}.')


INT64_MIN, INT64_MAX = -2**63, 2**63 - 1


def check_int(argument, value, *, low=None, optional=False):
  """Raises ValueError naming `argument` unless `value` is an int >= `low`.

  Every int tf_dsr takes ends up in an int64 tensor, so it must fit one.

  Returns:
    The value as a Python int (or None when optional and None).
  """
  if value is None and optional:
    return None
  low = INT64_MIN if low is None else low
  if not is_int(value) or not low <= value <= INT64_MAX:
    what = ('an int64' if low == INT64_MIN else f'an int64 >= {low}')
    raise ValueError(f'`{argument}` must be {what}'
                     f'{" or None" if optional else ""}, got {value!r}.')
  return int(value)
