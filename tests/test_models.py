"""Tests for `models`: exact parameter counts, sparse/dense kernel sets, shapes, arguments.

Keras' `count_params()` includes the BN moving mean/variance (non-trainable), so
each BN layer over C channels counts 4C in total and 2C trainable.
"""

import keras as keras3
import numpy as np
import pytest

from models import (lenet_300_100, mobilenet_v1, resnet50, small_cnn,
                    sparse_kernel_layers, wide_resnet)
from models._common import tf_keras as keras


def _kernel_layers(model):
  return [layer.name for layer in model.layers if hasattr(layer, 'kernel')]


def _kernel_size(model, names):
  return sum(model.get_layer(n).kernel.shape.num_elements() for n in names)


def _trainable(model):
  return sum(w.shape.num_elements() for w in model.trainable_weights)


@pytest.fixture(scope='module')
def wrn():
  return wide_resnet()


@pytest.fixture(scope='module')
def r50():
  return resnet50()


# ----------------------------------------------------------------- WRN-28-2
# Blocks per group (28 - 4) / 6 = 4; channels 32, 64, 128.
# Block 3x3 kernels (9 * c_in * c_out each, conv1 + conv2):
#   group1: 9*16*32 + 9*32*32 = 4,608 + 9,216 = 13,824; 3 more blocks * 18,432 = 55,296 -> 69,120
#   group2: 9*32*64 + 9*64*64 = 18,432 + 36,864 = 55,296; 3 * 73,728 = 221,184 -> 276,480
#   group3: 9*64*128 + 9*128*128 = 73,728 + 147,456 = 221,184; 3 * 294,912 = 884,736 -> 1,105,920
#   sparse total 69,120 + 276,480 + 1,105,920 = 1,451,520 in 24 tensors.
# Stem 9*3*16 = 432; shortcuts 16*32 + 32*64 + 64*128 = 512 + 2,048 + 8,192 = 10,752;
# fc 128*10 + 10 = 1,290.
# BN channels: group1 (16 + 32) + 3*(32 + 32) = 240, group2 (32 + 64) + 3*128 = 480,
#   group3 (64 + 128) + 3*256 = 960, final 128 -> 1,808; 2*1,808 = 3,616 trainable.
# Trainable 1,451,520 + 432 + 10,752 + 1,290 + 3,616 = 1,467,610; total + 3,616 = 1,471,226.
WRN_SPARSE, WRN_TRAINABLE, WRN_TOTAL = 1_451_520, 1_467_610, 1_471_226


def test_wrn_counts(wrn):
  assert _trainable(wrn) == WRN_TRAINABLE
  assert wrn.count_params() == WRN_TOTAL
  sparse = sparse_kernel_layers(wrn, 'wide_resnet')
  assert len(sparse) == 24
  assert _kernel_size(wrn, sparse) == WRN_SPARSE
  dense = [n for n in _kernel_layers(wrn) if n not in sparse]
  assert dense == ['stem_conv', 'group1_block1_shortcut', 'group2_block1_shortcut',
                   'group3_block1_shortcut', 'fc']


def test_wrn_forward(wrn):
  out = wrn(np.zeros((2, 32, 32, 3), np.float32), training=False)
  assert out.shape == (2, 10)
  small = wide_resnet(depth=10, width=1, num_classes=3, input_shape=(16, 16, 3))
  assert small(np.ones((1, 16, 16, 3), np.float32)).shape == (1, 3)
  # Width 1: group1 keeps 16 channels at stride 1, so only groups 2 and 3 project.
  assert [n for n in _kernel_layers(small) if 'shortcut' in n] == [
      'group2_block1_shortcut', 'group3_block1_shortcut']


# Width multiplier 0.5 on WRN-28-2: stem 8 channels, groups 16, 32, 64.
#   stem 27*8 = 216
#   group1: 9*8*16 + 9*16*16 + 8*16 (shortcut) = 1,152 + 2,304 + 128; 3 * 4,608 = 13,824
#           -> 17,408
#   group2: 9*16*32 + 9*32*32 + 16*32 = 4,608 + 9,216 + 512; 3 * 18,432 = 55,296 -> 69,632
#   group3: 9*32*64 + 9*64*64 + 32*64 = 18,432 + 36,864 + 2,048; 3 * 73,728 = 221,184
#           -> 278,528
#   BN channels (8 + 16) + 3*32 + (16 + 32) + 3*64 + (32 + 64) + 3*128 + 64 = 904 -> 1,808
#   fc 64*10 + 10 = 650
# Trainable 216 + 17,408 + 69,632 + 278,528 + 1,808 + 650 = 368,242.
def test_wrn_thin_counts():
  model = wide_resnet(width_multiplier=0.5)
  assert _trainable(model) == 368_242
  assert model.name == 'wrn_28_2_w0.5'
  assert len(sparse_kernel_layers(model, 'wide_resnet')) == 24


