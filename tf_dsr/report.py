"""sparsity_report: per-layer and total active / total counts."""

import dataclasses
from typing import Dict
from typing import List
from typing import Optional

import numpy as np
import tensorflow as tf

from tf_dsr import compact
from tf_dsr import flops as flops_lib
from tf_dsr import kerases
from tf_dsr import strip
from tf_dsr.wrapper import DynamicSparseWrapper


@dataclasses.dataclass(frozen=True)
class TensorCount:
  """Active and total entries of one sparse kernel."""
  name: str
  active: int
  total: int

  @property
  def density(self):
    return self.active / self.total


@dataclasses.dataclass(frozen=True)
class StoredBytes:
  """Bytes the weights take stored dense (float32) and in `save_sparse`'s format.

  Compact bytes are the payload of `tf_dsr.save_sparse` with float32 values
  before its deflate: a tf_dsr sparse kernel's active values plus its bit
  mask or indices, whichever is smaller. `save_sparse` stores tfmot's masked
  kernels as they are (kernel and mask), and counts them so.

  Attributes:
    dense: bytes of each masked kernel as dense float32, by tensor name.
    compact: bytes of each masked kernel in the compact format, by name.
    model_dense: every weight of the model (masks excluded) as float32.
    model_compact: the same weights with the sparse kernels compacted.
  """
  dense: Dict[str, int]
  compact: Dict[str, int]
  model_dense: int
  model_compact: int

  @property
  def sparse_dense(self):
    return sum(self.dense.values())

  @property
  def sparse_compact(self):
    return sum(self.compact.values())


@dataclasses.dataclass(frozen=True)
class SparsityReport:
  """Counts of a model's sparse kernels and of all its parameters.

  Attributes:
    tensors: one `TensorCount` per masked kernel (tf_dsr's or tfmot's).
    sparse_active: active entries over all masked kernels.
    sparse_total: entries over all masked kernels.
    model_active: active trainable parameters of the whole model (every
      unmasked parameter counts as active).
    model_total: trainable parameters of the whole model.
    flops: the model's inference FLOPs, sparse and dense
      (`tf_dsr.flops_report`); None for a model without a graph of layer
      calls (subclassed) or with unknown spatial sizes.
    stored_bytes: dense and compact bytes of the kernels and the model.
    training_bytes_per_sparse_weight: bytes of training state per entry of
      the masked kernels with SGD momentum: the kernel, its momentum slot
      (one more copy of the kernel) and its mask. 9 for float32 kernels with
      tf_dsr's bool masks, 12 with float32 masks (tfmot's); dense training
      holds 8 (`dense_training_bytes_per_weight`).
    dense_training_bytes_per_weight: the same without masks.
  """
  tensors: List[TensorCount]
  sparse_active: int
  sparse_total: int
  model_active: int
  model_total: int
  flops: Optional[flops_lib.FlopsReport] = None
  stored_bytes: Optional[StoredBytes] = None
  training_bytes_per_sparse_weight: Optional[float] = None
  dense_training_bytes_per_weight: Optional[float] = None

  def __str__(self):
    width = max([len(t.name) for t in self.tensors] + [len('total sparse')])
    stored = self.stored_bytes
    def nbytes(dense, packed):
      return f' {dense:>14,} {packed:>14,}' if stored else ''
    lines = [f'{"tensor":<{width}} {"active":>12} {"total":>12} {"density":>8}'
             + (f' {"dense bytes":>14} {"compact bytes":>14}' if stored else '')]
    for t in self.tensors:
      lines.append(f'{t.name:<{width}} {t.active:>12,} {t.total:>12,} '
                   f'{t.density:>8.4f}' + (nbytes(stored.dense[t.name],
                                                  stored.compact[t.name])
                                           if stored else ''))
    lines.append(f'{"total sparse":<{width}} {self.sparse_active:>12,} '
                 f'{self.sparse_total:>12,} '
                 f'{self.sparse_active / max(self.sparse_total, 1):>8.4f}' +
                 (nbytes(stored.sparse_dense, stored.sparse_compact)
                  if stored else ''))
    lines.append(f'{"whole model":<{width}} {self.model_active:>12,} '
                 f'{self.model_total:>12,} '
                 f'{self.model_active / max(self.model_total, 1):>8.4f}' +
                 (nbytes(stored.model_dense, stored.model_compact)
                  if stored else ''))
    if self.flops is not None:
      lines.append(f'{"inference FLOPs":<{width}} {self.flops.sparse:>12,} '
                   f'{self.flops.dense:>12,} {self.flops.fraction:>8.4f}')
    if self.training_bytes_per_sparse_weight is not None:
      lines.append(
          'training state with SGD momentum: '
          f'{self.training_bytes_per_sparse_weight:g} bytes per sparse weight '
          f'(kernel, momentum, mask; dense: '
          f'{self.dense_training_bytes_per_weight:g})')
    return '\n'.join(lines)


