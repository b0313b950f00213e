"""FLOPs of a sparse model, for inference and training, counted as RigL does.

The convention (Evci et al., "Rigging the Lottery: Making All Tickets
Winners", ICML 2020, arXiv 1911.11134, section 4 and appendix H):

- **Inference** counts the multiply-adds of the kernels of Dense, Conv1D/2D/3D
  (grouped too), DepthwiseConv1D/2D, SeparableConv1D/2D and
  Conv1D/2D/3DTranspose layers, for one example: a kernel entry is used once
  per output position (per input position for a transposed conv), so a
  kernel costs `entries * positions` multiply-adds, and a masked kernel
  `active entries * positions`. A multiply-add counts as 2 FLOPs (one
  multiplication and one addition, as RigL's counter counts them
  separately). Biases, normalisation, activations and pooling are left out
  (RigL's counter adds biases and activations; they are well under 1% of
  ResNet-50's FLOPs and cancel in the sparse / dense ratios reported).
  Embedding lookups cost 0. Layers of other kinds that hold a kernel are
  listed in `FlopsReport.uncounted`.
- **Training**: a step costs a forward pass `f` and a backward pass `2f`
  (the gradients with respect to the activations and to the weights), `3f`
  in all. Sparse training with masks that only change by magnitude and at
  random costs `3 f_S`; dense training `3 f_D`. Methods that compute dense
  gradients on some steps cost more (`Rule.training_flops` of each rule; the
  published formulas are below). The training multiplier of a run is its
  average step's FLOPs over `3 f_D`.
"""

import dataclasses
import math
from typing import List

from tf_dsr import kerases
from tf_dsr import strip


@dataclasses.dataclass(frozen=True)
class LayerFlops:
  """Inference FLOPs of one layer's kernels (all its calls in the model).

  Attributes:
    name: the layer's name (the inner layer's for a wrapper).
    dense: FLOPs with every kernel entry active.
    sparse: FLOPs with only the active entries of masked kernels.
    masked: whether any of its kernels has a mask (tf_dsr's or tfmot's).
  """
  name: str
  dense: int
  sparse: int
  masked: bool


@dataclasses.dataclass(frozen=True)
class FlopsReport:
  """Inference FLOPs per example of a model and of its dense counterpart.

  Attributes:
    layers: one `LayerFlops` per counted layer with a kernel, in model order.
    dense: FLOPs of the model with every mask full (f_D).
    sparse: FLOPs of the model with its masks (f_S).
    uncounted: names of layers with a kernel whose FLOPs are not counted
      (kinds this module does not know).
  """
  layers: List[LayerFlops]
  dense: int
  sparse: int
  uncounted: List[str]

  @property
  def fraction(self):
    """f_S / f_D: the sparse model's inference FLOPs relative to dense."""
    return self.sparse / self.dense if self.dense else 1.0

  @property
  def masked_dense(self):
    """f_D of the masked layers only (what gradual pruning thins out)."""
    return sum(layer.dense for layer in self.layers if layer.masked)

  def training_multiplier(self, rule=None, period=math.inf):
    """Training FLOPs per step of `rule` on this model over dense training's.

    Args:
      rule: a `tf_dsr.rules.Rule`; None for sparse training with masks
        that need no dense gradient (3 f_S).
      period: training steps between reallocations (math.inf: none).

    Returns:
      `rule.training_flops(f_S, f_D, period) / (3 f_D)`.
    """
    step = (sparse_training_flops(self.sparse) if rule is None else
            rule.training_flops(self.sparse, self.dense, period))
    return step / dense_training_flops(self.dense) if self.dense else 1.0

  def __str__(self):
    width = max([len(layer.name) for layer in self.layers] + [len('total')])
    lines = [f'{"layer":<{width}} {"dense FLOPs":>16} {"sparse FLOPs":>16} '
             f'{"fraction":>8}']
    for layer in self.layers + [LayerFlops('total', self.dense, self.sparse,
                                           False)]:
      fraction = layer.sparse / layer.dense if layer.dense else 1.0
      lines.append(f'{layer.name:<{width}} {layer.dense:>16,} '
                   f'{layer.sparse:>16,} {fraction:>8.4f}')
    if self.uncounted:
      lines.append(f'not counted: {", ".join(self.uncounted)}')
    return '\n'.join(lines)


