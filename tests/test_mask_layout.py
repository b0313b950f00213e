"""Masks are bool variables; files written with float32 masks still load.

`tests/data/float32_masks/` was written by `tests/old_layout_files.py` with
tf_dsr's float32-mask layout (commit bd6d234). Every format loads with the
same masks, weights and bit-identical predictions: weights and checkpoints
into today's bool masks; whole saved models (`.keras`, `.h5`, SavedModel),
rebuilt from a config that predates `mask_dtype`, keep their float32 masks.
"""

import os

import numpy as np
import pytest
import tensorflow as tf

import tf_dsr
from tf_dsr import keras
from tf_dsr import masks as masks_lib
from tests import old_layout_files

OLD = os.path.join(os.path.dirname(os.path.abspath(__file__)), 'data',
                   'float32_masks')


def _load_model(name):
  return keras.models.load_model(os.path.join(OLD, name))


def _load_weights(name):
  model = old_layout_files.build()
  model.load_weights(os.path.join(OLD, name))
  return model


def _read_checkpoint(name):
  model = old_layout_files.build()
  tf.train.Checkpoint(model=model).read(
      os.path.join(OLD, name)).assert_existing_objects_matched()
  return model


# format -> (how to load it, the loaded masks' dtype).
LOADERS = {
    'model.keras': (_load_model, tf.float32),
    'model.h5': (_load_model, tf.float32),
    'saved_model': (_load_model, tf.float32),
    'weights.h5': (_load_weights, masks_lib.DTYPE),
    'model.weights.h5': (_load_weights, masks_lib.DTYPE),
    'tf_weights': (_load_weights, masks_lib.DTYPE),
    'checkpoint': (_read_checkpoint, masks_lib.DTYPE),
}


def _masks(model):
  return [m for w in tf_dsr.collect_wrappers(model) for _, m in w.sparse_weights]


@pytest.mark.parametrize('name', sorted(LOADERS))
def test_a_file_with_float32_masks_loads_with_the_same_masks_and_predictions(
    name):
  expected = np.load(os.path.join(OLD, 'expected.npz'))
  load, dtype = LOADERS[name]
  model = load(name)
  masks = _masks(model)
  assert len(masks) == 2
  for i, mask in enumerate(masks):
    assert mask.dtype == dtype, mask.name
    old = expected[f'mask{i}']
    assert old.dtype == np.float32 and 0 < old.sum() < old.size
    np.testing.assert_array_equal(mask.numpy(), old.astype(dtype.name))
  weights = model.weights
  assert len(weights) == len([k for k in expected if k.startswith('weight')])
  for i, weight in enumerate(weights):
    np.testing.assert_array_equal(
        weight.numpy(), expected[f'weight{i}'].astype(weight.dtype.name),
        err_msg=weight.name)
  np.testing.assert_array_equal(
      model.predict(old_layout_files.inputs(), verbose=0),
      expected['predictions'])


def test_tensorflow_checkpoints_store_masks_as_float32_and_restore_them_exactly(
    tmp_path):
  model = old_layout_files.build()
  masks = _masks(model)
  masks[0].assign(np.eye(*masks[0].shape, dtype=bool))
  path = tf.train.Checkpoint(model=model).write(str(tmp_path / 'ckpt'))
  dtypes = tf.train.load_checkpoint(path).get_variable_to_dtype_map()
  mask_keys = [k for k in dtypes if 'kernel_mask' in k]
  assert len(mask_keys) == 2
  assert all(dtypes[k] == tf.float32 for k in mask_keys)
  restored = old_layout_files.build()
  tf.train.Checkpoint(model=restored).read(path).assert_consumed()
  for a, b in zip(_masks(model), _masks(restored)):
    assert b.dtype == masks_lib.DTYPE
    np.testing.assert_array_equal(a.numpy(), b.numpy())


def test_a_checkpoint_read_before_the_wrapper_is_built_restores_its_masks(
    tmp_path):
  built = tf_dsr.DynamicSparseWrapper(keras.layers.Dense(3), 0.5, seed=1)
  built.build((None, 4))
  mask = built.sparse_weights[0][1]
  mask.assign(np.array([[1, 0, 0], [0, 1, 0], [0, 0, 1], [1, 1, 1]], bool))
  path = tf.train.Checkpoint(layer=built).write(str(tmp_path / 'ckpt'))
  fresh = tf_dsr.DynamicSparseWrapper(keras.layers.Dense(3), 0.5, seed=2)
  status = tf.train.Checkpoint(layer=fresh).read(path)
  fresh.build((None, 4))  # The restore waits for the variables.
  status.assert_existing_objects_matched()
  np.testing.assert_array_equal(fresh.sparse_weights[0][1].numpy(),
                                mask.numpy())


@pytest.mark.parametrize('dtype', ['float32', 'float16', 'bfloat16'])
def test_the_masked_kernel_and_its_gradient_are_those_of_a_float32_mask(dtype):
  # kernel [[1.5, -2], [3, 0.25]], mask [[1, 0], [0, 1]]:
  # kernel * mask = [[1.5, 0], [0, 0.25]] (exactly, in any float dtype), and
  # d sum(kernel * mask * g) / d kernel = g * mask = [[1, 0], [0, 4]].
  kernel = tf.constant([[1.5, -2.0], [3.0, 0.25]], dtype)
  g = tf.constant([[1.0, 2.0], [3.0, 4.0]], dtype)
  results = {}
  for mask_dtype in (masks_lib.DTYPE, tf.float32):
    mask = tf.cast(tf.constant([[1, 0], [0, 1]]), mask_dtype)
    with tf.GradientTape() as tape:
      tape.watch(kernel)
      masked = kernel * tf.cast(mask, kernel.dtype)
      loss = tf.reduce_sum(masked * g)
    results[mask_dtype] = (masked.numpy(), tape.gradient(loss, kernel).numpy())
  masked, gradient = results[masks_lib.DTYPE]
  np.testing.assert_array_equal(masked.astype(np.float32),
                                [[1.5, 0.0], [0.0, 0.25]])
  np.testing.assert_array_equal(gradient.astype(np.float32),
                                [[1.0, 0.0], [0.0, 4.0]])
  for a, b in zip(results[masks_lib.DTYPE], results[tf.float32]):
    np.testing.assert_array_equal(a, b)


def test_training_holds_9_bytes_per_sparse_weight_12_with_float32_masks():
  # Per float32 weight with SGD momentum: kernel 4 + momentum 4 + mask; the
  # mask is 1 byte (bool), 4 in the float32 layout, none when dense.
  report = tf_dsr.sparsity_report(old_layout_files.build())
  assert report.training_bytes_per_sparse_weight == 9.0
  assert report.dense_training_bytes_per_weight == 8.0
  assert 'training state with SGD momentum: 9 bytes per sparse weight' in str(
      report)
  float32 = tf_dsr.sparsify(keras.Sequential([
      keras.Input((6,)), keras.layers.Dense(4)]), 0.5, mask_dtype='float32')
  report = tf_dsr.sparsity_report(float32)
  assert report.training_bytes_per_sparse_weight == 12.0
