"""Pure tensor functions of one reallocation: prune, allocate, grow, adapt.

Dynamic Sparse Reparameterization (Mostafa & Wang, ICML 2019,
https://arxiv.org/abs/1902.05967) moves a fixed budget of non-zero weights
within and across layers. One reallocation prunes every active weight whose
magnitude is below a global threshold `H`, regrows as many weights as were
pruned, spread over the tensors in proportion to their survivors and placed
uniformly at random among inactive positions, and adapts `H` towards a target
number of pruned weights. Other rules (`tf_dsr.rules`) share the allocation
and the growth.

Contract shared by this file:
- Tensors in, tensors out: nothing here reads or assigns a variable.
- Weights, masks and other per-entry values are flat tensors of a
  `tf_dsr.layout.Layout` (every sparse tensor of the model, end to end);
  per-tensor counts are int64 `[T]` vectors. The program's size does not
  depend on the number of tensors.
- Masks are boolean; padding entries are never active and never free.
- Shapes are static and no function sorts a weight-sized tensor, so every
  function compiles with XLA (`jit_compile=True`), as TPUs need.
- Random numbers come from stateless ops keyed by an explicit `[2]` seed;
  the caller folds in the reallocation index. They are the same compiled or
  not (`fold_in`, `uniform`), so a compiled and an uncompiled reallocation
  choose the same masks.
"""

import collections

import tensorflow as tf

from tf_dsr import layout as layout_lib

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


def _mix32(x):
  """A bijective, avalanching mix of uint32 values.

  Two xorshift-multiply rounds with the constants of the "lowbias32" hash
  (C. Wellons, hash-prospector), whose bias is among the lowest known for
  this form.
  """
  def shift(v, n):
    return tf.bitwise.right_shift(v, tf.constant(n, tf.uint32))
  x = tf.bitwise.bitwise_xor(x, shift(x, 16)) * tf.constant(0x7FEB352D,
                                                            tf.uint32)
  x = tf.bitwise.bitwise_xor(x, shift(x, 15)) * tf.constant(0x846CA68B,
                                                            tf.uint32)
  return tf.bitwise.bitwise_xor(x, shift(x, 16))


def hash_uniform(count, seed):
  """float64 uniform on [0, 1): a keyed hash of the counters 0..count-1.

  A counter-based generator like Philox but far cheaper (XLA's Philox costs
  about 40 ns per number on CPU, this a few element-wise ops), for the
  regrowth's many draws. Integer ops only, so the same compiled or not and
  on every device.

  Args:
    count: Python int, the number of values.
    seed: int64 `[2]` seed; each word's low 32 bits key one mixing round.
  """
  keys = tf.cast(tf.bitwise.bitwise_and(tf.cast(seed, tf.int64), 0xFFFFFFFF),
                 tf.uint32)
  counters = tf.bitcast(tf.range(count, dtype=tf.int32), tf.uint32)
  # The keys enter between mixes, so streams of different seeds are not
  # shifts or permutations of each other.
  bits = _mix32(tf.bitwise.bitwise_xor(_mix32(counters), keys[0]))
  bits = _mix32(tf.bitwise.bitwise_xor(bits, keys[1]))
  return tf.cast(bits, tf.float64) * 2.0**-32


def prune_below(layout, weights, masks, active, threshold, row_segments=None):
  """DSR's prune: the active entries with `|w| < H`, never emptying a tensor.

  The comparison is strict. If every active entry of a tensor is below H,
  its largest-magnitude one (the first in flat order on a tie) is kept.

  Args:
    layout: the `Layout` of the flat tensors.
    weights: float32 flat weights.
    masks: bool flat masks, True where active.
    active: int64 `[T]`, the active entries per tensor.
    threshold: float32 scalar H.
    row_segments: optional `layout.row_segments()`, when the caller has it.

  Returns:
    `(pruned, num_pruned)`: a bool flat tensor, a subset of `masks`, and its
    int64 `[T]` counts.
  """
  if row_segments is None:
    row_segments = layout.row_segments()
  below = masks & (tf.abs(weights) < threshold)
  num_below, = layout.count(below, row_segments=row_segments)
  emptied = (active > 0) & (active == num_below)

  def keep_largest():
    magnitude = tf.abs(weights)
    largest = layout.segment_max(tf.where(masks, magnitude, -1.0), row_segments)
    is_largest = (masks & (magnitude == layout.broadcast(largest, row_segments))
                  & layout.broadcast(emptied, row_segments))
    index = tf.range(layout.size, dtype=tf.int32)
    first = layout.segment_min(tf.where(is_largest, index, layout.size),
                               row_segments)
    return index == layout.broadcast(first, row_segments)

  # One conditional for all tensors: the extra passes run only when some
  # tensor would be emptied.
  keep = tf.cond(tf.reduce_any(emptied), keep_largest,
                 lambda: tf.zeros([layout.size], tf.bool))
  return below & ~keep, num_below - tf.cast(emptied, tf.int64)


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


