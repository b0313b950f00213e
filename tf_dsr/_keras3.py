"""The one module that imports Keras 3 (the `keras` package) and its internals.

tf_dsr's Keras 3 path runs on the TensorFlow backend. Its wrapper, engine
adapter and optimizer-state lookup import Keras 3 from here, as the tf_keras
path imports tf_keras from `tf_dsr._tfmot`. Importing Keras 3 changes no
process-wide setting: TensorFlow itself imports it, and `tf.keras` resolves
as the user's `TF_USE_LEGACY_KERAS` says.

Private Keras 3 API used here and nowhere else: a layer's variable tracker
(`_tracker`, `_track_variable`), to add the rule variables of a wrapper
that is already built (Keras 3 locks a built layer's state), and the list
of variables Keras saves for a layer itself (`own_variables`).

Which kernels are sparse: the built-in layers of `SPARSE_KERNELS` (the same
kernels as the tf_keras path, where tfmot's registry lists them, and the
projections of MultiHeadAttention), and any layer that names its own
through tf_dsr's protocol, a `get_prunable_weights()` method returning the
variables to make sparse (the method tfmot's `PrunableLayer` declares, so one
custom layer works on both paths and with tfmot). Each variable must be held
by an attribute of the layer or of one of its sublayers that its `call`
reads (`self.kernel`, or `self._kernel` behind a `kernel` property, as Keras
3's own layers do).
"""

import sys

import keras
import tensorflow as tf
from tensorflow.python.framework import ops  # pylint: disable=g-direct-tensorflow-import

_layers = keras.layers

# Layer class -> attribute paths of its default sparse kernels, read from the
# built layer. As on the tf_keras path: SeparableConv's pointwise kernel only
# (its depthwise kernel stays dense), both kernels of a recurrent layer's
# cell. A wrapper's `kernels` argument chooses others (`tf_dsr.kernel_choice`).
SPARSE_KERNELS = {
    _layers.Dense: ('kernel',),
    _layers.EinsumDense: ('kernel',),
    _layers.Conv1D: ('kernel',),
    _layers.Conv2D: ('kernel',),
    _layers.Conv3D: ('kernel',),
    _layers.Conv1DTranspose: ('kernel',),
    _layers.Conv2DTranspose: ('kernel',),
    _layers.Conv3DTranspose: ('kernel',),
    _layers.DepthwiseConv1D: ('kernel',),  # The depthwise kernel.
    _layers.DepthwiseConv2D: ('kernel',),
    _layers.SeparableConv1D: ('pointwise_kernel',),
    _layers.SeparableConv2D: ('pointwise_kernel',),
    _layers.Embedding: ('embeddings',),
    _layers.LSTM: ('cell.kernel', 'cell.recurrent_kernel'),
    _layers.GRU: ('cell.kernel', 'cell.recurrent_kernel'),
    _layers.SimpleRNN: ('cell.kernel', 'cell.recurrent_kernel'),
    # The EinsumDense projections, created by `build(query_shape,
    # value_shape, key_shape)`; the gate (`use_gate=True`) only if present.
    _layers.MultiHeadAttention: ('_query_dense.kernel', '_key_dense.kernel',
                                 '_value_dense.kernel', '_gate_dense?.kernel',
                                 '_output_dense.kernel'),
}

# Layers whose call takes several tensors (query, value, key) and whose
# build takes one shape each: their wrapper has the same call and build
# signatures (`tf_dsr.wrapper_keras3.DynamicSparseAttentionWrapper`), so
# that Keras builds it, and rebuilds it from a saved config, with every
# shape.
ATTENTION_LAYERS = (_layers.MultiHeadAttention,)

PROTOCOL_METHOD = 'get_prunable_weights'


def is_keras3_object(obj):
  """True when `obj` is a Keras 3 layer or model."""
  return isinstance(obj, keras.layers.Layer)


def is_keras3_optimizer(obj):
  return isinstance(obj, keras.optimizers.Optimizer)


def check_backend():
  """Raises ValueError unless Keras 3 runs on the TensorFlow backend."""
  if keras.backend.backend() != 'tensorflow':
    raise ValueError(
        'tf_dsr supports Keras 3 on the TensorFlow backend only, but Keras '
        f'runs on {keras.backend.backend()!r}; set KERAS_BACKEND=tensorflow '
        'before importing Keras.')


