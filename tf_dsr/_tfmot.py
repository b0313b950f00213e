"""The one module that imports tfmot internals and its Keras handle.

tfmot's pruning API runs on tf_keras (Keras 2). tf_dsr's tf_keras path builds
on the same handle, re-exported as `tf_dsr.keras`, so that models, tfmot's
wrappers and tf_dsr's wrappers all share one Keras. Every other module of that
path imports Keras from here.

Importing tfmot has a process-wide side effect that tf_dsr must not pass on to
its users: tfmot's `compat` module sets `os.environ['TF_USE_LEGACY_KERAS'] =
'1'` and then reads `tf.keras`, which makes TensorFlow's lazy `tf.keras`
loader resolve to tf_keras for the rest of the process, so a Keras 3 user
who imported tf_dsr would find `tf.keras` turned into Keras 2.
`_import_tfmot` imports tfmot with `tf.keras` pointing at tf_keras for the
duration of the import (tfmot then takes tf_keras as its handle, as it does
under `TF_USE_LEGACY_KERAS=1`) and puts back both the environment variable
and the `tf.keras` entry exactly as they were, so TensorFlow's loader is
never touched. This was preferred to importing tfmot lazily, on the first
tf_keras object: the tf_keras path defines its classes (the wrapper, the
callback) on this handle at import time, so a lazy import would have to
restructure every module of that path, and it would still have to undo the
same side effect whenever it did import tfmot, for a process that uses both
Kerases. The cost is tfmot's import time (about 0.6 s) for every user.
"""

import importlib
import os
import sys

import tensorflow as tf
from tensorflow.python.framework import ops  # pylint: disable=g-direct-tensorflow-import

_LEGACY_KERAS_VARIABLE = 'TF_USE_LEGACY_KERAS'


def _import_tfmot():
  """Imports tfmot's modules without changing `tf.keras` or the environment.

  Returns:
    `(keras, prunable_layer, prune_registry, pruning_wrapper)`: tfmot's Keras
    handle (tf_keras's `tf.keras` API) and its sparsity modules.
  """
  module_globals = vars(tf)
  had_keras = 'keras' in module_globals
  saved_keras = module_globals.get('keras')
  had_variable = _LEGACY_KERAS_VARIABLE in os.environ
  saved_variable = os.environ.get(_LEGACY_KERAS_VARIABLE)
  # What `tf.keras` is under TF_USE_LEGACY_KERAS=1, which tfmot asks for.
  module_globals['keras'] = importlib.import_module('tf_keras.api._v2.keras')
  try:
    # pylint: disable=g-import-not-at-top
    from tensorflow_model_optimization.python.core.keras.compat import keras as handle
    from tensorflow_model_optimization.python.core.sparsity.keras import prunable_layer as prunable
    from tensorflow_model_optimization.python.core.sparsity.keras import prune_registry as registry
    from tensorflow_model_optimization.python.core.sparsity.keras import pruning_wrapper as wrapper
    # pylint: enable=g-import-not-at-top
  finally:
    if had_keras:
      module_globals['keras'] = saved_keras
    else:
      module_globals.pop('keras', None)
    if had_variable:
      os.environ[_LEGACY_KERAS_VARIABLE] = saved_variable
    else:
      os.environ.pop(_LEGACY_KERAS_VARIABLE, None)
  return handle, prunable, registry, wrapper


keras, prunable_layer, prune_registry, pruning_wrapper = _import_tfmot()

PrunableLayer = prunable_layer.PrunableLayer
PruneLowMagnitude = pruning_wrapper.PruneLowMagnitude
PruneRegistry = prune_registry.PruneRegistry

# Layers whose kernel tfmot's registry lists no prunable weight for, but which
# DSR sparsifies: attribute names of the kernels, as in tfmot's registry.
EXTRA_PRUNABLE_WEIGHTS = {
    keras.layers.DepthwiseConv2D: ('depthwise_kernel',),
}
if hasattr(keras.layers, 'DepthwiseConv1D'):
  EXTRA_PRUNABLE_WEIGHTS[keras.layers.DepthwiseConv1D] = ('depthwise_kernel',)


# Layers that tfmot's registry lists but that create their kernels only when
# first called (not in `build`), so a wrapper rebuilt from a config (by
# `keras.models.load_model`) cannot find them, and whose call takes several
# tensors. tf_dsr refuses to wrap them.
KERNELS_CREATED_ON_CALL = (keras.layers.MultiHeadAttention,)


def is_tf_keras_object(obj):
  """True when `obj` is a layer or model of the tf_keras handle."""
  return isinstance(obj, keras.layers.Layer)


def foreign_keras_message(obj, argument):
  """An error message for a layer or model that is not built with tf_keras.

  Args:
    obj: the object passed by the user.
    argument: the name of the argument it was passed as.

  Returns:
    A message saying how to build the model with the right Keras.
  """
  module = type(obj).__module__
  hint = ''
  if module.startswith('keras'):
    hint = (' It comes from the `keras` package (Keras 3), and this class is '
            "tf_dsr's tf_keras wrapper: `tf_dsr.DynamicSparseWrapper(layer)` "
            'itself returns the Keras 3 wrapper for a Keras 3 layer (a subclass '
            'of the tf_keras wrapper does not).')
  return (
      f'`{argument}` must be a tf_keras (Keras 2) layer or model, got '
      f'{type(obj).__module__}.{type(obj).__name__}.{hint} Build the model with '
      '`from tf_dsr import keras` (the tf_keras handle tfmot uses), or set the '
      'environment variable TF_USE_LEGACY_KERAS=1 before importing TensorFlow so '
      'that `tf.keras` is tf_keras.')


