"""SNFS (sparse momentum): magnitude drop, momentum-steered regrowth."""

import dataclasses
import math
from typing import Optional

import tensorflow as tf

from tf_dsr import flops
from tf_dsr import reallocation
from tf_dsr.rules import base
from tf_dsr.rules import rigl

# Integer resolution of the momentum shares that split the regrowth.
_SHARE_SCALE = 2**24


@base.register
@dataclasses.dataclass(frozen=True)
class SNFS(base.Rule):
  """Sparse Networks From Scratch (sparse momentum), at every epoch end.

  Dettmers & Zettlemoyer, "Sparse Networks from Scratch: Faster Training
  without Losing Performance", 2019, https://arxiv.org/abs/1907.04840. The
  rule keeps, for every entry of every sparse kernel, the momentum of the
  dense gradient, `m = momentum * m + g` at every training step. At the end
  of each epoch it drops, in every tensor with `a` active entries, the
  `ceil(p * a)` active weights of smallest magnitude (at most `a - 1`),
  splits the total dropped over the tensors in proportion to the mean
  `|m|` of each tensor's active entries (exact integers, within each
  tensor's room), and grows each tensor's share at the entries inactive
  after the drop with the largest `|m|`. Grown weights and their optimizer
  state start at zero. p is `prune_rate`, with the cosine schedule
  `prune_rate * (1 + cos(pi * t / end_step)) / 2` at step t (the paper
  anneals from 0.5 over training).

  Attributes:
    prune_rate: p in (0, 1).
    momentum: decay of the dense-gradient momentum, in [0, 1).
    schedule: 'cosine' or 'constant'.
    end_step: the step where p reaches 0. None: `ReallocationCallback` sets
      it to `end_fraction` of the fit's total steps; a custom loop must give
      it for 'cosine'.
    end_fraction: see `end_step`, in (0, 1].
  """
  name = 'snfs'
  label = 'SNFS'
  dense_gradients = 'momentum'
  at_epoch_end = True
  traced_options = ()  # The decayed prune rate is a call input.
  prune_rate: float = 0.5
  momentum: float = 0.9
  schedule: str = 'cosine'
  end_step: Optional[int] = None
  end_fraction: float = 1.0

  def __post_init__(self):
    base.check_number('prune_rate', self.prune_rate, low=0, high=1,
                      low_open=True, high_open=True)
    base.check_number('momentum', self.momentum, low=0, high=1,
                      high_open=True)
    rigl.check_schedule(self.schedule, self.end_step, self.end_fraction)

  @property
  def gradient_momentum(self):
    return float(self.momentum)

  def for_training(self, total_steps):
    return rigl.with_end_step(self, total_steps)

  def training_flops(self, sparse_flops, dense_flops, period):
    del period  # The momentum needs the dense gradient at every step.
    return flops.snfs_training_flops(sparse_flops, dense_flops)

  def expected_regrowth(self, layout):
    del layout
    return 0.0  # Growth is by momentum, not by random draws.

  def call_inputs(self, step, optimizer):
    del optimizer
    return {'prune_rate': rigl.decayed(self.prune_rate, self.schedule, step,
                                       self.end_step, self.label)}

  def drop(self, inputs):
    layout, active = inputs.layout, inputs.active
    rate = tf.cast(inputs.values['prune_rate'], tf.float64)
    counts = tf.cast(tf.math.ceil(rate * tf.cast(active, tf.float64)),
                     tf.int64)
    counts = tf.clip_by_value(counts, 0, tf.maximum(active - 1, 0))
    pruned = reallocation.select_largest(
        layout, reallocation.magnitude_keys(inputs.weights, inputs.masks,
                                            smallest=True),
        counts, inputs.row_segments)
    magnitude = tf.abs(inputs.gradients)
    mean = (tf.cast(layout.segment_sum(tf.where(inputs.masks, magnitude, 0.0),
                                       inputs.row_segments), tf.float64)
            / tf.cast(tf.maximum(active, 1), tf.float64))
    # Integer shares for an exact split; every tensor keeps a minimal one.
    shares = tf.maximum(tf.cast(tf.round(
        mean / tf.maximum(tf.reduce_max(mean), 1e-300) * _SHARE_SCALE),
                                tf.int64), 1)
    sizes = tf.constant(layout.sizes, tf.int64)
    regrow = reallocation.allocate(tf.reduce_sum(counts), shares,
                                   sizes - (active - counts),
                                   reallocation.fold_in(inputs.seed, -3))
    return base.Drop(pruned, counts,
                     grow_keys=reallocation.magnitude_keys(
                         inputs.gradients, tf.ones_like(inputs.masks)),
                     regrow=regrow)
