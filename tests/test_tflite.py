"""to_tflite: stripped sparse models in TFLite, with and without sparse weights.

MobileNet v1 with RigL's sparse policy also converts to the graph XNNPACK's
sparse inference needs (TensorFlow Lite's XNNPACK delegate README, "Sparse
Inference"); this CPU cannot run that path (benchmarks/tflite_sparse.py), so
the graph is checked op by op instead.
"""

import functools
import weakref

import numpy as np
import pytest
import tensorflow as tf

import models
import tf_dsr
from tf_dsr import keras
from tests.helpers import run_tflite
from tests.helpers import sparse_tiny_cnn

_NO_DELEGATE = dict(experimental_op_resolver_type=(
    tf.lite.experimental.OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES))


def _mlp():
  """The issue's 64-100-10 MLP at sparsity 0.9."""
  keras.utils.set_random_seed(0)
  return tf_dsr.sparsify(keras.Sequential([
      keras.layers.Dense(100, activation='relu', input_shape=(64,)),
      keras.layers.Dense(10)]), 0.9)


@functools.lru_cache(maxsize=None)
def _mobilenet():
  """MobileNet v1 at alpha 0.25 on 32x32 images at sparsity 0.9, RigL's
  kernels sparse. Built once per process: no test changes it, and its
  sparse conversion (`_sparse_tflite`) is then made once too."""
  keras.utils.set_random_seed(0)
  model = models.mobilenet_v1(alpha=0.25, num_classes=10,
                              input_shape=(32, 32, 3))
  sparse = set(models.sparse_kernel_layers(model, 'mobilenet_v1'))
  return tf_dsr.sparsify(model, 0.9,
                         exclude=lambda layer: layer.name not in sparse)


_SPARSE_TFLITE = weakref.WeakKeyDictionary()


def _sparse_tflite(model):
  """`tf_dsr.to_tflite(model)`, converted once per model object."""
  if model not in _SPARSE_TFLITE:
    _SPARSE_TFLITE[model] = tf_dsr.to_tflite(model)
  return _SPARSE_TFLITE[model]


@pytest.mark.parametrize('make,shape', [(_mlp, (3, 64)),
                                        (sparse_tiny_cnn, (3, 8, 8, 1)),
                                        (_mobilenet, (2, 32, 32, 3))])
def test_both_conversions_run_in_the_default_interpreter(make, shape):
  model = make()
  x = np.random.default_rng(0).normal(size=shape).astype('float32')
  expected = model(x).numpy()
  dense = tf_dsr.to_tflite(model, sparse=False)
  sparse = _sparse_tflite(model)
  assert len(sparse) < len(dense)
  for content in (dense, sparse):
    np.testing.assert_allclose(run_tflite(content, x), expected, rtol=1e-5,
                               atol=1e-5)
  # A stripped model (no wrappers: `to_tflite` converts it as it is) converts
  # the same way. That branch does not depend on the model, and each
  # MobileNet conversion costs about 8 s (tf_keras's SavedModel export traces
  # every layer), so it is checked on the MLP and the CNN only.
  if make is not _mobilenet:
    stripped = tf_dsr.strip_dynamic_sparsity(model)
    np.testing.assert_allclose(run_tflite(tf_dsr.to_tflite(stripped), x),
                               expected, rtol=1e-5, atol=1e-5)


def test_the_sparse_mlp_file_is_under_a_quarter_of_the_dense_one():
  # Measured: 5,776 bytes vs 30,876 (10% of the weights are active).
  model = _mlp()
  dense, sparse = (tf_dsr.to_tflite(model, sparse=False),
                   tf_dsr.to_tflite(model))
  assert len(sparse) < 0.25 * len(dense)


def test_quantized_sparse_needs_the_interpreter_without_default_delegates():
  model = _mlp()
  x = np.random.default_rng(0).normal(size=(3, 64)).astype('float32')
  expected = model(x).numpy()
  content = tf_dsr.to_tflite(model, quantize=True)
  # Pinned limit of TensorFlow 2.21's XNNPACK delegate (README: Export):
  # when this starts to pass, update the docs of `to_tflite`.
  with pytest.raises(RuntimeError, match='XNNPack.*failed to prepare'):
    run_tflite(content, x)
  # int8 weights: outputs within the quantization error.
  np.testing.assert_allclose(run_tflite(content, x, **_NO_DELEGATE), expected,
                             atol=2e-2 * np.abs(expected).max())
  quantized_dense = tf_dsr.to_tflite(model, sparse=False, quantize=True)
  np.testing.assert_allclose(run_tflite(quantized_dense, x), expected,
                             atol=2e-2 * np.abs(expected).max())


def test_bad_arguments_name_the_argument():
  with pytest.raises(ValueError, match="`sparse` must be True or False, got 'yes'"):
    tf_dsr.to_tflite(_mlp(), sparse='yes')
  with pytest.raises(ValueError, match='`model` must be a tf_keras model'):
    tf_dsr.to_tflite(keras.layers.Dense(3))


def test_sparse_mobilenet_has_the_graph_of_xnnpack_sparse_inference():
  # The README's conditions: weights stored sparse (read through DENSIFY); a
  # 3x3/2 first conv on 3 channels padded 1 on every side; 1x1 convs and
  # 3x3 depthwise convs padded 1 on every side; a spatial MEAN at the end.
  interpreter = tf.lite.Interpreter(
      model_content=_sparse_tflite(_mobilenet()), **_NO_DELEGATE)
  interpreter.allocate_tensors()
  ops = interpreter._get_ops_details()  # pylint: disable=protected-access
  shape = {t['index']: tuple(t['shape'])
           for t in interpreter.get_tensor_details()}
  made_by = {out: op for op in ops for out in op['outputs']}
  names = [op['op_name'] for op in ops]
  assert names[:2] == ['PAD', 'CONV_2D'] and names[-3:] == [
      'MEAN', 'DENSIFY', 'FULLY_CONNECTED']
  assert shape[ops[1]['inputs'][1]] == (8, 3, 3, 3)  # (out, h, w, in)
  for op in ops:
    if op['op_name'] == 'PAD':
      np.testing.assert_array_equal(interpreter.get_tensor(op['inputs'][1]),
                                    [[0, 0], [1, 1], [1, 1], [0, 0]])
    if op['op_name'] == 'CONV_2D' and shape[op['inputs'][1]][1:3] == (1, 1):
      assert made_by[op['inputs'][1]]['op_name'] == 'DENSIFY'
  assert names.count('DENSIFY') == 13 + 1  # the pointwise convs and the fc
  assert names.count('DEPTHWISE_CONV_2D') == 13
