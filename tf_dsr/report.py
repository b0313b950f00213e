"""sparsity_report: per-layer and total active / total counts."""

import dataclasses
from typing import List, Optional

from tf_dsr import _tfmot
from tf_dsr import flops as flops_lib
from tf_dsr import strip
from tf_dsr.wrapper import DynamicSparseWrapper

keras = _tfmot.keras


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
  """
  tensors: List[TensorCount]
  sparse_active: int
  sparse_total: int
  model_active: int
  model_total: int
  flops: Optional[flops_lib.FlopsReport] = None

  def __str__(self):
    width = max([len(t.name) for t in self.tensors] + [len('total sparse')])
    lines = [f'{"tensor":<{width}} {"active":>12} {"total":>12} {"density":>8}']
    for t in self.tensors:
      lines.append(f'{t.name:<{width}} {t.active:>12,} {t.total:>12,} '
                   f'{t.density:>8.4f}')
    lines.append(f'{"total sparse":<{width}} {self.sparse_active:>12,} '
                 f'{self.sparse_total:>12,} '
                 f'{self.sparse_active / max(self.sparse_total, 1):>8.4f}')
    lines.append(f'{"whole model":<{width}} {self.model_active:>12,} '
                 f'{self.model_total:>12,} '
                 f'{self.model_active / max(self.model_total, 1):>8.4f}')
    if self.flops is not None:
      lines.append(f'{"inference FLOPs":<{width}} {self.flops.sparse:>12,} '
                   f'{self.flops.dense:>12,} {self.flops.fraction:>8.4f}')
    return '\n'.join(lines)


def _wrappers(model):
  for layer in model.layers:
    if isinstance(layer, strip._WRAPPERS):  # pylint: disable=protected-access
      yield layer
    elif isinstance(layer, keras.Model):
      yield from _wrappers(layer)


def sparsity_report(model):
  """Counts active and total entries per masked kernel and for the model.

  Args:
    model: a built tf_keras model with tf_dsr and/or tfmot wrappers.

  Returns:
    A `SparsityReport`; `print(report)` shows a table. Its `flops` holds
    the inference FLOPs per example (sparse, dense and their ratio;
    `tf_dsr.flops_report`) for a Sequential or functional model.
  """
  if not _tfmot.is_tf_keras_object(model) or not isinstance(model, keras.Model):
    raise ValueError(_tfmot.foreign_keras_message(model, 'model'))
  tensors, inactive = [], 0
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
      active = int((mask.numpy() > 0.5).sum())
      total = mask.shape.num_elements()
      inactive += total - active
      name = names.get(id(kernel)) or (
          f'{wrapper.name}/{kernel.name.split("/")[-1].split(":")[0]}')
      tensors.append(TensorCount(name, active, total))
  model_total = sum(w.shape.num_elements() for w in model.trainable_weights)
  sparse_total = sum(t.total for t in tensors)
  sparse_active = sum(t.active for t in tensors)
  flops = None
  if _tfmot.is_graph_network(model):
    try:
      flops = flops_lib.flops_report(model)
    except ValueError:  # Unknown spatial sizes: no FLOPs, the counts stand.
      flops = None
  return SparsityReport(tensors, sparse_active, sparse_total,
                        model_total - inactive, model_total, flops)
