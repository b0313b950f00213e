"""Long-run soundness: 10,000 reallocations keep every DSR invariant.

No training: between two reallocations one `tf.function` perturbs the
active weights with random noise whose scale changes by phase, so H is driven
through every regime, including the two degenerate ones:

- **K stays 0** (every active weight far above any threshold): each
  reallocation prunes and regrows nothing and doubles H, until H reaches
  `tf_dsr.reallocation.MAX_THRESHOLD` (2**60), where it stays for as long as
  nothing falls below it.
- **K stays huge** (every active weight below any threshold, or exactly 0):
  each reallocation prunes every active weight except the largest of each
  tensor (no tensor is ever emptied), regrows as many elsewhere (at value 0,
  so they are pruned again next time unless perturbed), and halves H, until H
  reaches `MIN_THRESHOLD` (2**-60), where it stays.

In both cases H stays finite and positive, so when the weights come back to a
normal scale H walks back to them, doubling or halving once per reallocation
(at most 120 reallocations from one bound to the other).

At sparsity 0.3 a huge K exceeds the free positions: such a reallocation is
skipped (masks and weights unchanged, `pruned == 0`) while H still halves on
the K it counted, so the same bounds hold.

Checked at every reallocation from the returned stats (cheap): the exact total
active count, no empty tensor, regrowth equal to K, H within the bounds and
adapted exactly as docs/algorithm.md 3.5 says. Checked every 50 reallocations and at the
end on the variables themselves: binary masks, per-tensor counts equal to the
stats, inactive weights exactly 0, regrown weights 0, survivors unchanged, the
just-pruned entries not regrown, no NaN or Inf anywhere.
"""

import time

import numpy as np
import pytest
import tensorflow as tf

import tf_dsr
from tf_dsr import keras
from tf_dsr.reallocation import MAX_THRESHOLD
from tf_dsr.reallocation import MIN_THRESHOLD
from tests.helpers import sparse_pairs

NUM_REALLOCATIONS = 10_000
FULL_CHECK_EVERY = 50
TARGET_PRUNED = 40
TOLERANCE = 0.1
HUGE = 1e30  # |noise| * HUGE > MAX_THRESHOLD for all but ~1e-12 of draws.
TINY = 1e-30  # |noise| * TINY < MIN_THRESHOLD always.


def _soak_model(sparsity):
  """Five sparse tensors of 8 to 2,304 entries (3,528 in all)."""
  keras.utils.set_random_seed(0)
  inputs = keras.Input((6, 6, 4))
  x = keras.layers.Conv2D(16, 3, name='conv_a')(inputs)
  x = keras.layers.Conv2D(16, 3, name='conv_b')(x)
  x = keras.layers.GlobalAveragePooling2D()(x)
  x = keras.layers.Dense(32, name='fc_a')(x)
  x = keras.layers.Dense(4, name='fc_b')(x)
  outputs = keras.layers.Dense(2, name='fc_tiny')(x)  # 8 entries.
  return tf_dsr.sparsify(keras.Model(inputs, outputs), sparsity, seed=0)


def _perturber(pairs, keep, scale):
  """One graph call per reallocation: w <- (keep * w + scale * noise) * mask.

  `keep` and `scale` are `[reallocations, tensors]` arrays; call `r` (counted
  from 0 in the returned variable) uses row `r` and the noise seed `[r, 7]`.
  The call takes no arguments, so that each costs one graph execution and
  little else. Returns `(perturb, calls)`.
  """
  keep = tf.constant(keep, tf.float32)
  scale = tf.constant(scale, tf.float32)
  calls = tf.Variable(0, dtype=tf.int64, trainable=False)

  @tf.function(autograph=False)
  def perturb():
    r = calls.read_value()
    seed = tf.stack([r, tf.constant(7, tf.int64)])
    keep_r, scale_r = tf.gather(keep, r), tf.gather(scale, r)
    for i, (kernel, mask) in enumerate(pairs):
      noise = tf.random.stateless_normal(
          kernel.shape, tf.random.experimental.stateless_fold_in(seed, i))
      # The sampler returns an exact 0 about once in 2**23 draws (millions of
      # draws here); an exact 0 would sit below every H in an 'above' phase.
      noise = tf.where(noise == 0.0, tf.ones_like(noise), noise)
      kernel.assign((keep_r[i] * kernel + scale_r[i] * noise) *
                    tf.cast(mask, kernel.dtype))
    calls.assign_add(1)

  return perturb, calls


