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
`tf_dsr>DynamicSparseAttentionWrapper`) from the same constructor.

Not yet on Keras 3: the per-weight variables of rules (`auxiliary`: DeepR's
signs, SNFS's momentum) and the dense-gradient hook (RigL, SNFS); the engine
refuses those rules for a Keras 3 model.
"""

import inspect
import zlib

import tensorflow as tf

from tf_dsr import _keras3
from tf_dsr import binding as binding_lib
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
  A MultiHeadAttention layer gets `DynamicSparseAttentionWrapper`.

  Args:
    layer: the Keras 3 layer to wrap.
    sparsity: fraction of each kernel's entries that are zero, in [0, 1), or
      one such fraction per sparse kernel.
    seed: integer seed of the initial masks.
    init_scale: 'dense' or 'sparse_fan_in'.
    mask_dtype: 'bool' (the default, 1 byte per weight) or 'float32' (the
      kernel's dtype); see `tf_dsr.masks`.
    auxiliary: must be None or empty (rule variables are not yet supported
      on Keras 3).
    **kwargs: passed to `keras.layers.Wrapper` (for example `name`).
  """

  def __new__(cls, *args, **kwargs):
    layer = args[0] if args else kwargs.get('layer')
    if cls is DynamicSparseWrapper and isinstance(layer,
                                                  _keras3.ATTENTION_LAYERS):
      cls = DynamicSparseAttentionWrapper
    return super().__new__(cls, *args, **kwargs)

  def __init__(self, layer, sparsity, seed=0, init_scale='dense',
               mask_dtype=masks_lib.DTYPE.name, auxiliary=None, **kwargs):
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
    if auxiliary:
      raise ValueError(
          'Rule variables (`auxiliary`, for DeepR and SNFS) are not supported '
          f'on Keras 3 yet, got {auxiliary!r}.')
    sparsity = _check_sparsity(sparsity)
    seed = validation.check_int('seed', seed)
    wrapper_lib.validate_init_scale(init_scale)
    masks_lib.validate_dtype(mask_dtype)
    kwargs.setdefault('name', f'dynamic_sparse_{layer.name}')
    super().__init__(layer, **kwargs)
    self.sparsity = sparsity
    self.seed = seed
    self.init_scale = init_scale
    self.mask_dtype = mask_dtype
    self._sparse_weights = []
    self._substitution_targets = []
    self._state_variables = None
    self._call_takes_training = (
        'training' in inspect.signature(layer.call).parameters)
    # As on the tf_keras path: who moves the masks (`tf_dsr.binding`), and
    # no gradient recorder; plain attributes outside Keras's tracking.
    object.__setattr__(self, '_binding', None)
    object.__setattr__(self, '_gradient_recorder', None)

  def build(self, input_shape=None):
    super().build(input_shape)
    self._add_masks()

  def _add_masks(self):
    """Creates the state and mask variables of the built inner layer."""
    kernels = wrapper_lib.check_kernels(
        self, _keras3.prunable_weights(self.layer))
    self._state_variables = {
        name: self.add_weight(
            name=f'dsr_{name}', shape=(), dtype=tf.as_dtype(dtype).name,
            initializer=keras.initializers.Constant(value), trainable=False,
            autocast=False)
        for name, (dtype, value) in state_lib.VARIABLES.items()}
    layer_key = zlib.crc32(self.layer.name.encode('utf-8')) & 0x7FFFFFFF
    for index, kernel in enumerate(kernels):
      seed = tf.constant([self.seed, layer_key + index], tf.int64)
      owner, attribute = wrapper_lib._find_attribute(self.layer, kernel)  # pylint: disable=protected-access
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

  @property
  def sparse_weights(self):
    """List of `(kernel, mask)` Keras variable pairs, one per sparse kernel."""
    return list(self._sparse_weights)

  # One naming of the sparse kernels for both paths.
  sparse_names = wrapper_lib.DynamicSparseWrapper.sparse_names
  state_variables = wrapper_lib.DynamicSparseWrapper.state_variables

  @property
  def auxiliary(self):
    return {}

  @property
  def auxiliary_weights(self):
    """Rule variables by kind: none on Keras 3 yet."""
    return {}

  def add_auxiliary(self, kind, dtype='float32', sum_on_read=False,
                    initial_values=None):
    del dtype, sum_on_read, initial_values
    raise ValueError(
        f'Rule variables ({kind!r}) are not supported on Keras 3 yet; use '
        "'dsr', 'set' or 'static' with a Keras 3 model.")

  def call(self, inputs, training=None, **kwargs):
    return self._masked_call((inputs,), training, kwargs)

  def _masked_call(self, inputs, training, kwargs):
    """The inner layer's call on `*inputs, **kwargs` with masked kernels."""
    if training is True:
      # Raises unless a callback (in `fit`) or a Reallocator (in a custom
      # loop) moves this model's masks.
      (self._binding or binding_lib.Binding()).check_training(
          self.name, _keras3.in_keras_train_function)
    substitutions = []
    for (owner, name), (kernel, mask) in zip(self._substitution_targets,
                                             self._sparse_weights):
      value = tf.convert_to_tensor(kernel)
      substitutions.append(
          (owner, name, value * tf.cast(tf.convert_to_tensor(mask),
                                        value.dtype)))
    if self._call_takes_training:
      kwargs['training'] = training
    with wrapper_lib._substituted(substitutions):  # pylint: disable=protected-access
      return self.layer.call(*inputs, **kwargs)

  def get_config(self):
    config = super().get_config()
    config.update({'sparsity': self.sparsity, 'seed': self.seed,
                   'init_scale': self.init_scale,
                   'mask_dtype': self.mask_dtype})
    return config


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

  def __init__(self, layer, sparsity, **kwargs):
    super().__init__(layer, sparsity, **kwargs)
    # As the layer: the output keeps the query's Keras mask.
    self.supports_masking = layer.supports_masking

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
