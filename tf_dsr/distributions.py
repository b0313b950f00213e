"""Initial per-kernel sparsity: uniform, Erdos-Renyi (ER) and ER-Kernel (ERK).

Every distribution takes the same inputs (the shapes of the sparse kernels and
the uniform sparsity `s`) and gives an exact integer count of active entries
per kernel. The contract shared by all of them:

- the counts sum to the uniform total `U = sum_i max(1, round((1 - s) n_i))`,
  the count `DynamicSparseWrapper` gives a kernel of `n_i` entries at
  sparsity `s`, so every distribution trains with the same budget;
- each count is in `[1, n_i]`.

ER (Mocanu et al., "Scalable training of artificial neural networks with
adaptive sparse connectivity", Nature Communications 2018, arXiv 1707.04780)
gives a kernel a density proportional to `(n_in + n_out) / (n_in * n_out)`,
with `n_in, n_out` its last two dimensions (input and output channels; a conv
kernel's spatial size is ignored). ERK (Evci et al., "Rigging the Lottery:
Making All Tickets Winners", ICML 2020, arXiv 1911.11134) uses every
dimension: `sum(shape) / prod(shape)`, for a conv kernel
`(h + w + c_in + c_out) / (h * w * c_in * c_out)`. Both are raised to
`erk_power_scale` (below 1 flattens the distribution towards uniform, 0 is
uniform). Unlike RigL's code, which applies the power to ERK only, tf_dsr
applies it to both.

A kernel whose density would exceed 1 becomes dense (density 1) and the
others are rescaled to the remaining budget, repeating until none exceeds 1,
as RigL does (`sparse_utils.get_sparsities_erdos_renyi`: each round turns the
kernels with the largest raw density dense). The real-valued targets are then
rounded to integers by the largest-remainder method, so the total is exact.
"""

import math
import numbers

VALID = ('uniform', 'er', 'erk')


def uniform_count(size, sparsity):
  """Active entries of a kernel of `size` entries at `sparsity`, as the wrapper keeps."""
  return max(1, int(round((1.0 - sparsity) * size)))


def validate(distribution, erk_power_scale):
  """Raises ValueError naming the argument unless both are valid."""
  if not isinstance(distribution, str) or distribution not in VALID:
    raise ValueError(f'`distribution` must be one of {list(VALID)}, got '
                     f'{distribution!r}.')
  if (isinstance(erk_power_scale, bool) or
      not isinstance(erk_power_scale, numbers.Real) or
      not math.isfinite(erk_power_scale) or erk_power_scale < 0):
    raise ValueError(f'`erk_power_scale` must be a finite number >= 0, got '
                     f'{erk_power_scale!r}.')
  if distribution == 'uniform' and erk_power_scale != 1.0:
    raise ValueError(f'`erk_power_scale` applies to distribution \'er\' and '
                     f'\'erk\' only, got erk_power_scale={erk_power_scale!r} '
                     'with distribution \'uniform\'.')


def raw_density(shape, distribution, erk_power_scale=1.0):
  """The unnormalised ER or ERK density of a kernel of `shape`."""
  shape = [int(d) for d in shape]
  if len(shape) < 2:
    raise ValueError(f'`distribution` {distribution!r} needs kernels of rank '
                     f'>= 2, got one of shape {tuple(shape)}.')
  if distribution == 'erk':
    raw = sum(shape) / math.prod(shape)
  elif distribution == 'er':
    n_in, n_out = shape[-2:]
    raw = (n_in + n_out) / (n_in * n_out)
  else:
    raise ValueError(f'`distribution` must be \'er\' or \'erk\' here, got '
                     f'{distribution!r}.')
  return raw**erk_power_scale


def _largest_remainder(targets, total):
  """Integers summing to `total`, each floor or ceil of its real target.

  The units left after flooring go to the largest fractional parts (ties to
  the earlier index).
  """
  counts = [int(math.floor(t)) for t in targets]
  left = total - sum(counts)
  order = sorted(range(len(targets)), key=lambda i: (-(targets[i] - counts[i]),
                                                     i))
  for i in order[:left]:
    counts[i] += 1
  return counts


def active_counts(shapes, sparsity, distribution='uniform',
                  erk_power_scale=1.0):
  """Exact active counts per kernel for a distribution (see the module docstring).

  Args:
    shapes: the shapes of the sparse kernels (each of rank >= 2 for 'er').
    sparsity: the uniform sparsity `s` in [0, 1) that fixes the budget.
    distribution: 'uniform', 'er' or 'erk'.
    erk_power_scale: the power on the raw ER/ERK densities.

  Returns:
    A list of ints, one per shape, summing to the uniform total.
  """
  validate(distribution, erk_power_scale)
  sizes = [math.prod(int(d) for d in shape) for shape in shapes]
  uniform = [uniform_count(n, sparsity) for n in sizes]
  if distribution == 'uniform':
    return uniform
  budget = sum(uniform)
  raw = [raw_density(shape, distribution, erk_power_scale) for shape in shapes]
  dense = set()
  while True:
    rest = [i for i in range(len(sizes)) if i not in dense]
    if not rest:
      break
    left = budget - sum(sizes[i] for i in dense)
    eps = left / sum(raw[i] * sizes[i] for i in rest)
    largest = max(raw[i] for i in rest)
    if eps * largest <= 1.0:
      break
    dense |= {i for i in rest if raw[i] == largest}
  counts = list(sizes)
  if rest:
    targets = [eps * raw[i] * sizes[i] for i in rest]
    # Each target is at most its size (eps * raw <= 1), so its ceiling is too.
    for i, count in zip(rest, _largest_remainder(targets, left)):
      counts[i] = count
  # A kernel rounded down to 0 gets one entry, taken from the largest count
  # that can spare one (the budget has at least one entry per kernel).
  for i in range(len(counts)):
    if counts[i] < 1:
      donor = max((j for j in range(len(counts)) if counts[j] > 1),
                  key=lambda j: counts[j])
      counts[donor] -= 1
      counts[i] = 1
  assert sum(counts) == budget, (counts, budget)
  return counts


def sparsity_for_count(size, count):
  """The sparsity at which the wrapper keeps exactly `count` of `size` entries."""
  sparsity = (size - count) / size
  if uniform_count(size, sparsity) != count:  # Never seen; guards rounding.
    raise AssertionError(f'sparsity {sparsity!r} of {size} entries does not '
                         f'give {count} active.')
  return sparsity
