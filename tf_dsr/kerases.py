"""Which Keras an object belongs to, and the few things that differ between them.

tf_dsr runs one engine, one set of rules and one callback on models of two
Kerases: tf_keras (Keras 2, the Keras of tfmot; `tf_dsr._tfmot`) and Keras 3
on the TensorFlow backend (`tf_dsr._keras3`). The public functions pick the
path from the object they are given (`of`); what differs between the paths
is gathered in one `Flavour` each, so the engine never branches on a name:
how a model is nested, which optimizers it takes, how a variable is read as
the `tf.Variable` the compiled program assigns, where the optimizer keeps
its per-weight state, and how Keras's own training step is recognised.
"""

import dataclasses
from typing import Any, Callable, Tuple

from tf_dsr import _keras3
from tf_dsr import _tfmot
from tf_dsr import optimizer_state


@dataclasses.dataclass(frozen=True)
class Flavour:
  """What one Keras does its own way.

  Attributes:
    name: 'tf_keras' or 'keras3'.
    label: how messages name it.
    keras: its Keras module (`layers`, `models.clone_model`, ...).
    model_type: its `Model` class.
    prunable_weights: `layer -> [variable]`, the kernels to make sparse of
      a built layer, or ValueError.
    may_have_prunable_weights: `layer -> bool`, decided before building.
    is_graph_model: `model -> bool`, Sequential or functional.
    other_wrappers: the classes of other masking wrappers a model may hold
      (tfmot's `PruneLowMagnitude`), which tf_dsr leaves alone.
    optimizer_types: the classes its optimizers are instances of.
    tf_variable: maps one of its variables to the `tf.Variable` (possibly
      distributed) the reallocation program reads and assigns.
    slot_variables: `(optimizer, variables) -> [[tf.Variable]]`, the
      optimizer's per-entry state for each of `variables`.
    in_train_function: True while Keras's own train step (`fit`,
      `train_on_batch`) runs or is traced.
    forget_train_function: drops Keras's cached train step of a model.
    has_layer_graph: `model -> bool`, whether the model records its layer
      calls (a functional model, a Sequential one built on an input shape).
    layer_calls: `model -> iterator of (layer, input shape, output shape)`,
      each call of the model's own graph from inputs to outputs (a nested
      model is one call; a call on several tensors lists their shapes).
  """
  name: str
  label: str
  keras: Any
  model_type: type
  prunable_weights: Callable[[Any], list]
  may_have_prunable_weights: Callable[[Any], bool]
  is_graph_model: Callable[[Any], bool]
  other_wrappers: Tuple[type, ...]
  optimizer_types: Tuple[type, ...]
  tf_variable: Callable[[Any], Any]
  slot_variables: Callable[[Any, Any], list]
  in_train_function: Callable[[], bool]
  forget_train_function: Callable[[Any], None]
  has_layer_graph: Callable[[Any], bool]
  layer_calls: Callable[[Any], Any]


_keras = _tfmot.keras

TF_KERAS = Flavour(
    name='tf_keras',
    label='tf_keras (Keras 2)',
    keras=_keras,
    model_type=_keras.Model,
    prunable_weights=_tfmot.prunable_weights,
    may_have_prunable_weights=_tfmot.may_have_prunable_weights,
    is_graph_model=lambda model: isinstance(model, _keras.Sequential) or bool(
        getattr(model, '_is_graph_network', False)),
    other_wrappers=(_tfmot.PruneLowMagnitude,),
    optimizer_types=(_keras.optimizers.Optimizer,
                     _keras.optimizers.legacy.Optimizer,
                     _keras.mixed_precision.LossScaleOptimizer),
    tf_variable=lambda variable: variable,
    slot_variables=optimizer_state.slot_variables,
    in_train_function=_tfmot.in_keras_train_function,
    forget_train_function=_tfmot.forget_train_function,
    has_layer_graph=_tfmot.is_graph_network,
    layer_calls=_tfmot.layer_calls)

KERAS3 = Flavour(
    name='keras3',
    label='Keras 3',
    keras=_keras3.keras,
    model_type=_keras3.keras.Model,
    prunable_weights=_keras3.prunable_weights,
    may_have_prunable_weights=_keras3.may_have_prunable_weights,
    is_graph_model=_keras3.is_graph_network,
    other_wrappers=(),
    optimizer_types=(_keras3.keras.optimizers.Optimizer,),
    tf_variable=_keras3.tf_variable,
    slot_variables=_keras3.slot_variables,
    in_train_function=_keras3.in_keras_train_function,
    forget_train_function=_keras3.forget_train_function,
    has_layer_graph=_keras3.has_layer_graph,
    layer_calls=_keras3.layer_calls)

# Models of either Keras, for walking nested models.
MODEL_TYPES = (TF_KERAS.model_type, KERAS3.model_type)


def of(obj, argument):
  """The `Flavour` of a layer or model.

  Args:
    obj: what the user passed.
    argument: its argument name, for the error message.

  Raises:
    ValueError: when `obj` is a layer of neither Keras, or a Keras 3 layer
      on a backend other than TensorFlow.
  """
  if _tfmot.is_tf_keras_object(obj):
    return TF_KERAS
  if _keras3.is_keras3_object(obj):
    _keras3.check_backend()
    return KERAS3
  raise ValueError(
      f'`{argument}` must be a Keras layer or model (Keras 3, `import keras`, '
      'or tf_keras, `from tf_dsr import keras`), got '
      f'{type(obj).__module__}.{type(obj).__name__}.')
