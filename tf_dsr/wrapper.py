"""DynamicSparseWrapper: the mask variables of one layer and its masked call."""

import abc
import contextlib
import inspect
import zlib

import tensorflow as tf

from tf_dsr import _keras3
from tf_dsr import _tfmot
from tf_dsr import distributions
from tf_dsr import kernel_choice
from tf_dsr import binding as binding_lib
from tf_dsr import masks as masks_lib
from tf_dsr import state as state_lib
from tf_dsr import validation

keras = _tfmot.keras


def validate_sparsity(sparsity, argument='sparsity'):
  """Raises ValueError unless `sparsity` is a (Python or NumPy) number in [0, 1)."""
  validation.check_number(argument, sparsity, low=0, high=1, high_open=True)


def initial_mask(shape, sparsity, seed):
  """A 0/1 mask with exactly `max(1, round((1 - s) * n))` ones, placed at random.

  Args:
    shape: the kernel's shape.
    sparsity: fraction of zeros, in [0, 1).
    seed: int32 `[2]` seed.

  Returns:
    A float32 tensor of `shape`.
  """
  size = int(tf.TensorShape(shape).num_elements())
  num_active = distributions.uniform_count(size, sparsity)
  keys = tf.random.stateless_uniform([size], seed)
  _, chosen = tf.math.top_k(keys, num_active, sorted=False)
  flat = tf.scatter_nd(chosen[:, None], tf.ones([num_active]), [size])
  return tf.reshape(flat, shape)


INIT_SCALES = ('dense', 'sparse_fan_in')


def validate_init_scale(init_scale):
  """Raises ValueError unless `init_scale` is one of `INIT_SCALES`."""
  if not isinstance(init_scale, str) or init_scale not in INIT_SCALES:
    raise ValueError(f'`init_scale` must be one of {list(INIT_SCALES)}, got '
                     f'{init_scale!r}.')


def initial_scale(mask):
  """`1 / sqrt(density)` of a 0/1 mask: the 'sparse_fan_in' factor.

  A kernel drawn for all `n` inputs has variance `v`; with a fraction `d` of
  them kept, each output sums about `d n` terms, so its variance is `d` times
  the dense one. Scaling the kept values by `1 / sqrt(d)` restores it.
  Rules that regrow weights with non-zero values should scale them by the
  same factor when the wrapper's `init_scale` is 'sparse_fan_in' (the rules
  of tf_dsr regrow at 0, so none does yet).

  Args:
    mask: a 0/1 tensor of any dtype.

  Returns:
    A float32 scalar tensor.
  """
  size = float(mask.shape.num_elements())
  active = tf.reduce_sum(tf.cast(mask, tf.float32))
  return tf.math.rsqrt(active / size)


_find_attribute = kernel_choice.find_attribute


@contextlib.contextmanager
def _substituted(substitutions):
  """Temporarily replaces layer attributes; `substitutions` is (owner, name, value)."""
  saved = [(owner, name, vars(owner)[name]) for owner, name, _ in substitutions]
  try:
    for owner, name, value in substitutions:
      object.__setattr__(owner, name, value)
    yield
  finally:
    for owner, name, value in saved:
      object.__setattr__(owner, name, value)


def _check_auxiliary(auxiliary):
  """A copy of a wrapper's `auxiliary` argument, checked."""
  if auxiliary is None:
    return {}
  if not isinstance(auxiliary, dict):
    raise ValueError('`auxiliary` must be None or a dict of kind -> '
                     f"{{'dtype': ..., 'sum_on_read': ...}}, got {auxiliary!r}.")
  checked = {}
  for kind, spec in auxiliary.items():
    if (not isinstance(kind, str) or not kind.isidentifier() or
        not isinstance(spec, dict) or
        set(spec) != {'dtype', 'sum_on_read'} or
        not isinstance(spec['sum_on_read'], bool)):
      raise ValueError(
          f'`auxiliary` entry {kind!r}: {spec!r} must map a name to '
          "{'dtype': <dtype name>, 'sum_on_read': <bool>}.")
    try:
      dtype = tf.as_dtype(spec['dtype']).name
    except TypeError:
      raise ValueError(f'`auxiliary` entry {kind!r}: dtype {spec["dtype"]!r} '
                       'is not a TensorFlow dtype.') from None
    checked[kind] = {'dtype': dtype, 'sum_on_read': spec['sum_on_read']}
  return checked


