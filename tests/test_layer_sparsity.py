"""Layer-wise sparsity (uniform, ER, ERK) and sparsity-aware initialisation.

The expected counts are worked out by hand in the comments; the ResNet-50
densities are computed in the test from the ERK formula, independently of
`tf_dsr.distributions`.
"""

import math

import numpy as np
import pytest
import tensorflow as tf
import tensorflow_model_optimization as tfmot

import models
import tf_dsr
from tf_dsr import distributions
from tf_dsr import keras

from tests.helpers import tiny_cnn


def _active(model):
  """{inner layer name: [active count per kernel]}."""
  return {w.layer.name: [int(m.numpy().sum()) for _, m in w.sparse_weights]
          for w in tf_dsr.collect_wrappers(model)}


def three_dense():
  # Kernels (4, 4), (4, 8), (8, 8): 16, 32 and 64 entries.
  inputs = keras.Input((4,))
  x = keras.layers.Dense(4, name='d1')(inputs)
  x = keras.layers.Dense(8, name='d2')(x)
  outputs = keras.layers.Dense(8, name='d3')(x)
  return keras.Model(inputs, outputs)


def conv_dense():
  # Kernels (3, 3, 2, 4): 72 entries and (4, 8): 32 entries.
  inputs = keras.Input((6, 6, 2))
  x = keras.layers.Conv2D(4, 3, name='conv')(inputs)
  x = keras.layers.GlobalAveragePooling2D()(x)
  outputs = keras.layers.Dense(8, name='fc')(x)
  return keras.Model(inputs, outputs)


# ------------------------------------------------------ hand-worked counts
def test_erk_three_dense_layers_by_largest_remainder():
  # Raw ERK (= ER for 2-D kernels) densities: 8/16 = 0.5, 12/32 = 0.375,
  # 16/64 = 0.25. Uniform at 0.5: 8 + 16 + 32 = 56 active.
  # eps = 56 / (0.5*16 + 0.375*32 + 0.25*64) = 56 / 36.
  # Targets 12.44, 18.67, 24.89: floors 12 + 18 + 24 = 54, the 2 left go to
  # the largest remainders (.89, then .67): 12, 19, 25.
  model = tf_dsr.sparsify(three_dense(), 0.5, distribution='erk')
  assert _active(model) == {'d1': [12], 'd2': [19], 'd3': [25]}
  model = tf_dsr.sparsify(three_dense(), 0.5, distribution='er')
  assert _active(model) == {'d1': [12], 'd2': [19], 'd3': [25]}


def test_a_layer_over_density_one_becomes_dense_and_the_rest_rescale():
  # Uniform at 0.25: 12 + 24 + 48 = 84. eps = 84 / 36: d1 would get
  # 0.5 * 84 / 36 = 1.17 > 1, so d1 is dense (16) and 68 remain:
  # eps = 68 / (12 + 16); targets 0.375*32*68/28 = 29.14 and
  # 0.25*64*68/28 = 38.86; floors 29 + 38 = 67, the 1 left to d3: 29, 39.
  model = tf_dsr.sparsify(three_dense(), 0.25, distribution='erk')
  assert _active(model) == {'d1': [16], 'd2': [29], 'd3': [39]}
  d1 = model.get_layer('dynamic_sparse_d1')
  assert d1.sparsity == 0.0  # Wrapped dense: it stays in the sparse set.
  assert sum(sum(v) for v in _active(model).values()) == 84


def test_erk_and_er_differ_on_a_conv_kernel():
  # Uniform at 0.5: 36 + 16 = 52.
  # ERK: conv (3+3+2+4)/72 = 1/6, fc 12/32 = 3/8; divisor 12 + 12 = 24;
  #   targets 1/6*72*52/24 = 26 and 3/8*32*52/24 = 26 exactly.
  # ER: conv (2+4)/(2*4) = 0.75 (kernel size ignored), fc 0.375;
  #   divisor 54 + 12 = 66; targets 54*52/66 = 42.55 and 12*52/66 = 9.45:
  #   floors 42 + 9, the 1 left to conv (.55 > .45): 43, 9.
  assert _active(tf_dsr.sparsify(conv_dense(), 0.5, distribution='erk')) == {
      'conv': [26], 'fc': [26]}
  assert _active(tf_dsr.sparsify(conv_dense(), 0.5, distribution='er')) == {
      'conv': [43], 'fc': [9]}