def may_have_prunable_weights(layer):
  """True when tf_dsr knows the sparse kernels of `layer`'s class."""
  return (hasattr(layer, PROTOCOL_METHOD) or
          type(layer) in SPARSE_KERNELS)  # pylint: disable=unidiomatic-typecheck


def unsupported_message(layer, argument='layer'):
  """Why `layer` cannot be wrapped, and what to do instead."""
  return (
      f'`{argument}` {layer.name!r} ({type(layer).__name__}) is not a layer '
      'tf_dsr can make sparse on Keras 3. Supported: '
      f'{sorted(cls.__name__ for cls in SPARSE_KERNELS)}, and any layer with a '
      f'`{PROTOCOL_METHOD}()` method returning the kernel variables to make '
      'sparse (each held by an attribute its `call` reads). Keep it dense '
      f'(`tf_dsr.sparsify(..., exclude=[{layer.name!r}])`) or give it that '
      'method.')


def prunable_weights(layer):
  """The variables of a built Keras 3 `layer` to make sparse.

  Raises:
    ValueError: when tf_dsr does not know the layer, or it is quantized.
  """
  if getattr(getattr(layer, 'dtype_policy', None), 'quantization_mode', None):
    raise ValueError(
        f'Layer {layer.name!r} is quantized '
        f'({layer.dtype_policy.quantization_mode}); tf_dsr masks float '
        'kernels only. Sparsify and train before quantizing.')
  if hasattr(layer, PROTOCOL_METHOD):
    return list(getattr(layer, PROTOCOL_METHOD)())
  if type(layer) not in SPARSE_KERNELS:  # pylint: disable=unidiomatic-typecheck
    raise ValueError(unsupported_message(layer))
  found = []
  for path in SPARSE_KERNELS[type(layer)]:
    value = layer
    for part in path.split('.'):
      if part.endswith('?'):  # A sublayer the layer may not have.
        value = getattr(value, part[:-1], None)
        if value is None:
          break
      else:
        value = getattr(value, part)
    else:
      found.append(value)
  return found


def tf_variable(variable):
  """The `tf.Variable` (possibly distributed) that stores a Keras 3 variable.

  Outside a layer's call no autocast scope is active, so `.value` is the
  stored variable itself, in its own dtype.
  """
  if isinstance(variable, keras.Variable):
    return variable.value
  return variable


def is_graph_network(model):
  return isinstance(model, keras.Sequential) or (
      isinstance(model, keras.Model) and
      type(model).__name__ == 'Functional')


def _graph(model):
  """The functional graph of a Keras 3 model, or None (a Sequential model
  without an input shape, a subclassed model)."""
  if isinstance(model, keras.Sequential):
    return getattr(model, '_functional', None)
  return model if is_graph_network(model) else None


def has_layer_graph(model):
  """True when `model` records its layer calls (see `layer_calls`)."""
  return _graph(model) is not None


def layer_calls(model):
  """`(layer, input shapes, output shapes)` of each call in a graph model.

  As `tf_dsr._tfmot.layer_calls` gives them for tf_keras: only the calls of
  `model`'s own graph, from the inputs to the outputs, a nested model as one
  call; a call on one tensor gives its shape, on several a list of shapes.
  """
  graph = _graph(model)
  if graph is None:
    return
  shapes = lambda tensors: (tuple(tensors[0].shape) if len(tensors) == 1 else
                            [tuple(t.shape) for t in tensors])
  for depth in sorted(graph._nodes_by_depth, reverse=True):  # pylint: disable=protected-access
    for node in graph._nodes_by_depth[depth]:  # pylint: disable=protected-access
      if not node.is_input:
        yield (node.operation, shapes(node.input_tensors),
               shapes(node.outputs))


def add_variable(layer, name, shape, dtype, initializer, sum_on_read):
  """A non-trainable variable of `layer`, tracked as its weight.

  Unlike `layer.add_weight`, it may be added to a built layer, and with
  `sum_on_read` it is synchronised on read with aggregation SUM under
  `tf.distribute` (each replica keeps its own copy; reading it in
  cross-replica context gives the sum), which `add_weight` cannot make.

  Args:
    layer: a Keras 3 layer.
    name: the variable's name.
    shape: its shape.
    dtype: its dtype name.
    initializer: `(shape, dtype) -> tensor`, or an initializer name.
    sum_on_read: as above; otherwise the default synchronisation.

  Returns:
    The `keras.Variable`.
  """
  sync = ({'synchronization': 'on_read', 'aggregation': 'sum'}
          if sum_on_read else {})
  with keras.name_scope(layer.name, caller=layer):
    variable = keras.Variable(
        initializer=keras.initializers.get(initializer), shape=tuple(shape),
        dtype=dtype, trainable=False, autocast=False, name=name, **sync)
  tracker = layer._tracker  # pylint: disable=protected-access
  locked = tracker.locked
  tracker.unlock()
  try:
    layer._track_variable(variable)  # pylint: disable=protected-access
  finally:
    if locked:
      tracker.lock()
  return variable


