"""The model-wide DSR state: threshold H, reallocation count, last step.

It lives in variables attached to the model (as `model.dynamic_sparsity_state`,
the way Keras tracks `model.optimizer`), so `model.save_weights` in the
TensorFlow format, `tf.train.Checkpoint(model=...)` and SavedModel all include
it, and a checkpoint restored before the state is created is applied when it
is (TensorFlow's deferred restoration). The reallocation count also positions
the random stream: reallocation r draws from keys folded from (seed, r).
"""

import tensorflow as tf

ATTRIBUTE = 'dynamic_sparsity_state'


class DynamicSparsityState(tf.Module):
  """Variables shared by every dynamic-sparse layer of one model.

  Attributes:
    threshold: float32 H, the global magnitude threshold.
    reallocations: int64 number of reallocations done.
    last_step: int64 global step of the last reallocation (-1 before any).
  """

  def __init__(self, initial_threshold):
    super().__init__(name=ATTRIBUTE)
    self.threshold = tf.Variable(
        initial_threshold, dtype=tf.float32, trainable=False, name='threshold')
    self.reallocations = tf.Variable(
        0, dtype=tf.int64, trainable=False, name='reallocations')
    self.last_step = tf.Variable(
        -1, dtype=tf.int64, trainable=False, name='last_step')


def get_or_create(model, initial_threshold):
  """Returns the model's state, creating and attaching it on first use.

  Args:
    model: a tf_keras model.
    initial_threshold: H for a new state; ignored when the model has one.

  Returns:
    The model's `DynamicSparsityState`.
  """
  state = getattr(model, ATTRIBUTE, None)
  if state is None:
    with model.distribute_strategy.scope():
      state = DynamicSparsityState(initial_threshold)
    setattr(model, ATTRIBUTE, state)
  return state
