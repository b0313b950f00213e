"""MobileNet v1 (Howard et al. 2017, arXiv 1704.04861)."""

import math

from models._common import (batch_norm, check_int, check_shape, classifier, conv,
                            keras_module, regularizer)

# (pointwise filters, depthwise stride) of the 13 depthwise-separable blocks.
_BLOCKS = ((64, 1), (128, 2), (128, 1), (256, 2), (256, 1), (512, 2),
           (512, 1), (512, 1), (512, 1), (512, 1), (512, 1), (1024, 2),
           (1024, 1))


def _relu6(keras, x, name):
  return keras.layers.ReLU(6.0, name=name)(x)


def _depthwise(keras, x, stride, name):
  """Bias-free 3x3 depthwise conv, symmetrically padded like `_common.conv`."""
  padding = 'same'
  if stride > 1:
    x = keras.layers.ZeroPadding2D(1, name=f'{name}_pad')(x)
    padding = 'valid'
  return keras.layers.DepthwiseConv2D(
      3, strides=stride, padding=padding, use_bias=False,
      depthwise_initializer='he_normal', name=name)(x)


def mobilenet_v1(num_classes=1000, alpha=1.0, input_shape=(224, 224, 3),
                 weight_decay=0.0, name=None, keras=None):
  """Builds MobileNet v1, the ImageNet network of RigL's MobileNet results.

  Howard et al., "MobileNets: Efficient Convolutional Neural Networks for
  Mobile Vision Applications" (arXiv 1704.04861): a 3x3/2 conv with 32
  channels, then 13 depthwise-separable blocks (a 3x3 depthwise conv and a
  1x1 pointwise conv, each followed by BN and ReLU6) with 64, 128, 128, 256,
  256, 512 (x6), 1024 and 1024 output channels, the 2nd, 4th, 6th and 12th
  striding 2; global average pooling and a Dense classifier. Convs are
  bias-free; strided ones are zero-padded by 1 on every side first (Keras'
  'same' would pad only bottom/right), which is also the layout XNNPACK's
  sparse inference needs (a symmetric 3x3/2 first conv and depthwise convs).

  The width multiplier `alpha` scales every conv's channel count `c` to
  `max(1, int(c * alpha))`, as `keras.applications.MobileNet` does; at
  `alpha=1` with 1,000 classes the model has the published 4,231,976
  trainable parameters (4,253,864 with the BN statistics).

  Layer names: `conv1`, `conv1_bn`, `conv1_relu`;
  `block{i}_dw` (with `block{i}_dw_pad` when strided), `block{i}_dw_bn`,
  `block{i}_dw_relu`, `block{i}_pw`, `block{i}_pw_bn`, `block{i}_pw_relu`
  for i in 1..13; `avg_pool`, `fc`.

  Args:
    num_classes: Number of output logits.
    alpha: Width multiplier, a finite number > 0.
    input_shape: (height, width, channels) of one input image.
    weight_decay: SGD-style weight decay on the full conv and Dense kernels,
      applied as an L2 kernel regularizer of `weight_decay / 2` (depthwise
      kernels are not decayed, as in the reference implementations); 0
      disables it.
    name: Model name; defaults to `mobilenet_v1` (`mobilenet_v1_w{alpha}` if
      `alpha != 1`).
    keras: The Keras module to build with: None for tf_keras (`from tf_dsr
      import keras`, the Keras of tfmot) or Keras 3 (`import keras`).

  Returns:
    A functional `keras.Model` mapping images to logits (no softmax).

  Raises:
    ValueError: If an argument is invalid; the message names it.
  """
  keras = keras_module(keras)
  check_int('num_classes', num_classes)
  if (isinstance(alpha, bool) or not isinstance(alpha, (int, float))
      or not math.isfinite(alpha) or alpha <= 0):
    raise ValueError(f'alpha must be a finite number > 0, got {alpha!r}')
  input_shape = check_shape('input_shape', input_shape, rank=3)
  reg = regularizer(keras, weight_decay)
  scale = lambda c: max(1, int(c * alpha))

  inputs = keras.Input(input_shape, name='image')
  x = batch_norm(keras, conv(keras, inputs, scale(32), 3, 2, 'conv1', reg), 'conv1_bn')
  x = _relu6(keras, x, 'conv1_relu')
  for i, (filters, stride) in enumerate(_BLOCKS, start=1):
    x = batch_norm(keras, _depthwise(keras, x, stride, f'block{i}_dw'), f'block{i}_dw_bn')
    x = _relu6(keras, x, f'block{i}_dw_relu')
    x = batch_norm(keras, conv(keras, x, scale(filters), 1, 1, f'block{i}_pw', reg),
                   f'block{i}_pw_bn')
    x = _relu6(keras, x, f'block{i}_pw_relu')
  outputs = classifier(keras, x, num_classes, reg)
  default = 'mobilenet_v1' if alpha == 1 else f'mobilenet_v1_w{alpha:g}'
  return keras.Model(inputs, outputs, name=name or default)
