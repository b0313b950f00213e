"""DeepR: fixed-sign connections that die when they cross zero."""

import dataclasses
import math
import numbers
from typing import Any, Optional

import tensorflow as tf

from tf_dsr import reallocation
from tf_dsr.rules import base


def _random_signs(shape, seed):
  """+1 or -1 with equal odds, from a stateless stream."""
  coin = reallocation.uniform(shape, seed) < 0.5
  return tf.where(coin, tf.ones(shape), -tf.ones(shape))


def initial_signs(weights, masks, seed):
  """The sign of each weight; a random sign where the weight is 0."""
  del masks
  return tf.where(weights > 0, tf.ones_like(weights), tf.where(
      weights < 0, -tf.ones_like(weights), _random_signs(weights.shape, seed)))


def _check_temperature(value, where=''):
  if isinstance(value, bool) or not isinstance(value, numbers.Real) or (
      not math.isfinite(value) or value < 0):
    raise ValueError(f'`temperature`{where} must be a finite number >= 0 or a '
                     f'callable from step to temperature, got {value!r}.')


@base.register
@dataclasses.dataclass(frozen=True)
class DeepR(base.Rule):
  """Deep Rewiring: fixed-sign connections that die when they cross zero.

  Bellec, Kappel, Maass & Legenstein, "Deep Rewiring: Training very sparse
  deep networks", ICLR 2018, https://arxiv.org/abs/1711.05136. Every weight
  carries a fixed sign s (the auxiliary variables `sign` of
  `model.dynamic_sparsity_state`, one per sparse tensor, so checkpoints carry
  them). Each call, meant to run after every training step:

  1. applies DeepR's L1 term and Langevin noise to every active weight:
     `w <- w - lr * alpha * s + sqrt(2 * lr * T) * N(0, 1)`, with `lr` the
     optimizer's current learning rate and `T` the temperature;
  2. removes every active connection whose weight now has the opposite sign
     to s (its parameter theta = s * w crossed zero);
  3. activates as many dormant connections, uniformly at random over the
     whole network (each tensor's share proportional to its free entries),
     at weight 0 with a fresh random sign.

  Attributes:
    alpha: the L1 coefficient, >= 0.
    temperature: T >= 0: a number, or a callable from the global step to T.
    learning_rate: the lr of the update; None reads the optimizer's current
      learning rate at each call.
  """
  name = 'deepr'
  label = 'DeepR'
  auxiliary = {'sign': (tf.float32, initial_signs)}
  traced_options = ()  # All three are call inputs.
  alpha: float = 1e-4
  temperature: Any = 0.0
  learning_rate: Optional[float] = None

  def __post_init__(self):
    base.check_number('alpha', self.alpha, low=0)
    base.check_number('learning_rate', self.learning_rate, low=0,
                      optional=True)
    if not callable(self.temperature):
      _check_temperature(self.temperature)

  def expected_regrowth(self, layout):
    del layout
    return 0.005

  def call_inputs(self, step, optimizer):
    temperature = self.temperature
    if callable(temperature):
      temperature = temperature(max(int(step), 0))
      _check_temperature(temperature, f' at step {step}')
    return {'alpha': float(self.alpha),
            'learning_rate': self._learning_rate(optimizer),
            'temperature': float(temperature)}

  def _learning_rate(self, optimizer):
    if self.learning_rate is not None:
      return float(self.learning_rate)
    if optimizer is None:
      raise ValueError('DeepR needs `learning_rate` or a model compiled with '
                       'an optimizer.')
    lr = optimizer.learning_rate
    if callable(lr) and not isinstance(lr, tf.Variable):
      lr = lr(optimizer.iterations)
    return float(tf.convert_to_tensor(lr))

  def drop(self, inputs):
    lr = inputs.values['learning_rate']
    temperature = inputs.values['temperature']
    sign = inputs.auxiliary['sign']
    masks = inputs.masks
    # Gaussian noise: equal on every replica (all run the same program), but
    # not bit-equal between a compiled and an uncompiled run.
    noise = tf.random.stateless_normal(
        [inputs.layout.size], reallocation.fold_in(inputs.seed, 7919),
        alg=reallocation.RANDOM_ALG)
    moved = (inputs.weights - lr * inputs.values['alpha'] * sign +
             tf.sqrt(2.0 * lr * temperature) * noise)
    weights = tf.where(masks, moved, tf.zeros_like(moved))
    flipped = masks & (weights * sign < 0)
    num_flipped, = inputs.layout.count(flipped,
                                       row_segments=inputs.row_segments)
    # Only the signs of connections that stay active matter; every other
    # entry gets a fresh sign, which a regrown connection then keeps.
    fresh = _random_signs([inputs.layout.size],
                          reallocation.fold_in(inputs.seed, 104729))
    return base.Drop(flipped, num_flipped, weights=weights,
                     auxiliary={'sign': tf.where(masks & ~flipped, sign,
                                                 fresh)})

  def budget(self, num_pruned, survivors, capacity, seed):
    del survivors
    return reallocation.allocate(tf.reduce_sum(num_pruned),
                                 tf.maximum(capacity, 1), capacity, seed)
