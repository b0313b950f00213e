"""Small networks: LeNet-300-100 (LeCun et al. 1998) and a tiny CNN for quick tests."""

from models._common import check_int, check_shape, keras_module


def _scaled(channels, width_multiplier):
  """`max(1, floor(c * m + 0.5))`, as the other builders scale widths."""
  return max(1, int(channels * width_multiplier + 0.5))


def _check_multiplier(width_multiplier):
  if (isinstance(width_multiplier, bool) or
      not isinstance(width_multiplier, (int, float)) or
      not width_multiplier > 0 or width_multiplier == float('inf')):
    raise ValueError(f'width_multiplier must be a positive number, got '
                     f'{width_multiplier!r}')


def lenet_300_100(input_shape=(784,), num_classes=10, name=None,
                  width_multiplier=1.0, keras=None):
  """Builds LeNet-300-100, the fully connected MNIST network.

  From LeCun, Bottou, Bengio & Haffner, "Gradient-Based Learning Applied to
  Document Recognition" (Proc. IEEE, 1998): Flatten, Dense 300 + ReLU,
  Dense 100 + ReLU, Dense `num_classes`. For 784 inputs and 10 classes it has
  266,610 parameters.

  Layer names: `flatten`, `fc1`, `fc2`, `fc3`.

  Args:
    input_shape: Shape of one example; flattened first, so (784,) and
      (28, 28, 1) both work.
    num_classes: Number of output logits.
    name: Model name; defaults to `lenet_300_100`.
    width_multiplier: Positive factor on the hidden widths (300 and 100),
      for thin dense baselines.
    keras: The Keras module to build with: None for tf_keras (`from tf_dsr
      import keras`, the Keras of tfmot) or Keras 3 (`import keras`).

  Returns:
    A functional `keras.Model` producing logits (no softmax).

  Raises:
    ValueError: If an argument is invalid; the message names it.
  """
  keras = keras_module(keras)
  input_shape = check_shape('input_shape', input_shape)
  check_int('num_classes', num_classes)
  _check_multiplier(width_multiplier)
  inputs = keras.Input(input_shape, name='image')
  x = keras.layers.Flatten(name='flatten')(inputs)
  x = keras.layers.Dense(_scaled(300, width_multiplier), activation='relu',
                         name='fc1')(x)
  x = keras.layers.Dense(_scaled(100, width_multiplier), activation='relu',
                         name='fc2')(x)
  outputs = keras.layers.Dense(num_classes, name='fc3')(x)
  return keras.Model(inputs, outputs, name=name or 'lenet_300_100')


def small_cnn(input_shape=(8, 8, 1), num_classes=10, name=None,
              width_multiplier=1.0, keras=None):
  """Builds a tiny conv net for unit tests and 8x8 digit images.

  conv3x3 16 + ReLU, conv3x3 32 stride 2 + ReLU, global average pool, Dense.
  Convs use 'same' padding and biases. For the defaults it has 5,130
  parameters (160 + 4,640 + 330).

  Layer names: `conv1`, `conv2`, `avg_pool`, `fc`.

  Args:
    input_shape: (height, width, channels) of one input image.
    num_classes: Number of output logits.
    name: Model name; defaults to `small_cnn`.
    width_multiplier: Positive factor on both convs' channel counts (16, 32),
      for thin dense baselines.
    keras: The Keras module to build with: None for tf_keras (`from tf_dsr
      import keras`, the Keras of tfmot) or Keras 3 (`import keras`).

  Returns:
    A functional `keras.Model` producing logits (no softmax).

  Raises:
    ValueError: If an argument is invalid; the message names it.
  """
  keras = keras_module(keras)
  input_shape = check_shape('input_shape', input_shape, rank=3)
  check_int('num_classes', num_classes)
  _check_multiplier(width_multiplier)
  inputs = keras.Input(input_shape, name='image')
  x = keras.layers.Conv2D(_scaled(16, width_multiplier), 3, padding='same',
                          activation='relu', name='conv1')(inputs)
  x = keras.layers.Conv2D(_scaled(32, width_multiplier), 3, strides=2,
                          padding='same', activation='relu', name='conv2')(x)
  x = keras.layers.GlobalAveragePooling2D(name='avg_pool')(x)
  outputs = keras.layers.Dense(num_classes, name='fc')(x)
  return keras.Model(inputs, outputs, name=name or 'small_cnn')
