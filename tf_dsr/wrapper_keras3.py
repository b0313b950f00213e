"""DynamicSparseWrapper on Keras 3: the mask variables of one layer and its masked call.

The Keras 3 (TensorFlow backend) counterpart of `tf_dsr.wrapper`, with the
same constructor, the same properties and the same initial masks (each
kernel's mask is drawn by `tf_dsr.wrapper.initial_mask` from the wrapper's
seed, the layer's name and the kernel's position, as on the tf_keras path).
Users need not name it: `tf_dsr.DynamicSparseWrapper(layer, ...)` builds
this class for a Keras 3 layer, and `isinstance(w,
tf_dsr.DynamicSparseWrapper)` holds for the wrappers of both Kerases. It is
registered with Keras 3's serialization as `tf_dsr>DynamicSparseWrapper`.
A MultiHeadAttention layer, whose call and build take several tensors, gets
the subclass `DynamicSparseAttentionWrapper` (registered as
`tf_dsr>DynamicSparseAttentionWrapper`) from the same constructor, and a
layer whose call takes a Keras mask (an LSTM, say) gets
`DynamicSparseMaskedInputWrapper`, which passes the mask on.

As on the tf_keras path, it carries the per-weight variables of a rule
(`add_auxiliary`: DeepR's `sign`, SNFS's `dense_momentum`), named in its
config so that a model rebuilt from it (`.keras` load, `clone_model`) has
them before its weights load, and its masked call passes each masked kernel
through a `tf_dsr.gradients.GradientRecorder` when one is attached (RigL,
SNFS).
"""

import inspect
import zlib

import tensorflow as tf

from tf_dsr import _keras3
from tf_dsr import binding as binding_lib
from tf_dsr import kernel_choice
from tf_dsr import masks as masks_lib
from tf_dsr import state as state_lib
from tf_dsr import validation
from tf_dsr import wrapper as wrapper_lib

keras = _keras3.keras


def _check_sparsity(sparsity):
  if isinstance(sparsity, (list, tuple)):
    if not sparsity:
      raise ValueError('`sparsity` must be a number or a non-empty list of '
                       f'numbers, got {sparsity!r}.')
    for value in sparsity:
      wrapper_lib.validate_sparsity(value)
    return [float(v) for v in sparsity]
  wrapper_lib.validate_sparsity(sparsity)
  return float(sparsity)