def _phases(rng, num_tensors):
  """Yields `(kind, keep, scale)` per reallocation, in phases of 150 to 400.

  Kinds: 'track' (a random walk at a scale drawn per reallocation from
  [1e-4, 1e-1], so H settles around N_p), 'chaos' (scales from [1e-8, 1e8],
  weights kept or redrawn at random), 'above' (every weight ~1e30: K stays 0),
  'below' (every weight ~1e-30: K stays huge), 'zeros' (every weight exactly
  0: K huge with ties for the one kept per tensor) and 'split' (alternate
  tensors ~1e30 and ~1e-30: the whole budget flows to half the tensors).
  """
  kinds = ['track', 'chaos', 'above', 'below', 'zeros', 'split']
  ones = np.ones(num_tensors, np.float32)
  done = 0
  while done < NUM_REALLOCATIONS:
    kind = kinds[rng.integers(len(kinds))]
    length = min(int(rng.integers(150, 401)), NUM_REALLOCATIONS - done)
    for _ in range(length):
      if kind == 'track':
        yield kind, ones, ones * 10**rng.uniform(-4, -1)
      elif kind == 'chaos':
        yield (kind, ones * rng.integers(0, 2),
               10**rng.uniform(-8, 8, num_tensors).astype(np.float32))
      elif kind == 'above':
        yield kind, 0 * ones, ones * HUGE
      elif kind == 'below':
        yield kind, 0 * ones, ones * TINY
      elif kind == 'zeros':
        yield kind, 0 * ones, 0 * ones
      else:
        yield kind, 0 * ones, np.where(np.arange(num_tensors) % 2, TINY,
                                       HUGE).astype(np.float32)
    done += length


def _expected_threshold(used, candidates):
  """docs/algorithm.md 3.5 with the bounds, in float64 and then float32 as stored."""
  if candidates > (1 + TOLERANCE) * TARGET_PRUNED:
    new = used / 2
  elif candidates < (1 - TOLERANCE) * TARGET_PRUNED:
    new = used * 2
  else:
    new = used
  return float(np.float32(min(max(new, MIN_THRESHOLD), MAX_THRESHOLD)))


def _snapshot(pairs):
  return [(kernel.numpy(), mask.numpy()) for kernel, mask in pairs]


def _check_variables(names, before, after, stats, total_active):
  """Every per-element invariant of one reallocation, from the variables."""
  assert sum(int(m.sum()) for _, m in after) == total_active
  for name, (w_old, m_old), (w_new, m_new) in zip(names, before, after):
    assert m_new.dtype == bool
    assert set(np.unique(m_new)) <= {0.0, 1.0}, name
    assert int(m_new.sum()) == stats.active[name] >= 1, name
    assert np.isfinite(w_new).all(), name
    assert (w_new[m_new == 0] == 0).all(), name
    if stats.skipped:
      # Nothing moves at all.
      np.testing.assert_array_equal(m_new, m_old, err_msg=name)
      np.testing.assert_array_equal(w_new, w_old, err_msg=name)
      continue
    old, new = m_old > 0, m_new > 0
    regrown = new & ~old
    assert int(regrown.sum()) == stats.regrown[name], name
    assert (w_new[regrown] == 0).all(), name
    below = old & (np.abs(w_old) < stats.threshold_used)
    if below.sum() < old.sum():
      # The just-pruned entries are inactive (never regrown at once) ...
      assert not new[below].any(), name
      kept = old & ~below
    else:
      # ... except that an emptied tensor keeps one of its largest entries.
      assert int((new & old).sum()) == 1, name
      kept = new & old
      assert np.abs(w_old[kept]).max() == np.abs(w_old[old]).max(), name
    # Survivors stay active with their exact values.
    np.testing.assert_array_equal(new & old, kept, err_msg=name)
    np.testing.assert_array_equal(w_new[kept], w_old[kept], err_msg=name)


