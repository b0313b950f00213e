"""Pure tensor functions of one DSR reallocation: prune, allocate, grow, adapt.

Dynamic Sparse Reparameterization (Mostafa & Wang, ICML 2019,
https://arxiv.org/abs/1902.05967) moves a fixed budget of non-zero weights
within and across layers. One reallocation prunes every active weight whose
magnitude is below a global threshold `H`, regrows as many weights as were
pruned, spread over the tensors in proportion to their survivors and placed
uniformly at random among inactive positions, and adapts `H` towards a target
number of pruned weights.

Contract shared by this file:
- Tensors in, tensors out: nothing here reads or assigns a variable.
- Masks are boolean tensors; counts are int64 scalars or vectors.
- Shapes are static and no function sorts a weight-sized tensor, so every
  function compiles with XLA (`jit_compile=True`), as TPUs need.
- Random numbers come from stateless ops keyed by an explicit `[2]` int32 seed;
  the caller folds in the reallocation index and the tensor index. They are
  the same compiled or not (`fold_in`, `uniform`), so a compiled and an
  uncompiled reallocation choose the same masks.
"""

import collections

import tensorflow as tf

# The interval H is kept in, so that repeated halving or doubling (K always 0,
# or always huge) can neither underflow to 0 nor overflow to inf.
MIN_THRESHOLD = 2.0**-60
MAX_THRESHOLD = 2.0**60

# Named, not 'auto_select': under XLA 'auto_select' may pick another algorithm
# than TensorFlow's own kernels, and fold_in's results then differ. Philox's
# integer streams are identical compiled and not (tested); its float streams
# are not (XLA makes floats from the bits its own way), hence `uniform`.
RANDOM_ALG = 'philox'


def fold_in(seed, data):
  """A new `[2]` seed from `seed` and the integer `data`, as in `stateless_fold_in`."""
  return tf.random.experimental.stateless_fold_in(seed, data, alg=RANDOM_ALG)


def uniform(shape, seed):
  """float64 uniform on [0, 1) from 32 random bits each, the same compiled or not."""
  bits = tf.random.stateless_uniform(shape, seed, minval=None, maxval=None,
                                     dtype=tf.uint32, alg=RANDOM_ALG)
  return tf.cast(bits, tf.float64) * 2.0**-32


# Counting is done by writing small integer codes into a [rows, _ROW] matrix
# and summing rows with a matmul: on CPU this runs at memory speed, where a
# fused reduction over two inputs is several times slower. Row sums stay below
# 2**24, so float32 is exact.
_ROW = 128
_ACTIVE = 256.0
_NONFINITE = 65536.0