def grow_uniform(layout, free, count, seed, draws, row_segments=None,
                 capacity=None):
  """Chooses exactly `count[i]` free entries of each tensor i, uniformly.

  Sampling without replacement at a cost that scales with the number of
  draws, not with the tensor sizes, and without sorting. In one round every
  tensor i gets `draws[i]` positions drawn uniformly (with replacement) over
  its segment; a scatter-min of draw numbers into a scratch array finds, for
  each free entry hit, the first draw that hit it, and those first hits are
  taken in draw order until the tensor has its target. If a round falls
  short, further rounds draw among the free entries not yet taken, which
  keeps every subset of the right size equally likely. When a tensor is to
  grow more than half its free entries, the complement is drawn instead,
  which bounds the number of rounds. All tensors share every round.

  Args:
    layout: the `Layout` of the flat tensors.
    free: bool flat tensor, True where an entry may be grown.
    count: int64 `[T]`, each at most the tensor's number of free entries.
    seed: `[2]` seed.
    draws: Python ints, the static number of draws per round of each
      tensor; a wrong size costs time (more rounds), never correctness.
    row_segments: optional `layout.row_segments()`.
    capacity: optional int64 `[T]`, the free entries per tensor, when the
      caller has it.

  Returns:
    bool flat tensor, True at exactly `count[i]` free entries of tensor i.
  """
  if row_segments is None:
    row_segments = layout.row_segments()
  draws = [max(1, min(int(d), size)) for d, size in zip(draws, layout.sizes)]
  num_tensors = layout.num_tensors
  if capacity is None:
    capacity, = layout.count(free, row_segments=row_segments)
  invert = 2 * count > capacity
  target = tf.cast(tf.where(invert, capacity - count, count), tf.int32)

  draw_tensor = layout_lib.block_ids(draws)
  block_starts, position = [], 0
  for d in draws:
    block_starts.append(position)
    position += d
  block_starts = tf.constant(block_starts, tf.int32)
  block_ends = block_starts + tf.constant(draws, tf.int32)
  origin = tf.gather(tf.constant(layout.starts, tf.int32), draw_tensor)
  span = tf.gather(tf.constant(layout.sizes, tf.float64), draw_tensor)
  ids = tf.range(position, dtype=tf.int32)

  def one_round(round_index, remaining, chosen):
    offsets = tf.cast(tf.floor(hash_uniform(position,
                                            fold_in(seed, round_index))
                               * span), tf.int32)
    positions = origin + offsets
    first_hits = tf.where(free & ~chosen, tf.int32.max, -1)
    first_hits = tf.tensor_scatter_nd_min(first_hits, positions[:, None], ids)
    new = tf.gather(first_hits, positions) == ids
    rank = tf.concat([[0], tf.cumsum(tf.cast(new, tf.int32))], 0)
    before = tf.gather(rank, block_starts)
    rank_in_block = rank[1:] - tf.gather(before, draw_tensor)
    take = new & (rank_in_block <= tf.gather(remaining, draw_tensor))
    last = tf.maximum(tf.math.unsorted_segment_max(
        tf.where(take, ids, -1), draw_tensor, num_tensors), -1)
    taken = tf.minimum(tf.gather(rank, block_ends) - before, remaining)
    # A hit entry of tensor i holds the number of a draw of tensor i, so one
    # comparison with that tensor's last draw taken finds what was taken.
    chosen |= (first_hits >= 0) & (
        first_hits <= layout.broadcast(last, row_segments))
    return round_index + 1, remaining - taken, chosen

  # The first round is unrolled: it is usually the only one.
  state = one_round(tf.constant(0), target,
                    tf.zeros([layout.size], tf.bool))
  _, _, chosen = tf.while_loop(
      lambda round_index, remaining, chosen: tf.reduce_any(remaining > 0),
      one_round, state)
  return tf.where(layout.broadcast(invert, row_segments), free & ~chosen,
                  chosen)