@pytest.mark.parametrize('sparsity', [0.8, 0.3])
def test_ten_thousand_reallocations_keep_every_invariant(sparsity):
  """At 0.8 no reallocation is ever skipped; at 0.3 a huge K is skipped."""
  model = _soak_model(sparsity)
  realloc = tf_dsr.Reallocator(model, target_pruned=TARGET_PRUNED, optimizer=False,
                               tolerance=TOLERANCE, seed=11)
  pairs = sparse_pairs(model)
  names = [name for name, _, _ in realloc.sparse_tensors()]
  sizes = [m.shape.num_elements() for _, m in pairs]
  total_active = sum(int(m.numpy().sum()) for _, m in pairs)
  assert total_active == sum(round((1 - sparsity) * n) for n in sizes)
  free = sum(sizes) - total_active
  plan = list(_phases(np.random.default_rng(0), len(pairs)))
  perturb, perturbed = _perturber(pairs, [keep for _, keep, _ in plan],
                                  [scale for _, _, scale in plan])

  seen = {kind: 0 for kind in
          ('track', 'chaos', 'above', 'below', 'zeros', 'split')}
  at_max = at_min = 0  # reallocations run with H at each bound
  moved = skipped = 0
  last_active = {name: int(m.numpy().sum())
                 for name, (_, m) in zip(names, pairs)}
  lowest, highest = dict(last_active), dict(last_active)
  phase_start = 0
  start = time.perf_counter()
  previous, previous_kind = None, None
  for r, (kind, _, _) in enumerate(plan):
    perturb()  # With row r of the plan.
    full = r % FULL_CHECK_EVERY == 0 or r == NUM_REALLOCATIONS - 1
    before = _snapshot(pairs) if full else None
    stats = realloc.reallocate(r)

    # Cheap checks, every reallocation.
    assert stats.total_active == total_active, r
    assert min(stats.active.values()) >= 1, r
    assert sum(stats.regrown.values()) == stats.pruned, r
    # Skipped exactly when K exceeds the free positions; then nothing moves.
    assert stats.skipped == (stats.candidates > free), r
    if stats.skipped:
      assert stats.pruned == 0, r
      assert stats.active == last_active, r
      skipped += 1
    else:
      assert stats.candidates == stats.pruned, r
    assert np.isfinite(stats.threshold), r
    assert MIN_THRESHOLD <= stats.threshold <= MAX_THRESHOLD, r
    assert stats.threshold == _expected_threshold(stats.threshold_used,
                                                  stats.candidates), r
    if previous is not None:
      assert stats.threshold_used == previous.threshold, r
    seen[kind] += 1
    moved += stats.pruned
    if kind != previous_kind:
      phase_start = r
    # Once H has had time to reach its bound (120 steps from the other one),
    # the degenerate phases pin it there.
    settled = r - phase_start >= 121
    if kind == 'above':
      assert stats.candidates == 0, r
      if settled:
        assert stats.threshold_used == stats.threshold == MAX_THRESHOLD, r
        at_max += 1
    if kind in ('below', 'zeros'):
      # Everything but the largest entry of each tensor is below H.
      assert stats.candidates == total_active - len(pairs), r
      if settled:
        assert stats.threshold_used == stats.threshold == MIN_THRESHOLD, r
        at_min += 1
    if full:
      _check_variables(names, before, _snapshot(pairs), stats, total_active)
    for name, count in stats.active.items():
      lowest[name] = min(lowest[name], count)
      highest[name] = max(highest[name], count)
    previous, previous_kind, last_active = stats, kind, stats.active

  elapsed = time.perf_counter() - start
  assert int(perturbed.numpy()) == NUM_REALLOCATIONS
  assert int(realloc.state.reallocations.numpy()) == NUM_REALLOCATIONS
  assert int(realloc.state.last_step.numpy()) == NUM_REALLOCATIONS - 1
  # The run visited every regime, including H pinned at both bounds.
  assert all(count >= 150 for count in seen.values()), seen
  assert at_max > 0 and at_min > 0, (at_max, at_min)
  assert moved > 10 * total_active
  # Weights moved across layers: every tensor's count changed, and at 0.8
  # (where the 'below' phases run) every tensor was pruned down to one entry.
  for name in names:
    assert lowest[name] < highest[name], name
    if sparsity > 0.5:
      assert lowest[name] == 1, name
  # Below sparsity 0.5 the 'below' and 'zeros' phases are always skipped.
  if sparsity > 0.5:
    assert skipped == 0
  else:
    assert skipped >= seen['below'] + seen['zeros'], skipped
  print(f'sparsity {sparsity}: {NUM_REALLOCATIONS} reallocations in '
        f'{elapsed:.1f} s, {skipped} skipped; phases {seen}')