def count_entries(weight, mask, threshold):
  """Counts a tensor's active entries, those below H, and non-finite weights.

  Args:
    weight: float tensor.
    mask: bool tensor of the same shape, True where active.
    threshold: float scalar H.

  Returns:
    `(active, below, nonfinite)`: int64 scalars; `below` counts active entries
    with `|w| < H`.
  """
  w = tf.reshape(tf.cast(weight, tf.float32), [-1])
  m = tf.reshape(mask, [-1])
  below = m & (tf.abs(w) < tf.cast(threshold, tf.float32))
  code = (tf.cast(below, tf.float32) + _ACTIVE * tf.cast(m, tf.float32) +
          _NONFINITE * tf.cast(~tf.math.is_finite(w), tf.float32))
  code = tf.pad(code, [[0, -code.shape[0] % _ROW]])
  rows = tf.cast(tf.matmul(tf.reshape(code, [-1, _ROW]), tf.ones([_ROW, 1])),
                 tf.int64)[:, 0]
  return (tf.reduce_sum(rows // 256 % 256), tf.reduce_sum(rows % 256),
          tf.reduce_sum(rows // 65536))


def would_empty(counts):
  """True when pruning at H would empty some tensor (given `count_entries`)."""
  return tf.reduce_any(tf.stack([(active > 0) & (active == below)
                                 for active, below, _ in counts]))


def _prune(weight, mask, threshold, active, below, keep_largest=True):
  """Pruned and surviving entries, given the counts of `count_entries`.

  With `keep_largest=False` the caller guarantees that no tensor would be
  emptied (`would_empty` is False), which spares a conditional per tensor
  whose operands XLA would have to materialise.
  """
  magnitude = tf.abs(tf.cast(weight, tf.float32))
  if not keep_largest:
    pruned = mask & (magnitude < tf.cast(threshold, tf.float32))
    return mask & ~pruned, pruned, below
  emptied = (active > 0) & (active == below)

  def largest():
    flat = tf.reshape(tf.where(mask, magnitude, -1.0), [-1])
    return tf.cast(tf.argmax(flat), tf.int32)

  keep = tf.cond(emptied, largest, lambda: tf.constant(-1))
  index = tf.reshape(tf.range(mask.shape.num_elements(), dtype=tf.int32),
                     mask.shape)
  pruned = mask & (magnitude < tf.cast(threshold, tf.float32)) & (index != keep)
  num_pruned = below - tf.cast(emptied, tf.int64)
  return mask & ~pruned, pruned, num_pruned


def prune_by_threshold(weight, mask, threshold):
  """Deactivates the active entries of one tensor whose magnitude is below H.

  The comparison is strict (`|w| < H`). If every active entry would go, the
  largest-magnitude one is kept, so no tensor is ever emptied.

  Args:
    weight: float tensor.
    mask: bool tensor of the same shape, True where active.
    threshold: float scalar H.

  Returns:
    `(survivors, pruned)`: bool tensors; `survivors | pruned == mask` and the
    two are disjoint.
  """
  active, below, _ = count_entries(weight, mask, threshold)
  survivors, pruned, _ = _prune(weight, mask, threshold, active, below)
  return survivors, pruned


def _split(total, weights, offset):
  """Splits `total` into integers proportional to `weights`, summing to `total`.

  Systematic rounding: entry i gets `floor(total * w_i / W)` plus one with
  probability equal to its fractional part, decided by one offset drawn in
  `[0, 1)`, so the parts sum to `total` exactly and their means are exact.

  Args:
    total: int64 scalar >= 0.
    weights: int64 vector >= 0.
    offset: float scalar in [0, 1).

  Returns:
    int64 vector of the same length as `weights`.
  """
  weight_sum = tf.maximum(tf.reduce_sum(weights), 1)
  scaled = total * weights
  base = scaled // weight_sum
  remainder = scaled % weight_sum
  start = tf.cast(tf.floor(offset * tf.cast(weight_sum, tf.float64)), tf.int64)
  start = tf.minimum(start, weight_sum - 1)
  upper = tf.cumsum(remainder) + start
  lower = upper - remainder
  return base + upper // weight_sum - lower // weight_sum


def cap_to_capacity(grow, weights, capacity, seed):
  """Moves any excess over capacity to the other tensors, in proportion to `weights`.

  A tensor asked for more than its capacity (free positions) keeps its
  capacity and the excess is split over the tensors that still have room, in
  proportion to `weights` (systematic rounding), until nothing is left over.
  The total is unchanged.

  Args:
    grow: int64 vector, the requested regrowth per tensor.
    weights: int64 vector, each at least 1.
    capacity: int64 vector of free positions per tensor, summing to at least
      `sum(grow)`.
    seed: int32 or int64 `[2]` seed.

  Returns:
    int64 vector g with `sum(g) == sum(grow)` and `0 <= g <= capacity`.
  """
  num_tensors = grow.shape[0]
  offsets = uniform([num_tensors], seed)

  def body(i, grow):
    excess = tf.reduce_sum(tf.maximum(grow - capacity, 0))
    grow = tf.minimum(grow, capacity)
    open_weights = tf.where(grow < capacity, weights, tf.zeros_like(weights))
    return i + 1, grow + _split(excess, open_weights, offsets[i])

  def cond(i, grow):
    del i
    return tf.reduce_any(grow > capacity)

  # Each pass saturates every tensor that overflows, so it ends within
  # num_tensors passes.
  _, grow = tf.while_loop(
      cond, body, (tf.constant(0), grow), maximum_iterations=num_tensors)
  return grow


def allocate(total, survivors, capacity, seed):
  """Regrowth per tensor: proportional to survivors, within capacity, exact sum.

  Tensor i gets about `total * l_i / L`; the rounding remainder is spread by
  systematic rounding from the seeded stream; excess over a tensor's capacity
  goes to the others (`cap_to_capacity`).

  Args:
    total: int64 scalar K, at most `sum(capacity)`.
    survivors: int64 vector l_i, each at least 1.
    capacity: int64 vector of free positions per tensor.
    seed: int32 or int64 `[2]` seed.

  Returns:
    int64 vector g with `sum(g) == total` and `0 <= g <= capacity`.
  """
  offset = uniform([], seed)
  grow = _split(total, survivors, offset)
  return cap_to_capacity(grow, survivors, capacity,
                         fold_in(seed, 1))


def _draw_round(size, target, seed, draws, round_index, taken, last_taken,
                first_hits):
  """One round of `grow_uniform`'s sampling; returns the updated loop state.

  `first_hits` holds, per position, the number of the first draw that hit it;
  positions that are not candidates hold -1, below every draw number, so one
  gather tells whether a draw is the first to hit a candidate.
  """
  positions = tf.random.stateless_uniform(
      [draws], fold_in(seed, round_index),
      minval=0, maxval=size, dtype=tf.int32, alg=RANDOM_ALG)
  ids = round_index * draws + tf.range(draws, dtype=tf.int32)
  first_hits = tf.tensor_scatter_nd_min(first_hits, positions[:, None], ids)
  new = tf.gather(first_hits, positions) == ids
  rank = taken + tf.cumsum(tf.cast(new, tf.int32))
  take = new & (rank <= target)
  last_taken = tf.maximum(last_taken, tf.reduce_max(tf.where(take, ids, -1)))
  return (round_index + 1, tf.minimum(rank[-1], target), last_taken,
          first_hits)


def _unhit(candidates):
  """The initial `first_hits`: no draw yet at candidates, -1 elsewhere."""
  return tf.where(candidates, tf.int32.max, -1)


def _sample(flat, target, seed, draws):
  """Rounds of `_draw_round` until `target` candidates are taken."""

  def cond(round_index, taken, last_taken, first_hits):
    del round_index, last_taken, first_hits
    return taken < target

  def body(*loop_vars):
    return _draw_round(flat.shape[0], target, seed, draws, *loop_vars)

  _, _, last_taken, first_hits = tf.while_loop(
      cond, body, (tf.constant(0), tf.constant(0), tf.constant(-1),
                   _unhit(flat)))
  return (first_hits >= 0) & (first_hits <= last_taken)


def grow_uniform(candidates, count, num_candidates, seed, draws_per_round):
  """Chooses exactly `count` of the candidate positions, uniformly at random.

  Sequential sampling without replacement, at a cost that scales with `count`
  rather than with the tensor size, and without sorting: a round draws
  `draws_per_round` positions uniformly (with replacement) over the tensor, and
  the draws that are the first to hit a candidate are taken, in draw order,
  until `count` are taken. A scatter-min of draw numbers into a scratch array
  finds the first hits deterministically; the positions taken are then the
  candidates whose first hit is no later than the last draw taken. If one
  round falls short, the rest is drawn the same way among the candidates not
  yet taken, which keeps every `count`-subset equally likely. When `count` is
  more than half the candidates, the complement is drawn instead, which bounds
  the rounds needed.

  Args:
    candidates: bool tensor, True where a position may be grown.
    count: int64 scalar, `0 <= count <= num_candidates`.
    num_candidates: int64 scalar, the number of True entries of `candidates`.
    seed: int32 or int64 `[2]` seed.
    draws_per_round: Python int, the static number of draws in a round.

  Returns:
    bool tensor shaped like `candidates`, True at exactly `count` candidates.
  """
  flat = tf.reshape(candidates, [-1])
  invert = 2 * count > num_candidates
  target = tf.cast(tf.where(invert, num_candidates - count, count), tf.int32)
  draws = min(draws_per_round, flat.shape[0])
  # The first round is unrolled: it is usually the only one, and on CPU a loop
  # carrying the scratch array costs more than the round itself.
  _, taken, last_taken, first_hits = _draw_round(
      flat.shape[0], target, fold_in(seed, 0),
      draws, tf.constant(0), tf.constant(0), tf.constant(-1), _unhit(flat))
  chosen = (first_hits >= 0) & (first_hits <= last_taken)
  chosen |= tf.cond(
      taken < target,
      lambda: _sample(flat & ~chosen, target - taken,
                      fold_in(seed, 1), draws),
      lambda: tf.zeros_like(flat))
  grown = tf.where(invert, flat & ~chosen, chosen)
  return tf.reshape(grown, tf.shape(candidates))


def adapt_threshold(threshold, pruned, target_pruned, tolerance):
  """Halves H if too many were pruned, doubles it if too few (DSR_SPEC 3.5).

  Args:
    threshold: float32 scalar H.
    pruned: int64 scalar K.
    target_pruned: Python number N_p.
    tolerance: Python float delta.

  Returns:
    The new H, kept within [MIN_THRESHOLD, MAX_THRESHOLD].
  """
  pruned = tf.cast(pruned, tf.float64)
  new = tf.where(
      pruned > (1.0 + tolerance) * target_pruned, threshold / 2.0,
      tf.where(pruned < (1.0 - tolerance) * target_pruned, threshold * 2.0,
               threshold))
  return tf.clip_by_value(new, MIN_THRESHOLD, MAX_THRESHOLD)


Reallocation = collections.namedtuple(
    'Reallocation',
    ['masks', 'pruned_masks', 'grown_masks', 'threshold', 'pruned', 'candidates',
     'regrown', 'active', 'skipped'])
Reallocation.__doc__ = """The outcome of `drop_and_grow` (and `reallocate`).

Fields:
  masks: new bool masks, one per tensor.
  pruned_masks: bool masks of the entries pruned.
  grown_masks: bool masks of the entries regrown (disjoint from pruned_masks).
  threshold: the adapted H for the next reallocation (None from
    `drop_and_grow`, which knows no threshold).
  pruned: int64 K actually pruned (0 when skipped).
  candidates: int64 number of entries the rule chose to drop (what H adapts on).
  regrown: int64 vector g_i.
  active: int64 vector of active entries per tensor after the reallocation.
  skipped: bool scalar, True when K exceeded the free positions and nothing
    was changed (only possible below sparsity 0.5).
"""


def drop_and_grow(masks, pruned, num_pruned, num_active, budget, seed,
                  draws_per_round):
  """The drop-and-grow core shared by every reallocation rule.

  Given the entries a rule drops, regrows as many, spread over the tensors by
  `budget`, each placed uniformly at random among the entries that were
  inactive before (so never an entry just dropped). If more are dropped than
  there are inactive entries in all (only possible below sparsity 0.5), they
  could not all be regrown without reviving dropped entries: nothing changes.

  Args:
    masks: list of bool masks.
    pruned: list of bool masks of the entries to drop (subsets of `masks`).
    num_pruned: int64 vector, the number of True entries of each `pruned`.
    num_active: int64 vector, the number of True entries of each mask.
    budget: callable `(num_pruned, survivors, capacity, seed) -> g`, the int64
      regrowth per tensor, summing to `sum(num_pruned)`, each at most its
      capacity.
    seed: `[2]` seed of this reallocation.
    draws_per_round: list of Python ints, one per tensor (see `grow_uniform`).

  Returns:
    A `Reallocation` with `threshold=None`.
  """
  sizes = tf.constant([m.shape.num_elements() for m in masks], tf.int64)
  survivors = num_active - num_pruned
  capacity = sizes - num_active
  total_pruned = tf.reduce_sum(num_pruned)
  skipped = total_pruned > tf.reduce_sum(capacity)
  dropped = tf.where(skipped, tf.zeros_like(num_pruned), num_pruned)
  grow_counts = budget(dropped, survivors, capacity,
                       fold_in(seed, -1))

  new_masks, pruned_masks, grown_masks = [], [], []
  for i, (mask, prune) in enumerate(zip(masks, pruned)):
    grown = grow_uniform(
        ~mask, grow_counts[i], capacity[i],
        fold_in(seed, i),
        draws_per_round[i])
    prune = prune & ~skipped
    new_masks.append((mask & ~prune) | grown)
    pruned_masks.append(prune)
    grown_masks.append(grown)

  return Reallocation(
      masks=new_masks,
      pruned_masks=pruned_masks,
      grown_masks=grown_masks,
      threshold=None,
      pruned=tf.reduce_sum(dropped),
      candidates=total_pruned,
      regrown=grow_counts,
      active=num_active - dropped + grow_counts,
      skipped=skipped)


def reallocate(weights, masks, threshold, seed, *, target_pruned, tolerance,
               draws_per_round, counts=None):
  """One DSR reallocation over all sparse tensors (DSR_SPEC section 3).

  1. Prune active entries with `|w| < H` in every tensor (never emptying one).
  2. `K = sum k_i`, `L = sum l_i`.
  3. Allocate `g_i` proportional to `l_i`, summing to `K`, within capacity.
  4. Grow `g_i` entries per tensor uniformly among the entries that were
     inactive before this reallocation (so not the ones just pruned).
  5. Adapt H on K.
  If K is more than the number of inactive entries (only possible below
  sparsity 0.5), the masks are left unchanged and H still adapts, so a later
  reallocation prunes fewer.

  Args:
    weights: list of float tensors.
    masks: list of bool tensors, same shapes.
    threshold: float32 scalar H.
    seed: `[2]` seed for this reallocation (fold in its index first).
    target_pruned: N_p.
    tolerance: delta in (0, 1).
    draws_per_round: list of Python ints, one per tensor (see `grow_uniform`).
    counts: optional list of `count_entries(w, m, threshold)` per tensor, when
      the caller has them already.

  Returns:
    A `Reallocation`.
  """
  if counts is None:
    counts = [count_entries(w, m, threshold) for w, m in zip(weights, masks)]
  pruned = [_prune(w, m, threshold, active, below)
            for w, m, (active, below, _) in zip(weights, masks, counts)]
  result = drop_and_grow(
      masks, [p for _, p, _ in pruned], tf.stack([k for _, _, k in pruned]),
      tf.stack([a for a, _, _ in counts]),
      lambda dropped, survivors, capacity, seed: allocate(
          tf.reduce_sum(dropped), survivors, capacity, seed),
      seed, draws_per_round)
  return result._replace(threshold=tf.cast(
      adapt_threshold(tf.cast(threshold, tf.float64), result.candidates,
                      target_pruned, tolerance), tf.float32))
