"""FLOPs counting on tiny models whose multiply-adds are worked out by hand."""

import math

import numpy as np
import pytest
import tensorflow_model_optimization as tfmot

import tf_dsr
from tf_dsr import flops
from tf_dsr import keras


def conv_dense(sparsity=0.75):
  """(6, 6, 2) -> conv 3x3 -> 1x1 conv stride 2 (dense) -> flatten -> fc."""
  inputs = keras.Input((6, 6, 2))
  x = keras.layers.Conv2D(4, 3, name='conv')(inputs)       # -> (4, 4, 4)
  x = keras.layers.Conv2D(3, 1, strides=2, name='proj')(x)  # -> (2, 2, 3)
  x = keras.layers.Flatten()(x)                             # -> 12
  outputs = keras.layers.Dense(5, name='fc')(x)
  return tf_dsr.sparsify(keras.Model(inputs, outputs), sparsity,
                         exclude=['proj'])


def test_conv_and_dense_flops_by_hand():
  # conv: 3*3*2*4 = 72 entries, used at 4*4 = 16 output positions:
  #   dense 72*16 = 1152 multiply-adds = 2304 FLOPs; at sparsity 0.75,
  #   18 active: 18*16*2 = 576.
  # proj (kept dense): 1*1*4*3 = 12 entries at 2*2 = 4 positions: 96 both.
  # fc: 12*5 = 60 entries, once: 120; 15 active: 30.
  report = flops.flops_report(conv_dense())
  assert [(l.name, l.dense, l.sparse, l.masked) for l in report.layers] == [
      ('conv', 2304, 576, True), ('proj', 96, 96, False),
      ('fc', 120, 30, True)]
  assert (report.dense, report.sparse) == (2520, 702)
  assert report.fraction == pytest.approx(702 / 2520)
  assert report.masked_dense == 2304 + 120
  assert report.uncounted == []


def test_other_layer_kinds_by_hand():
  image = keras.Input((6, 6, 2))
  # Depthwise 3x3, multiplier 2, 'same': 3*3*2*2 = 36 entries at 36
  # positions: 1296 multiply-adds, 2592 FLOPs.
  a = keras.layers.DepthwiseConv2D(3, depth_multiplier=2, padding='same',
                                   name='depthwise')(image)
  # Separable 3x3 -> 4, 'valid' (4x4 out): depthwise 18 + pointwise 8
  # entries at 16 positions: 416 multiply-adds, 832 FLOPs.
  b = keras.layers.SeparableConv2D(4, 3, name='separable')(image)
  # Transposed 2x2 stride 2 on the (2, 2, 4) pool of b: 2*2*3*4 = 48
  # entries at the 4 input positions: 192 multiply-adds, 384 FLOPs.
  c = keras.layers.MaxPooling2D(2)(b)
  c = keras.layers.Conv2DTranspose(3, 2, strides=2, name='transposed')(c)
  # Dense on a (5, 4) sequence: 4*3 = 12 entries at 5 positions: 60
  # multiply-adds, 120 FLOPs; called twice (shared): 240.
  sequence = keras.Input((5, 4))
  shared = keras.layers.Dense(4, name='shared')
  d = shared(shared(sequence))
  # Embedding: a lookup, 0 FLOPs.
  tokens = keras.Input((3,))
  e = keras.layers.Embedding(10, 2, name='embedding')(tokens)
  model = keras.Model([image, sequence, tokens], [a, c, d, e])
  report = flops.flops_report(model)
  assert {l.name: l.dense for l in report.layers} == {
      'depthwise': 2592, 'separable': 832, 'transposed': 384,
      'shared': 2 * 2 * 4 * 4 * 5}
  assert report.dense == report.sparse == 2592 + 832 + 384 + 320


def test_a_nested_model_and_a_tfmot_mask_are_counted():
  inner_in = keras.Input((4,))
  inner = keras.Model(inner_in, keras.layers.Dense(2, name='inner_fc')(inner_in),
                      name='inner')
  inputs = keras.Input((4,))
  pruned = tfmot.sparsity.keras.prune_low_magnitude(
      keras.layers.Dense(4, name='pruned'),
      pruning_schedule=tfmot.sparsity.keras.ConstantSparsity(0.5, 0))
  model = keras.Model(inputs, inner(pruned(inputs)))
  (_, mask, _), = model.layers[1].pruning_vars
  mask.assign(np.array([[1, 0, 0, 0]] * 4, np.float32))  # 4 of 16 active.
  report = flops.flops_report(model)
  # pruned: 16 entries -> 32 FLOPs, 4 active -> 8; inner_fc: 8 entries -> 16.
  assert [(l.name, l.dense, l.sparse) for l in report.layers] == [
      ('pruned', 32, 8), ('inner_fc', 16, 16)]


def test_training_flops_formulas_by_hand():
  f_s, f_d = 702, 2520
  assert flops.dense_training_flops(f_d) == 7560
  assert flops.sparse_training_flops(f_s) == 2106
  # RigL, P = 100: (3*702*100 + 2*702 + 2520) / 101 = 214524 / 101 = 2124.
  assert flops.rigl_training_flops(f_s, f_d, 100) == pytest.approx(2124)
  assert flops.rigl_training_flops(f_s, f_d, math.inf) == 2106
  assert flops.snfs_training_flops(f_s, f_d) == 2 * 702 + 2520
  # Gradual pruning of layers worth 2424 dense FLOPs over 4 steps at
  # sparsities 0, 0.5, 0.75, 0.75 (mean 0.5): 3 * (2520 - 0.5 * 2424).
  assert flops.gradual_pruning_training_flops(
      f_d, 2424, [0.0, 0.5, 0.75, 0.75]) == pytest.approx(3 * 1308)


def test_rules_default_to_three_sparse_forward_passes():
  report = flops.flops_report(conv_dense())
  for rule in (tf_dsr.rules.make('static'),
               tf_dsr.rules.make('dsr', target_pruned=10),
               tf_dsr.rules.make('set', drop_fraction=0.3)):
    assert rule.training_flops(702, 2520, 100) == 2106
    assert report.training_multiplier(rule, 100) == pytest.approx(2106 / 7560)
  assert report.training_multiplier() == pytest.approx(702 / 2520)


def test_sparsity_report_carries_the_flops():
  report = tf_dsr.sparsity_report(conv_dense())
  assert (report.flops.dense, report.flops.sparse) == (2520, 702)
  assert 'inference FLOPs' in str(report)
  assert 'total' in str(report.flops)


def test_a_model_without_a_graph_is_refused():
  class Sub(keras.Model):

    def call(self, inputs):
      return inputs

  with pytest.raises(ValueError, match="`model` 'sub'.*no graph"):
    flops.flops_report(Sub(name='sub'))
  with pytest.raises(ValueError, match='`model`'):
    flops.flops_report(keras.layers.Dense(2))


def test_unknown_spatial_sizes_are_refused_but_the_sparsity_report_stands():
  inputs = keras.Input((None, None, 2))
  x = keras.layers.Conv2D(4, 3, name='conv')(inputs)
  model = tf_dsr.sparsify(keras.Model(inputs, x), 0.5)
  with pytest.raises(ValueError, match="layer 'conv' has the unknown shape"):
    flops.flops_report(model)
  report = tf_dsr.sparsity_report(model)
  assert report.flops is None and report.sparse_active == 36
