"""The one module that imports tfmot internals and its Keras handle.

tfmot's pruning API runs on tf_keras (Keras 2). tf_dsr builds on the same handle,
re-exported as `tf_dsr.keras`, so that models, tfmot's wrappers and tf_dsr's
wrappers all share one Keras. Every other module imports Keras from here.
"""

from tensorflow_model_optimization.python.core.keras.compat import keras
from tensorflow_model_optimization.python.core.sparsity.keras import prunable_layer
from tensorflow_model_optimization.python.core.sparsity.keras import prune_registry
from tensorflow_model_optimization.python.core.sparsity.keras import pruning_wrapper

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
    hint = (' It comes from the `keras` package (Keras 3), which tfmot and tf_dsr'
            ' do not support.')
  return (
      f'`{argument}` must be a tf_keras (Keras 2) layer or model, got '
      f'{type(obj).__module__}.{type(obj).__name__}.{hint} Build the model with '
      '`from tf_dsr import keras` (the tf_keras handle tfmot uses), or set the '
      'environment variable TF_USE_LEGACY_KERAS=1 before importing TensorFlow so '
      'that `tf.keras` is tf_keras.')


def prunable_weights(layer):
  """The weights of `layer` that tfmot would prune, found the way tfmot does.

  A layer that implements the `PrunableLayer` protocol (or has a
  `get_prunable_weights` method) names its own; a built-in layer is looked up
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