def _wrappers(model):
  for layer in model.layers:
    if isinstance(layer, strip._WRAPPERS):  # pylint: disable=protected-access
      yield layer
    elif isinstance(layer, kerases.MODEL_TYPES):
      yield from _wrappers(layer)


def _size(variable):
  """Entries of a variable of either Keras (Keras 3 shapes are tuples)."""
  return int(np.prod(tuple(variable.shape), dtype=np.int64))


def sparsity_report(model):
  """Counts active and total entries per masked kernel and for the model.

  Args:
    model: a built tf_keras model with tf_dsr and/or tfmot wrappers, or a
      built Keras 3 model (TensorFlow backend) with tf_dsr wrappers.

  Returns:
    A `SparsityReport`; `print(report)` shows a table, with the bytes of
    each kernel stored dense and in `save_sparse`'s compact format. Its
    `flops` holds the inference FLOPs per example (sparse, dense and their
    ratio; `tf_dsr.flops_report`) for a Sequential or functional model of
    either Keras.

  Raises:
    ValueError: if `model` is not a model of either Keras.
  """
  flavour = kerases.of(model, 'model')
  if not isinstance(model, flavour.model_type):
    raise ValueError(f'`model` must be a {flavour.label} model, got the layer '
                     f'{type(model).__name__}.')
  tensors, inactive, packed, masks_seen = [], 0, {}, set()
  training, dense_training = 0, 0
  for wrapper in _wrappers(model):
    masks = strip._masks_by_kernel(wrapper)  # pylint: disable=protected-access
    names = {}
    if isinstance(wrapper, DynamicSparseWrapper):
      names = {id(kernel): name for name, (kernel, _) in
               zip(wrapper.sparse_names, wrapper.sparse_weights)}
    for kernel in wrapper.layer.weights:
      if id(kernel) not in masks:
        continue
      mask = masks[id(kernel)]
      active = int((np.asarray(mask.numpy()) > 0.5).sum())
      total = _size(mask)
      inactive += total - active
      name = names.get(id(kernel)) or (
          f'{wrapper.name}/{kernel.name.split("/")[-1].split(":")[0]}')
      tensors.append(TensorCount(name, active, total))
      masks_seen.add(id(mask))
      # `tf.as_dtype`: Keras 3 variables name their dtype as a string.
      kernel_bytes = tf.as_dtype(
          getattr(kernel, 'true_dtype', kernel.dtype)).size * total
      dense_training += 2 * kernel_bytes
      training += 2 * kernel_bytes + tf.as_dtype(mask.dtype).size * total
      packed[name] = (compact.sparse_bytes(total, active)
                      if isinstance(wrapper, DynamicSparseWrapper) else
                      8 * total)
  model_total = sum(_size(w) for w in model.trainable_weights)
  sparse_total = sum(t.total for t in tensors)
  sparse_active = sum(t.active for t in tensors)
  # The DSR state: every wrapper's state weights and the rule's variables.
  state = getattr(model, 'dynamic_sparsity_state', None)
  skip = masks_seen | {id(v) for v in (state.variables if state else ())}
  skip |= {id(v) for wrapper in _wrappers(model)
           if isinstance(wrapper, DynamicSparseWrapper) and wrapper.built
           for v in wrapper.state_variables.values()}
  model_dense = 4 * sum(_size(w) for w in model.weights
                        if id(w) not in skip)
  dense = {t.name: 4 * t.total for t in tensors}
  stored = StoredBytes(
      dense, packed, model_dense,
      model_dense - sum(dense.values()) + sum(packed.values()))
  flops = None
  if flavour.has_layer_graph(model):
    try:
      flops = flops_lib.flops_report(model)
    except ValueError:  # Unknown spatial sizes: no FLOPs, the counts stand.
      flops = None
  per_weight = lambda n: n / sparse_total if sparse_total else None
  return SparsityReport(tensors, sparse_active, sparse_total,
                        model_total - inactive, model_total, flops=flops,
                        stored_bytes=stored,
                        training_bytes_per_sparse_weight=per_weight(training),
                        dense_training_bytes_per_weight=per_weight(
                            dense_training))