def test_power_scale_zero_is_uniform_and_uniform_is_unchanged():
  # With power 0 every raw density is 1: eps = 56 / 112, all at 0.5.
  assert distributions.active_counts([(4, 4), (4, 8), (8, 8)], 0.5, 'erk',
                                     erk_power_scale=0.0) == [8, 16, 32]
  model = tf_dsr.sparsify(three_dense(), 0.5)
  assert _active(model) == {'d1': [8], 'd2': [16], 'd3': [32]}
  assert model.get_layer('dynamic_sparse_d1').sparsity == 0.5


def test_power_scale_half_by_hand():
  # Raw: sqrt(0.5) = .70711, sqrt(.375) = .61237, sqrt(.25) = .5;
  # divisor 16*.70711 + 32*.61237 + 64*.5 = 11.3137 + 19.5959 + 32 = 62.9096;
  # eps = 56 / 62.9096 = .89016; targets 10.071, 17.443, 28.485:
  # floors 10 + 17 + 28 = 55, 1 left to d3 (.485 > .443 > .071): 10, 17, 29.
  assert distributions.active_counts([(4, 4), (4, 8), (8, 8)], 0.5, 'erk',
                                     erk_power_scale=0.5) == [10, 17, 29]


class _TwoKernels(keras.layers.Layer, tfmot.sparsity.keras.PrunableLayer):
  """x @ a @ b with a of (4, 4) and b of (4, 8): two prunable kernels."""

  def build(self, input_shape):
    self.a = self.add_weight('a', (4, 4))
    self.b = self.add_weight('b', (4, 8))

  def call(self, inputs):
    return inputs @ self.a @ self.b

  def get_prunable_weights(self):
    return [self.a, self.b]


def test_no_kernel_is_left_empty():
  # Budget 1 + 1 = 2 (both uniform counts round up to the minimum 1). ERK
  # targets 2*4/2004 = 0.004 and 2*2000/2004 = 1.996 round to 0 and 2; the
  # empty kernel gets one entry from the other: 1, 1.
  assert distributions.active_counts([(2, 2), (1000, 1000)], 0.9999995,
                                     'erk') == [1, 1]


def test_a_layer_with_two_kernels_gets_one_sparsity_each_and_round_trips():
  # The kernels of three_dense in one layer plus d3: 12, 19, 25 as above.
  inputs = keras.Input((4,))
  x = _TwoKernels(name='two')(inputs)
  outputs = keras.layers.Dense(8, name='d3')(x)
  model = tf_dsr.sparsify(keras.Model(inputs, outputs), 0.5,
                          distribution='erk')
  assert _active(model) == {'two': [12, 19], 'd3': [25]}
  wrapper = model.get_layer('dynamic_sparse_two')
  assert wrapper.sparsity == [(16 - 12) / 16, (32 - 19) / 32]
  assert wrapper.get_config()['sparsity'] == wrapper.sparsity


# ------------------------------------------------------------- bad input
@pytest.mark.parametrize('kwargs, match', [
    ({'distribution': 'ERK'}, r"`distribution` must be one of .*'ERK'"),
    ({'distribution': None}, '`distribution`.*None'),
    ({'distribution': 'erk', 'erk_power_scale': -1.0},
     '`erk_power_scale`.*-1.0'),
    ({'distribution': 'erk', 'erk_power_scale': float('nan')},
     '`erk_power_scale`.*nan'),
    ({'distribution': 'er', 'erk_power_scale': True},
     '`erk_power_scale`.*True'),
    ({'erk_power_scale': 0.5}, "`erk_power_scale` applies.*0.5"),
    ({'init_scale': 'fan_in'}, "`init_scale` must be one of .*'fan_in'"),
])
def test_bad_arguments_name_themselves_and_change_nothing(kwargs, match):
  model = tiny_cnn()
  before = [w.numpy().copy() for w in model.weights]
  with pytest.raises(ValueError, match=match):
    tf_dsr.sparsify(model, 0.5, **kwargs)
  for old, weight in zip(before, model.weights):
    np.testing.assert_array_equal(old, weight.numpy())


