"""Recording the dense gradient of sparse kernels while a model trains.

A sparse kernel's own gradient is zero at every inactive entry (the forward
pass uses `kernel * mask`). Rules such as RigL and SNFS grow where the loss
gradient with respect to the *masked* kernel, `d loss / d (kernel * mask)`,
is large, inactive entries included. `GradientRecorder` inserts an identity
with a custom gradient after each masked kernel of the `DynamicSparseWrapper`
layers (of tf_keras and of Keras 3: each wrapper's masked call passes its
kernels through `watch`): in the backward pass it copies the incoming
gradient into a variable when recording is on, and does nothing otherwise.
It needs no change to the model's train step, so it works in `model.fit`,
in custom loops, compiled with XLA and under `tf.distribute`.

Under a distribution strategy each replica records its own gradient in its
own copy of the variable (synchronised on read, summed), so reading it
outside the replicas gives the all-reduced gradient, with no communication
during the step. With mixed precision the recorded values carry the loss
scale: rules rank gradients within a tensor or compare averages between
tensors, which a common factor does not change.
"""

import tensorflow as tf

MODES = ('last', 'momentum')

# The rule-variable kind (`DynamicSparseWrapper.add_auxiliary`) that holds the
# recorded momentum of 'momentum' mode.
MOMENTUM_KIND = 'dense_momentum'


class GradientRecorder:
  """Records d loss / d (kernel * mask) for every sparse kernel of a model.

  Attributes:
    mode: 'last' keeps the gradient of the most recent recorded step;
      'momentum' accumulates `m = momentum * m + g` over recorded steps.
    momentum: the decay of 'momentum' mode.
    recording: bool variable; the backward pass records only while True.
    values: one float32 variable per sparse kernel, in the order of
      `wrapper_kernels`.
  """

  def __init__(self, model, wrappers, mode, momentum=0.0, values=None):
    """Creates the variables and attaches the recorder to `wrappers`.

    Args:
      model: the model (its distribution strategy scopes the variables).
      wrappers: the `DynamicSparseWrapper` layers, built.
      mode: one of `MODES`.
      momentum: decay of 'momentum' mode, in [0, 1).
      values: optional existing variables to record into (one per kernel,
        as made by `make_variables`), e.g. restored ones.
    """
    if mode not in MODES:
      raise ValueError(f'`mode` must be one of {MODES}, got {mode!r}.')
    self.mode = mode
    self.momentum = float(momentum)
    self._last_set = None  # What `set_recording` last assigned.
    kernels = [kernel for wrapper in wrappers
               for kernel, _ in wrapper.sparse_weights]
    with model.distribute_strategy.scope():
      self.recording = tf.Variable(False, trainable=False,
                                   name='recording_dense_gradients')
    self.values = list(values) if values is not None else make_variables(
        model, kernels, 'dense_gradient')
    position = 0
    for wrapper in wrappers:
      count = len(wrapper.sparse_weights)
      wrapper._attach_gradient_recorder(  # pylint: disable=protected-access
          self, self.values[position:position + count])
      position += count

  def watch(self, value, store):
    """`value` unchanged; its gradient is recorded into `store` when on."""
    recording, mode, momentum = self.recording, self.mode, self.momentum

    @tf.custom_gradient
    def identity(x):
      def grad(upstream):
        def record():
          gradient = tf.cast(upstream, tf.float32)
          if mode == 'momentum':
            gradient = momentum * tf.convert_to_tensor(store) + gradient
          store.assign(gradient)
          return tf.constant(True)

        done = tf.cond(recording, record, lambda: tf.constant(False))
        with tf.control_dependencies([done]):
          return tf.identity(upstream)

      return tf.identity(x), grad

    return identity(value)

  def set_recording(self, on):
    """Turns recording on or off for the following training steps."""
    on = bool(on)
    if self._last_set != on:
      self.recording.assign(on)
      self._last_set = on

  def read(self):
    """The recorded values, summed over replicas: one float32 tensor each."""
    return [tf.convert_to_tensor(value) for value in self.values]


def make_variables(model, kernels, prefix):
  """One zero float32 variable per kernel, synchronised on read by sum."""
  with model.distribute_strategy.scope():
    return [
        tf.Variable(tf.zeros(kernel.shape, tf.float32), trainable=False,
                    synchronization=tf.VariableSynchronization.ON_READ,
                    aggregation=tf.VariableAggregation.SUM,
                    name=f'{prefix}_{index}')
        for index, kernel in enumerate(kernels)]
