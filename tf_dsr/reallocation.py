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
from tf_dsr import masks as masks_lib

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


# Bits of `entry_flags`' byte per entry. Padding entries of the flat space
# hold `PADDING` alone: never active, never free.
ACTIVE, BELOW, NONFINITE, PADDING = 1, 2, 4, 8
# An entry may grow where none of these bits is set.
NOT_FREE = ACTIVE | PADDING


def entry_flags(kernel, mask, threshold):
  """One byte of flags per entry of one sparse tensor, flattened.

  `ACTIVE`; `BELOW`: active with `|w| < H` (strict; what DSR prunes);
  `NONFINITE`: the weight is not finite. The engine reads every kernel and
  mask once through this and lays the bytes out in the flat space, padded
  with `PADDING` (`unpack_flags` reads them back; `grow_uniform` reads free
  entries from them directly).

  Args:
    kernel: a float tensor of any shape.
    mask: a bool or 0/1 tensor of the same shape.
    threshold: float32 scalar H.
  """
  active = masks_lib.active(mask)
  magnitude = tf.abs(tf.cast(kernel, tf.float32))
  flags = [active, active & (magnitude < threshold),
           ~tf.math.is_finite(magnitude)]
  return tf.reshape(sum(tf.cast(f, tf.uint8) * bit
                        for f, bit in zip(flags, (ACTIVE, BELOW, NONFINITE))),
                    [-1])


def unpack_flags(codes):
  """`(active, below, nonfinite)` bool tensors from `entry_flags` bytes."""
  return tuple(tf.bitwise.bitwise_and(codes, bit) > 0
               for bit in (ACTIVE, BELOW, NONFINITE))