def magnitude_keys(values, eligible, smallest=False):
  """int32 keys that order `|values|` (or its reverse), -1 where not eligible.

  The bits of a non-negative float32 order like the float, so the keys are
  exact: no two magnitudes share a key unless they are equal. Used with
  `select_largest`.

  Args:
    values: float flat tensor, finite.
    eligible: bool flat tensor.
    smallest: if True, smaller magnitudes get larger keys.
  """
  bits = tf.bitcast(tf.abs(tf.cast(values, tf.float32)), tf.int32)
  if smallest:
    bits = tf.int32.max - bits
  return tf.where(eligible, bits, -1)


def _largest_threshold(layout, keys, counts, row_segments):
  """Per tensor, the largest T >= 0 with at least `counts[i]` keys >= T.

  A binary search over the 31 key bits, two bits per pass (bits 31-30 first,
  then 29-28, ...): each pass counts three candidate thresholds at once
  (`Layout.count`), so 16 passes over the flat keys, in a loop of fixed
  length (one program for any model).
  """
  num_tensors = layout.num_tensors

  def body(shift, found):
    candidates = [found + tf.bitwise.left_shift(tf.constant(j, tf.int32), shift)
                  for j in (1, 2, 3)]
    over = layout.count(*[keys >= layout.broadcast(c, row_segments)
                          for c in candidates], row_segments=row_segments)
    for candidate, count in zip(candidates, over):
      # Candidates grow with j, so the last one still reaching the count wins;
      # one past the int32 range wraps below `found` and is never taken.
      found = tf.where((count >= counts) & (candidate > found), candidate,
                       found)
    return shift - 2, found

  _, found = tf.while_loop(
      lambda shift, found: shift >= 0, body,
      (tf.constant(30, tf.int32), tf.zeros([num_tensors], tf.int32)),
      maximum_iterations=16)
  return found


def select_largest(layout, keys, counts, row_segments=None):
  """Exactly `counts[i]` entries of each tensor i with the largest keys.

  Top-k per tensor with static shapes and no sort: a bitwise search finds
  each tensor's k-th largest key; among entries tied with it, the first in
  flat order are taken. Keys below 0 are never taken (mark ineligible
  entries -1).

  Args:
    layout: the `Layout` of the flat tensors.
    keys: int32 flat tensor (`magnitude_keys`).
    counts: int64 `[T]`, each at most the tensor's number of keys >= 0.
    row_segments: optional `layout.row_segments()`.

  Returns:
    bool flat tensor with `counts[i]` True entries in tensor i.
  """
  if row_segments is None:
    row_segments = layout.row_segments()
  threshold = _largest_threshold(layout, keys, counts, row_segments)
  threshold_flat = layout.broadcast(threshold, row_segments)
  above = keys > threshold_flat
  tied = keys == threshold_flat
  num_above, = layout.count(above, row_segments=row_segments)
  wanted = tf.where(counts > 0, counts - num_above, 0)

  def break_ties():
    # Among tied entries, earlier positions get larger keys.
    order = tf.where(tied, tf.int32.max - tf.range(layout.size,
                                                   dtype=tf.int32), -1)
    cut = _largest_threshold(layout, order, wanted, row_segments)
    return order >= layout.broadcast(cut, row_segments)

  num_tied, = layout.count(tied, row_segments=row_segments)
  # Ties need a second search only where some but not all tied entries go.
  partial = (wanted > 0) & (wanted < num_tied)
  taken_ties = tf.cond(
      tf.reduce_any(partial), break_ties,
      lambda: tied & layout.broadcast(wanted > 0, row_segments))
  return (above | taken_ties) & layout.broadcast(counts > 0, row_segments)


def adapt_threshold(threshold, pruned, target_pruned, tolerance):
  """Halves H if too many were pruned, doubles it if too few (docs/algorithm.md 3.5).

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
    ['pruned_masks', 'grown_masks', 'pruned', 'candidates', 'regrown',
     'active', 'skipped'])
Reallocation.__doc__ = """The outcome of `drop_and_grow`, on flat tensors.