def test_wrn_weight_decay():
  model = wide_resnet(depth=10, width=1, weight_decay=5e-4)
  assert len(model.losses) == len(_kernel_layers(model))  # one L2 term per kernel
  assert not wide_resnet(depth=10, width=1).losses


# ----------------------------------------------------------------- ResNet-50
# Bottleneck convs (1x1 c_in->w, 3x3 w->w, 1x1 w->4w) per stage:
#   stage1 w=64:  4,096 + 36,864 + 16,384 = 57,344; 2 * (16,384 + 36,864 + 16,384) = 139,264
#                 -> 196,608
#   stage2 w=128: 32,768 + 147,456 + 65,536 = 245,760; 3 * 278,528 = 835,584 -> 1,081,344
#   stage3 w=256: 131,072 + 589,824 + 262,144 = 983,040; 5 * 1,114,112 = 5,570,560 -> 6,553,600
#   stage4 w=512: 524,288 + 2,359,296 + 1,048,576 = 3,932,160; 2 * 4,456,448 = 8,912,896
#                 -> 12,845,056
#   convs 20,676,608 + fc kernel 2,048*1,000 = 2,048,000 -> sparse 22,724,608 in 49 tensors.
# Dense-kept: stem 7*7*3*64 = 9,408; downsamples 64*256 + 256*512 + 512*1,024 + 1,024*2,048
#   = 16,384 + 131,072 + 524,288 + 2,097,152 = 2,768,896; fc bias 1,000.
# BN channels: stem 64; stage s has blocks * (w + w + 4w) + 4w for its downsample:
#   3*384 + 256 = 1,408; 4*768 + 512 = 3,584; 6*1,536 + 1,024 = 10,240; 3*3,072 + 2,048 = 11,264
#   -> 26,560 channels, 53,120 trainable.
# Trainable 22,724,608 + 9,408 + 2,768,896 + 1,000 + 53,120 = 25,557,032 (the standard
# figure); total 25,557,032 + 53,120 = 25,610,152.
R50_SPARSE, R50_TRAINABLE, R50_TOTAL = 22_724_608, 25_557_032, 25_610_152
R50_DENSE_KEPT = ['stem_conv'] + [f'stage{s}_block1_downsample' for s in range(1, 5)]


def test_resnet50_counts(r50):
  assert _trainable(r50) == R50_TRAINABLE
  assert r50.count_params() == R50_TOTAL
  assert r50.output_shape == (None, 1000)
  sparse = sparse_kernel_layers(r50, 'resnet50')
  assert len(sparse) == 49 and sparse[-1] == 'fc'
  assert _kernel_size(r50, sparse) == R50_SPARSE
  assert [n for n in _kernel_layers(r50) if n not in sparse] == R50_DENSE_KEPT
  # v1.5: the stride sits on the 3x3 conv.
  assert r50.get_layer('stage2_block1_conv1').strides == (1, 1)
  assert r50.get_layer('stage2_block1_conv2').strides == (2, 2)


# Width 0.54: each channel count c -> round(0.54 c): 64->35, 128->69, 256->138, 512->276,
# 1,024->553, 2,048->1,106.
#   stem 147*35 = 5,145
#   stage1 (in 35):  1,225 + 11,025 + 4,830 = 17,080; 2 * (4,830 + 11,025 + 4,830) = 41,370
#   stage2 (in 138): 9,522 + 42,849 + 19,044 = 71,415; 3 * (19,044 + 42,849 + 19,044) = 242,811
#   stage3 (in 276): 38,088 + 171,396 + 76,314 = 285,798; 5 * 324,024 = 1,620,120
#   stage4 (in 553): 152,628 + 685,584 + 305,256 = 1,143,468; 2 * 1,296,096 = 2,592,192
#   bottleneck convs 58,450 + 314,226 + 1,905,918 + 3,735,660 = 6,014,254;
#   fc 1,106,000 + 1,000; downsamples 4,830 + 38,088 + 152,628 + 611,618 = 807,164.
#   BN channels 35 + (3*208 + 138) + (4*414 + 276) + (6*829 + 553) + (3*1,658 + 1,106)
#   = 35 + 762 + 1,932 + 5,527 + 6,080 = 14,336 -> 28,672 trainable.
# Trainable 5,145 + 6,014,254 + 807,164 + 1,107,000 + 28,672 = 7,962,235; total 7,990,907.
def test_resnet50_thin_counts():
  model = resnet50(width_multiplier=0.54)
  assert _trainable(model) == 7_962_235
  assert model.count_params() == 7_990_907
  sparse = sparse_kernel_layers(model, 'resnet50')
  assert _kernel_size(model, sparse) == 6_014_254 + 1_106_000
  assert model.name == 'resnet50_w0.54'


