"""Which kernels are sparse: the DSR paper's choices (Mostafa & Wang 2019, arXiv
1902.05967), and RigL's for MobileNet v1 (Evci et al. 2020, arXiv 1911.11134)."""

import re

# arch -> pattern a layer name must fully match for its kernel to be sparse.
_SPARSE_PATTERNS = {
    # Both 3x3 convs of every residual block; stem, 1x1 shortcuts and fc stay dense.
    'wide_resnet': r'group\d+_block\d+_conv[12]',
    # All three convs of every bottleneck and the fc; stem and downsamples stay dense.
    'resnet50': r'stage\d+_block\d+_conv[123]|fc',
    # All three Dense layers.
    'lenet_300_100': r'fc\d+',
    # Every conv but the first, and the Dense.
    'small_cnn': r'(?!conv1$)conv\d+|fc',
    # RigL's MobileNet v1: the 13 pointwise 1x1 convs and the fc; the first
    # conv and the depthwise convs (under 2% of the weights) stay dense.
    'mobilenet_v1': r'block\d+_pw|fc',
}


def sparse_kernel_layers(model, arch):
  """Returns the names of the layers whose kernels DSR reparameterizes sparsely.

  Follows the choices of Mostafa & Wang, "Parameter Efficient Training of Deep
  Convolutional Neural Networks by Dynamic Sparse Reparameterization" (ICML 2019,
  arXiv 1902.05967): for WRN-28-2 the 24 block 3x3 convs, for ResNet-50 the 48
  bottleneck convs plus the final Dense, for LeNet-300-100 all Dense layers, for
  `small_cnn` every kernel but the first conv's. MobileNet v1, which the DSR
  paper did not train, follows Evci et al., "Rigging the Lottery: Making All
  Tickets Winners" (ICML 2020, arXiv 1911.11134): the 13 pointwise convs and
  the final Dense are sparse, the first conv and the depthwise convs dense.
  This is only a name list; it relies on the layer names given by the
  builders in this package.

  Args:
    model: A Keras model built by the matching builder in `models`.
    arch: One of 'wide_resnet', 'resnet50', 'lenet_300_100', 'small_cnn',
      'mobilenet_v1'.

  Returns:
    Layer names in model order, each a layer with a `kernel`.

  Raises:
    ValueError: If `arch` is unknown, or no kernel layer of `model` matches it.
  """
  if arch not in _SPARSE_PATTERNS:
    raise ValueError(f'arch must be one of {sorted(_SPARSE_PATTERNS)}, got {arch!r}')
  pattern = re.compile(_SPARSE_PATTERNS[arch])
  names = [layer.name for layer in model.layers
           if hasattr(layer, 'kernel') and pattern.fullmatch(layer.name)]
  if not names:
    raise ValueError(f'model {model.name!r} has no kernel layers named as arch {arch!r} expects')
  return names
