"""Static sparse training: the initial random mask, never changed."""

import dataclasses

import tensorflow as tf

from tf_dsr.rules import base


@base.register
@dataclasses.dataclass(frozen=True)
class Static(base.Rule):
  """Static sparse training: the initial random masks are kept.

  The baseline of Mostafa & Wang (ICML 2019, https://arxiv.org/abs/1902.05967)
  and of most sparse-training papers. Attaching it allows training the
  wrapped layers; a reallocation changes nothing. No options.
  """
  name = 'static'
  label = 'static sparse'

  def expected_regrowth(self, layout):
    del layout
    return 0.0

  def drop(self, inputs):
    return base.Drop(tf.zeros_like(inputs.masks),
                     tf.zeros_like(inputs.active))