def check_add_auxiliary(wrapper, kind, dtype, sum_on_read, initial_values,
                        existing):
  """Checks `add_auxiliary`'s arguments for either Keras's wrapper.

  Args:
    wrapper: the wrapper (built, or the error says so).
    kind, dtype, sum_on_read, initial_values: `add_auxiliary`'s arguments.
    existing: the wrapper's kind -> spec of the rule variables it holds.

  Returns:
    The checked spec, `{'dtype': name, 'sum_on_read': bool}`.

  Raises:
    ValueError: naming the argument, when the wrapper is not built, an
      argument is bad, or `kind` exists with another spec.
  """
  if not wrapper.built:
    raise ValueError(f'Layer {wrapper.name!r} is not built yet.')
  try:
    dtype = tf.as_dtype(dtype).name
  except TypeError:
    raise ValueError(f'`dtype` of rule variables {kind!r} must be a '
                     f'TensorFlow dtype, got {dtype!r}.') from None
  if not isinstance(sum_on_read, bool):
    raise ValueError(f'`sum_on_read` must be True or False, got '
                     f'{sum_on_read!r}.')
  spec = _check_auxiliary({kind: {'dtype': dtype,
                                  'sum_on_read': sum_on_read}})[kind]
  if kind in existing and existing[kind] != spec:
    raise ValueError(
        f'Layer {wrapper.name!r} already holds rule variables {kind!r} as '
        f'{existing[kind]}, not {spec}.')
  count = len(wrapper.sparse_weights)
  if initial_values is not None and len(initial_values) != count:
    raise ValueError(
        f'`initial_values` must hold one tensor per sparse kernel of '
        f'{wrapper.name!r} ({count}), got {len(initial_values)}.')
  return spec


def auxiliary_initializer(initial_values, index):
  """The initializer of the `index`-th rule variable: zeros or its value."""
  if initial_values is None:
    return 'zeros'
  return (lambda shape, dtype=None, v=initial_values[index]:
          tf.cast(tf.reshape(v, shape), dtype))


# Attributes of the wrapper that list what it tracks elsewhere.
_DERIVED_ATTRIBUTES = ('_sparse_weights', '_substitution_targets')


def check_kernels(wrapper, kernels):
  """Returns `kernels` (the built layer's sparse kernels) or raises.

  Raises:
    ValueError: when there is none, or `wrapper.sparsity` lists another
      number of values.
  """
  layer = wrapper.layer
  if not kernels:
    raise ValueError(
        f'Layer {layer.name!r} ({type(layer).__name__}) has no prunable '
        'weight once built; there is nothing to make sparse.')
  if isinstance(wrapper.sparsity, list) and len(wrapper.sparsity) != len(
      kernels):
    raise ValueError(
        f'`sparsity` of {wrapper.name!r} lists {len(wrapper.sparsity)} values, '
        f'but layer {layer.name!r} has {len(kernels)} prunable kernel(s).')
  return kernels


def check_kernels_argument(layer, kernels, sparsity):
  """A wrapper's `kernels` argument, checked: a tuple of names or None.

  The names are checked against `layer`'s kernels now if it is built, or
  when the wrapper is built otherwise (before any mask exists).

  Raises:
    ValueError: naming `kernels` and echoing it, also when `sparsity` is a
      list of another length.
  """
  kernels = kernel_choice.check_argument(kernels)
  if (kernels is not None and isinstance(sparsity, (list, tuple)) and
      len(sparsity) != len(kernels)):
    raise ValueError(
        f'`sparsity` {list(sparsity)!r} must list one value per kernel of '
        f'`kernels` {kernels!r}.')
  if kernels is not None and layer.built:
    kernel_choice.choose(layer, kernels, [])
  return kernels