@keras.saving.register_keras_serializable(package='tf_dsr')
class DynamicSparseWrapper(keras.layers.Wrapper):
  """Keeps a Keras 3 layer's kernels sparse under a binary mask that can move.

  See `tf_dsr.wrapper.DynamicSparseWrapper` for the method (Mostafa & Wang,
  ICML 2019, https://arxiv.org/abs/1902.05967) and the arguments, which are
  the same. The sparse kernels are those of `tf_dsr._keras3.SPARSE_KERNELS`
  for Keras's built-in layers, or, for any layer that implements tf_dsr's
  protocol, what its `get_prunable_weights()` returns once built (variables
  held by attributes its `call` reads; see `tf_dsr.DynamicSparseWrapper`).
  SeparableConv1D/2D's default is its pointwise kernel only (the depthwise
  kernel stays dense); `kernels=('depthwise_kernel', 'pointwise_kernel')`
  makes both sparse, and `kernels=('kernel',)` keeps an LSTM's recurrent
  kernel dense. A MultiHeadAttention layer gets
  `DynamicSparseAttentionWrapper`.

  Args:
    layer: the Keras 3 layer to wrap.
    sparsity: fraction of each kernel's entries that are zero, in [0, 1), or
      one such fraction per sparse kernel.
    seed: integer seed of the initial masks.
    init_scale: 'dense' or 'sparse_fan_in'.
    mask_dtype: 'bool' (the default, 1 byte per weight) or 'float32' (the
      kernel's dtype); see `tf_dsr.masks`.
    auxiliary: the rule variables this layer carries, `{kind: {'dtype':
      name, 'sum_on_read': bool}}`, as for the tf_keras wrapper; rules add
      them (`add_auxiliary`). Users need not pass it.
    kernels: None (the default kernels) or the names of the kernels to make
      sparse, as for the tf_keras wrapper; recorded in the config when given.
    **kwargs: passed to `keras.layers.Wrapper` (for example `name`).
  """

  def __new__(cls, *args, **kwargs):
    layer = args[0] if args else kwargs.get('layer')
    if cls is DynamicSparseWrapper:
      if isinstance(layer, _keras3.ATTENTION_LAYERS):
        cls = DynamicSparseAttentionWrapper
      elif _call_takes_mask(layer):
        cls = DynamicSparseMaskedInputWrapper
    return super().__new__(cls, *args, **kwargs)

  def __init__(self, layer, sparsity, seed=0, init_scale='dense',
               mask_dtype=masks_lib.DTYPE.name, auxiliary=None, kernels=None,
               **kwargs):
    if not _keras3.is_keras3_object(layer):
      raise ValueError(
          f'`layer` must be a Keras 3 layer, got {type(layer).__module__}.'
          f'{type(layer).__name__}.')
    _keras3.check_backend()
    if isinstance(layer, DynamicSparseWrapper):
      raise ValueError(
          f'`layer` {layer.name!r} is already wrapped by DynamicSparseWrapper; '
          'a kernel can have only one mask. Wrap the inner layer once.')
    if isinstance(layer, keras.Model):
      raise ValueError(
          f'`layer` must be a single layer, got the model {layer.name!r}; use '
          '`tf_dsr.sparsify(model, ...)` to wrap the layers of a model.')
    if not _keras3.may_have_prunable_weights(layer):
      raise ValueError(_keras3.unsupported_message(layer))
    auxiliary = wrapper_lib._check_auxiliary(auxiliary)  # pylint: disable=protected-access
    sparsity = _check_sparsity(sparsity)
    seed = validation.check_int('seed', seed)
    wrapper_lib.validate_init_scale(init_scale)
    masks_lib.validate_dtype(mask_dtype)
    kernels = wrapper_lib.check_kernels_argument(layer, kernels, sparsity)
    kwargs.setdefault('name', f'dynamic_sparse_{layer.name}')
    super().__init__(layer, **kwargs)
    self.sparsity = sparsity
    self.seed = seed
    self.init_scale = init_scale
    self.mask_dtype = mask_dtype
    self._auxiliary = auxiliary
    # A plain tuple, outside Keras's tracking (which would wrap it).
    object.__setattr__(self, '_kernels', kernels)
    self._auxiliary_weights = {}
    self._sparse_weights = []
    self._substitution_targets = []
    self._state_variables = None
    self._call_takes_training = (
        'training' in inspect.signature(layer.call).parameters)
    # A Keras mask (padding, from an Embedding with `mask_zero=True`, say)
    # leaves the wrapper as it leaves the layer (and reaches the layer when
    # its call takes one: `DynamicSparseMaskedInputWrapper`).
    self.supports_masking = layer.supports_masking
    # As on the tf_keras path: who moves the masks (`tf_dsr.binding`), and
    # no gradient recorder; plain attributes outside Keras's tracking.
    object.__setattr__(self, '_binding', None)
    object.__setattr__(self, '_gradient_recorder', None)

  def build(self, input_shape=None):
    super().build(input_shape)
    self._add_masks()

  def _add_masks(self):
    """Creates the state and mask variables of the built inner layer."""
    kernels = wrapper_lib.check_kernels(self, kernel_choice.choose(
        self.layer, self._kernels, _keras3.prunable_weights(self.layer)))
    self._state_variables = {
        name: self.add_weight(
            name=f'dsr_{name}', shape=(), dtype=tf.as_dtype(dtype).name,
            initializer=keras.initializers.Constant(value), trainable=False,
            autocast=False)
        for name, (dtype, value) in state_lib.VARIABLES.items()}
    layer_key = zlib.crc32(self.layer.name.encode('utf-8')) & 0x7FFFFFFF
    for index, kernel in enumerate(kernels):
      seed = tf.constant([self.seed, layer_key + index], tf.int64)
      owner, attribute = kernel_choice.find_attribute(self.layer, kernel)
      sparsity = (self.sparsity[index] if isinstance(self.sparsity, list)
                  else self.sparsity)
      mask = self.add_weight(
          name=f'{attribute.lstrip("_")}_mask',
          shape=tuple(kernel.shape),
          dtype=('bool' if self.mask_dtype == 'bool' else kernel.dtype),
          initializer=lambda shape, dtype=None, seed=seed, s=sparsity: tf.cast(
              wrapper_lib.initial_mask(shape, s, seed), dtype),
          trainable=False,
          autocast=False)
      with tf.init_scope():
        stored = _keras3.tf_variable(kernel)
        value = tf.convert_to_tensor(stored.numpy()) * tf.cast(
            _keras3.tf_variable(mask).numpy(), stored.dtype)
        if self.init_scale == 'sparse_fan_in':
          value *= wrapper_lib.initial_scale(
              tf.convert_to_tensor(_keras3.tf_variable(mask).numpy()))
        kernel.assign(value)
      self._sparse_weights.append((kernel, mask))
      self._substitution_targets.append((owner, attribute))
    for kind, spec in list(self._auxiliary.items()):
      self._add_auxiliary_weights(kind, spec, None)

  @property
  def sparse_weights(self):
    """List of `(kernel, mask)` Keras variable pairs, one per sparse kernel."""
    return list(self._sparse_weights)

  # One naming of the sparse kernels for both paths.
  sparse_names = wrapper_lib.DynamicSparseWrapper.sparse_names
  state_variables = wrapper_lib.DynamicSparseWrapper.state_variables
  kernels = wrapper_lib.DynamicSparseWrapper.kernels

  @property
  def auxiliary(self):
    """kind -> `{'dtype': name, 'sum_on_read': bool}` of its rule variables."""
    return self._auxiliary

  @property
  def auxiliary_weights(self):
    """kind -> the rule variables of that kind, one per sparse kernel."""
    return {kind: list(values)
            for kind, values in self._auxiliary_weights.items()}

  def add_auxiliary(self, kind, dtype='float32', sum_on_read=False,
                    initial_values=None):
    """Creates one variable of `kind` per sparse kernel (once) and returns them.

    See `tf_dsr.wrapper.DynamicSparseWrapper.add_auxiliary`: the same
    arguments and contract. The variables are non-trainable weights of this
    layer (so `.keras` and `.weights.h5` files carry them) and `kind` joins
    its config; with `sum_on_read` each is synchronised on read with
    aggregation SUM under `tf.distribute`.

    Raises:
      ValueError: when the layer is not built, or `kind` exists with another
        dtype or synchronisation.
    """
    spec = wrapper_lib.check_add_auxiliary(self, kind, dtype, sum_on_read,
                                           initial_values, self._auxiliary)
    if kind in self._auxiliary_weights:
      return list(self._auxiliary_weights[kind])
    self._add_auxiliary_weights(kind, spec, initial_values)
    self._auxiliary[kind] = spec
    return list(self._auxiliary_weights[kind])

  def _add_auxiliary_weights(self, kind, spec, initial_values):
    variables = []
    for index, ((_, name), (kernel, _)) in enumerate(
        zip(self._substitution_targets, self._sparse_weights)):
      initializer = wrapper_lib.auxiliary_initializer(initial_values, index)
      variables.append(_keras3.add_variable(
          self, f'{name.lstrip("_")}_{kind}', kernel.shape, spec['dtype'],
          initializer, spec['sum_on_read']))
    self._auxiliary_weights[kind] = variables

  def load_own_variables(self, store):
    """Loads the weights of the `.keras` / `.weights.h5` formats.

    Raises:
      ValueError: when the file holds rule variables this layer does not
        have yet, with what to do.
    """
    extra = len(store.keys()) - len(_keras3.own_variables(self))
    if extra > 0 and self._sparse_weights and (
        extra % len(self._sparse_weights) == 0):
      raise ValueError(
          f'The file holds {extra} more variables for layer {self.name!r} '
          'than it has: the per-weight variables of a reallocation rule '
          "(DeepR's `sign`, SNFS's `dense_momentum`) that this model does "
          'not have yet. Attach the rule before loading the weights: '
          '`callback.set_model(model)` with the `tf_dsr.ReallocationCallback` '
          'you will pass to `fit` (or make the `tf_dsr.Reallocator`), then '
          '`model.load_weights(path)`; `keras.models.load_model(path)` of a '
          'whole model needs nothing.')
    super().load_own_variables(store)

  def _attach_gradient_recorder(self, recorder, variables):
    """Records this layer's dense kernel gradients (see `tf_dsr.gradients`)."""
    object.__setattr__(self, '_gradient_recorder', (
        recorder, [_keras3.tf_variable(v) for v in variables]))

  def call(self, inputs, training=None, **kwargs):
    return self._masked_call((inputs,), training, kwargs)

  def compute_mask(self, inputs, previous_mask=None):
    return self.layer.compute_mask(inputs, previous_mask)

  def _masked_call(self, inputs, training, kwargs):
    """The inner layer's call on `*inputs, **kwargs` with masked kernels."""
    if training is True:
      # Raises unless a callback (in `fit`) or a Reallocator (in a custom
      # loop) moves this model's masks.
      (self._binding or binding_lib.Binding()).check_training(
          self.name, _keras3.in_keras_train_function)
    substitutions = []
    recorder = self._gradient_recorder
    for index, ((owner, name), (kernel, mask)) in enumerate(
        zip(self._substitution_targets, self._sparse_weights)):
      value = tf.convert_to_tensor(kernel)
      masked = value * tf.cast(tf.convert_to_tensor(mask), value.dtype)
      if recorder is not None:
        masked = recorder[0].watch(masked, recorder[1][index])
      substitutions.append((owner, name, masked))
    if self._call_takes_training:
      kwargs['training'] = training
    with wrapper_lib._substituted(substitutions):  # pylint: disable=protected-access
      return self.layer.call(*inputs, **kwargs)

  def get_config(self):
    config = super().get_config()
    config.update({'sparsity': self.sparsity, 'seed': self.seed,
                   'init_scale': self.init_scale,
                   'mask_dtype': self.mask_dtype})
    if self._kernels is not None:  # Default configs stay as they were.
      config['kernels'] = list(self._kernels)
    if self._auxiliary:
      config['auxiliary'] = {kind: dict(spec)
                             for kind, spec in self._auxiliary.items()}
    return config


