"""Helpers the tests share: tiny models and data, so graph building stays cheap.

Kept out of `conftest.py`, which pytest-xdist's controller process imports
before it starts the workers: importing TensorFlow there would keep one core
idle for the ten seconds it takes.
"""

import keras as keras3
import numpy as np
import tensorflow as tf

import tf_dsr
from tf_dsr import keras

# The Kerases tf_dsr runs on, for tests parametrised over `flavour`.
FLAVOURS = {'tf_keras': keras, 'keras3': keras3}


def tiny_cnn(name='tiny', keras=keras):  # pylint: disable=redefined-outer-name
  """8x8x1 -> conv 8 -> conv 16 -> pool -> dense 10 (sparse: conv2, fc), in
  the Keras module `keras`."""
  inputs = keras.Input((8, 8, 1))
  x = keras.layers.Conv2D(8, 3, padding='same', activation='relu',
                          name='conv1')(inputs)
  x = keras.layers.Conv2D(16, 3, padding='same', activation='relu',
                          name='conv2')(x)
  x = keras.layers.GlobalAveragePooling2D(name='pool')(x)
  outputs = keras.layers.Dense(10, name='fc')(x)
  return keras.Model(inputs, outputs, name=name)


def tiny_data(n=64, seed=0):
  rng = np.random.default_rng(seed)
  x = rng.normal(size=(n, 8, 8, 1)).astype('float32')
  y = rng.integers(0, 10, size=n)
  return x, y


def sparse_tiny_cnn(sparsity=0.8, seed=0, optimizer=None, flavour='tf_keras'):
  """`tiny_cnn` of the Keras `flavour` ('tf_keras' or 'keras3'), sparsified
  and compiled (SGD with momentum unless `optimizer` is given)."""
  k = FLAVOURS[flavour]
  k.utils.set_random_seed(seed)
  model = tf_dsr.sparsify(tiny_cnn(keras=k), sparsity, exclude=['conv1'],
                          seed=seed)
  model.compile(
      optimizer or k.optimizers.SGD(0.05, momentum=0.9),
      k.losses.SparseCategoricalCrossentropy(from_logits=True))
  return model


def custom_train_step(model):
  """A custom training step (not Keras's `train_on_batch`): loss, gradients,
  the model's optimizer; a `Reallocator` drives such loops."""

  @tf.function
  def step(x, y):
    with tf.GradientTape() as tape:
      loss = model.compute_loss(x, y, model(x, training=True))
    model.optimizer.apply_gradients(
        zip(tape.gradient(loss, model.trainable_variables),
            model.trainable_variables))
    return loss

  return step


def sparse_pairs(model):
  """`(kernel, mask)` variables of every DynamicSparseWrapper in `model`."""
  return [pair for wrapper in tf_dsr.collect_wrappers(model)
          for pair in wrapper.sparse_weights]


def masks_of(model):
  return [mask.numpy() for _, mask in sparse_pairs(model)]


def assert_masked_weights_zero(model):
  for kernel, mask in sparse_pairs(model):
    values = kernel.numpy()
    assert (values[mask.numpy() == 0] == 0).all(), kernel.name


def assert_reset_where_moved(pairs, slots, before, read=lambda v: v.numpy()):
  """After a reallocation that started from masks `before` (with every slot set
  to 1): slots are 0 where an entry was pruned or regrown and untouched where
  it survived, and regrown kernel entries are 0. Returns the number regrown."""
  num_regrown = 0
  for (kernel, mask), group, old in zip(pairs, slots, before):
    new = mask.numpy()
    kept = (old > 0) & (new > 0)
    for slot in group:
      value = slot.numpy()
      assert (value[~kept] == 0).all()
      assert (value[kept] == 1).all()
    regrown = (new > 0) & (old == 0)
    assert (read(kernel)[regrown] == 0).all()
    num_regrown += int(regrown.sum())
  return num_regrown


def run_tflite(content, x, **kwargs):
  """Runs a TFLite flatbuffer on `x` (its batch size) in the interpreter.

  `kwargs` go to `tf.lite.Interpreter` (e.g. the delegate options).
  """
  interpreter = tf.lite.Interpreter(model_content=content, **kwargs)
  source = interpreter.get_input_details()[0]
  interpreter.resize_tensor_input(source['index'], x.shape)
  interpreter.allocate_tensors()
  interpreter.set_tensor(source['index'], x)
  interpreter.invoke()
  return interpreter.get_tensor(interpreter.get_output_details()[0]['index'])


class Preempted(Exception):
  """Raised by `PreemptAt` to stop `fit` as a preemption would."""


class PreemptAt(keras.callbacks.Callback):
  """Stops `fit` by raising after global step `step` (callbacks before it ran)."""

  def __init__(self, step):
    super().__init__()
    self.step = step

  def on_train_batch_end(self, batch, logs=None):
    if int(self.model.optimizer.iterations.numpy()) == self.step:
      raise Preempted()