def test_resnet50_tiny_forward():
  model = resnet50(num_classes=7, width_multiplier=0.05, input_shape=(64, 64, 3))
  assert model(np.zeros((1, 64, 64, 3), np.float32)).shape == (1, 7)


# ----------------------------------------------------------------- MobileNet v1
# Block i has a 3x3 depthwise kernel over its c_in channels and a 1x1 c_in->c_out kernel;
# c_in runs 32, 64, 128, 128, 256, 256, 512 (x6), 1024; c_out 64, 128, 128, 256, 256,
# 512 (x6), 1024, 1024.
#   conv1 3*3*3*32 = 864
#   depthwise 9 * (32 + 64 + 2*128 + 2*256 + 6*512 + 1024) = 9 * 4,960 = 44,640
#   pointwise 32*64 + 64*128 + 128*128 + 128*256 + 256*256 + 256*512 + 5*512*512
#     + 512*1024 + 1024*1024 = 3,139,584 (13 tensors)
#   fc 1024*1000 = 1,024,000, bias 1,000 -> sparse 3,139,584 + 1,024,000 = 4,163,584
# BN channels 32 + 4,960 + (64 + 2*128 + 2*256 + 6*512 + 2*1024 = 5,952) = 10,944,
#   21,888 trainable.
# Trainable 864 + 44,640 + 3,139,584 + 1,025,000 + 21,888 = 4,231,976; total 4,253,864
# (both as keras.applications.MobileNet(weights=None) counts them).
MBV1_SPARSE, MBV1_TRAINABLE, MBV1_TOTAL = 4_163_584, 4_231_976, 4_253_864


def test_mobilenet_v1_counts():
  model = mobilenet_v1()
  assert _trainable(model) == MBV1_TRAINABLE
  assert model.count_params() == MBV1_TOTAL
  assert model.output_shape == (None, 1000)
  sparse = sparse_kernel_layers(model, 'mobilenet_v1')
  assert sparse == [f'block{i}_pw' for i in range(1, 14)] + ['fc']
  assert _kernel_size(model, sparse) == MBV1_SPARSE
  dense = [n for n in _kernel_layers(model) if n not in sparse]
  assert dense == ['conv1']  # Depthwise layers hold `depthwise_kernel`.
  assert [l.name for l in model.layers
          if isinstance(l, keras.layers.DepthwiseConv2D)] == [
              f'block{i}_dw' for i in range(1, 14)]


def test_mobilenet_v1_width_matches_keras_applications():
  model = mobilenet_v1(alpha=0.25, num_classes=10, input_shape=(32, 32, 3))
  reference = keras.applications.MobileNet(
      input_shape=(32, 32, 3), alpha=0.25, weights=None, classes=10)
  assert _trainable(model) == _trainable(reference)
  assert model.count_params() == reference.count_params()
  assert model.name == 'mobilenet_v1_w0.25'
  out = model(np.ones((2, 32, 32, 3), np.float32), training=False)
  assert out.shape == (2, 10)


def test_mobilenet_v1_pads_strided_convs_on_every_side():
  model = mobilenet_v1(alpha=0.25, input_shape=(32, 32, 3))
  pads = {l.name: l.padding for l in model.layers
          if isinstance(l, keras.layers.ZeroPadding2D)}
  assert pads == {name: ((1, 1), (1, 1)) for name in (
      'conv1_pad', 'block2_dw_pad', 'block4_dw_pad', 'block6_dw_pad',
      'block12_dw_pad')}
  # 32 -> 16 (conv1) -> 8 -> 4 -> 2 -> 1.
  assert model.get_layer('block13_pw').output_shape == (None, 1, 1, 256)


def test_mobilenet_v1_weight_decay_spares_depthwise_kernels():
  model = mobilenet_v1(alpha=0.25, input_shape=(32, 32, 3), weight_decay=4e-5)
  assert len(model.losses) == 1 + 13 + 1  # conv1, the pointwise convs, fc