The new masks are `(masks & ~pruned_masks) | grown_masks`.

Fields:
  pruned_masks: the entries dropped (all False when skipped).
  grown_masks: the entries regrown (disjoint from pruned_masks).
  pruned: int64 K actually dropped (0 when skipped).
  candidates: int64 number of entries the rule chose to drop (what H adapts
    on).
  regrown: int64 `[T]` g_i.
  active: int64 `[T]` active entries per tensor after the reallocation.
  skipped: bool scalar, True when K exceeded the free entries and nothing
    was changed (only possible below sparsity 0.5).
"""


def drop_and_grow(layout, masks, pruned, num_pruned, num_active, budget, seed,
                  draws, row_segments=None, grow_keys=None, regrow=None):
  """The drop-and-grow core shared by every reallocation rule.

  Given the entries a rule drops, regrows as many, spread over the tensors by
  `budget` (or as `regrow` says). Without `grow_keys`, each is placed
  uniformly at random among the entries that were inactive before (so never
  an entry just dropped); if more are dropped than there are inactive entries
  in all (only possible below sparsity 0.5), they could not all be regrown
  without reviving dropped entries, and nothing changes. With `grow_keys`
  (RigL, SNFS), the entries inactive after the drop with the largest keys
  grow; an entry dropped and grown again in one call simply stays, with its
  weight and optimizer state (as RigL does), and is in neither output mask.

  Args:
    layout: the `Layout` of the flat tensors.
    masks: bool flat masks.
    pruned: bool flat tensor of the entries to drop (a subset of `masks`).
    num_pruned: int64 `[T]`, the number of True entries of `pruned` per tensor.
    num_active: int64 `[T]`, the number of True entries of `masks` per tensor.
    budget: callable `(num_pruned, survivors, capacity, seed) -> g`, the int64
      regrowth per tensor, summing to `sum(num_pruned)`, each at most its
      capacity.
    seed: `[2]` seed of this reallocation.
    draws: Python ints, one per tensor (see `grow_uniform`).
    row_segments: optional `layout.row_segments()`.
    grow_keys: optional int32 flat keys (`magnitude_keys`): grow where they
      are largest instead of at random.
    regrow: optional int64 `[T]` regrowth per tensor, used instead of
      `budget` (with `grow_keys` only); each at most the tensor's entries
      inactive after the drop.

  Returns:
    A `Reallocation`.
  """
  if row_segments is None:
    row_segments = layout.row_segments()
  sizes = tf.constant(layout.sizes, tf.int64)
  survivors = num_active - num_pruned
  if grow_keys is not None:
    # Every entry inactive after the drop may grow, so there is always room.
    capacity = sizes - survivors
    grow_counts = regrow if regrow is not None else budget(
        num_pruned, survivors, capacity, fold_in(seed, -1))
    free = layout.valid(row_segments) & ~(masks & ~pruned)
    grown = select_largest(layout, tf.where(free, grow_keys, -1), grow_counts,
                           row_segments)
    return Reallocation(
        pruned_masks=pruned & ~grown,
        grown_masks=grown & ~pruned,
        pruned=tf.reduce_sum(num_pruned),
        candidates=tf.reduce_sum(num_pruned),
        regrown=grow_counts,
        active=survivors + grow_counts,
        skipped=tf.constant(False))
  capacity = sizes - num_active
  total_pruned = tf.reduce_sum(num_pruned)
  skipped = total_pruned > tf.reduce_sum(capacity)
  dropped = tf.where(skipped, tf.zeros_like(num_pruned), num_pruned)
  grow_counts = budget(dropped, survivors, capacity, fold_in(seed, -1))
  free = ~masks & layout.valid(row_segments)
  grown = grow_uniform(layout, free, grow_counts, fold_in(seed, -2), draws,
                       row_segments, capacity)
  pruned = pruned & ~skipped
  return Reallocation(
      pruned_masks=pruned,
      grown_masks=grown,
      pruned=tf.reduce_sum(dropped),
      candidates=total_pruned,
      regrown=grow_counts,
      active=num_active - dropped + grow_counts,
      skipped=skipped)
