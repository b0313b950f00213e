"""strip_dynamic_sparsity: a plain Keras model with the masks baked in."""

import tensorflow as tf

from tf_dsr import _tfmot
from tf_dsr.wrapper import DynamicSparseWrapper

keras = _tfmot.keras

_WRAPPERS = (DynamicSparseWrapper, _tfmot.PruneLowMagnitude)


def _masks_by_kernel(wrapper):
  """Maps id(kernel) -> mask variable for a tf_dsr or tfmot wrapper."""
  if isinstance(wrapper, DynamicSparseWrapper):
    return {id(kernel): mask for kernel, mask in wrapper.sparse_weights}
  return {id(weight): mask for weight, mask, _ in wrapper.pruning_vars}


def _clone(layer):
  if isinstance(layer, keras.Model):
    return keras.models.clone_model(layer, clone_function=_clone)
  if isinstance(layer, _WRAPPERS):
    layer = layer.layer
  return layer.__class__.from_config(layer.get_config())


def _copy_weights(source, target):
  """Copies weights from `source` to its clone `target`, applying masks."""
  if isinstance(source, keras.Model):
    source_layers = [l for l in source.layers]
    target_layers = [l for l in target.layers]
    for s, t in zip(source_layers, target_layers):
      _copy_weights(s, t)
    return
  masks = {}
  if isinstance(source, _WRAPPERS):
    masks = _masks_by_kernel(source)
    source = source.layer
  values = []
  for weight in source.weights:
    value = tf.convert_to_tensor(weight)
    if id(weight) in masks:
      value = value * tf.cast(masks[id(weight)], value.dtype)
    values.append(value.numpy())
  target.set_weights(values)


def strip_dynamic_sparsity(model):
  """Returns a plain copy of `model` with every mask applied to its kernel.

  Handles tf_dsr's `DynamicSparseWrapper` and tfmot's `PruneLowMagnitude` alike
  (a model may mix both): each wrapper becomes its inner layer, with the
  masked entries of the kernels exactly 0. The copy shares no variables with
  `model`, which is left unchanged, and has no optimizer.

  Args:
    model: a tf_keras Sequential or functional model.

  Returns:
    A new `keras.Model` with the same layer names, free of wrappers.

  Raises:
    ValueError: if `model` is not a tf_keras Sequential or functional model.
  """
  if not _tfmot.is_tf_keras_object(model):
    raise ValueError(_tfmot.foreign_keras_message(model, 'model'))
  if not isinstance(model, keras.Model) or not (
      isinstance(model, keras.Sequential) or model._is_graph_network):  # pylint: disable=protected-access
    raise ValueError(
        f'`model` must be a Sequential or functional tf_keras model, got '
        f'{type(model).__name__}.')
  stripped = keras.models.clone_model(model, clone_function=_clone)
  _copy_weights(model, stripped)
  return stripped
