"""sparsify: wrap the prunable layers of a model, layer or list for DSR."""

import math

from tf_dsr import distributions
from tf_dsr import kernel_choice
from tf_dsr import kerases
from tf_dsr import masks
from tf_dsr import validation
from tf_dsr.wrapper import DynamicSparseWrapper
from tf_dsr.wrapper import validate_init_scale
from tf_dsr.wrapper import validate_sparsity


def _all_layer_names(model):
  names = set()
  for layer in model.layers:
    names.add(layer.name)
    if isinstance(layer, DynamicSparseWrapper):
      names.add(layer.layer.name)
    if isinstance(layer, kerases.MODEL_TYPES):
      names |= _all_layer_names(layer)
  return names


def _existing_wrappers(model):
  found = []
  for layer in model.layers:
    if isinstance(layer, DynamicSparseWrapper):
      found.append(layer.name)
    elif isinstance(layer, kerases.MODEL_TYPES):
      found.extend(_existing_wrappers(layer))
  return found


def _graph_layers(model, flavour):
  """The layers of `model` and of the graph models nested in it, in order."""
  for layer in model.layers:
    if isinstance(layer, flavour.model_type) and flavour.is_graph_model(layer):
      yield from _graph_layers(layer, flavour)
    else:
      yield layer


def _kernel_chooser(kernels):
  """`layer -> tuple of kernel names or None` for `sparsify`'s `kernels`.

  Raises:
    ValueError: naming `kernels` and echoing it, unless it is None, a dict
      from layer names or classes to kernel names (or None), or a callable.
  """
  if kernels is None:
    return lambda layer: None
  if callable(kernels) and not isinstance(kernels, type):
    answers = {}  # Called once per layer.

    def chosen(layer):
      if id(layer) not in answers:
        try:
          answers[id(layer)] = kernel_choice.check_argument(kernels(layer))
        except ValueError as error:
          raise ValueError(f'`kernels` {kernels!r} returned a bad value for '
                           f'layer {layer.name!r}: {error}') from None
      return answers[id(layer)]
    return chosen
  if not isinstance(kernels, dict) or not all(
      isinstance(key, (str, type)) for key in kernels):
    raise ValueError(
        '`kernels` must be None, a dict from layer names or layer classes to '
        "kernel names (e.g. {'sep': ('depthwise_kernel', 'pointwise_kernel')}) "
        f'or a callable taking a layer, got {kernels!r}.')
  checked = {}
  for key, names in kernels.items():
    try:
      checked[key] = kernel_choice.check_argument(names)
    except ValueError:
      raise ValueError(
          f'`kernels` entry {key!r}: {names!r} must be None or a non-empty '
          'list or tuple of distinct kernel names.') from None

  def chosen(layer):
    if layer.name in checked:
      return checked[layer.name]
    for cls in type(layer).__mro__:
      if cls in checked:
        return checked[cls]
    return None
  return chosen


def _layer_sparsities(layers, sparsity, distribution, erk_power_scale,
                      sparse_kernels, chosen):
  """`{id(layer): sparsity}` for each of `layers` under the distribution.

  The value is a number for a layer with one sparse kernel and a list (one
  per kernel, in the order of `sparse_kernels(layer)`) otherwise; each
  reproduces that kernel's exact count of `distributions.active_counts` in
  the wrapper's rounding. `sparse_kernels` is called on every built layer
  with chosen kernels (`chosen`), so a wrong `kernels` name raises here,
  before any layer is wrapped and any kernel entry zeroed.
  """
  if distribution == 'uniform':
    for layer in layers:
      if layer.built and chosen(layer) is not None:
        sparse_kernels(layer)
    return {id(layer): sparsity for layer in layers}
  unbuilt = [layer.name for layer in layers if not layer.built]
  if unbuilt:
    raise ValueError(
        f'`distribution` {distribution!r} needs the kernel shapes, but layers '
        f'{unbuilt} are not built; build the model (give it an input shape) '
        'first, or use distribution=\'uniform\'.')
  owners, shapes = [], []
  for layer in layers:
    for kernel in sparse_kernels(layer):
      owners.append(id(layer))
      shapes.append(tuple(kernel.shape))
  counts = distributions.active_counts(shapes, sparsity, distribution,
                                       erk_power_scale)
  found = {}
  for owner, shape, count in zip(owners, shapes, counts):
    found.setdefault(owner, []).append(
        distributions.sparsity_for_count(math.prod(shape), count))
  return {owner: values[0] if len(values) == 1 else values
          for owner, values in found.items()}


