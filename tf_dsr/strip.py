"""strip_dynamic_sparsity: a plain Keras model with the masks baked in."""

import tensorflow as tf

from tf_dsr import _tfmot
from tf_dsr import kerases
from tf_dsr.wrapper import DynamicSparseWrapper

# tf_dsr's wrappers of both Kerases (the Keras 3 class is registered as a
# virtual subclass of `DynamicSparseWrapper`) and tfmot's.
_WRAPPERS = (DynamicSparseWrapper, _tfmot.PruneLowMagnitude)


def _masks_by_kernel(wrapper):
  """Maps id(kernel) -> mask variable for a tf_dsr or tfmot wrapper."""
  if isinstance(wrapper, DynamicSparseWrapper):
    return {id(kernel): mask for kernel, mask in wrapper.sparse_weights}
  return {id(weight): mask for weight, mask, _ in wrapper.pruning_vars}


def _clone_function(keras):
  """The `clone_model` function of `keras` that drops the wrappers."""

  def clone(layer):
    if isinstance(layer, keras.Model):
      return keras.models.clone_model(layer, clone_function=clone)
    if isinstance(layer, _WRAPPERS):
      layer = layer.layer
    return layer.__class__.from_config(layer.get_config())

  return clone


def _copy_weights(source, target, keras):
  """Copies weights from `source` to its clone `target`, applying masks."""
  if isinstance(source, keras.Model):
    for s, t in zip(source.layers, target.layers):
      _copy_weights(s, t, keras)
    return
  masks = {}
  if isinstance(source, _WRAPPERS):
    masks = _masks_by_kernel(source)
    source = source.layer
  values = []
  for weight in source.weights:
    value = tf.convert_to_tensor(weight)
    if id(weight) in masks:
      value = value * tf.cast(tf.convert_to_tensor(masks[id(weight)]),
                              value.dtype)
    values.append(value.numpy())
  target.set_weights(values)


def strip_dynamic_sparsity(model):
  """Returns a plain copy of `model` with every mask applied to its kernel.

  Handles tf_dsr's `DynamicSparseWrapper` and tfmot's `PruneLowMagnitude` alike
  (a model may mix both): each wrapper becomes its inner layer, with the
  masked entries of the kernels exactly 0. The copy shares no variables with
  `model`, which is left unchanged, and has no optimizer.

  Args:
    model: a Sequential or functional model of tf_keras or of Keras 3 (on
      the TensorFlow backend).

  Returns:
    A new model of the same Keras with the same layer names, free of
    wrappers.

  Raises:
    ValueError: if `model` is not a Sequential or functional model.
  """
  flavour = kerases.of(model, 'model')
  if not isinstance(model, flavour.model_type) or not flavour.is_graph_model(
      model):
    raise ValueError(
        f'`model` must be a Sequential or functional {flavour.label} model, '
        f'got {type(model).__name__}.')
  keras = flavour.keras
  stripped = keras.models.clone_model(model,
                                      clone_function=_clone_function(keras))
  _copy_weights(model, stripped, keras)
  return stripped