def prunable_weights(layer):
  """The weights of `layer` that tfmot would prune, found the way tfmot does.

  A layer that implements tf_dsr's protocol (a `get_prunable_weights`
  method, which tfmot's `PrunableLayer` declares) names its own; a built-in
  layer is looked up
  in tfmot's registry, extended by `EXTRA_PRUNABLE_WEIGHTS`. The layer must be
  built.

  Args:
    layer: a built tf_keras layer.

  Returns:
    A list of variables (possibly empty).

  Raises:
    ValueError: when neither the protocol nor the registry knows the layer.
  """
  if isinstance(layer, PrunableLayer) or hasattr(layer, 'get_prunable_weights'):
    return list(layer.get_prunable_weights())
  if type(layer) in EXTRA_PRUNABLE_WEIGHTS:
    return [getattr(layer, name) for name in EXTRA_PRUNABLE_WEIGHTS[type(layer)]]
  if PruneRegistry.supports(layer):
    # make_prunable attaches get_prunable_weights to the layer, as tfmot does.
    return list(PruneRegistry.make_prunable(layer).get_prunable_weights())
  raise ValueError(
      f'Layer {layer.name!r} of type {type(layer).__name__} is neither in tfmot\'s '
      'prune registry nor a `tfmot.sparsity.keras.PrunableLayer` (or a layer with a '
      '`get_prunable_weights` method), so tf_dsr cannot tell which kernel to make '
      'sparse.')


def may_have_prunable_weights(layer):
  """True when the registry or protocol lists a kernel for `layer`'s class.

  Decided without building the layer, for `sparsify` to choose what to wrap.
  """
  if isinstance(layer, PrunableLayer) or hasattr(layer, 'get_prunable_weights'):
    return True
  if type(layer) in EXTRA_PRUNABLE_WEIGHTS:
    return True
  if not PruneRegistry.supports(layer):
    return False
  if PruneRegistry._is_rnn_layer(layer):  # pylint: disable=protected-access
    return True
  return bool(PruneRegistry._LAYERS_WEIGHTS_MAP.get(type(layer)))  # pylint: disable=protected-access


def is_graph_network(model):
  """True for a Sequential or functional model with a graph of layer calls."""
  return bool(getattr(model, '_is_graph_network', False))


def layer_calls(model):
  """`(layer, input shapes, output shapes)` of each call in a graph model.

  Only the calls that belong to `model`'s own graph (a layer reused in
  another model has calls there too), from the inputs to the outputs; a
  nested model is one call.
  """
  for depth in sorted(model._nodes_by_depth, reverse=True):  # pylint: disable=protected-access
    for node in model._nodes_by_depth[depth]:  # pylint: disable=protected-access
      if not node.is_input:
        yield node.layer, node.input_shapes, node.output_shapes


# ------------------------------------------------ Keras's own training loop
# The name of the function Keras's `Model.make_train_function` compiles (and,
# with `run_eagerly=True`, calls) for `fit` and `train_on_batch`.
_KERAS_TRAIN_FUNCTION = 'train_function'


@tf.autograph.experimental.do_not_convert
def in_keras_train_function():
  """True inside Keras's train step (`fit`, `train_on_batch`).

  While Keras traces its train step, the graph being built is (or is nested
  in) the function graph of its `train_function`, in every replica's thread;
  when it runs eagerly, `train_function` is on the Python call stack (of the
  calling thread: an eager step of a multi-device `MirroredStrategy` runs its
  replicas in other threads and is not recognised).
  """
  graph = ops.get_default_graph()
  while graph is not None:
    if getattr(graph, 'name', None) == _KERAS_TRAIN_FUNCTION:
      return True
    graph = getattr(graph, 'outer_graph', None)
  frame = sys._getframe(1)  # pylint: disable=protected-access
  while frame is not None:
    code = frame.f_code
    if (code.co_name == _KERAS_TRAIN_FUNCTION and
        'tf_keras' in code.co_filename):
      return True
    frame = frame.f_back
  return False


_base_layer_utils = importlib.import_module(
    keras.__name__.split('.')[0] + '.src.engine.base_layer_utils')


@tf.autograph.experimental.do_not_convert
def keras_is_saving():
  """True while Keras traces a layer's call to save it (SavedModel export).

  Keras traces `call(training=True)` too when it writes a SavedModel; that
  is not training.
  """
  return bool(_base_layer_utils.call_context().saving)


def forget_train_function(model):
  """Drops Keras's cached train step, so the next `fit` traces it again.

  `Model.make_train_function` reuses the step it built for the previous
  `fit` (until `compile`); the wrappers check their driver when the step is
  traced, so it is traced again for every `fit`.
  """
  model.train_function = None
  model.train_tf_function = None