def _call_takes_mask(layer):
  """True when `layer` is a Keras 3 layer whose call takes `mask` (RNNs)."""
  return isinstance(layer, keras.layers.Layer) and (
      'mask' in inspect.signature(layer.call).parameters)


@keras.saving.register_keras_serializable(package='tf_dsr')
class DynamicSparseMaskedInputWrapper(DynamicSparseWrapper):
  """The wrapper of a Keras 3 layer whose call takes a Keras mask.

  `DynamicSparseWrapper(layer, ...)` returns this class for such a layer
  (LSTM, GRU, SimpleRNN, any layer with `mask` in its call); users need not
  name it. Its call takes `mask` too, so Keras passes it the input's mask (a
  padding mask from an Embedding with `mask_zero=True`, say) as it would pass
  it to the layer, and the recurrent layer skips the padded steps. A wrapper
  of a layer without `mask` must not take one: Keras records the mask with
  the call, and a clone that unwraps the layer (`strip_dynamic_sparsity`)
  would pass it to a call that refuses it.
  """

  def call(self, inputs, training=None, mask=None, **kwargs):  # pylint: disable=arguments-differ
    if mask is not None:
      kwargs['mask'] = mask
    return self._masked_call((inputs,), training, kwargs)


@keras.saving.register_keras_serializable(package='tf_dsr')
class DynamicSparseAttentionWrapper(DynamicSparseWrapper):
  """The wrapper of a Keras 3 MultiHeadAttention layer.

  `DynamicSparseWrapper(keras.layers.MultiHeadAttention(...), ...)` returns
  this class; users need not name it. Its kernels are the EinsumDense
  projections (query, key, value, the gate if any, and the output), named
  `<wrapper>/query/kernel`, ..., `<wrapper>/attention_output/kernel`.

  Its call and build take what the attention layer's do (`wrapper(query,
  value, key=None, attention_mask=..., ...)`, `build(query_shape,
  value_shape, key_shape=None)`), so Keras builds the projections with
  every input's shape before the masks are made, and a model loaded from a
  saved file is built the same way from the shapes it recorded.
  """

  def build(self, query_shape, value_shape, key_shape=None):  # pylint: disable=arguments-differ
    if not self.layer.built:
      self.layer.build(query_shape, value_shape, key_shape)
    self._add_masks()

  # The `*_mask` arguments are named as the layer names them, so that Keras
  # passes the Keras masks of `query`, `value` and `key` (from an Embedding
  # with `mask_zero=True`, say) as it does to the layer itself.
  def call(self, query, value, key=None, query_mask=None, value_mask=None,  # pylint: disable=arguments-differ
           key_mask=None, training=None, **kwargs):
    kwargs.update(key=key, query_mask=query_mask, value_mask=value_mask,
                  key_mask=key_mask)
    return self._masked_call((query, value), training, kwargs)


wrapper_lib.DynamicSparseWrapper.register(DynamicSparseWrapper)
