"""Compact sparse checkpoints: `save_sparse` and `load_sparse`.

A sparse kernel is stored as its active values (row-major order) plus its
mask, as a packed bit mask (`np.packbits`, one bit per entry) or as ascending
flat indices (int32, int64 from 2**31 entries on), whichever is smaller; the
mask variable itself is rebuilt from that. Every other weight of the model,
and the model's DSR state (H, the reallocation count, and the per-tensor
variables some rules keep, such as SNFS's momentum), is stored as is.

File format, version 1: one NumPy `.npz` archive (a zip file, deflated; every
member carries a CRC-32, so a damaged file is detected on read) holding

    manifest        uint8: UTF-8 JSON {"format", "version", "model_name",
                    "keras" ("tf_keras" or "keras3"; absent in files of
                    earlier versions, which are tf_keras's), "model_config"
                    (model.to_json(), or null), "weights", "state"}
    w<i>            weight i stored as is                  (encoding "dense")
    w<i>.values     the active values of sparse kernel i   (encoding "bits"
    w<i>.bits       np.packbits of its flat mask                or "indices")
    w<i>.indices    ascending flat indices of its active entries
    s<j>            state variable j, as is

Floating-point arrays of weights (`w<i>`, `w<i>.values`) are stored as byte
planes: uint8 `[itemsize, n]`, row k holding byte k (little-endian) of every
value, in the entry's `values_dtype`; deflate compresses the planes of the
sign and exponent bytes much better than interleaved floats.

Each entry of "weights" (one per weight of the model, in the order of
`model.weights`, the DSR state left out) has `name`,
`short` (the last component of the variable name: kernel, bias, gamma, ...),
`shape`, `dtype` and `encoding`; a sparse kernel also `mask` (the index of
its mask's entry), `active` and `values_dtype`; a mask entry (`encoding`
"mask") has `kernel`, the index of its kernel, and no array.
"""

import io
import json
import math
import os
import sys
import uuid
import zipfile
import zlib

import numpy as np
import tensorflow as tf

from tf_dsr import gradients as gradients_lib
from tf_dsr import kerases
from tf_dsr import state as state_lib
from tf_dsr.engine import collect_wrappers

FORMAT = 'tf_dsr.sparse_checkpoint'
VERSION = 1
_VALUES_DTYPES = ('float32', 'float16', 'bfloat16')
# The Keras a file's model was written from ("keras" in the manifest; files
# without it come from tf_keras), which rebuilds it from its config.
_FLAVOURS = {flavour.name: flavour
             for flavour in (kerases.TF_KERAS, kerases.KERAS3)}
# Scalar state variables stored; `last_step` is not (see `load_sparse`).
_STATE_SCALARS = ('threshold', 'reallocations')


# ------------------------------------------------------------------ sizes
def index_dtype(total):
  """The index dtype of a tensor of `total` entries: int32, or int64 if needed."""
  return np.int32 if total < 2**31 else np.int64