def spare_emptied(layout, below, num_below, read_masks, active, read_weights,
                  row_segments):
  """DSR's prune: `below`, except that no tensor is emptied.

  Of every tensor whose active entries are all in `below` (`entry_flags`),
  the largest-magnitude one (the first in flat order on a tie) stays. The
  masks and weights are read (`read_masks()`, `read_weights()`) only in the
  branch that runs when some tensor would be emptied, so the program lays
  them out in the flat space only then, and the branch returns one index
  per tensor rather than a flat tensor.

  Args:
    layout: the `Layout` of the flat tensors.
    below: bool flat tensor, the active entries with `|w| < H`.
    num_below: int64 `[T]`, its True entries per tensor.
    read_masks: callable returning the bool flat masks, True where active.
    active: int64 `[T]`, the active entries per tensor.
    read_weights: callable returning the float32 flat weights.
    row_segments: `layout.row_segments()`.

  Returns:
    `(pruned, num_pruned)`: a bool flat tensor, a subset of the masks, and
    its int64 `[T]` counts.
  """
  emptied = (active > 0) & (active == num_below)

  def kept_index():
    masks = read_masks()
    magnitude = tf.abs(read_weights())
    largest = layout.segment_max(tf.where(masks, magnitude, -1.0), row_segments)
    is_largest = (masks & (magnitude == layout.broadcast(largest, row_segments))
                  & layout.broadcast(emptied, row_segments))
    index = tf.range(layout.size, dtype=tf.int32)
    return layout.segment_min(tf.where(is_largest, index, layout.size),
                              row_segments)

  # One conditional for all tensors: the extra passes run only when some
  # tensor would be emptied. Index `layout.size` keeps nothing.
  kept = tf.cond(tf.reduce_any(emptied), kept_index,
                 lambda: tf.fill([layout.num_tensors], layout.size))
  # The kept entry's column in each row (-1 in rows without one), so that
  # each entry reads one small per-row value.
  row_column = tf.tensor_scatter_nd_update(
      tf.fill([layout.num_rows + 1], -1),
      tf.minimum(kept // layout_lib.ROW, layout.num_rows)[:, None],
      kept % layout_lib.ROW)[:layout.num_rows]
  columns = tf.range(layout_lib.ROW, dtype=tf.int32)
  keep = tf.reshape(columns[None, :] == row_column[:, None], [-1])
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


def permutation_bits(size):
  """Bits of the power-of-two domain `grow_uniform` permutes for `size` entries.

  At least 2, so each half of `_permute`'s Feistel network has a bit.
  """
  return max(2, (int(size) - 1).bit_length())


# Rounds of `_permute`'s Feistel network (three per half). Tested: a
# permutation for every width, and the subsets `grow_uniform` chooses from
# it are uniform, even on tiny domains.
_FEISTEL_ROUNDS = 6


def _round(half, key, shift):
  """A Feistel round function: a keyed hash of `half`, its top `32 - shift` bits.

  Two multiplications by odd constants with an xorshift between them; the
  top bits of such a product depend on every input bit.
  """
  mixed = tf.bitwise.bitwise_xor(half, key) * tf.constant(0x9E3779B1,
                                                          tf.uint32)
  mixed = tf.bitwise.bitwise_xor(mixed, tf.bitwise.right_shift(
      mixed, tf.constant(15, tf.uint32))) * tf.constant(0x2C1B3C6D, tf.uint32)
  return tf.bitwise.right_shift(mixed, shift)


def _permute(index, bits, keys):
  """A keyed permutation of `[0, 2**bits)` applied to `index`, per element.

  An unbalanced Feistel network: the value is split into a high part of
  `bits // 2` bits and a low part of the rest, and the rounds alternately
  XOR one part with a keyed hash (`_round`) of the other. Each round is
  invertible, so the whole is a permutation of the domain for any keys.
  Integer ops only: the same compiled or not, on every device.

  Args:
    index: uint32 values in `[0, 2**bits)`.
    bits: int32, the domain's bits per element (2 to 31).
    keys: uint32 `[_FEISTEL_ROUNDS, len(index)]`, one key per round and
      element.
  """
  one = tf.constant(1, tf.uint32)
  high_bits = tf.cast(bits // 2, tf.uint32)
  low_bits = tf.cast(bits, tf.uint32) - high_bits
  low_mask = tf.bitwise.left_shift(one, low_bits) - one
  high = tf.bitwise.right_shift(index, low_bits)
  low = tf.bitwise.bitwise_and(index, low_mask)
  thirty_two = tf.constant(32, tf.uint32)
  for r in range(_FEISTEL_ROUNDS):
    if r % 2 == 0:
      high = tf.bitwise.bitwise_xor(high, _round(low, keys[r],
                                                 thirty_two - high_bits))
    else:
      low = tf.bitwise.bitwise_xor(low, _round(high, keys[r],
                                               thirty_two - low_bits))
  return tf.bitwise.bitwise_or(tf.bitwise.left_shift(high, low_bits), low)


def grow_uniform(layout, free, count, seed, draws, row_segments=None,
                 capacity=None, blocked=None, canvas=None, mark=None):
  """Chooses exactly `count[i]` free entries of each tensor i, uniformly.

  Sampling without replacement without sorting: besides one pass over the
  flat space (a bool scratch array for the scatter, or the `canvas` the
  choice is marked in), the cost scales with the number of visits, not
  with the tensor sizes. Each
  tensor visits the positions of its segment in the
  order of a keyed pseudo-random permutation (`_permute`, over the power of
  two at or above its size; positions beyond the size are never free), and
  the first `count[i]` free entries visited are taken: for a uniformly
  random order that is a uniformly random subset. A round visits the next
  `draws[i]` positions of every tensor's order; since an order never
  repeats a position, the rounds need no bookkeeping of what was taken
  before, and they end once every tensor has its target (at the latest when
  its whole domain is visited). When a tensor is to grow more than half its
  free entries, the complement is chosen instead, which bounds the number
  of rounds.

  Args:
    layout: the `Layout` of the flat tensors.
    free: bool flat tensor, True where an entry may be grown (never at
      padding); or, with `blocked`, integer flat flags (`entry_flags`).
    count: int64 `[T]`, each at most the tensor's number of free entries.
    seed: `[2]` seed.
    draws: Python ints, the static number of positions each tensor visits
      per round (rounded up to a multiple of `layout.ROW`); a wrong size
      costs time (more rounds), never correctness.
    row_segments: optional `layout.row_segments()`.
    capacity: optional int64 `[T]`, the free entries per tensor, when the
      caller has it.
    blocked: optional int: `free` holds flags, and an entry may be grown
      where none of these bits is set. Reading the flags directly spares
      the program a bool copy of the free entries.
    canvas: optional flat tensor of `layout.size` entries, 0 at every free
      entry of each tensor with a nonzero count: the chosen entries are
      written into it, as `mark`, instead of into a bool tensor of their
      own. The engine marks its byte per entry this way, which spares the
      program a bool pass over the flat space and its scratch array. Only
      inside an XLA-compiled function.
    mark: with `canvas`, the value of the chosen entries (of its dtype).

  Returns:
    bool flat tensor, True at exactly `count[i]` free entries of tensor i;
    with `canvas`, `canvas` with `mark` at exactly those entries.
  """
  if blocked is None:
    is_free = lambda values: values
  else:
    is_free = lambda values: tf.bitwise.bitwise_and(
        values, tf.constant(blocked, values.dtype)) == 0
  if row_segments is None:
    row_segments = layout.row_segments()
  num_tensors = layout.num_tensors
  bits = [permutation_bits(size) for size in layout.sizes]
  # Visits come in chunks of `ROW`, each chunk of one tensor, so per-tensor
  # values reach every visit by a gather per chunk and a broadcast (as
  # `Layout.broadcast` does for rows), not a gather per visit.
  chunk = layout_lib.ROW
  chunks = [-(-max(1, min(int(d), 2**b)) // chunk)
            for d, b in zip(draws, bits)]
  num_chunks = sum(chunks)
  position = num_chunks * chunk
  if capacity is None:
    capacity, = layout.count(is_free(free), row_segments=row_segments)
  invert = 2 * count > capacity
  target = tf.cast(tf.where(invert, capacity - count, count), tf.int32)

  # Each chunk's tensor, plus a zero the compiler cannot see through: XLA
  # would otherwise fold every per-visit value below into a constant array
  # as long as the visits, which the program then reads from memory (and
  # the compiler folds and stores) instead of looking up per chunk.
  opaque_zero = tf.reduce_min(tf.minimum(target, 0))
  chunk_tensor = layout_lib.block_ids(chunks) + opaque_zero
  first_chunk = [0]
  for c in chunks[:-1]:
    first_chunk.append(first_chunk[-1] + c)

  def per_visit(values):
    """The `[T]` (or `[R, T]`) `values` of each visit's tensor."""
    per_chunk = tf.gather(values, chunk_tensor, axis=-1)
    shape = per_chunk.shape.as_list()
    return tf.reshape(tf.broadcast_to(per_chunk[..., None], shape + [chunk]),
                      shape[:-1] + [position])

  constant = lambda values: tf.constant(values, tf.int32)
  block_starts = constant([c * chunk for c in first_chunk])
  block_ends = block_starts + constant([c * chunk for c in chunks])
  origin = per_visit(constant(layout.starts))
  size = per_visit(constant(layout.sizes))
  visit_bits = per_visit(constant(bits))
  domain = per_visit(constant([2**b for b in bits]))
  step = per_visit(constant([c * chunk for c in chunks]))
  # The i-th visit of its tensor in the first round.
  offset = tf.range(position, dtype=tf.int32) - per_visit(block_starts)
  # A key per round and tensor: each tensor's order is its own.
  keys = per_visit(tf.bitcast(tf.random.stateless_uniform(
      [_FEISTEL_ROUNDS, num_tensors], seed, minval=None, maxval=None,
      dtype=tf.int32, alg=RANDOM_ALG), tf.uint32))
  # Visits not taken are scattered to one spare entry past the end (of the
  # scratch array, or outside the canvas).
  spare = tf.fill([position], layout.size)

  def one_round(round_index, remaining, chosen):
    visit = round_index * step + offset
    in_domain = visit < domain
    local = tf.bitcast(_permute(
        tf.bitcast(tf.where(in_domain, visit, 0), tf.uint32), visit_bits,
        keys), tf.int32)
    # -1 for a visit outside the tensor, so that what follows reads only
    # the index (XLA would otherwise recompute the permutation for it).
    flat_index = tf.where(in_domain & (local < size), origin + local, -1)
    hit = (flat_index >= 0) & is_free(tf.gather(free,
                                                tf.maximum(flat_index, 0)))
    rank = tf.concat([[0], tf.cumsum(tf.cast(hit, tf.int32))], 0)
    before = tf.gather(rank, block_starts)
    take = hit & (rank[1:] - per_visit(before) <= per_visit(remaining))
    taken = tf.minimum(tf.gather(rank, block_ends) - before, remaining)
    chosen = tf.tensor_scatter_nd_update(
        chosen, tf.where(take, flat_index, spare)[:, None],
        tf.fill([position], chosen_value) if canvas is None
        else per_visit(chosen_value))
    return round_index + 1, remaining - taken, chosen

  if canvas is None:
    # Where a tensor grows by its complement, the visits mark what stays.
    chosen_value = tf.constant(True)
    initial = tf.zeros([layout.size + 1], tf.bool)
  else:
    # The complement is marked first, and the visits clear what stays.
    mark = tf.constant(mark, canvas.dtype)
    zero = tf.zeros([], canvas.dtype)
    chosen_value = tf.where(invert, zero, mark)
    # Its visits not taken go to index `layout.size`, past its end, where
    # XLA's scatter skips them (TensorFlow's kernels would raise instead).
    initial = tf.where(layout.broadcast(invert, row_segments) & is_free(free),
                       mark, canvas)
  # The first round is unrolled: it is usually the only one.
  state = one_round(tf.constant(0), target, initial)
  _, _, chosen = tf.while_loop(
      lambda round_index, remaining, chosen: tf.reduce_any(remaining > 0),
      one_round, state)
  if canvas is not None:
    return chosen
  chosen = chosen[:layout.size]
  return tf.where(layout.broadcast(invert, row_segments),
                  is_free(free) & ~chosen, chosen)


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


# Bits of `drop_and_grow`'s byte per entry, what the engine writes:
# `NEW_ACTIVE` where the entry is active after the call, `KEEP` where its
# weight and optimizer state survive (elsewhere they are zeroed).
NEW_ACTIVE, KEEP = 1, 2


Reallocation = collections.namedtuple(
    'Reallocation',
    ['code', 'pruned', 'candidates', 'regrown', 'active', 'skipped'])
Reallocation.__doc__ = """The outcome of `drop_and_grow`, on flat tensors.

Fields:
  code: uint8 flat tensor, one byte per entry: `NEW_ACTIVE` where the entry is
    active after the call, `KEEP` where it was active before and is not
    dropped, or everywhere when the call is refused (`ok` False).
  pruned: int64 K actually dropped (0 when skipped).
  candidates: int64 number of entries the rule chose to drop (what H adapts
    on).
  regrown: int64 `[T]` g_i.
  active: int64 `[T]` active entries per tensor after the reallocation.
  skipped: bool scalar, True when K exceeded the free entries and nothing
    was changed (only possible below sparsity 0.5).
"""


def drop_and_grow(layout, flags, pruned, num_pruned, num_active, budget, seed,
                  draws, row_segments=None, grow_keys=None, regrow=None,
                  ok=True):
  """The drop-and-grow core shared by every reallocation rule.

  Given the entries a rule drops, regrows as many, spread over the tensors by
  `budget` (or as `regrow` says). Without `grow_keys`, each is placed
  uniformly at random among the entries that were inactive before (so never
  an entry just dropped); if more are dropped than there are inactive entries
  in all (only possible below sparsity 0.5), they could not all be regrown
  without reviving dropped entries, and nothing changes. With `grow_keys`
  (RigL, SNFS), the entries inactive after the drop with the largest keys
  grow; an entry dropped and grown again in one call simply stays, with its
  weight and optimizer state (as RigL does).

  Args:
    layout: the `Layout` of the flat tensors.
    flags: uint8 flat `entry_flags` of every entry, padded with `PADDING`
      (the uniform growth reads the free entries straight from them).
    pruned: bool flat tensor of the entries to drop (a subset of the active
      ones).
    num_pruned: int64 `[T]`, the number of True entries of `pruned` per tensor.
    num_active: int64 `[T]`, the number of active entries per tensor.
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
    ok: bool scalar; False refuses the call: the code then keeps every
      entry as it is (the counts returned are still the rule's).

  Returns:
    A `Reallocation`.
  """
  if row_segments is None:
    row_segments = layout.row_segments()
  ok = tf.convert_to_tensor(ok, tf.bool)
  sizes = tf.constant(layout.sizes, tf.int64)
  survivors = num_active - num_pruned
  old = unpack_flags(flags)[0]
  if grow_keys is not None:
    # Every entry inactive after the drop may grow, so there is always room.
    capacity = sizes - survivors
    grow_counts = regrow if regrow is not None else budget(
        num_pruned, survivors, capacity, fold_in(seed, -1))
    padding = tf.bitwise.bitwise_and(flags, PADDING) > 0
    free = ~padding & ~(old & ~pruned)
    grown = select_largest(layout, tf.where(free, grow_keys, -1), grow_counts,
                           row_segments)
    kept = old & ~(pruned & ~grown & ok)
    return Reallocation(
        code=_code(kept | (grown & ok), kept | ~ok),
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
  kept = old & ~(pruned & ~skipped & ok)
  # Growth marks the code in place: free entries are 0 in it unless the
  # call is refused, and then nothing grows.
  code = grow_uniform(
      layout, flags, tf.where(ok, grow_counts, tf.zeros_like(grow_counts)),
      fold_in(seed, -2), draws, row_segments, capacity, blocked=NOT_FREE,
      canvas=_code(kept, kept | ~ok), mark=NEW_ACTIVE)
  return Reallocation(
      code=code,
      pruned=tf.reduce_sum(dropped),
      candidates=total_pruned,
      regrown=grow_counts,
      active=num_active - dropped + grow_counts,
      skipped=skipped)


def _code(new_active, keep):
  """`drop_and_grow`'s byte per entry from two bool flat tensors."""
  return (tf.cast(new_active, tf.uint8) * NEW_ACTIVE
          + tf.cast(keep, tf.uint8) * KEEP)
