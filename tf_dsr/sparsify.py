"""sparsify: wrap the prunable layers of a model, layer or list for DSR."""

from tf_dsr import _tfmot
from tf_dsr import validation
from tf_dsr.wrapper import DynamicSparseWrapper
from tf_dsr.wrapper import validate_sparsity

keras = _tfmot.keras


def _all_layer_names(model):
  names = set()
  for layer in model.layers:
    names.add(layer.name)
    if isinstance(layer, DynamicSparseWrapper):
      names.add(layer.layer.name)
    if isinstance(layer, keras.Model):
      names |= _all_layer_names(layer)
  return names


def _existing_wrappers(model):
  found = []
  for layer in model.layers:
    if isinstance(layer, DynamicSparseWrapper):
      found.append(layer.name)
    elif isinstance(layer, keras.Model):
      found.extend(_existing_wrappers(layer))
  return found


def _is_graph_model(model):
  return isinstance(model, keras.Sequential) or model._is_graph_network  # pylint: disable=protected-access


def sparsify(to_sparsify, sparsity, exclude=None, seed=0):
  """Wraps every prunable layer in a `DynamicSparseWrapper`, like tfmot's API.

  Mirrors `tfmot.sparsity.keras.prune_low_magnitude`: a Sequential or
  functional model is cloned with its prunable layers wrapped (the layer
  objects themselves are reused, so their masked kernel entries are zeroed in
  place); a single layer is wrapped; in a list, each prunable layer is wrapped
  and the others are returned as they are. Layers already wrapped by tfmot's
  `prune_low_magnitude` are left as they are, so a model may mix both. The
  optimizer is not carried over: compile the returned model.

  Example:
    ```python
    model = tf_dsr.sparsify(model, sparsity=0.9, exclude=['stem_conv', 'fc'])
    ```

  Args:
    to_sparsify: a tf_keras Sequential or functional model, a layer, or a list
      of layers.
    sparsity: fraction of each kernel's entries that start at zero, in [0, 1).
    exclude: layer names to keep dense, or a callable taking a layer and
      returning True to keep it dense. Names must exist in the model.
    seed: integer seed of the initial masks.

  Returns:
    The model, layer or list with `DynamicSparseWrapper`s.

  Raises:
    ValueError: on a bad `sparsity`, an `exclude` name the model lacks, a
      model that is already sparsified, a subclassed model, a layer with no
      prunable kernel, or an object that is not a tf_keras layer or model.
  """
  validate_sparsity(sparsity)
  seed = validation.check_int('seed', seed)
  if exclude is None:
    excluded = lambda layer: False
  elif callable(exclude):
    excluded = exclude
  elif isinstance(exclude, str):
    raise ValueError(
        f'`exclude` must be a list of layer names or a callable, got the string '
        f'{exclude!r}; write [{exclude!r}].')
  elif isinstance(exclude, (list, tuple, set, frozenset)) and all(
      isinstance(name, str) for name in exclude):
    names = set(exclude)
    excluded = lambda layer: layer.name in names
  else:
    raise ValueError(
        f'`exclude` must be a list of layer names or a callable, got '
        f'{exclude!r}.')

  def wrap(layer):
    return DynamicSparseWrapper(layer, sparsity=sparsity, seed=seed)

  def wants_wrapper(layer):
    return (not isinstance(layer, (keras.Model, keras.layers.InputLayer,
                                   DynamicSparseWrapper,
                                   _tfmot.PruneLowMagnitude)) and
            _tfmot.may_have_prunable_weights(layer) and not excluded(layer))

  if isinstance(to_sparsify, list):
    for item in to_sparsify:
      if not _tfmot.is_tf_keras_object(item):
        raise ValueError(_tfmot.foreign_keras_message(item, 'to_sparsify'))
    return [wrap(layer) if wants_wrapper(layer) else layer
            for layer in to_sparsify]
  if not _tfmot.is_tf_keras_object(to_sparsify):
    raise ValueError(_tfmot.foreign_keras_message(to_sparsify, 'to_sparsify'))
  if not isinstance(to_sparsify, keras.Model):
    return wrap(to_sparsify)

  model = to_sparsify
  if not _is_graph_model(model):
    raise ValueError(
        f'`to_sparsify` {model.name!r} is a subclassed model, which cannot be '
        'cloned; wrap its layers with `tf_dsr.DynamicSparseWrapper` where you '
        'build them.')
  already = _existing_wrappers(model)
  if already:
    raise ValueError(
        f'`to_sparsify` {model.name!r} is already sparsified (layers {already}); '
        'wrapping twice would give a kernel two masks.')
  if exclude is not None and not callable(exclude):
    missing = sorted(set(exclude) - _all_layer_names(model))
    if missing:
      raise ValueError(
          f'`exclude` names layers that {model.name!r} does not have: {missing}. '
          f'Its layers are {sorted(_all_layer_names(model))}.')

  def clone_function(layer):
    if isinstance(layer, keras.Model) and _is_graph_model(layer):
      return keras.models.clone_model(layer, clone_function=clone_function)
    return wrap(layer) if wants_wrapper(layer) else layer

  wrapped = keras.models.clone_model(model, clone_function=clone_function)
  if not any(True for _ in _existing_wrappers(wrapped)):
    raise ValueError(
        f'`to_sparsify` {model.name!r} has no layer with a prunable kernel left '
        'to wrap (check `exclude`).')
  return wrapped
