"""RigL: drop the smallest weights, grow where the dense gradient is largest."""

import dataclasses
import math
from typing import Optional

import tensorflow as tf

from tf_dsr import flops
from tf_dsr import reallocation
from tf_dsr.rules import base

SCHEDULES = ('cosine', 'constant')


def check_schedule(schedule, end_step, end_fraction):
  """Validates a decay `schedule` name, its `end_step` and `end_fraction`."""
  if schedule not in SCHEDULES:
    raise ValueError(f'`schedule` must be one of {SCHEDULES}, got '
                     f'{schedule!r}.')
  if end_step is not None and (isinstance(end_step, bool) or not isinstance(
      end_step, int) or end_step < 1):
    raise ValueError(f'`end_step` must be a positive int or None, got '
                     f'{end_step!r}.')
  base.check_number('end_fraction', end_fraction, low=0, high=1,
                    low_open=True)


def with_end_step(rule, total_steps):
  """`rule` with `end_step = end_fraction * total_steps` if it had none."""
  if rule.end_step is not None or not total_steps:
    return rule
  return dataclasses.replace(
      rule, end_step=max(1, int(rule.end_fraction * total_steps)))


def decayed(initial, schedule, step, end_step, name):
  """`initial`, or its cosine decay to 0 at `end_step` (0 after it)."""
  if schedule == 'constant':
    return float(initial)
  if end_step is None:
    raise ValueError(
        f"{name}'s cosine schedule needs `end_step`, the step where it "
        'reaches 0: pass it, or train with `tf_dsr.ReallocationCallback` on '
        'data of known length (it sets `end_fraction` of the total steps), '
        "or use schedule='constant'.")
  progress = min(max(step, 0), end_step) / end_step
  return float(initial) * 0.5 * (1.0 + math.cos(math.pi * progress))


@base.register
@dataclasses.dataclass(frozen=True)
class RigL(base.Rule):
  """Rigged Lottery: magnitude drop, dense-gradient growth, per tensor.

  Evci et al., "Rigging the Lottery: Making All Tickets Winners", ICML 2020,
  https://arxiv.org/abs/1911.11134. Each call drops, in every tensor with
  `a` active entries, the `floor(f * a)` active weights of smallest magnitude
  and grows as many at the entries inactive after the drop where the dense
  gradient (of the loss with respect to the masked kernel, at the training
  step before the call) is largest in magnitude; ties go to the first
  entries in flat order. Grown weights and their optimizer state start at
  zero; an entry dropped and grown again in one call keeps both. Per-tensor
  counts never change. f is `drop_fraction`, or with the cosine schedule
  `drop_fraction * (1 + cos(pi * t / end_step)) / 2` at step t, and no
  update runs from `end_step` on. The paper's defaults: f = 0.3, cosine,
  an update every 100 steps (the callback's `period`), updates ending at 75%
  of training.

  Attributes:
    drop_fraction: f in (0, 1).
    schedule: 'cosine' or 'constant'.
    end_step: the step where updates end. None: `ReallocationCallback` sets
      it to `end_fraction` of the fit's total steps (epochs times steps per
      epoch); a custom loop must give it for 'cosine'.
    end_fraction: see `end_step`, in (0, 1].
  """
  name = 'rigl'
  label = 'RigL'
  dense_gradients = 'last'
  traced_options = ()  # The decayed fraction is a call input.
  drop_fraction: float = 0.3
  schedule: str = 'cosine'
  end_step: Optional[int] = None
  end_fraction: float = 0.75

  def __post_init__(self):
    base.check_number('drop_fraction', self.drop_fraction, low=0, high=1,
                      low_open=True, high_open=True)
    check_schedule(self.schedule, self.end_step, self.end_fraction)

  @property
  def stop_step(self):
    return self.end_step

  def for_training(self, total_steps):
    return with_end_step(self, total_steps)

  def training_flops(self, sparse_flops, dense_flops, period):
    # One step in P + 1 also computes the dense gradient (RigL, section 4);
    # `period` is the run's mean, so the updates' end at 75% is counted.
    return flops.rigl_training_flops(sparse_flops, dense_flops, period)

  def expected_regrowth(self, layout):
    del layout
    return 0.0  # Growth is by gradient, not by random draws.

  def call_inputs(self, step, optimizer):
    del optimizer
    return {'drop_fraction': decayed(self.drop_fraction, self.schedule, step,
                                     self.end_step, self.label)}

  def drop(self, inputs):
    fraction = tf.cast(inputs.values['drop_fraction'], tf.float64)
    counts = tf.cast(tf.floor(fraction * tf.cast(inputs.active, tf.float64)),
                     tf.int64)
    counts = tf.clip_by_value(counts, 0, tf.maximum(inputs.active - 1, 0))
    keys = reallocation.magnitude_keys(inputs.weights, inputs.masks,
                                       smallest=True)
    pruned = reallocation.select_largest(inputs.layout, keys, counts,
                                         inputs.row_segments)
    return base.Drop(
        pruned, counts,
        grow_keys=reallocation.magnitude_keys(
            inputs.gradients, tf.ones_like(inputs.masks)),
        regrow=counts)
