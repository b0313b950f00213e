"""SET: every tensor drops its smallest active weights and regrows as many."""

import dataclasses
import math
from typing import Optional

import tensorflow as tf

from tf_dsr.rules import base


@base.register
@dataclasses.dataclass(frozen=True)
class SET(base.Rule):
  """Sparse Evolutionary Training: per-tensor drop of the smallest weights.

  Mocanu et al., "Scalable training of artificial neural networks with
  adaptive sparse connectivity inspired by network science", Nature
  Communications 2018, https://arxiv.org/abs/1707.04780. Each call drops, in
  every tensor with `a` active entries, the `min(a - 1, round(f * a))` active
  weights of smallest magnitude (ties by position) and regrows as many in the
  same tensor, uniformly among entries that were inactive, so per-tensor
  counts never change.

  Attributes:
    drop_fraction: f in (0, 1). When None, `target_pruned / total active`,
      which makes the churn equal DSR's with the same `target_pruned`.
    target_pruned: used only to derive `drop_fraction`.
  """
  name = 'set'
  label = 'SET'
  drop_fraction: Optional[float] = None
  target_pruned: Optional[float] = None

  def __post_init__(self):
    if self.drop_fraction is None and self.target_pruned is None:
      raise ValueError('SET needs `drop_fraction` or `target_pruned`, got '
                       'neither.')
    base.check_number('drop_fraction', self.drop_fraction, low=0, high=1,
                      low_open=True, high_open=True, optional=True)
    base.check_number('target_pruned', self.target_pruned, low=0,
                      low_open=True, optional=True)

  def _fraction(self, total_active):
    if self.drop_fraction is not None:
      return self.drop_fraction
    return min(self.target_pruned / max(total_active, 1), 1.0)

  def _bounds(self, layout):
    """Static per-tensor bounds of the drop counts (the top-k sizes).

    SET keeps every tensor's active count, so the counts stay near
    `f * (1 - sparsity) * size`; the bound leaves 50% headroom for masks
    that were replaced.
    """
    initial = [max(1, round((1 - s) * n))
               for s, n in zip(layout.sparsities, layout.sizes)]
    fraction = self._fraction(sum(initial))
    return [min(n, math.ceil(1.5 * fraction * a) + 8)
            for a, n in zip(initial, layout.sizes)]

  def check_layout(self, layout):
    base.check_target_pruned(self.target_pruned, layout)

  def expected_regrowth(self, layout):
    return sum(self._bounds(layout)) / 1.5 / sum(layout.sizes)

  def drop(self, inputs):
    layout, active = inputs.layout, inputs.active
    fraction = (tf.constant(self.drop_fraction, tf.float64)
                if self.drop_fraction is not None else tf.minimum(
                    self.target_pruned / tf.cast(
                        tf.maximum(tf.reduce_sum(active), 1), tf.float64),
                    1.0))
    bounds = self._bounds(layout)
    counts = tf.minimum(
        tf.minimum(active - 1,
                   tf.cast(tf.round(fraction * tf.cast(active, tf.float64)),
                           tf.int64)),
        tf.constant(bounds, tf.int64))
    counts = tf.maximum(counts, 0)
    magnitude = tf.where(inputs.masks, tf.abs(inputs.weights), math.inf)
    positions, taken = [], []
    for i, (start, size, bound) in enumerate(
        zip(layout.starts, layout.sizes, bounds)):
      _, smallest = tf.math.top_k(-magnitude[start:start + size], bound)
      positions.append(start + smallest)
      taken.append(tf.range(bound, dtype=tf.int64) < counts[i])
    chosen = tf.scatter_nd(tf.concat(positions, 0)[:, None],
                           tf.cast(tf.concat(taken, 0), tf.int32),
                           [layout.size]) > 0
    return base.Drop(chosen & inputs.masks, counts)
