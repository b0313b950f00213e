"""DSR: prune below one global threshold, regrow across layers, adapt it."""

import dataclasses

import tensorflow as tf

from tf_dsr import reallocation
from tf_dsr.rules import base


@base.register
@dataclasses.dataclass(frozen=True)
class DSR(base.Rule):
  """Dynamic Sparse Reparameterization.

  Mostafa & Wang, "Parameter Efficient Training of Deep Convolutional Neural
  Networks by Dynamic Sparse Reparameterization", ICML 2019,
  https://arxiv.org/abs/1902.05967.

  Each call prunes every active weight with `|w| < H` (never emptying a
  tensor), regrows the same number K spread over the tensors in proportion
  to their survivors (uniformly among entries inactive before the call), and
  halves H when K > (1 + tolerance) N_p or doubles it when K < (1 -
  tolerance) N_p.

  Attributes:
    target_pruned: N_p, the number of weights a reallocation aims to prune.
    tolerance: delta in (0, 1); H changes when K leaves
      [(1 - delta) N_p, (1 + delta) N_p].
    initial_threshold: H for a model that has no DSR state yet (a restored
      state is kept).
  """
  name = 'dsr'
  label = 'DSR'
  # `initial_threshold` only seeds a new model's H.
  traced_options = ('target_pruned', 'tolerance')
  target_pruned: float
  tolerance: float = 0.1
  initial_threshold: float = 1e-3

  def __post_init__(self):
    base.check_number('target_pruned', self.target_pruned, low=0,
                      low_open=True)
    base.check_number('tolerance', self.tolerance, low=0, high=1,
                      low_open=True, high_open=True)
    base.check_number('initial_threshold', self.initial_threshold, low=0,
                      low_open=True)

  def check_layout(self, layout):
    base.check_target_pruned(self.target_pruned, layout)

  def expected_regrowth(self, layout):
    return min(1.0, self.target_pruned / sum(layout.sizes))

  def drop(self, inputs):
    return base.Drop(*reallocation.spare_emptied(
        inputs.layout, inputs.below, inputs.num_below,
        lambda: inputs.masks, inputs.active, inputs.read_weights,
        inputs.row_segments))

  def budget(self, num_pruned, survivors, capacity, seed):
    return reallocation.allocate(tf.reduce_sum(num_pruned), survivors,
                                 capacity, seed)

  def next_threshold(self, threshold, candidates):
    return tf.cast(reallocation.adapt_threshold(
        tf.cast(threshold, tf.float64), candidates, self.target_pruned,
        self.tolerance), tf.float32)
