"""Pre-activation Wide ResNet (Zagoruyko & Komodakis 2016, arXiv 1605.07146)."""

import math

from models._common import (batch_norm, check_int, check_shape, classifier, conv,
                            keras_module, regularizer)


def _block(keras, x, filters, stride, prefix, reg):
  """One pre-activation basic block: BN-ReLU-conv3x3-BN-ReLU-conv3x3 + shortcut.

  When the channel count or stride changes, the shortcut is a 1x1 conv applied to
  the block's pre-activated input; otherwise it is the identity on the raw input.
  """
  out = keras.layers.ReLU(name=f'{prefix}_relu1')(batch_norm(keras, x, f'{prefix}_bn1'))
  if stride != 1 or x.shape[-1] != filters:
    shortcut = conv(keras, out, filters, 1, stride, f'{prefix}_shortcut', reg)
  else:
    shortcut = x
  out = conv(keras, out, filters, 3, stride, f'{prefix}_conv1', reg)
  out = keras.layers.ReLU(name=f'{prefix}_relu2')(batch_norm(keras, out, f'{prefix}_bn2'))
  out = conv(keras, out, filters, 3, 1, f'{prefix}_conv2', reg)
  return keras.layers.Add(name=f'{prefix}_add')([shortcut, out])


def wide_resnet(depth=28, width=2, num_classes=10, input_shape=(32, 32, 3),
                weight_decay=0.0, width_multiplier=1.0, name=None,
                keras=None):
  """Builds WRN-`depth`-`width`, the CIFAR network of the DSR paper's Table 1.

  Pre-activation Wide ResNet of Zagoruyko & Komodakis, "Wide Residual Networks"
  (BMVC 2016, arXiv 1605.07146), without dropout: a 3x3 stem conv with 16
  channels, three groups of `(depth - 4) // 6` basic blocks with `16 * width`,
  `32 * width` and `64 * width` channels and strides 1, 2, 2, then BN-ReLU,
  global average pooling and a Dense classifier. A 1x1 shortcut conv is used
  where a block changes the channel count or stride (the first block of each
  group). Convs are bias-free; all kernels use he_normal initialisation.

  `width_multiplier` scales every conv's channel count `c` (the stem's too) to
  `max(1, floor(c * width_multiplier + 0.5))`, as `resnet50` does: the thin
  dense baselines of equal parameter count need widths between the integer
  widening factors (WRN-28-2 at sparsity 0.9 keeps about 11% of its weights).

  Layer names: `stem_conv`; `group{g}_block{b}_{bn1,conv1,bn2,conv2,shortcut}`
  (g, b from 1); `final_bn`; `fc`.

  Args:
    depth: Total depth; `(depth - 4)` must be a positive multiple of 6.
    width: Widening factor k >= 1.
    num_classes: Number of output logits.
    input_shape: (height, width, channels) of one input image.
    weight_decay: SGD-style weight decay on conv and Dense kernels, applied as an
      L2 kernel regularizer of `weight_decay / 2`; 0 disables it.
    width_multiplier: Positive factor on every conv's channel count.
    name: Model name; defaults to `wrn_{depth}_{width}` (with `_w{multiplier}`
      appended if thin).
    keras: The Keras module to build with: None for tf_keras (`from tf_dsr
      import keras`, the Keras of tfmot) or Keras 3 (`import keras`).

  Returns:
    A functional `keras.Model` mapping images to logits (no softmax).

  Raises:
    ValueError: If an argument is invalid; the message names it.
  """
  keras = keras_module(keras)
  check_int('depth', depth, minimum=10)
  if (depth - 4) % 6:
    raise ValueError(f'depth must satisfy (depth - 4) % 6 == 0, got {depth!r}')
  check_int('width', width)
  check_int('num_classes', num_classes)
  if (isinstance(width_multiplier, bool) or not isinstance(width_multiplier, (int, float))
      or not math.isfinite(width_multiplier) or width_multiplier <= 0):
    raise ValueError(f'width_multiplier must be a finite number > 0, got {width_multiplier!r}')
  input_shape = check_shape('input_shape', input_shape, rank=3)
  reg = regularizer(keras, weight_decay)
  scale = lambda c: max(1, math.floor(c * width_multiplier + 0.5))

  inputs = keras.Input(input_shape, name='image')
  x = conv(keras, inputs, scale(16), 3, 1, 'stem_conv', reg)
  for g, (filters, stride) in enumerate(zip((16, 32, 64), (1, 2, 2)), start=1):
    for b in range(1, (depth - 4) // 6 + 1):
      x = _block(keras, x, scale(filters * width), stride if b == 1 else 1, f'group{g}_block{b}',
                 reg)
  x = keras.layers.ReLU(name='final_relu')(batch_norm(keras, x, 'final_bn'))
  outputs = classifier(keras, x, num_classes, reg)
  default = f'wrn_{depth}_{width}'
  if width_multiplier != 1:
    default += f'_w{width_multiplier:g}'
  return keras.Model(inputs, outputs, name=name or default)