def test_wrapper_rejects_a_bad_init_scale_and_a_wrong_sparsity_list():
  with pytest.raises(ValueError, match="`init_scale`.*'sparse'"):
    tf_dsr.DynamicSparseWrapper(keras.layers.Dense(2), 0.5, init_scale='sparse')
  with pytest.raises(ValueError, match=r'`sparsity`.*\[\]'):
    tf_dsr.DynamicSparseWrapper(keras.layers.Dense(2), [])
  with pytest.raises(ValueError, match='`sparsity`.*1.5'):
    tf_dsr.DynamicSparseWrapper(keras.layers.Dense(2), [0.5, 1.5])
  wrapper = tf_dsr.DynamicSparseWrapper(keras.layers.Dense(2), [0.5, 0.5])
  with pytest.raises(ValueError, match='lists 2 values.*1 prunable'):
    wrapper.build((None, 3))


def test_unbuilt_layers_need_uniform():
  with pytest.raises(ValueError, match="`distribution` 'erk' needs.*d"):
    tf_dsr.sparsify([keras.layers.Dense(2, name='d')], 0.5, distribution='erk')


# ------------------------------------------------------------- ResNet-50
def _resnet50_sparse_shapes():
  """The paper's sparse set, written out from the architecture."""
  shapes, c_in = {}, 64
  for stage, (blocks, width) in enumerate(((3, 64), (4, 128), (6, 256),
                                           (3, 512)), start=1):
    for block in range(1, blocks + 1):
      shapes[f'stage{stage}_block{block}_conv1'] = (1, 1, c_in, width)
      shapes[f'stage{stage}_block{block}_conv2'] = (3, 3, width, width)
      shapes[f'stage{stage}_block{block}_conv3'] = (1, 1, width, 4 * width)
      c_in = 4 * width
  shapes['fc'] = (2048, 1000)
  return shapes


def _erk_densities_by_formula(shapes, sparsity):
  """ERK densities from the formula, making dense whatever exceeds 1."""
  size = {k: math.prod(s) for k, s in shapes.items()}
  raw = {k: sum(s) / size[k] for k, s in shapes.items()}
  budget = sum(max(1, round((1 - sparsity) * n)) for n in size.values())
  dense = set()
  while True:
    scale = ((budget - sum(size[k] for k in dense)) /
             sum(raw[k] * size[k] for k in shapes if k not in dense))
    over = {k for k in shapes if k not in dense and scale * raw[k] > 1}
    if not over:
      return {k: 1.0 if k in dense else scale * raw[k] for k in shapes}
    dense |= over


@pytest.fixture(scope='module')
def resnet50():
  return models.resnet50()


def test_resnet50_erk_densities_match_the_formula(resnet50):
  shapes = _resnet50_sparse_shapes()
  names = set(models.sparse_kernel_layers(resnet50, 'resnet50'))
  assert names == set(shapes)
  assert all(tuple(resnet50.get_layer(k).kernel.shape) == s
             for k, s in shapes.items())
  size = {k: math.prod(s) for k, s in shapes.items()}

  expected = _erk_densities_by_formula(shapes, 0.8)
  # At 0.8 the first pass gives every stage-1 1x1 conv and stage2_block1's
  # conv1 a density above 1 (e.g. stage1_block1_conv1: (1+1+64+64)/4096).
  assert {k for k, d in expected.items() if d == 1.0} == {
      'stage1_block1_conv1', 'stage1_block1_conv3', 'stage1_block2_conv1',
      'stage1_block2_conv3', 'stage1_block3_conv1', 'stage1_block3_conv3',
      'stage2_block1_conv1'}
  model = tf_dsr.sparsify(resnet50, 0.8, distribution='erk',
                          exclude=lambda layer: layer.name not in names)
  active = {k: v[0] for k, v in _active(model).items()}
  uniform = sum(max(1, round(0.2 * n)) for n in size.values())
  assert sum(active.values()) == uniform == 4_544_923
  for k in shapes:
    assert abs(active[k] - expected[k] * size[k]) < 1, k

  # 0.9 through the counting function alone (no second 22.7M-weight model):
  # only stage1_block1_conv1 exceeds 1 there.
  expected = _erk_densities_by_formula(shapes, 0.9)
  assert {k for k, d in expected.items() if d == 1.0} == {'stage1_block1_conv1'}
  counts = distributions.active_counts(list(shapes.values()), 0.9, 'erk')
  assert sum(counts) == sum(max(1, round(0.1 * n)) for n in size.values())
  for k, count in zip(shapes, counts):
    assert abs(count - expected[k] * size[k]) < 1, k