def own_variables(layer):
  """The variables `.keras` and `.weights.h5` files store for `layer` itself.

  In the order `Layer.save_own_variables` writes them (its sublayers'
  variables are stored under their own paths).
  """
  return list(layer._trainable_variables) + list(  # pylint: disable=protected-access
      layer._non_trainable_variables)  # pylint: disable=protected-access


def register_serializable(cls):
  """Registers `cls` with Keras 3's serialization as `<package>>Name`.

  The package is the top-level package of the module that defines `cls`
  ('tf_dsr' for tf_dsr's own classes). Registration is all it does.
  """
  package = cls.__module__.split('.')[0]
  return keras.saving.register_keras_serializable(package=package)(cls)


# ------------------------------------------------------ optimizer state
def slot_variables(optimizer, variables):
  """The per-entry state a Keras 3 optimizer keeps for each of `variables`.

  Keras 3 optimizers keep each kind of state (SGD's `momentums`, Adam's
  `_momentums` and `_velocities`, ...) as a list with one entry per trained
  variable, in the order of the variables they were built with. The lists
  are found (once for all `variables`) as the optimizer's attributes that
  hold only its own variables and have one entry per trained variable; a
  variable's position is found by identity of the stored `tf.Variable`. A
  `LossScaleOptimizer` is looked through.

  Args:
    optimizer: a Keras 3 optimizer, or None.
    variables: Keras 3 variables, or the `tf.Variable`s that store them.

  Returns:
    One list per variable of the stored `tf.Variable`s shaped like it;
    empty when the optimizer keeps none for it or is not built yet.
  """
  variables = list(variables)
  if optimizer is None:
    return [[] for _ in variables]
  while hasattr(optimizer, 'inner_optimizer'):
    optimizer = optimizer.inner_optimizer
  trained = getattr(optimizer, '_trainable_variables', None) or []
  position = {id(tf_variable(v)): i for i, v in enumerate(trained)}
  own = {id(v) for v in optimizer.variables}
  lists = [value for value in vars(optimizer).values()
           if isinstance(value, (list, tuple)) and len(value) == len(trained)
           and value and all(isinstance(v, keras.Variable) and id(v) in own
                             for v in value)]
  found = []
  for variable in variables:
    target = tf_variable(variable)
    index = position.get(id(target))
    found.append([] if index is None else [
        tf_variable(value[index]) for value in lists
        if tuple(value[index].shape) == tuple(target.shape)])
  return found


# ------------------------------------------------ Keras's own training loop
# The functions Keras 3's TensorFlow trainer compiles (or, with
# `run_eagerly=True`, calls) around `train_step` for `fit` and
# `train_on_batch`. They also run `evaluate`'s steps, which call the model
# with `training=False` and so never reach the check that uses this.
_TRAIN_FUNCTIONS = ('one_step_on_data', 'multi_step_on_iterator')


@tf.autograph.experimental.do_not_convert
def in_keras_train_function():
  """True inside Keras 3's compiled or eager step of `fit`/`train_on_batch`."""
  graph = ops.get_default_graph()
  while graph is not None:
    name = getattr(graph, 'name', None) or ''
    if any(name == f or name.startswith(f + '_') for f in _TRAIN_FUNCTIONS):
      return True
    graph = getattr(graph, 'outer_graph', None)
  frame = sys._getframe(1)  # pylint: disable=protected-access
  while frame is not None:
    code = frame.f_code
    if (code.co_name in _TRAIN_FUNCTIONS + ('train_step',) and
        '/keras/src/' in code.co_filename.replace('\\', '/')):
      return True
    frame = frame.f_back
  return False


def forget_train_function(model):
  """Drops Keras 3's cached train step, so the next `fit` traces it again."""
  model.train_function = None
