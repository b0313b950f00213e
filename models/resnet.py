"""Bottleneck ResNet-50 v1.5 (He et al. 2016, arXiv 1512.03385)."""

import math

from models._common import (batch_norm, check_int, check_shape, classifier, conv,
                            keras_module, regularizer)

_STAGES = ((3, 64, 1), (4, 128, 2), (6, 256, 2), (3, 512, 2))  # blocks, width, stride
_EXPANSION = 4


def _bottleneck(keras, x, width, out_channels, stride, prefix, reg):
  """1x1 -> 3x3 (strided, v1.5) -> 1x1 bottleneck, each conv followed by BN.

  The first block of a stage projects its input with a 1x1 conv + BN named
  `{prefix}_downsample` / `{prefix}_downsample_bn`; other blocks add the identity.
  """
  shortcut = x
  if stride != 1 or x.shape[-1] != out_channels:
    shortcut = conv(keras, x, out_channels, 1, stride, f'{prefix}_downsample', reg)
    shortcut = batch_norm(keras, shortcut, f'{prefix}_downsample_bn')
  out = x
  for i, (filters, size, s) in enumerate(
      ((width, 1, 1), (width, 3, stride), (out_channels, 1, 1)), start=1):
    out = batch_norm(keras, conv(keras, out, filters, size, s, f'{prefix}_conv{i}', reg), f'{prefix}_bn{i}')
    if i < 3:
      out = keras.layers.ReLU(name=f'{prefix}_relu{i}')(out)
  out = keras.layers.Add(name=f'{prefix}_add')([shortcut, out])
  return keras.layers.ReLU(name=f'{prefix}_out')(out)


def resnet50(num_classes=1000, width_multiplier=1.0, input_shape=(224, 224, 3),
             weight_decay=0.0, name=None, keras=None):
  """Builds ResNet-50 v1.5, the ImageNet network of the DSR paper.

  Bottleneck ResNet-50 of He et al., "Deep Residual Learning for Image
  Recognition" (CVPR 2016, arXiv 1512.03385), in the v1.5 variant that strides
  the 3x3 conv of each bottleneck instead of the first 1x1: a 7x7/2 stem conv
  with 64 channels + BN + ReLU + 3x3/2 max pool, four stages of [3, 4, 6, 3]
  bottlenecks with widths 64, 128, 256, 512 and expansion 4 (the first block of
  stages 2-4 strides 2), global average pooling and a Dense classifier. Convs
  are bias-free and each is followed by BN; padding is symmetric as in PyTorch.

  `width_multiplier` scales every conv's channel count `c` to
  `max(1, floor(c * width_multiplier + 0.5))`, giving the thin dense baselines
  of equal parameter count (0.54 and 0.46 in the DSR paper).

  Layer names: `stem_conv`, `stem_bn`, `stem_pool`;
  `stage{s}_block{b}_{conv1,conv2,conv3,bn1,bn2,bn3}`;
  `stage{s}_block1_downsample` and `..._downsample_bn`; `fc`.

  Args:
    num_classes: Number of output logits.
    width_multiplier: Positive factor on every conv's channel count.
    input_shape: (height, width, channels) of one input image.
    weight_decay: SGD-style weight decay on conv and Dense kernels, applied as an
      L2 kernel regularizer of `weight_decay / 2`; 0 disables it.
    name: Model name; defaults to `resnet50` (`resnet50_w{multiplier}` if thin).
    keras: The Keras module to build with: None for tf_keras (`from tf_dsr
      import keras`, the Keras of tfmot) or Keras 3 (`import keras`).

  Returns:
    A functional `keras.Model` mapping images to logits (no softmax).

  Raises:
    ValueError: If an argument is invalid; the message names it.
  """
  keras = keras_module(keras)
  check_int('num_classes', num_classes)
  if (isinstance(width_multiplier, bool) or not isinstance(width_multiplier, (int, float))
      or not math.isfinite(width_multiplier) or width_multiplier <= 0):
    raise ValueError(f'width_multiplier must be a finite number > 0, got {width_multiplier!r}')
  input_shape = check_shape('input_shape', input_shape, rank=3)
  reg = regularizer(keras, weight_decay)
  scale = lambda c: max(1, math.floor(c * width_multiplier + 0.5))

  inputs = keras.Input(input_shape, name='image')
  x = batch_norm(keras, conv(keras, inputs, scale(64), 7, 2, 'stem_conv', reg), 'stem_bn')
  x = keras.layers.ReLU(name='stem_relu')(x)
  x = keras.layers.ZeroPadding2D(1, name='stem_pool_pad')(x)  # after ReLU, 0 is the min
  x = keras.layers.MaxPooling2D(3, strides=2, name='stem_pool')(x)
  for s, (blocks, width, stride) in enumerate(_STAGES, start=1):
    for b in range(1, blocks + 1):
      x = _bottleneck(keras, x, scale(width), scale(width * _EXPANSION), stride if b == 1 else 1,
                      f'stage{s}_block{b}', reg)
  outputs = classifier(keras, x, num_classes, reg)
  default = 'resnet50' if width_multiplier == 1 else f'resnet50_w{width_multiplier:g}'
  return keras.Model(inputs, outputs, name=name or default)
