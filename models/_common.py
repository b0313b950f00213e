"""Shared helpers for the model builders: the Keras module, argument checks, layers.

Every layer helper takes the Keras module to build with as its first
argument (`keras_module`), so a builder makes tf_keras or Keras 3 layers alike.
"""

import math

from tensorflow_model_optimization.python.core.keras.compat import keras as tf_keras

# PyTorch-style batch-norm statistics (momentum 0.1 there is 0.9 here), as in the
# reference implementations the DSR paper trained with.
BN_MOMENTUM = 0.9
BN_EPSILON = 1e-5


def keras_module(keras):
  """The Keras module a builder builds with: tf_keras for None, else `keras`.

  Args:
    keras: None (tf_keras, the Keras of tfmot: `from tf_dsr import keras`) or
      a Keras module with `layers`, `Input` and `Model` (Keras 3: `import
      keras`).

  Raises:
    ValueError: when `keras` is not such a module; the message echoes it.
  """
  if keras is None:
    return tf_keras
  if not all(hasattr(keras, name) for name in ('layers', 'Input', 'Model',
                                                'regularizers')):
    raise ValueError('keras must be None (tf_keras) or a Keras module such as '
                     f'`import keras`, got {keras!r}')
  return keras


def check_int(name, value, minimum=1):
  """Returns `value` if it is an int >= `minimum`, else raises ValueError naming it."""
  if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
    raise ValueError(f'{name} must be an int >= {minimum}, got {value!r}')
  return value


def check_shape(name, value, rank=None):
  """Returns `value` as a tuple of positive ints (of length `rank` if given)."""
  try:
    shape = tuple(value)
  except TypeError:
    shape = None
  if (not shape or (rank is not None and len(shape) != rank) or
      any(isinstance(d, bool) or not isinstance(d, int) or d < 1 for d in shape)):
    what = f'{rank} positive ints' if rank else 'a non-empty tuple of positive ints'
    raise ValueError(f'{name} must be {what}, got {value!r}')
  return shape


def regularizer(keras, weight_decay):
  """L2 kernel regularizer for an SGD-style decay coefficient (None when 0).

  Keras' `l2(c)` adds `c * sum(w**2)` to the loss, whose gradient is `2 * c * w`;
  `c = weight_decay / 2` therefore gives the PyTorch/paper update `w -= lr * wd * w`.
  """
  if (isinstance(weight_decay, bool) or not isinstance(weight_decay, (int, float))
      or not math.isfinite(weight_decay) or weight_decay < 0):
    raise ValueError(f'weight_decay must be a finite number >= 0, got {weight_decay!r}')
  return keras.regularizers.l2(weight_decay / 2) if weight_decay > 0 else None


def conv(keras, x, filters, kernel_size, stride, name, reg):
  """Bias-free he_normal Conv2D with PyTorch-style symmetric padding.

  Stride-1 convs use 'same'; strided ones are zero-padded by `kernel_size // 2`
  on every side first (Keras' 'same' would pad only bottom/right).
  """
  padding = 'same'
  if stride > 1:
    if kernel_size > 1:
      x = keras.layers.ZeroPadding2D(kernel_size // 2, name=f'{name}_pad')(x)
    padding = 'valid'
  return keras.layers.Conv2D(
      filters, kernel_size, strides=stride, padding=padding, use_bias=False,
      kernel_initializer='he_normal', kernel_regularizer=reg, name=name)(x)


def batch_norm(keras, x, name):
  """BatchNormalization over the channel axis with the shared statistics settings."""
  return keras.layers.BatchNormalization(
      momentum=BN_MOMENTUM, epsilon=BN_EPSILON, name=name)(x)


def classifier(keras, x, num_classes, reg):
  """Global average pool followed by the logits Dense layer `fc` (no softmax)."""
  x = keras.layers.GlobalAveragePooling2D(name='avg_pool')(x)
  return keras.layers.Dense(num_classes, kernel_initializer='he_normal',
                            kernel_regularizer=reg, name='fc')(x)