@keras.utils.register_keras_serializable(package='tf_dsr')
class DynamicSparseWrapper(keras.layers.Wrapper, metaclass=abc.ABCMeta):
  """Keeps a layer's prunable kernels sparse under a binary mask that can move.

  Used by Dynamic Sparse Reparameterization (Mostafa & Wang, ICML 2019,
  https://arxiv.org/abs/1902.05967): the forward pass uses `kernel * mask`, so a
  masked weight gets no gradient and stays exactly 0; a `Reallocator` (or the
  `ReallocationCallback`) moves the mask during training. Each mask is a
  non-trainable bool variable, one byte per weight (`tf_dsr.masks`).

  Which kernels: a layer that implements tf_dsr's protocol names its own,
  on either Keras: a `get_prunable_weights()` method that, on the built
  layer, returns the variables to make sparse in a fixed order, each held by
  an attribute of the layer or of a sublayer that its `call` reads (the
  wrapper puts `kernel * mask` there during the call). The method is the one
  tfmot's `PrunableLayer` declares, so such a layer also works with tfmot;
  no base class is needed. Built-in tf_keras layers are looked up in tfmot's
  prune registry (plus DepthwiseConv2D's depthwise kernel, which tfmot does
  not list); built-in Keras 3 layers in `tf_dsr._keras3.SPARSE_KERNELS`
  (the same kernels, and MultiHeadAttention's projections). By default
  SeparableConv1D/2D makes only its pointwise kernel sparse (as tfmot does;
  the depthwise kernel stays dense) and LSTM/GRU/SimpleRNN both `kernel`
  and `recurrent_kernel`. The `kernels` argument chooses otherwise, by
  name among the layer's kernel-like variables (rank >= 2, not biases):
  `kernels=('depthwise_kernel', 'pointwise_kernel')` makes both kernels
  of a SeparableConv sparse, `kernels=('kernel',)` keeps an LSTM's
  recurrent kernel dense. Each kernel
  starts with exactly `round((1 - sparsity) * n)`
  active entries (at least one), placed uniformly at random from `seed` and
  the layer's name; masked entries of the kernel are set to 0 when built.

  With `init_scale='sparse_fan_in'`, each kernel's initial values are also
  multiplied by `1 / sqrt(density)` (its own density, active / entries), so
  that a sparse layer's outputs start at about the scale of the dense layer's
  (the dense initialiser's variance assumes every input is connected). This
  happens once, when the wrapper is built; weights restored from a checkpoint
  or a saved model replace the built values and are not scaled again.

  Given a Keras 3 layer, the constructor returns the Keras 3 wrapper
  (`tf_dsr.wrapper_keras3.DynamicSparseWrapper`, the same arguments), which
  is registered as a virtual subclass: `isinstance(w, DynamicSparseWrapper)`
  holds for the wrappers of both Kerases.

  Example:
    ```python
    layer = tf_dsr.DynamicSparseWrapper(keras.layers.Conv2D(64, 3), sparsity=0.9)
    both = tf_dsr.DynamicSparseWrapper(
        keras.layers.SeparableConv2D(64, 3), sparsity=0.9,
        kernels=('depthwise_kernel', 'pointwise_kernel'))
    ```

  Args:
    layer: the layer to wrap (tf_keras or Keras 3).
    sparsity: fraction of each kernel's entries that are zero, in [0, 1); or
      a list with one such fraction per sparse kernel, in the order of
      `kernels` if given, else of the layer's prunable weights (what
      `tf_dsr.sparsify` passes for the ER and ERK distributions).
    seed: integer seed of the initial masks.
    init_scale: 'dense' (the default, the paper's: the layer's initialiser
      as it is) or 'sparse_fan_in' (scale each kernel by 1 / sqrt(density)
      when built).
    mask_dtype: 'bool' (the default, 1 byte per weight) or 'float32' (4
      bytes, the layout of earlier versions, which models loaded from their
      saved configs keep); see `tf_dsr.masks`.
    auxiliary: the per-weight variables of a reallocation rule this layer
      carries, `{kind: {'dtype': name, 'sum_on_read': bool}}` (DeepR's
      `sign`, SNFS's `dense_momentum`): one variable of each kind per sparse
      kernel, shaped like it. Rules add them (`add_auxiliary`) and the
      layer's config records them, so a model loaded from any saved format
      has them again. Users need not pass it.
    kernels: None (the default kernels above) or a list or tuple of the
      names of the kernels to make sparse, as the sparse tensors are named
      (`<wrapper>/<name>`): the attribute that holds the kernel, such as
      'kernel', 'recurrent_kernel', 'depthwise_kernel' or
      'pointwise_kernel', led by its sublayer where needed ('query/kernel').
      A name the built layer lacks raises a ValueError listing its
      kernel-like variables, before any mask is made. The wrapper's config
      records it (only when given), so saved files and clones keep it.
    **kwargs: passed to `keras.layers.Wrapper` (for example `name`).
  """

  def __new__(cls, *args, **kwargs):
    layer = args[0] if args else kwargs.get('layer')
    if cls is DynamicSparseWrapper and _keras3.is_keras3_object(layer):
      # The module imports this one, so it is imported here.
      from tf_dsr import wrapper_keras3  # pylint: disable=g-import-not-at-top
      # Not an instance of `cls`, so Python does not call `__init__` on it.
      return wrapper_keras3.DynamicSparseWrapper(*args, **kwargs)
    return super().__new__(cls, *args, **kwargs)

  def __init__(self, layer, sparsity, seed=0, init_scale='dense',
               mask_dtype=masks_lib.DTYPE.name, auxiliary=None, kernels=None,
               **kwargs):
    if not _tfmot.is_tf_keras_object(layer):
      raise ValueError(_tfmot.foreign_keras_message(layer, 'layer'))
    if isinstance(layer, (DynamicSparseWrapper, _tfmot.PruneLowMagnitude)):
      raise ValueError(
          f'`layer` {layer.name!r} is already wrapped by {type(layer).__name__}; '
          'a kernel can have only one mask. Wrap the inner layer once.')
    if isinstance(layer, keras.Model):
      raise ValueError(
          f'`layer` must be a single layer, got the model {layer.name!r}; use '
          '`tf_dsr.sparsify(model, ...)` to wrap the layers of a model.')
    if isinstance(layer, _tfmot.KERNELS_CREATED_ON_CALL):
      raise ValueError(
          f'`layer` {layer.name!r} ({type(layer).__name__}) creates its kernels '
          'only when first called, not when built, so a model holding it '
          'wrapped could not be loaded from a saved config. tf_dsr does not '
          'wrap it; keep it dense (`tf_dsr.sparsify(..., '
          f'exclude=[{layer.name!r}])`).')
    if not _tfmot.may_have_prunable_weights(layer):
      raise ValueError(
          f'`layer` {layer.name!r} ({type(layer).__name__}) has no prunable kernel '
          'in tfmot\'s prune registry and does not implement '
          '`get_prunable_weights`; there is nothing to make sparse.')
    if isinstance(sparsity, (list, tuple)):
      if not sparsity:
        raise ValueError('`sparsity` must be a number or a non-empty list of '
                         f'numbers, got {sparsity!r}.')
      for value in sparsity:
        validate_sparsity(value)
    else:
      validate_sparsity(sparsity)
    seed = validation.check_int('seed', seed)
    validate_init_scale(init_scale)
    masks_lib.validate_dtype(mask_dtype)
    auxiliary = _check_auxiliary(auxiliary)
    kernels = check_kernels_argument(layer, kernels, sparsity)
    kwargs.setdefault('name', f'dynamic_sparse_{layer.name}')
    # Mask name -> its `masks.CheckpointValue` (None until the variable
    # exists), what TensorFlow checkpoints save and restore for it. Set
    # first: Keras' tracking consults it from `super().__init__` on.
    object.__setattr__(self, '_checkpoint_values', {})
    super().__init__(layer, **kwargs)
    self.sparsity = ([float(v) for v in sparsity]
                     if isinstance(sparsity, (list, tuple)) else float(sparsity))
    self.seed = seed
    self.init_scale = init_scale
    self.mask_dtype = mask_dtype
    self.auxiliary = auxiliary
    # A plain tuple, outside Keras' tracking (which would wrap it).
    object.__setattr__(self, '_kernels', kernels)
    self._auxiliary_weights = {}
    self._sparse_weights = []
    self._substitution_targets = []
    self._state_variables = None
    call_parameters = inspect.signature(layer.call).parameters
    self._call_takes_training = 'training' in call_parameters
    # A Keras mask (padding, from an Embedding with `mask_zero=True`, say)
    # reaches the layer when its call takes one, and leaves the wrapper as
    # it leaves the layer.
    self._call_takes_mask = 'mask' in call_parameters
    self.supports_masking = layer.supports_masking
    # Shared by the wrappers of one model (`tf_dsr.binding`): who moves the
    # masks. Training a wrapper that nothing moves is an error.
    object.__setattr__(self, '_binding', None)
    # Set by a `tf_dsr.gradients.GradientRecorder` (rules that grow by
    # gradient): (recorder, one variable per kernel). Held in a plain tuple
    # outside Keras' tracking, so it adds no weights to the layer.
    object.__setattr__(self, '_gradient_recorder', None)
    # As tfmot does: let the first layer of a Sequential model keep its input
    # shape when wrapped.
    if not hasattr(self, '_batch_input_shape') and hasattr(
        layer, '_batch_input_shape'):
      self._batch_input_shape = layer._batch_input_shape  # pylint: disable=protected-access

  def build(self, input_shape):
    super().build(input_shape)
    kernels = check_kernels(self, kernel_choice.choose(
        self.layer, self._kernels, _tfmot.prunable_weights(self.layer)))
    self._state_variables = state_lib.add_variables(self)
    layer_key = zlib.crc32(self.layer.name.encode('utf-8')) & 0x7FFFFFFF
    for index, kernel in enumerate(kernels):
      dtype = getattr(kernel, 'true_dtype', kernel.dtype)
      seed = tf.constant([self.seed, layer_key + index], tf.int64)
      attribute = _find_attribute(self.layer, kernel)
      sparsity = (self.sparsity[index] if isinstance(self.sparsity, list)
                  else self.sparsity)
      name = f'{attribute[1].lstrip("_")}_mask'
      if tf.as_dtype(self.mask_dtype) != masks_lib.CHECKPOINT_DTYPE:
        self._checkpoint_values.setdefault(name, None)
      mask = self.add_weight(
          name=name,
          shape=kernel.shape,
          dtype=self.mask_dtype,
          initializer=lambda shape, dtype=None, seed=seed, s=sparsity: tf.cast(
              initial_mask(shape, s, seed), dtype),
          trainable=False,
          experimental_autocast=False)
      with tf.init_scope():
        # `numpy()` reads the stored (float32) value. Under a mixed-precision
        # policy Keras builds layers inside its autocast scope, where reading
        # `kernel` as a tensor gives its float16/bfloat16 cast, which would
        # round every initial weight to 16 bits.
        value = tf.convert_to_tensor(kernel.numpy(), dtype) * tf.cast(
            mask, dtype)
        if self.init_scale == 'sparse_fan_in':
          value *= tf.cast(initial_scale(mask), dtype)
        kernel.assign(value)
      self._sparse_weights.append((kernel, mask))
      self._substitution_targets.append(attribute)
    for kind, spec in list(self.auxiliary.items()):
      self._add_auxiliary_weights(kind, spec, None)
    # tf_keras tracks the kernels held in `_sparse_weights` as this layer's
    # own weights only when something first reads its weights (`fit` does),
    # while loading a `.keras` / `.weights.h5` file always counts them. Track
    # them now, so a model saved before that loads too.
    self._update_trackables()

  @property
  def sparse_weights(self):
    """List of `(kernel, mask)` variable pairs, one per sparse kernel."""
    return list(self._sparse_weights)

  @property
  def sparse_names(self):
    """One name per sparse kernel, `<wrapper>/<kernel>`, unique in the model.

    The kernel part is the attribute that holds the kernel (`kernel` for a
    Dense or Conv layer, `kernel` and `recurrent_kernel` for an LSTM), led
    by the sublayer that owns it when that is needed to tell this layer's
    kernels apart (`first/kernel`, `second/kernel`). Stats, the sparsity
    report and TensorBoard use these names.
    """
    return [f'{self.name}/{tail}' for tail in kernel_choice.names(
        self.layer, self._substitution_targets)]

  @property
  def kernels(self):
    """The `kernels` argument: a tuple of kernel names, or None (the default)."""
    return self._kernels

  @property
  def state_variables(self):
    """The DSR state variables this wrapper carries (see `tf_dsr.state`)."""
    if self._state_variables is None:
      raise ValueError(f'Layer {self.name!r} is not built yet.')
    return dict(self._state_variables)

  def call(self, inputs, training=None, **kwargs):
    if training is True and not _tfmot.keras_is_saving():
      # Raises unless a callback (in `fit`) or a Reallocator (in a custom
      # loop) moves this model's masks.
      (self._binding or binding_lib.Binding()).check_training(self.name)
    substitutions = []
    recorder = self._gradient_recorder
    for index, ((owner, name), (kernel, mask)) in enumerate(
        zip(self._substitution_targets, self._sparse_weights)):
      value = tf.convert_to_tensor(kernel)
      masked = value * tf.cast(mask, value.dtype)
      if recorder is not None:
        masked = recorder[0].watch(masked, recorder[1][index])
      substitutions.append((owner, name, masked))
    if self._call_takes_training:
      kwargs['training'] = training
    if not self._call_takes_mask:
      # Keras passes the input's mask to a call that takes `**kwargs`.
      kwargs.pop('mask', None)
    with _substituted(substitutions):
      return self.layer.call(inputs, **kwargs)

  def compute_mask(self, inputs, mask=None):
    return self.layer.compute_mask(inputs, mask)

  @property
  def auxiliary_weights(self):
    """kind -> the rule variables of that kind, one per sparse kernel."""
    return {kind: list(values)
            for kind, values in self._auxiliary_weights.items()}

  def add_auxiliary(self, kind, dtype='float32', sum_on_read=False,
                    initial_values=None):
    """Creates one variable of `kind` per sparse kernel (once) and returns them.

    The variables are non-trainable weights of this layer, so every save
    path carries them, and `kind` joins the layer's config, so a model
    rebuilt from it (`load_model`) has them before its weights are loaded.

    Args:
      kind: the name of the rule variable, e.g. 'sign'.
      dtype: its dtype name.
      sum_on_read: whether each replica keeps its own copy, read as the sum
        over replicas (values a train step accumulates, such as a recorded
        gradient); otherwise one value mirrored on every replica.
      initial_values: one tensor per sparse kernel, or None for zeros. A
        value restored from a checkpoint later replaces it.

    Returns:
      The list of variables, one per sparse kernel.

    Raises:
      ValueError: when the layer is not built, or `kind` exists with another
        dtype or synchronisation.
    """
    spec = check_add_auxiliary(self, kind, dtype, sum_on_read, initial_values,
                               self.auxiliary)
    if kind in self._auxiliary_weights:
      return list(self._auxiliary_weights[kind])
    self._add_auxiliary_weights(kind, spec, initial_values)
    self.auxiliary[kind] = spec
    return list(self._auxiliary_weights[kind])

  def _add_auxiliary_weights(self, kind, spec, initial_values):
    variables = []
    for index, ((_, name), (kernel, _)) in enumerate(
        zip(self._substitution_targets, self._sparse_weights)):
      initializer = auxiliary_initializer(initial_values, index)
      sync = ({'synchronization': tf.VariableSynchronization.ON_READ,
               'aggregation': tf.VariableAggregation.SUM}
              if spec['sum_on_read'] else {})
      variables.append(self.add_weight(
          name=f'{name.lstrip("_")}_{kind}', shape=kernel.shape,
          dtype=spec['dtype'], initializer=initializer, trainable=False,
          experimental_autocast=False, **sync))
    self._auxiliary_weights[kind] = variables

  def load_own_variables(self, store):
    """Loads the weights of the `.keras` / `.weights.h5` formats.

    Raises:
      ValueError: when the file holds rule variables this layer does not
        have yet, with what to do.
    """
    self._update_trackables()
    extra = len(store.keys()) - len(self._trainable_weights +
                                    self._non_trainable_weights)
    if extra > 0 and len(self._sparse_weights) and (
        extra % len(self._sparse_weights) == 0):
      raise ValueError(
          f'The file holds {extra} more variables for layer {self.name!r} '
          'than it has: the per-weight variables of a reallocation rule '
          '(DeepR\'s `sign`, SNFS\'s `dense_momentum`) that this model does '
          'not have yet. Attach the rule before loading the weights: '
          '`callback.set_model(model)` with the `tf_dsr.ReallocationCallback` '
          'you will pass to `fit` (or make the `tf_dsr.Reallocator`), then '
          '`model.load_weights(path)`; `keras.models.load_model(path)` of a '
          'whole model needs nothing.')
    super().load_own_variables(store)

  # TensorFlow checkpoints: each bool mask is saved and restored through
  # its `masks.CheckpointValue` (float32 in the file, as earlier versions
  # wrote). The hooks below put it where tracking would put the mask
  # variable: among the children that checkpoints save and look up by name,
  # and in a restore deferred until the wrapper is built.
  def _checkpoint_value(self, name, variable):
    value = self._checkpoint_values.get(name)
    if value is None:
      value = masks_lib.CheckpointValue(variable)
      self._checkpoint_values[name] = value
    return value

  def _trackable_children(self, save_type='checkpoint', **kwargs):
    children = super()._trackable_children(save_type, **kwargs)
    # A SavedModel stores the mask variables as they are, and loading one
    # restores them through these children too.
    if (not self._checkpoint_values or save_type != 'checkpoint' or
        masks_lib.in_saved_model_load()):
      return children
    # These lists repeat variables and layers saved under their own names; a
    # mask must be saved only through its `masks.CheckpointValue`.
    for name in _DERIVED_ATTRIBUTES:
      children.pop(name, None)
    for name in self._checkpoint_values:
      if name in children:
        children[name] = self._checkpoint_value(name, children[name])
    return children

  def _preload_simple_restoration(self, name):
    # No restore-on-create for a mask: the checkpoint's float32 value cannot
    # initialise the variable. It is restored once tracked (below).
    if name in self._checkpoint_values:
      return None
    return super()._preload_simple_restoration(name)

  def _handle_deferred_dependencies(self, name, trackable):
    if name in self._checkpoint_values:
      trackable = self._checkpoint_value(name, trackable)
    super()._handle_deferred_dependencies(name, trackable)

  def _attach_gradient_recorder(self, recorder, variables):
    """Records this layer's dense kernel gradients (see `tf_dsr.gradients`)."""
    object.__setattr__(self, '_gradient_recorder', (recorder, list(variables)))

  def compute_output_shape(self, input_shape):
    return self.layer.compute_output_shape(input_shape)

  def get_config(self):
    config = super().get_config()
    config.update({'sparsity': self.sparsity, 'seed': self.seed,
                   'init_scale': self.init_scale,
                   'mask_dtype': self.mask_dtype})
    if self._kernels is not None:  # Default configs stay as they were.
      config['kernels'] = list(self._kernels)
    if self.auxiliary:
      config['auxiliary'] = {kind: dict(spec)
                             for kind, spec in self.auxiliary.items()}
    return config

  @classmethod
  def from_config(cls, config, custom_objects=None):
    config = dict(config)
    # Configs saved before `mask_dtype` existed come with float32 masks.
    config.setdefault('mask_dtype', masks_lib.CHECKPOINT_DTYPE.name)
    layer = keras.layers.deserialize(
        config.pop('layer'), custom_objects=custom_objects)
    return cls(layer, **config)
