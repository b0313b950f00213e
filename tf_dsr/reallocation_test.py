"""Hand-worked examples for the pure reallocation math."""

import itertools

import numpy as np
import pytest
import tensorflow as tf

from tf_dsr import reallocation

SEED = tf.constant([7, 11], tf.int64)


def _bools(values):
  return tf.constant([bool(v) for v in values])


def test_prune_is_strict_and_only_touches_active_entries():
  # index:     0      1        2      3   4        5     6   7
  w = tf.constant([0.5, -0.0005, 0.002, 0., 0.0009, -0.3, 0., 0.001])
  m = _bools([1, 1, 1, 0, 1, 1, 0, 1])
  survivors, pruned = reallocation.prune_by_threshold(w, m, 1e-3)
  # |w| < 1e-3 among active: 1 and 4; entry 7 equals H, so it stays (strict).
  np.testing.assert_array_equal(pruned, [0, 1, 0, 0, 1, 0, 0, 0])
  np.testing.assert_array_equal(survivors, [1, 0, 1, 0, 0, 1, 0, 1])


def test_prune_keeps_the_largest_entry_of_a_tensor_it_would_empty():
  w = tf.constant([0.0001, -0.0008, 0.0003, 0.5])
  m = _bools([1, 1, 1, 0])  # the 0.5 is inactive, so it does not count
  survivors, pruned = reallocation.prune_by_threshold(w, m, 1e-3)
  np.testing.assert_array_equal(survivors, [0, 1, 0, 0])
  np.testing.assert_array_equal(pruned, [1, 0, 1, 0])


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


@pytest.mark.parametrize('count', [0, 1, 3, 4, 5])
def test_grow_uniform_takes_exactly_count_candidates(count):
  candidates = _bools([0, 1, 0, 0, 1, 1, 0, 0, 0, 1, 0, 0, 0, 0, 1, 0])
  grown = reallocation.grow_uniform(
      candidates, tf.constant(count, tf.int64), tf.constant(5, tf.int64), SEED,
      draws_per_round=4).numpy()
  assert grown.sum() == count
  assert not (grown & ~candidates.numpy()).any()


def test_grow_uniform_is_uniform_over_subsets():
  # Choose 2 of the 4 candidates among 12 entries: each of the 6 pairs should
  # come up with probability 1/6.
  candidates = _bools([0, 1, 0, 0, 1, 0, 0, 1, 0, 0, 1, 0])
  fn = tf.function(reallocation.grow_uniform, jit_compile=True,
                   reduce_retracing=True)
  counts = {}
  runs = 1200
  for s in range(runs):
    grown = fn(candidates, tf.constant(2, tf.int64), tf.constant(4, tf.int64),
               tf.constant([s, 5], tf.int64), draws_per_round=3).numpy()
    key = tuple(np.flatnonzero(grown))
    counts[key] = counts.get(key, 0) + 1
  assert set(counts) == set(itertools.combinations([1, 4, 7, 10], 2))
  freq = np.array(list(counts.values())) / runs
  np.testing.assert_allclose(freq, 1 / 6, atol=0.045)


def test_grow_uniform_complement_path_for_large_counts():
  candidates = tf.ones([32], tf.bool)
  grown = reallocation.grow_uniform(
      candidates, tf.constant(30, tf.int64), tf.constant(32, tf.int64), SEED,
      draws_per_round=8).numpy()
  assert grown.sum() == 30


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


def _hand_example():
  w1 = tf.constant([0.5, 0.0005, 0.002, 0., 0.0009, -0.3, 0., 0.01])
  m1 = _bools([1, 1, 1, 0, 1, 1, 0, 1])
  w2 = tf.constant([0.0002, 0., 0., 0.7, 0., 0., 0., 0.])
  m2 = _bools([1, 0, 0, 1, 0, 0, 0, 0])
  return [w1, w2], [m1, m2]


def test_reallocate_hand_worked():
  weights, masks = _hand_example()
  result = reallocation.reallocate(
      weights, masks, tf.constant(1e-3), SEED, target_pruned=10,
      tolerance=0.1, draws_per_round=[4, 4])
  # Pruned: tensor 1 entries 1 and 4, tensor 2 entry 0 -> K = 3.
  assert int(result.pruned) == 3
  np.testing.assert_array_equal(result.pruned_masks[0], [0, 1, 0, 0, 1, 0, 0, 0])
  np.testing.assert_array_equal(result.pruned_masks[1], [1, 0, 0, 0, 0, 0, 0, 0])
  # Survivors l = (4, 1), L = 5: shares 2.4 and 0.6. Tensor 1 has only two
  # free positions (3 and 6), so it regrows 2 and tensor 2 regrows 1.
  np.testing.assert_array_equal(result.regrown, [2, 1])
  np.testing.assert_array_equal(result.masks[0], [1, 0, 1, 1, 0, 1, 1, 1])
  m2 = result.masks[1].numpy()
  assert m2[3] and not m2[0] and m2.sum() == 2  # regrown elsewhere, not at 0
  np.testing.assert_array_equal(result.active, [6, 2])
  # K = 3 < 0.9 * 10, so H doubles.
  assert float(result.threshold) == pytest.approx(2e-3)
  assert not bool(result.skipped)


def test_reallocate_invariants_on_random_inputs():
  rng = np.random.default_rng(0)
  fn = tf.function(reallocation.reallocate, jit_compile=True)
  shapes = [(3, 3, 4, 8), (40, 10), (7,)]
  for trial in range(20):
    weights = [tf.constant(rng.normal(0, 0.01, s), tf.float32) for s in shapes]
    masks = [tf.constant(rng.random(s) < rng.uniform(0.05, 0.5)) for s in shapes]
    masks = [tf.tensor_scatter_nd_update(tf.reshape(m, [-1]), [[0]], [True])
             for m in masks]
    masks = [tf.reshape(m, s) for m, s in zip(masks, shapes)]
    result = fn(weights, masks, tf.constant(float(rng.uniform(1e-4, 2e-2))),
                tf.constant([trial, 1], tf.int64), target_pruned=20,
                tolerance=0.1, draws_per_round=[32, 32, 4])
    before = sum(int(tf.reduce_sum(tf.cast(m, tf.int32))) for m in masks)
    after = sum(int(tf.reduce_sum(tf.cast(m, tf.int32))) for m in result.masks)
    assert after == before
    for old, new, pruned, grown in zip(masks, result.masks,
                                       result.pruned_masks, result.grown_masks):
      old, new, pruned, grown = (x.numpy() for x in (old, new, pruned, grown))
      assert new.any()
      assert not (pruned & grown).any()
      assert not (grown & old).any()  # grown only where inactive before
      np.testing.assert_array_equal(new, (old & ~pruned) | grown)


def test_reallocate_skips_when_the_pruned_cannot_be_regrown():
  # Sparsity 0.25: 6 of 8 active, 5 below H, only 2 free positions.
  w = tf.constant([1e-5, 1e-5, 1e-5, 1e-5, 1e-5, 0.5, 0., 0.])
  m = _bools([1, 1, 1, 1, 1, 1, 0, 0])
  result = reallocation.reallocate(
      [w], [m], tf.constant(1e-3), SEED, target_pruned=2, tolerance=0.1,
      draws_per_round=[8])
  assert bool(result.skipped)
  assert int(result.pruned) == 0 and int(result.candidates) == 5
  np.testing.assert_array_equal(result.masks[0], m)
  assert float(result.threshold) == pytest.approx(0.5e-3)  # still adapts
