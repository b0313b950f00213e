"""to_tflite: a sparse model as a TensorFlow Lite flatbuffer."""

import tensorflow as tf

from tf_dsr import kerases
from tf_dsr import strip


def _has_wrappers(model):
  for layer in model.layers:
    if isinstance(layer, strip._WRAPPERS):  # pylint: disable=protected-access
      return True
    if isinstance(layer, kerases.MODEL_TYPES) and _has_wrappers(layer):
      return True
  return False


def to_tflite(model, sparse=True, quantize=False):
  """Converts `model` to TFLite, stripping its masks first if it has any.

  `sparse=True` asks the converter to store weights that are mostly zero in
  TFLite's sparse format (`tf.lite.Optimize.EXPERIMENTAL_SPARSITY`), which
  makes the file about as small as the active weights; the numbers are the
  same as without it. The result runs in the default `tf.lite.Interpreter`
  (XNNPACK delegate) with float32 outputs equal to Keras' to rounding.

  Sparse storage is also what XNNPACK's sparse inference (Elsen et al.,
  "Fast Sparse ConvNets", arXiv 1911.09723) looks for: when a delegated op
  reads a weight through one of the DENSIFY ops the converter adds, the
  delegate asks XNNPACK for it, with no option to set. XNNPACK then runs 1x1
  convs with sparse kernels if the graph fits (a symmetric 3x3/2 first conv,
  1x1 and depthwise convs, a final mean; `models.mobilenet_v1` does) and
  the CPU allows: ARM and WebAssembly do, x86 only without AVX. Elsewhere
  the weights are densified once when the interpreter is prepared and the
  sparse file runs as fast as the dense one (`benchmarks/tflite_sparse.py`).

  `quantize=True` adds `tf.lite.Optimize.DEFAULT` (int8 dynamic-range
  weights: smaller still, outputs change by the quantization error). With
  `sparse=True` as well, the default interpreter refuses the model: XNNPACK
  fails to prepare the quantized sparse FULLY_CONNECTED ("failed to delegate
  FULLY_CONNECTED node ... (TfLiteXNNPackDelegate) failed to prepare",
  TensorFlow 2.21); run it with `tf.lite.Interpreter(model_content=...,
  experimental_op_resolver_type=
  tf.lite.experimental.OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES)`.

  Example:
    ```python
    content = tf_dsr.to_tflite(model)   # bytes
    interpreter = tf.lite.Interpreter(model_content=content)
    ```

  Args:
    model: a Sequential or functional model of tf_keras (with tf_dsr or
      tfmot wrappers or without) or of Keras 3 on the TensorFlow backend
      (with tf_dsr wrappers or without; the converter exports it, as
      `TFLiteConverter.from_keras_model` does for Keras 3 models).
    sparse: store mostly-zero weights in TFLite's sparse format.
    quantize: quantize the weights to int8 (dynamic range).

  Returns:
    The TFLite flatbuffer as `bytes`.

  Raises:
    ValueError: if `model` is not a model of either Keras, or `sparse` /
      `quantize` is not a bool.
  """
  for name, value in (('sparse', sparse), ('quantize', quantize)):
    if not isinstance(value, bool):
      raise ValueError(f'`{name}` must be True or False, got {value!r}.')
  flavour = kerases.of(model, 'model')
  if not isinstance(model, flavour.model_type):
    raise ValueError(f'`model` must be a {flavour.name} model, got the layer '
                     f'{model.name!r}.')
  if _has_wrappers(model):
    model = strip.strip_dynamic_sparsity(model)
  converter = tf.lite.TFLiteConverter.from_keras_model(model)
  optimizations = []
  if quantize:
    optimizations.append(tf.lite.Optimize.DEFAULT)
  if sparse:
    optimizations.append(tf.lite.Optimize.EXPERIMENTAL_SPARSITY)
  converter.optimizations = optimizations
  return converter.convert()