def sparsify(to_sparsify, sparsity, exclude=None, seed=0,
             distribution='uniform', erk_power_scale=1.0, init_scale='dense',
             mask_dtype='bool', kernels=None):
  """Wraps every prunable layer in a `DynamicSparseWrapper`, like tfmot's API.

  Mirrors `tfmot.sparsity.keras.prune_low_magnitude`: a Sequential or
  functional model is cloned with its prunable layers wrapped (the layer
  objects themselves are reused, so their masked kernel entries are zeroed in
  place); a single layer is wrapped; in a list, each prunable layer is wrapped
  and the others are returned as they are. Layers already wrapped by tfmot's
  `prune_low_magnitude` are left as they are, so a model may mix both. The
  optimizer is not carried over: compile the returned model.

  `distribution` sets each kernel's own initial sparsity. 'uniform' gives
  every kernel `sparsity`. 'er' (Erdos-Renyi, Mocanu et al. 2018) and 'erk'
  (Erdos-Renyi-Kernel, Evci et al., ICML 2020) give small kernels more
  density and large ones less, with exactly as many active weights in total
  as 'uniform' (see `tf_dsr.distributions`); a kernel whose density would
  exceed 1 is wrapped dense (sparsity 0), so it stays in the sparse set and
  a rule may still move its weights later. They need built layers.

  Example:
    ```python
    model = tf_dsr.sparsify(model, sparsity=0.9, exclude=['stem_conv', 'fc'])
    model = tf_dsr.sparsify(model, sparsity=0.9, distribution='erk',
                            init_scale='sparse_fan_in')
    ```

  `kernels` chooses which kernels of a layer are sparse, where a layer's
  default (see `DynamicSparseWrapper`) is not wanted: SeparableConv1D/2D
  makes only its pointwise kernel sparse by default, an LSTM both its
  kernel and recurrent kernel. It maps layer names or layer classes to the
  wrapper's `kernels` (a name wins over a class; a class also matches its
  subclasses, the nearest one first), or is a callable `layer -> names or
  None`. The per-kernel sparsities of 'er' and 'erk' are computed over the
  chosen kernels.

    ```python
    model = tf_dsr.sparsify(model, 0.9, kernels={
        keras.layers.SeparableConv2D: ('depthwise_kernel', 'pointwise_kernel'),
        'lstm': ('kernel',)})     # its recurrent kernel stays dense
    ```

  The path follows the object: tf_keras objects get tf_keras wrappers (on
  tfmot's registry), Keras 3 objects (on the
  TensorFlow backend) get Keras 3 wrappers (`tf_dsr._keras3` lists their
  layers); on both, a layer with tf_dsr's protocol (`get_prunable_weights`,
  see `DynamicSparseWrapper`) names its own kernels. A list must not mix
  the Kerases.

  Args:
    to_sparsify: a Sequential or functional model, a layer, or a list of
      layers, of tf_keras or of Keras 3.
    sparsity: fraction of each kernel's entries that start at zero, in [0, 1).
    exclude: layer names to keep dense, or a callable taking a layer and
      returning True to keep it dense. Names must exist in the model.
    seed: integer seed of the initial masks.
    distribution: 'uniform', 'er' or 'erk': how the budget of active weights
      (that of `sparsity` in every kernel) is spread over the kernels.
    erk_power_scale: power on the ER/ERK raw densities (1 is the published
      rule; below 1 is closer to uniform); only with 'er' or 'erk'.
    init_scale: 'dense' (the paper's: the layers' initialisers unchanged) or
      'sparse_fan_in' (each kernel's initial values times 1 / sqrt(its
      density)); see `DynamicSparseWrapper`.
    mask_dtype: 'bool' (1 byte per weight) or 'float32' (the masks of
      earlier versions); see `tf_dsr.masks`.
    kernels: None (each layer's default kernels), a dict from layer names
      or layer classes to kernel names (or None for the default), or a
      callable taking a layer and returning kernel names or None; the
      names are a wrapper's `kernels` (see `DynamicSparseWrapper`). Names
      of layers must exist in the model. A kernel name a built layer lacks
      raises before any layer is wrapped.

  Returns:
    The model, layer or list with `DynamicSparseWrapper`s.

  Raises:
    ValueError: on a bad `sparsity`, `distribution`, `erk_power_scale` or
      `init_scale`, unbuilt layers with 'er' or 'erk', an `exclude` or
      `kernels` layer name the model lacks, a kernel name a layer lacks, a
      model that is already sparsified, a subclassed model, a layer with no
      prunable kernel, or an object that is not a layer or model of either
      Keras.
  """
  validate_sparsity(sparsity)
  seed = validation.check_int('seed', seed)
  distributions.validate(distribution, erk_power_scale)
  validate_init_scale(init_scale)
  masks.validate_dtype(mask_dtype)
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

  chosen = _kernel_chooser(kernels)
  sparsities = {}

  def wrap(layer):
    return DynamicSparseWrapper(layer, sparsity=sparsities[id(layer)],
                                seed=seed, init_scale=init_scale,
                                mask_dtype=mask_dtype, kernels=chosen(layer))

  def sparse_kernels(layer):
    return kernel_choice.choose(layer, chosen(layer),
                                flavour.prunable_weights(layer))

  def check_kernel_layer_names(known):
    if not isinstance(kernels, dict):
      return
    missing = sorted(key for key in kernels
                     if isinstance(key, str) and key not in known)
    if missing:
      raise ValueError(
          f'`kernels` names layers that `to_sparsify` does not have: '
          f'{missing}. Its layers are {sorted(known)}.')

  def wants_wrapper(layer):
    keras = flavour.keras
    return (not isinstance(layer, (keras.Model, keras.layers.InputLayer,
                                   DynamicSparseWrapper) +
                           flavour.other_wrappers) and
            flavour.may_have_prunable_weights(layer) and not excluded(layer))

  if isinstance(to_sparsify, list):
    flavours = {kerases.of(item, 'to_sparsify') for item in to_sparsify}
    if len(flavours) > 1:
      raise ValueError(
          '`to_sparsify` mixes layers of tf_keras and of Keras 3; a model '
          'uses one Keras.')
    flavour = flavours.pop() if flavours else kerases.TF_KERAS
    check_kernel_layer_names({layer.name for layer in to_sparsify})
    sparsities.update(_layer_sparsities(
        [layer for layer in to_sparsify if wants_wrapper(layer)], sparsity,
        distribution, erk_power_scale, sparse_kernels, chosen))
    return [wrap(layer) if wants_wrapper(layer) else layer
            for layer in to_sparsify]
  flavour = kerases.of(to_sparsify, 'to_sparsify')
  keras = flavour.keras
  if not isinstance(to_sparsify, keras.Model):
    check_kernel_layer_names({to_sparsify.name})
    sparsities.update(_layer_sparsities(
        [to_sparsify], sparsity, distribution, erk_power_scale, sparse_kernels,
        chosen))
    return wrap(to_sparsify)

  model = to_sparsify
  if not flavour.is_graph_model(model):
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

  check_kernel_layer_names(_all_layer_names(model))
  sparsities.update(_layer_sparsities(
      [layer for layer in _graph_layers(model, flavour)
       if wants_wrapper(layer)],
      sparsity, distribution, erk_power_scale, sparse_kernels, chosen))

  def clone_function(layer):
    if isinstance(layer, keras.Model) and flavour.is_graph_model(layer):
      return keras.models.clone_model(layer, clone_function=clone_function)
    return wrap(layer) if wants_wrapper(layer) else layer

  wrapped = keras.models.clone_model(model, clone_function=clone_function)
  if not any(True for _ in _existing_wrappers(wrapped)):
    raise ValueError(
        f'`to_sparsify` {model.name!r} has no layer with a prunable kernel left '
        'to wrap (check `exclude`).')
  return wrapped
