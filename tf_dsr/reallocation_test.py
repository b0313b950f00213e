"""Hand-worked examples for the pure reallocation math on the flat layout."""

import itertools

import numpy as np
import pytest
import tensorflow as tf

from tf_dsr import layout as layout_lib
from tf_dsr import reallocation

SEED = tf.constant([7, 11], tf.int64)


def _bools(values):
  return tf.constant([bool(v) for v in values])


def _layout(*sizes, sparsity=0.5):
  return layout_lib.Layout(names=tuple(f't{i}' for i in range(len(sizes))),
                           shapes=tuple((n,) for n in sizes),
                           sparsities=(sparsity,) * len(sizes))


def _prune(layout, weights, masks, threshold):
  """DSR's prune as the engine runs it, on per-tensor lists.

  `entry_flags` per tensor, laid out flat and counted, then
  `spare_emptied`. Returns per-tensor pruned masks and their counts.
  """
  weights = [tf.constant(w, tf.float32) for w in weights]
  old, below, _ = reallocation.unpack_flags(layout.flatten(
      [reallocation.entry_flags(w, _bools(m), tf.constant(threshold))
       for w, m in zip(weights, masks)]))
  active, num_below = layout.count(old, below)
  np.testing.assert_array_equal(active, [sum(m) for m in masks])
  pruned, num_pruned = reallocation.spare_emptied(
      layout, below, num_below, lambda: old, active,
      lambda: layout.flatten(weights),
      layout.row_segments())
  return [p.numpy().astype(int).tolist() for p in layout.unflatten(pruned)], (
      num_pruned.numpy().tolist())


def test_prune_is_strict_and_only_touches_active_entries():
  # index:     0      1        2      3   4        5     6   7
  w = [0.5, -0.0005, 0.002, 0., 0.0009, -0.3, 0., 0.001]
  m = [1, 1, 1, 0, 1, 1, 0, 1]
  pruned, counts = _prune(_layout(8), [w], [m], 1e-3)
  # |w| < 1e-3 among active: 1 and 4; entry 7 equals H, so it stays (strict).
  assert pruned == [[0, 1, 0, 0, 1, 0, 0, 0]]
  assert counts == [2]


def test_prune_keeps_the_largest_entry_of_a_tensor_it_would_empty():
  # Tensor 0 would lose all three active entries: its largest (-0.0008)
  # stays. The 0.5 is inactive, so it does not count. Tensor 1 (a second
  # segment, 130 entries: two rows) keeps its largest too, the first of two
  # equal ones; tensor 2 is pruned normally.
  w0, m0 = [0.0001, -0.0008, 0.0003, 0.5], [1, 1, 1, 0]
  w1, m1 = [0.0] * 130, [0] * 130
  for i, v in ((3, 0.0002), (129, -0.0005), (128, 0.0005)):
    w1[i], m1[i] = v, 1
  w2, m2 = [0.0001, 0.2], [1, 1]
  pruned, counts = _prune(_layout(4, 130, 2), [w0, w1, w2], [m0, m1, m2], 1e-3)
  assert pruned[0] == [1, 0, 1, 0]
  assert [i for i, p in enumerate(pruned[1]) if p] == [3, 129]  # keeps 128
  assert pruned[2] == [1, 0]
  assert counts == [2, 2, 1]


def test_allocate_is_proportional_when_exact():
  g = reallocation.allocate(tf.constant(10, tf.int64),
                            tf.constant([3, 1, 6], tf.int64),
                            tf.constant([100, 100, 100], tf.int64), SEED)
  np.testing.assert_array_equal(g, [3, 1, 6])


def test_allocate_distributes_the_remainder_exactly():
  # 7 over three equal tensors: 2 each plus one extra somewhere.
  for seed in range(20):
    g = reallocation.allocate(tf.constant(7, tf.int64),
                              tf.constant([1, 1, 1], tf.int64),
                              tf.constant([9, 9, 9], tf.int64),
                              tf.constant([seed, 0], tf.int64)).numpy()
    assert g.sum() == 7
    assert sorted(g.tolist()) == [2, 2, 3]


def test_allocate_rounding_is_unbiased():
  # K = 1 over survivors 1:1:2 -> expected shares 0.25, 0.25, 0.5.
  totals = np.zeros(3)
  runs = 400
  for seed in range(runs):
    totals += reallocation.allocate(
        tf.constant(1, tf.int64), tf.constant([1, 1, 2], tf.int64),
        tf.constant([5, 5, 5], tf.int64), tf.constant([seed, 3], tf.int64))
  np.testing.assert_allclose(totals / runs, [0.25, 0.25, 0.5], atol=0.08)