def mask_encoding(total, active):
  """'bits' or 'indices': the smaller way to store a mask (bits on a tie)."""
  bits = -(-total // 8)
  indices = active * np.dtype(index_dtype(total)).itemsize
  return 'bits' if bits <= indices else 'indices'


def sparse_bytes(total, active, itemsize=4):
  """Payload bytes of one sparse kernel in the compact format, before deflate.

  Args:
    total: entries of the kernel.
    active: active entries.
    itemsize: bytes per stored value (4 for float32, 2 for float16).

  Returns:
    `active * itemsize` plus the bytes of its mask encoding.
  """
  if mask_encoding(total, active) == 'bits':
    mask = -(-total // 8)
  else:
    mask = active * np.dtype(index_dtype(total)).itemsize
  return active * itemsize + mask


# ---------------------------------------------------------------- helpers
def _dtype_name(variable):
  return tf.as_dtype(getattr(variable, 'true_dtype', variable.dtype)).name


def _short(variable):
  return variable.name.split('/')[-1].split(':')[0]


def _name(variable):
  """The full name of a variable: Keras 3 keeps it as `path`."""
  return getattr(variable, 'path', None) or variable.name


def _model_weights(model):
  """`model.weights` without the DSR state (Keras tracks it as weights too).

  The state is every wrapper's state weights (the model's is the first
  wrapper's; `tf_dsr.state`) and the rule's variables on the state module.
  """
  skip = {id(v) for wrapper in collect_wrappers(model) if wrapper.built
          for v in wrapper.state_variables.values()}
  skip |= {id(v) for wrapper in collect_wrappers(model)
           for group in wrapper.auxiliary_weights.values() for v in group}
  state = getattr(model, state_lib.ATTRIBUTE, None)
  if state is not None:
    skip |= {id(v) for v in state.variables}
  return [v for v in model.weights if id(v) not in skip]


def _sparse_pairs(model):
  """{position of kernel in the weights: position of its mask}."""
  position = {id(v): i for i, v in enumerate(_model_weights(model))}
  pairs = {}
  for layer in collect_wrappers(model):
    for kernel, mask in layer.sparse_weights:
      pairs[position[id(kernel)]] = position[id(mask)]
  return pairs


def _state_variables(model):
  """`[(name, kind, variable)]` of the model's DSR state that a file stores."""
  wrappers = collect_wrappers(model)
  if not wrappers or not wrappers[0].built:
    return []
  # The model's state is its first wrapper's (attached on first use).
  state = state_lib.get_or_create(model, wrappers)
  found = [(name, None, getattr(state, name)) for name in _STATE_SCALARS]
  for kind in sorted(vars(state)):
    value = getattr(state, kind)
    if (not kind.startswith('_') and isinstance(value, (list, tuple)) and
        value and all(isinstance(v, tf.Variable) for v in value)):
      found += [(f'{kind}/{i}', kind, v) for i, v in enumerate(value)]
  return found


def _check_model(model, argument='model'):
  """The model's `kerases.Flavour`, or ValueError."""
  flavour = kerases.of(model, argument)
  if not isinstance(model, flavour.model_type):
    raise ValueError(f'`{argument}` must be a {flavour.name} model, got the '
                     f'layer {model.name!r}.')
  unbuilt = [layer.name for layer in collect_wrappers(model) if not layer.built]
  if not model.built or unbuilt:
    raise ValueError(
        f'`{argument}` {model.name!r} is not built (layers {unbuilt}); build it '
        '(call it on data or give it an input shape) first.')
  return flavour


def _check_path(path):
  if isinstance(path, os.PathLike):
    path = os.fspath(path)
  if not isinstance(path, str) or not path:
    raise ValueError(f'`path` must be a non-empty file path, got {path!r}.')
  return path


def _numpy_dtype(name):
  return np.dtype(tf.as_dtype(name).as_numpy_dtype)


# ------------------------------------------------------------------- save
def save_sparse(model, path, values_dtype=None):
  """Writes `model`'s weights and DSR state to one compact file.

  Each `DynamicSparseWrapper` kernel is stored as its active values plus a
  packed bit mask or int32/int64 indices, whichever is smaller; the masks are
  rebuilt from that, and every other weight and the DSR state
  (`model.dynamic_sparsity_state`: H, the reallocation count and any
  per-tensor state of the rule) is stored as is, with the model's Keras
  config when it has one. The optimizer is not stored: the file holds the
  model, not the training run (resume a run exactly with
  `tf.train.Checkpoint`). The file is written under a temporary name and
  renamed, so an interrupted save leaves no partial file; `gs://` paths work.

  Example:
    ```python
    size = tf_dsr.save_sparse(model, 'model.npz')
    tf_dsr.save_sparse(model, 'model_fp16.npz', values_dtype='float16')
    ```

  Args:
    model: a built model (with or without wrappers) of tf_keras or of
      Keras 3 on the TensorFlow backend.
    path: the file to write (`.npz` by convention); its directory must exist.
    values_dtype: None to store every weight in its own dtype (lossless), or
      'float16' / 'bfloat16' to store every floating-point weight, the active
      values of sparse kernels and the dense weights alike, in that dtype
      (lossy; halves the size). Masks and the DSR state stay exact.

  Returns:
    The size of the written file in bytes.

  Raises:
    ValueError: on a bad argument, a model that is not built, or a value
      that does not fit `values_dtype` (nothing is written).
  """
  flavour = _check_model(model)
  path = _check_path(path)
  if values_dtype is not None:
    try:
      name = tf.as_dtype(values_dtype).name
    except TypeError:
      name = None
    if name not in _VALUES_DTYPES:
      raise ValueError(f'`values_dtype` must be None or one of '
                       f'{_VALUES_DTYPES}, got {values_dtype!r}.')
    values_dtype = name
  directory = os.path.dirname(path)
  if directory and not tf.io.gfile.isdir(directory):
    raise ValueError(f'`path` {path!r}: directory {directory!r} does not exist.')

  weights = _model_weights(model)
  pairs = _sparse_pairs(model)
  mask_of = {m: k for k, m in pairs.items()}
  arrays, entries = {}, []
  for i, variable in enumerate(weights):
    dtype = _dtype_name(variable)
    entry = {'name': _name(variable), 'short': _short(variable),
             'shape': list(variable.shape), 'dtype': dtype}
    stored = values_dtype if (values_dtype and
                              tf.as_dtype(dtype).is_floating) else dtype
    if i in mask_of:
      entry.update(encoding='mask', kernel=mask_of[i])
    elif i in pairs:
      flat = np.reshape(variable.numpy(), [-1])
      active = np.reshape(weights[pairs[i]].numpy(), [-1]) > 0.5
      count = int(active.sum())
      encoding = mask_encoding(flat.size, count)
      entry.update(encoding=encoding, mask=pairs[i], active=count,
                   values_dtype=stored)
      arrays[f'w{i}.values'] = _encode(flat[active], stored, entry['name'])
      if encoding == 'bits':
        arrays[f'w{i}.bits'] = np.packbits(active)
      else:
        arrays[f'w{i}.indices'] = np.flatnonzero(active).astype(
            index_dtype(flat.size))
    else:
      entry.update(encoding='dense', values_dtype=stored)
      arrays[f'w{i}'] = _encode(variable.numpy(), stored, entry['name'])
    entries.append(entry)
  state_entries = []
  for j, (name, kind, variable) in enumerate(_state_variables(model)):
    state_entries.append({'name': name, 'kind': kind,
                          'shape': list(variable.shape),
                          'dtype': _dtype_name(variable)})
    arrays[f's{j}'] = np.asarray(variable.numpy())
  try:
    config = model.to_json()
  except (NotImplementedError, TypeError, ValueError):
    config = None  # A subclassed model: load_sparse needs `model=`.
  manifest = {'format': FORMAT, 'version': VERSION, 'model_name': model.name,
              'keras': flavour.name, 'model_config': config,
              'weights': entries, 'state': state_entries}
  arrays['manifest'] = np.frombuffer(
      json.dumps(manifest).encode('utf-8'), np.uint8)
  buffer = io.BytesIO()
  np.savez_compressed(buffer, **arrays)
  data = buffer.getvalue()
  temporary = f'{path}.tmp-{uuid.uuid4().hex}'
  with tf.io.gfile.GFile(temporary, 'wb') as f:
    f.write(data)
  tf.io.gfile.rename(temporary, path, overwrite=True)
  return len(data)


def _encode(values, dtype, name):
  """`values` as `dtype`, floats as byte planes; raises on overflow."""
  values = np.asarray(values)
  if dtype != values.dtype.name:
    with np.errstate(over='ignore'):
      converted = values.astype(_numpy_dtype(dtype))
    if not np.isfinite(converted[np.isfinite(values)].astype(np.float32)).all():
      raise ValueError(
          f'`values_dtype` {dtype!r}: weight {name!r} has values (largest '
          f'{np.abs(values).max():.6g}) that overflow {dtype}; nothing written.')
    values = converted
  if not tf.as_dtype(dtype).is_floating:
    return values
  # Byte planes: byte k of every value, then byte k + 1, ...: the exponent
  # bytes of nearby weights sit together, and deflate shrinks them.
  flat = np.ascontiguousarray(values).reshape(-1)
  if sys.byteorder == 'big':
    flat = flat.byteswap()
  return np.ascontiguousarray(
      flat.view(np.uint8).reshape(flat.size, flat.itemsize).T)


# ------------------------------------------------------------------- load
def load_sparse(path, model=None):
  """Loads a file written by `save_sparse` into `model`, or into a new model.

  With `model`, every weight and the DSR state are assigned to it. Weights
  are matched by position in `model.weights` (as Keras' HDF5 weights are):
  the file's and the model's weights must agree in number, in the last
  component of each name (kernel, bias, gamma, ...), in shape, dtype, and in
  which kernels are sparse; layer names may differ (Keras numbers the layers
  of a model built twice in one process). Everything is read and checked
  before anything is assigned, so a bad file leaves `model` as it was.

  Without `model`, the model is rebuilt from the Keras config stored in the
  file (custom layers need `keras.utils.custom_object_scope`), like
  `keras.models.load_model(..., compile=False)`: it has no optimizer, so
  compile it before training. A subclassed model has no config; pass
  `model=`.

  The optimizer is not in the file, so neither is the step count: the state
  keeps H, the reallocation count (which positions the random stream) and
  the rule's per-tensor state, and records no last reallocation step, so the
  next reallocation falls due by the new optimizer's step count.

  Args:
    path: a file written by `save_sparse`.
    model: the model to load into (built, same architecture, of either
      Keras), or None to rebuild the saved one with the Keras it was
      written from.

  Returns:
    The model the weights were loaded into.

  Raises:
    ValueError: a missing, truncated, corrupt or foreign file, or one that
      does not match `model` (the message names the first difference).
  """
  path = _check_path(path)
  if model is not None:
    _check_model(model)
  manifest, arrays = _read(path)
  if model is None:
    config = manifest.get('model_config')
    if not config:
      raise ValueError(
          f'`path` {path!r} holds no Keras config (the model '
          f'{manifest.get("model_name")!r} was subclassed); pass the model to '
          'load into: `tf_dsr.load_sparse(path, model=model)`.')
    written_by = manifest.get('keras', kerases.TF_KERAS.name)
    flavour = (_FLAVOURS.get(written_by) if isinstance(written_by, str)
               else None)
    if flavour is None:
      raise ValueError(f'`path` {path!r} was written from a model of an '
                       f'unknown Keras, {manifest.get("keras")!r}.')
    model = flavour.keras.models.model_from_json(config)
    _check_model(model)
  values = _decode_weights(path, manifest, arrays, model)
  state = _decode_state(path, manifest, arrays, model)
  for variable, value in zip(_model_weights(model), values):
    variable.assign(value)
  _assign_state(model, state)
  return model


def _read(path):
  """`(manifest, {name: array})`; ValueError for anything unreadable."""
  if not tf.io.gfile.exists(path):
    raise ValueError(f'`path` {path!r} does not exist.')
  with tf.io.gfile.GFile(path, 'rb') as f:
    data = f.read()
  if not data.startswith(b'PK'):
    raise ValueError(f'`path` {path!r} is not a tf_dsr sparse checkpoint (not '
                     'an .npz archive).')
  try:
    with np.load(io.BytesIO(data), allow_pickle=False) as archive:
      arrays = {name: archive[name] for name in archive.files}
  except (zipfile.BadZipFile, zlib.error, EOFError, OSError, ValueError,
          KeyError) as error:
    raise ValueError(
        f'`path` {path!r} is not a readable tf_dsr sparse checkpoint (truncated '
        f'or corrupt?): {type(error).__name__}: {error}') from None
  if 'manifest' not in arrays:
    raise ValueError(f'`path` {path!r} is an .npz file without a tf_dsr '
                     'manifest; it was not written by `tf_dsr.save_sparse`.')
  try:
    manifest = json.loads(arrays.pop('manifest').tobytes().decode('utf-8'))
  except (UnicodeDecodeError, json.JSONDecodeError) as error:
    raise ValueError(f'`path` {path!r}: the manifest is corrupt: {error}') from None
  if not isinstance(manifest, dict) or manifest.get('format') != FORMAT:
    raise ValueError(f'`path` {path!r} is not a tf_dsr sparse checkpoint.')
  if manifest.get('version') != VERSION:
    raise ValueError(
        f'`path` {path!r} has format version {manifest.get("version")!r}; this '
        f'tf_dsr reads version {VERSION} (a newer tf_dsr wrote it?).')
  if not isinstance(manifest.get('weights'), list) or not isinstance(
      manifest.get('state'), list):
    raise ValueError(f'`path` {path!r}: the manifest lists no weights.')
  return manifest, arrays


def _decode_weights(path, manifest, arrays, model):
  """The value of every weight of `model`, checked against the file."""
  entries, weights = manifest['weights'], _model_weights(model)
  where = f'`path` {path!r} does not match `model` {model.name!r}'
  if len(entries) != len(weights):
    raise ValueError(f'{where}: the file has {len(entries)} weights (model '
                     f'{manifest.get("model_name")!r}), the model '
                     f'{len(weights)}.')
  pairs = _sparse_pairs(model)
  values = [None] * len(weights)
  for i, (entry, variable) in enumerate(zip(entries, weights)):
    try:
      name, shape, dtype = entry['name'], tuple(entry['shape']), entry['dtype']
      encoding = entry['encoding']
      short = entry['short']
    except (KeyError, TypeError):
      raise ValueError(f'`path` {path!r}: manifest entry {i} is malformed: '
                       f'{entry!r}') from None
    own = (_name(variable), tuple(variable.shape), _dtype_name(variable))
    if short != _short(variable):
      raise ValueError(f'{where}: weight {i} is {name!r} in the file and '
                       f'{own[0]!r} in the model.')
    if encoding == 'mask' and i in pairs.values():
      # A mask's value comes from its kernel's entry, in the model's mask
      # dtype: files of the float32-mask layout load into bool masks.
      dtype = own[2]
    if (shape, dtype) != own[1:]:
      raise ValueError(f'{where}: weight {i} ({name!r}) has shape {shape} and '
                       f'dtype {dtype} in the file, {own[1]} and {own[2]} in '
                       f'the model ({own[0]!r}).')
    sparse_in_model = 'mask' if i in pairs.values() else (
        'sparse' if i in pairs else 'dense')
    sparse_in_file = {'mask': 'mask', 'dense': 'dense'}.get(encoding, 'sparse')
    if sparse_in_model != sparse_in_file or (
        encoding in ('bits', 'indices') and entry.get('mask') != pairs[i]):
      raise ValueError(f'{where}: weight {i} ({name!r}) is a {sparse_in_file} '
                       f'weight in the file and a {sparse_in_model} weight in '
                       'the model (different sparse layers).')
    try:
      if encoding == 'dense':
        values[i] = _decode_values(arrays[f'w{i}'], entry,
                                   math.prod(shape)).reshape(shape)
      elif encoding in ('bits', 'indices'):
        kernel, mask = _decode_sparse(arrays, i, entry, shape, dtype,
                                      _dtype_name(weights[pairs[i]]))
        values[i], values[pairs[i]] = kernel, mask
      elif encoding != 'mask':
        raise ValueError(f'unknown encoding {encoding!r}')
    except KeyError as error:
      raise ValueError(f'`path` {path!r}: weight {i} ({name!r}) has no array '
                       f'{error}; the file is corrupt.') from None
    except ValueError as error:
      raise ValueError(f'`path` {path!r}: weight {i} ({name!r}): {error}') from None
  if any(value is None for value in values):
    raise ValueError(f'`path` {path!r}: the manifest gives no value for some '
                     'masks; the file is corrupt.')
  return values


def _decode_values(array, entry, count):
  """The `count` values of an entry, in its dtype, from the stored array."""
  stored = entry.get('values_dtype', entry['dtype'])
  if stored not in (entry['dtype'],) + _VALUES_DTYPES:
    raise ValueError(f'unknown values dtype {stored!r}')
  dtype = _numpy_dtype(stored)
  if not tf.as_dtype(stored).is_floating:
    if array.dtype != dtype or array.size != count:
      raise ValueError(f'{array.size} values of dtype {array.dtype} stored, '
                       f'expected {count} of {stored}')
    return array.reshape(-1)
  if array.dtype != np.uint8 or array.shape != (dtype.itemsize, count):
    raise ValueError(f'{stored} byte planes of shape {array.shape} and dtype '
                     f'{array.dtype} stored for {count} values')
  flat = np.ascontiguousarray(array.T).view(dtype).reshape(-1)
  if sys.byteorder == 'big':
    flat = flat.byteswap()
  return flat.astype(_numpy_dtype(entry['dtype']))


def _decode_sparse(arrays, i, entry, shape, dtype, mask_dtype):
  """The dense kernel and mask of sparse entry `i`."""
  total = math.prod(shape)
  active = entry.get('active')
  if not isinstance(active, int) or not 0 <= active <= total:
    raise ValueError(f'bad active count {active!r}')
  values = _decode_values(arrays[f'w{i}.values'], entry, active)
  if entry['encoding'] == 'bits':
    bits = arrays[f'w{i}.bits']
    if bits.dtype != np.uint8 or bits.shape != (-(-total // 8),):
      raise ValueError(f'bit mask of shape {bits.shape} and dtype {bits.dtype} '
                       f'for {total} entries')
    flags = np.unpackbits(bits)
    if flags[total:].any():
      raise ValueError('bit mask has bits set past the last entry')
    mask = flags[:total].astype(bool)
    if int(mask.sum()) != active:
      raise ValueError(f'bit mask has {int(mask.sum())} active entries, the '
                       f'manifest says {active}')
    positions = np.flatnonzero(mask)
  else:
    positions = arrays[f'w{i}.indices']
    if positions.dtype != index_dtype(total) or positions.shape != (active,):
      raise ValueError(f'indices of shape {positions.shape} and dtype '
                       f'{positions.dtype} for {active} active entries')
    if active and (positions[0] < 0 or positions[-1] >= total or
                   (np.diff(positions) <= 0).any()):
      raise ValueError(f'indices are not ascending within [0, {total})')
  kernel = np.zeros(total, _numpy_dtype(dtype))
  kernel[positions] = values
  mask = np.zeros(total, _numpy_dtype(mask_dtype))
  mask[positions] = 1
  return kernel.reshape(shape), mask.reshape(shape)


def _decode_state(path, manifest, arrays, model):
  """`[(name, kind, value)]` of the file's DSR state, checked against `model`."""
  own = {name: variable for name, _, variable in _state_variables(model)}
  found = []
  for j, entry in enumerate(manifest['state']):
    try:
      name, kind = entry['name'], entry['kind']
      shape, dtype = tuple(entry['shape']), entry['dtype']
      value = arrays[f's{j}']
    except (KeyError, TypeError):
      raise ValueError(f'`path` {path!r}: state entry {j} is malformed or its '
                       'array is missing.') from None
    if (tuple(value.shape), value.dtype) != (shape, _numpy_dtype(dtype)):
      raise ValueError(f'`path` {path!r}: state {name!r} is stored with shape '
                       f'{value.shape} and dtype {value.dtype}, the manifest '
                       f'says {shape} and {dtype}.')
    if name in own and (tuple(own[name].shape), _dtype_name(own[name])) != (
        shape, dtype):
      raise ValueError(f'`path` {path!r} does not match `model` {model.name!r}: '
                       f'state {name!r} has shape {shape} and dtype {dtype} in '
                       f'the file, {tuple(own[name].shape)} and '
                       f'{_dtype_name(own[name])} in the model.')
    if kind is None and name not in _STATE_SCALARS:
      raise ValueError(f'`path` {path!r}: unknown state {name!r}.')
    found.append((name, kind, value))
  kinds = {}
  for name, kind, value in found:
    if kind is not None:
      kinds.setdefault(kind, []).append(value)
  pairs = _sparse_pairs(model)
  kernels = [_model_weights(model)[k] for k in sorted(pairs)]
  for kind, group in kinds.items():
    existing = getattr(getattr(model, state_lib.ATTRIBUTE, None), kind, None)
    if existing is not None and len(existing) != len(group):
      raise ValueError(f'`path` {path!r} does not match `model` '
                       f'{model.name!r}: state {kind!r} has {len(group)} '
                       f'variables in the file, {len(existing)} in the model.')
    if existing is None and [v.shape for v in group] != [
        tuple(k.shape) for k in kernels]:
      raise ValueError(f'`path` {path!r} does not match `model` '
                       f'{model.name!r}: its state {kind!r} is not shaped like '
                       "the model's sparse kernels.")
  return found


def _assign_state(model, found):
  if not found:
    return
  wrappers = collect_wrappers(model)
  state = state_lib.get_or_create(model, wrappers)
  state.last_step.assign(-1)
  kinds = {}
  for name, kind, value in found:
    if kind is None:
      getattr(state, name).assign(value)
    else:
      kinds.setdefault(kind, []).append(value)
  for kind, group in kinds.items():
    if getattr(state, kind, None) is None:
      # As the Reallocator makes them: weights of the wrappers.
      with model.distribute_strategy.scope():
        for wrapper in wrappers:
          wrapper.add_auxiliary(
              kind, group[0].dtype.name,
              sum_on_read=kind == gradients_lib.MOMENTUM_KIND)
      state_lib.attach_auxiliary(state, wrappers)
    for variable, value in zip(getattr(state, kind), group):
      variable.assign(value)