@dataclasses.dataclass(frozen=True)
class _Kinds:
  """The layer classes of one Keras whose FLOPs are counted.

  Attributes:
    kernels: `(classes, kernel attributes)` pairs, the first match wins
      (a separable conv before a depthwise one before a plain conv).
    transposed: the transposed convs (a kernel entry is used once per input
      position).
    dense: the `Dense` class (used once per position of the leading axes).
  """
  kernels: tuple
  transposed: tuple
  dense: type


def _kinds(keras_module, depthwise_kernel):
  layers = keras_module.layers
  present = lambda *names: tuple(getattr(layers, name) for name in names
                                 if hasattr(layers, name))
  transposed = present('Conv1DTranspose', 'Conv2DTranspose',
                       'Conv3DTranspose')
  return _Kinds(
      kernels=(
          (present('SeparableConv1D', 'SeparableConv2D'),
           ('depthwise_kernel', 'pointwise_kernel')),
          (present('DepthwiseConv1D', 'DepthwiseConv2D'), (depthwise_kernel,)),
          (present('Conv1D', 'Conv2D', 'Conv3D', 'Dense') + transposed,
           ('kernel',)),
      ),
      transposed=transposed,
      dense=layers.Dense)


# Per Keras: tf_keras names a depthwise conv's kernel `depthwise_kernel`,
# Keras 3 `kernel`.
_KINDS = {
    kerases.TF_KERAS.name: _kinds(kerases.TF_KERAS.keras, 'depthwise_kernel'),
    kerases.KERAS3.name: _kinds(kerases.KERAS3.keras, 'kernel'),
}


def _kernel_names(layer, kinds):
  """The kernel attributes of a counted layer kind, or None if not counted."""
  for classes, names in kinds.kernels:
    if isinstance(layer, classes):
      return names
  return None


def _positions(layer, input_shape, output_shape, kinds):
  """How many times each kernel entry is used for one example."""
  if isinstance(layer, kinds.dense):
    return math.prod(output_shape[1:-1])
  shape = input_shape if isinstance(layer, kinds.transposed) else output_shape
  if getattr(layer, 'data_format', 'channels_last') == 'channels_first':
    return math.prod(shape[2:])
  return math.prod(shape[1:-1])


def _calls(model, flavour):
  """`(layer, input shape, output shape)` of every call in the model's graph."""
  for layer, input_shape, output_shape in flavour.layer_calls(model):
    if isinstance(layer, flavour.model_type):
      yield from _calls(layer, flavour)
    else:
      yield layer, input_shape, output_shape