# ----------------------------------------------------------------- small models
def test_lenet():
  model = lenet_300_100()
  # 784*300 + 300 + 300*100 + 100 + 100*10 + 10 = 235,500 + 30,100 + 1,010 = 266,610.
  assert model.count_params() == 266_610
  assert sparse_kernel_layers(model, 'lenet_300_100') == ['fc1', 'fc2', 'fc3']
  assert model(np.zeros((3, 784), np.float32)).shape == (3, 10)
  images = lenet_300_100(input_shape=(28, 28, 1), num_classes=4)
  assert images(np.zeros((2, 28, 28, 1), np.float32)).shape == (2, 4)
  assert images.get_layer('fc3').activation is keras.activations.linear  # logits


def test_small_cnn():
  model = small_cnn()
  # 9*1*16 + 16 = 160; 9*16*32 + 32 = 4,640; 32*10 + 10 = 330 -> 5,130.
  assert model.count_params() == 5_130
  assert sparse_kernel_layers(model, 'small_cnn') == ['conv2', 'fc']
  assert model(np.zeros((5, 8, 8, 1), np.float32)).shape == (5, 10)


# ------------------------------------------------------------------ Keras 3
@pytest.mark.parametrize('build, arch, kwargs', [
    (wide_resnet, 'wide_resnet', dict(depth=10, width=1, weight_decay=5e-4)),
    (resnet50, 'resnet50', dict(input_shape=(32, 32, 3), num_classes=10,
                                width_multiplier=0.25)),
    (mobilenet_v1, 'mobilenet_v1', dict(input_shape=(32, 32, 3), alpha=0.25,
                                        num_classes=10)),
    (lenet_300_100, 'lenet_300_100', dict(input_shape=(64,))),
    (small_cnn, 'small_cnn', {}),
])
def test_keras3_builds_the_same_network(build, arch, kwargs):
  """`keras=keras` builds the tf_keras network's layers and weights in Keras 3."""
  plain = build(**kwargs)
  other = build(keras=keras3, **kwargs)
  assert isinstance(other, keras3.Model) and not isinstance(other, keras.Model)
  assert [l.name for l in other.layers] == [l.name for l in plain.layers]
  assert [tuple(w.shape) for w in other.weights] == [
      tuple(w.shape) for w in plain.weights]
  assert other.count_params() == plain.count_params()
  assert sparse_kernel_layers(other, arch) == sparse_kernel_layers(plain, arch)
  assert len(other.losses) == len(plain.losses)  # The same weight decay terms.


# ----------------------------------------------------------------- arguments
@pytest.mark.parametrize('build, arg, value', [
    (wide_resnet, 'depth', 27),
    (wide_resnet, 'depth', 4),
    (wide_resnet, 'width', 0),
    (wide_resnet, 'width', 1.5),
    (wide_resnet, 'num_classes', 0),
    (wide_resnet, 'input_shape', (32, 32)),
    (wide_resnet, 'weight_decay', -1e-4),
    (wide_resnet, 'width_multiplier', 0),
    (resnet50, 'width_multiplier', 0.0),
    (resnet50, 'width_multiplier', float('nan')),
    (resnet50, 'num_classes', True),
    (resnet50, 'input_shape', (224, 0, 3)),
    (resnet50, 'weight_decay', float('inf')),
    (lenet_300_100, 'input_shape', ()),
    (lenet_300_100, 'num_classes', -3),
    (small_cnn, 'input_shape', (8, 8)),
    (mobilenet_v1, 'alpha', 0),
    (mobilenet_v1, 'alpha', float('inf')),
    (mobilenet_v1, 'num_classes', 1.5),
    (mobilenet_v1, 'input_shape', (32, 32)),
    (lenet_300_100, 'keras', 'keras3'),
    (small_cnn, 'keras', 3),
])
def test_bad_arguments(build, arg, value):
  with pytest.raises(ValueError, match=arg) as info:
    build(**{arg: value})
  assert repr(value) in str(info.value)


def test_sparse_kernel_layers_errors():
  model = small_cnn()
  with pytest.raises(ValueError, match='lenet_300_100.*resnet50.*small_cnn.*wide_resnet'):
    sparse_kernel_layers(model, 'vgg16')
  with pytest.raises(ValueError, match='wide_resnet'):
    sparse_kernel_layers(model, 'wide_resnet')  # names do not fit this arch
