"""Shared helpers for the model builders: the Keras handle, argument checks, layers."""

import math

from tensorflow_model_optimization.python.core.keras.compat import keras

# PyTorch-style batch-norm statistics (momentum 0.1 there is 0.9 here), as in the
# reference implementations the DSR paper trained with.
BN_MOMENTUM = 0.9
BN_EPSILON = 1e-5


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


def regularizer(weight_decay):
  """L2 kernel regularizer for an SGD-style decay coefficient (None when 0).

  Keras' `l2(c)` adds `c * sum(w**2)` to the loss, whose gradient is `2 * c * w`;
  `c = weight_decay / 2` therefore gives the PyTorch/paper update `w -= lr * wd * w`.
  """
  if (isinstance(weight_decay, bool) or not isinstance(weight_decay, (int, float))
      or not math.isfinite(weight_decay) or weight_decay < 0):
    raise ValueError(f'weight_decay must be a finite number >= 0, got {weight_decay!r}')
  return keras.regularizers.l2(weight_decay / 2) if weight_decay > 0 else None


def conv(x, filters, kernel_size, stride, name, reg):
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


def batch_norm(x, name):
  """BatchNormalization over the channel axis with the shared statistics settings."""
  return keras.layers.BatchNormalization(
      momentum=BN_MOMENTUM, epsilon=BN_EPSILON, name=name)(x)


def classifier(x, num_classes, reg):
  """Global average pool followed by the logits Dense layer `fc` (no softmax)."""
  x = keras.layers.GlobalAveragePooling2D(name='avg_pool')(x)
  return keras.layers.Dense(num_classes, kernel_initializer='he_normal',
                            kernel_regularizer=reg, name='fc')(x)