def flops_report(model):
  """Counts the inference FLOPs per example of `model`, sparse and dense.

  Uses the shapes the model was built with (its layers' calls in the model's
  graph), so the model must be a Sequential or functional model with known
  input shapes, of tf_keras or of Keras 3 (TensorFlow backend); the same
  architecture gives the same numbers in both. Masks of tf_dsr's and
  tfmot's wrappers are read as they are now. The convention is RigL's (see
  the module docstring): kernels only, a multiply-add is 2 FLOPs.

  Example:
    ```python
    report = tf_dsr.flops_report(model)
    print(report)                  # per-layer dense / sparse FLOPs
    report.fraction                # inference FLOPs relative to dense
    report.training_multiplier(tf_dsr.rules.make('set', drop_fraction=0.3))
    ```

  Args:
    model: a built Sequential or functional model of either Keras.

  Returns:
    A `FlopsReport`.

  Raises:
    ValueError: when `model` is not such a model, or a counted layer's
      shapes are not fully known.
  """
  flavour = kerases.of(model, 'model')
  if not isinstance(model, flavour.model_type):
    raise ValueError(f'`model` must be a {flavour.label} model, got the layer '
                     f'{model.name!r}.')
  if not flavour.has_layer_graph(model):
    raise ValueError(
        f'`model` {model.name!r} has no graph of layer calls (a subclassed '
        'model, or a Sequential model without an input shape), so the FLOPs '
        'of its layers cannot be counted; build it on a `keras.Input`.')
  kinds = _KINDS[flavour.name]
  embedding = flavour.keras.layers.Embedding
  counted, uncounted = {}, []
  for outer, input_shape, output_shape in _calls(model, flavour):
    masks, layer = {}, outer
    if isinstance(outer, strip._WRAPPERS):  # pylint: disable=protected-access
      masks = strip._masks_by_kernel(outer)  # pylint: disable=protected-access
      layer = outer.layer
    names = _kernel_names(layer, kinds)
    if names is None:
      if (flavour.may_have_prunable_weights(layer) and
          not isinstance(layer, embedding) and
          layer.name not in uncounted):
        uncounted.append(layer.name)
      continue
    shapes = [s for s in (input_shape, output_shape) if s is not None]
    if any(d is None for s in shapes for d in s[1:]):
      raise ValueError(
          f'`model` {model.name!r}: layer {layer.name!r} has the unknown shape '
          f'{input_shape} -> {output_shape}; FLOPs need static shapes (give '
          'the model an input shape).')
    positions = _positions(layer, input_shape, output_shape, kinds)
    dense = sparse = 0
    for name in names:
      kernel = getattr(layer, name)
      size = math.prod(tuple(kernel.shape))
      mask = masks.get(id(kernel))
      active = size if mask is None else int((mask.numpy() > 0.5).sum())
      dense += 2 * size * positions
      sparse += 2 * active * positions
    previous = counted.get(layer.name)
    if previous is not None:  # A layer called more than once.
      dense, sparse = dense + previous.dense, sparse + previous.sparse
    counted[layer.name] = LayerFlops(layer.name, dense, sparse, bool(masks))
  layers = list(counted.values())
  return FlopsReport(layers, sum(l.dense for l in layers),
                     sum(l.sparse for l in layers), uncounted)


# ------------------------------------------------ training FLOPs per step
def dense_training_flops(dense_flops):
  """Dense training: forward + backward = 3 f_D per step."""
  return 3 * dense_flops


def sparse_training_flops(sparse_flops):
  """Sparse training without dense gradients (static, SET, DSR, DeepR, SNIP
  after its one-shot mask): 3 f_S per step."""
  return 3 * sparse_flops


def rigl_training_flops(sparse_flops, dense_flops, period):
  """RigL (Evci et al. 2020, section 4): `(3 f_S P + 2 f_S + f_D) / (P + 1)`.

  Every `P` steps, one step also computes the dense gradient, which costs
  `f_D` for its weight gradients instead of `f_S`.

  Args:
    sparse_flops: f_S.
    dense_flops: f_D.
    period: steps between mask updates, P (math.inf: no update).
  """
  if math.isinf(period):
    return 3 * sparse_flops
  return (3 * sparse_flops * period + 2 * sparse_flops + dense_flops) / (
      period + 1)


def snfs_training_flops(sparse_flops, dense_flops):
  """SNFS / sparse momentum (Dettmers & Zettlemoyer 2019): `2 f_S + f_D`.

  It needs the dense gradient (for the momentum of every weight) at every
  step, as RigL's paper counts it.
  """
  return 2 * sparse_flops + dense_flops


def gradual_pruning_training_flops(dense_flops, masked_dense_flops,
                                   sparsities):
  """Gradual magnitude pruning (Zhu & Gupta 2017): 3 f(t), averaged over steps.

  The pruned kernels all follow the schedule's sparsity `s_t`, so a forward
  pass at step `t` costs `f_D - s_t * f_M`, where `f_M` is the dense FLOPs of
  the pruned layers.

  Args:
    dense_flops: f_D of the whole model.
    masked_dense_flops: f_M, the dense FLOPs of the pruned layers
      (`FlopsReport.masked_dense`).
    sparsities: the sparsity of the pruned kernels at each training step.

  Returns:
    The average FLOPs of one training step.
  """
  sparsities = list(sparsities)
  if not sparsities:
    return 3 * dense_flops
  mean = sum(sparsities) / len(sparsities)
  return 3 * (dense_flops - mean * masked_dense_flops)