# --------------------------------------------------- sparse_fan_in init
def test_sparse_fan_in_scales_the_kept_values_by_one_over_sqrt_density():
  layer = keras.layers.Dense(
      4, kernel_initializer=keras.initializers.Constant(0.3), name='d')
  # 16 entries at sparsity 0.75: 4 active, density 1/4, factor 2: every
  # kept value is 0.3 * 2 = 0.6.
  wrapper = tf_dsr.DynamicSparseWrapper(layer, 0.75, init_scale='sparse_fan_in')
  wrapper.build((None, 4))
  kernel, mask = wrapper.sparse_weights[0]
  mask = mask.numpy()
  assert mask.sum() == 4
  np.testing.assert_allclose(kernel.numpy(), np.where(mask > 0, 0.6, 0.0),
                             rtol=1e-6)
  # The default keeps the dense initialiser's values.
  plain = tf_dsr.DynamicSparseWrapper(
      keras.layers.Dense(4, kernel_initializer=keras.initializers.Constant(0.3)),
      0.75)
  plain.build((None, 4))
  kernel, mask = plain.sparse_weights[0]
  np.testing.assert_allclose(kernel.numpy(), 0.3 * mask.numpy())


def test_sparse_fan_in_uses_each_layers_own_density():
  # ERK at 0.25 on three_dense: d1 dense (factor 1), d2 29/32, d3 39/64.
  keras.utils.set_random_seed(0)
  dense = three_dense()
  values = {l.name: l.kernel.numpy().copy() for l in dense.layers[1:]}
  model = tf_dsr.sparsify(dense, 0.25, distribution='erk',
                          init_scale='sparse_fan_in')
  for name, density in (('d1', 1.0), ('d2', 29 / 32), ('d3', 39 / 64)):
    kernel, mask = model.get_layer(f'dynamic_sparse_{name}').sparse_weights[0]
    np.testing.assert_allclose(
        kernel.numpy(), values[name] * mask.numpy() / math.sqrt(density),
        rtol=1e-6)


def test_a_restored_model_is_not_scaled_twice(tmp_path):
  model = tf_dsr.sparsify(tiny_cnn(), 0.75, exclude=['conv1'],
                          init_scale='sparse_fan_in')
  values = [w.numpy() for w in model.weights]
  assert model.get_layer('dynamic_sparse_fc').get_config()['init_scale'] == (
      'sparse_fan_in')
  # Weights files: a model from the config (built, so scaled at build) then
  # loaded gets exactly the saved values.
  model.save_weights(str(tmp_path / 'ckpt'))
  again = keras.Model.from_config(
      model.get_config(),
      custom_objects={'DynamicSparseWrapper': tf_dsr.DynamicSparseWrapper})
  again.load_weights(str(tmp_path / 'ckpt'))
  assert len(again.weights) == len(values)
  for w, value in zip(again.weights, values):
    np.testing.assert_array_equal(w.numpy(), value)
  # A whole saved model.
  model.save(str(tmp_path / 'model.keras'))
  loaded = keras.models.load_model(str(tmp_path / 'model.keras'))
  assert len(loaded.weights) == len(values)
  for w, value in zip(loaded.weights, values):
    np.testing.assert_array_equal(w.numpy(), value)