def test_allocate_gives_the_excess_of_a_full_tensor_to_the_others():
  # Proportional shares 5, 5 but the first tensor has only 2 free positions.
  g = reallocation.allocate(tf.constant(10, tf.int64),
                            tf.constant([5, 5], tf.int64),
                            tf.constant([2, 100], tf.int64), SEED)
  np.testing.assert_array_equal(g, [2, 8])
  # Excess split in proportion to survivors among the open tensors: 6 over
  # (1, 2) after tensor 0 takes its capacity of 0.
  g = reallocation.allocate(tf.constant(6, tf.int64),
                            tf.constant([3, 1, 2], tf.int64),
                            tf.constant([0, 50, 50], tf.int64), SEED)
  np.testing.assert_array_equal(g, [0, 2, 4])


def _grow(layout, free, counts, seed=SEED, draws=None):
  flat = layout.flatten([_bools(f) for f in free], padding=False)
  grown = reallocation.grow_uniform(
      layout, flat, tf.constant(counts, tf.int64), seed,
      draws or [4] * layout.num_tensors)
  return [g.numpy() for g in layout.unflatten(grown)]


@pytest.mark.parametrize('count', [0, 1, 3, 4, 5])
def test_grow_uniform_takes_exactly_count_free_entries(count):
  free = [0, 1, 0, 0, 1, 1, 0, 0, 0, 1, 0, 0, 0, 0, 1, 0]
  # A second tensor alongside, growing 2 of its 3 free entries.
  other = [1, 0, 1, 0, 1]
  grown, second = _grow(_layout(16, 5), [free, other], [count, 2])
  assert grown.sum() == count
  assert not (grown & ~np.array(free, bool)).any()
  assert second.sum() == 2 and not (second & ~np.array(other, bool)).any()


def test_grow_uniform_is_uniform_over_subsets():
  # Choose 2 of the 4 free entries among 12: each of the 6 pairs should come
  # up with probability 1/6.
  layout = _layout(12)
  free = layout.flatten([_bools([0, 1, 0, 0, 1, 0, 0, 1, 0, 0, 1, 0])],
                        padding=False)
  fn = tf.function(
      lambda seed: reallocation.grow_uniform(
          layout, free, tf.constant([2], tf.int64), seed, [3]),
      jit_compile=True)
  counts = {}
  runs = 1200
  for s in range(runs):
    grown = layout.unflatten(fn(tf.constant([s, 5], tf.int64)))[0].numpy()
    key = tuple(np.flatnonzero(grown))
    counts[key] = counts.get(key, 0) + 1
  assert fn.experimental_get_tracing_count() == 1
  assert set(counts) == set(itertools.combinations([1, 4, 7, 10], 2))
  freq = np.array(list(counts.values())) / runs
  np.testing.assert_allclose(freq, 1 / 6, atol=0.045)


def test_grow_uniform_complement_path_for_large_counts():
  grown, = _grow(_layout(32), [[1] * 32], [30], draws=[8])
  assert grown.sum() == 30


def test_grow_uniform_same_compiled_or_not():
  layout = _layout(300, 40, 7)
  rng = np.random.default_rng(3)
  free = layout.flatten([_bools(rng.random(n) < 0.7) for n in (300, 40, 7)],
                        padding=False)
  counts = tf.constant([50, 20, 2], tf.int64)
  grow = lambda: reallocation.grow_uniform(layout, free, counts, SEED,
                                           [20, 8, 4])
  np.testing.assert_array_equal(grow(), tf.function(grow, jit_compile=True)())


def test_grow_uniform_into_a_canvas_marks_the_same_entries():
  # Tensor 0 grows 50 of its free entries (the plain path), tensor 1 grows
  # 35 of its 40 (the complement path), tensor 2 none, with one visit per
  # round at first, so several rounds run. The canvas holds 7 at the
  # entries that are not free, 0 at the free ones; marks are 5.
  sizes = (300, 40, 7)
  layout = _layout(*sizes)
  rng = np.random.default_rng(4)
  free_np = [rng.random(300) < 0.7, np.arange(40) < 40, rng.random(7) < 0.5]
  free = layout.flatten([_bools(f) for f in free_np], padding=False)
  counts = tf.constant([50, 35, 0], tf.int64)
  canvas = tf.where(free, tf.constant(0, tf.uint8), tf.constant(7, tf.uint8))
  draws = [1, 1, 1]

  @tf.function(jit_compile=True)
  def both():
    chosen = reallocation.grow_uniform(layout, free, counts, SEED, draws)
    marked = reallocation.grow_uniform(layout, free, counts, SEED, draws,
                                       canvas=canvas, mark=5)
    return chosen, marked

  chosen, marked = both()
  chosen, marked, canvas = chosen.numpy(), marked.numpy(), canvas.numpy()
  np.testing.assert_array_equal(marked, np.where(chosen, 5, canvas))
  per_tensor = [int(c.numpy().sum()) for c in layout.unflatten(chosen)]
  assert per_tensor == [50, 35, 0]


@pytest.mark.parametrize('bits', [2, 3, 5, 8, 11])
def test_permute_is_a_keyed_permutation_the_same_compiled_or_not(bits):
  domain = 2**bits
  index = tf.bitcast(tf.range(domain, dtype=tf.int32), tf.uint32)
  bits_vector = tf.fill([domain], bits)

  def permute(key_seed):
    keys = tf.random.stateless_uniform(
        [reallocation._FEISTEL_ROUNDS, 1], key_seed, minval=None,
        maxval=None, dtype=tf.uint32, alg=reallocation.RANDOM_ALG)
    return reallocation._permute(index, bits_vector,
                                 tf.broadcast_to(keys, [keys.shape[0], domain]))

  orders = []
  for key_seed in ([1, 2], [1, 3]):
    key_seed = tf.constant(key_seed, tf.int64)
    order = permute(key_seed).numpy()
    np.testing.assert_array_equal(
        order, tf.function(permute, jit_compile=True)(key_seed))
    # Every position exactly once.
    np.testing.assert_array_equal(np.sort(order), np.arange(domain))
    orders.append(order)
  # Another key, another order (4! = 24 orders of the smallest domain).
  assert (orders[0] != orders[1]).any()


def test_grow_uniform_runs_more_rounds_when_one_falls_short():
  # 20 of 50 free entries among 1,000: about 410 visits of the 1,024-entry
  # order are needed, and one round visits 128, so every call runs several.
  layout = _layout(1000)
  rng = np.random.default_rng(5)
  free_positions = rng.choice(1000, 50, replace=False)
  free_np = np.zeros(1000, bool)
  free_np[free_positions] = True
  free = layout.flatten([_bools(free_np)], padding=False)
  grow = lambda seed: reallocation.grow_uniform(
      layout, free, tf.constant([20], tf.int64), seed, [1])
  compiled = tf.function(grow, jit_compile=True)
  hits = np.zeros(1000)
  runs = 300
  for s in range(runs):
    seed = tf.constant([s, 9], tf.int64)
    grown = layout.unflatten(compiled(seed))[0].numpy()
    assert grown.sum() == 20 and not (grown & ~free_np).any()
    if s < 3:
      np.testing.assert_array_equal(grown, layout.unflatten(grow(seed))[0])
    hits += grown
  # Each free entry is chosen with probability 20 / 50 = 0.4; over 300 calls
  # its count has a standard deviation of about 8.5.
  freq = hits[free_positions] / runs
  np.testing.assert_allclose(freq, 0.4, atol=0.1)
  assert abs(freq.mean() - 0.4) < 1e-9
  assert compiled.experimental_get_tracing_count() == 1


@pytest.mark.parametrize('pruned,expected', [
    (111, 0.5e-3),  # > 1.1 * 100: halve
    (110, 1e-3),    # on the edge: keep
    (100, 1e-3),
    (90, 1e-3),     # on the edge: keep
    (89, 2e-3),     # < 0.9 * 100: double
])
def test_adapt_threshold(pruned, expected):
  h = reallocation.adapt_threshold(
      tf.constant(1e-3, tf.float64), tf.constant(pruned, tf.int64), 100, 0.1)
  assert float(h) == pytest.approx(expected)


def test_adapt_threshold_stays_in_bounds():
  low = reallocation.adapt_threshold(
      tf.constant(reallocation.MIN_THRESHOLD, tf.float64),
      tf.constant(10**9, tf.int64), 100, 0.1)
  high = reallocation.adapt_threshold(
      tf.constant(reallocation.MAX_THRESHOLD, tf.float64),
      tf.constant(0, tf.int64), 100, 0.1)
  assert float(low) == reallocation.MIN_THRESHOLD
  assert float(high) == reallocation.MAX_THRESHOLD


