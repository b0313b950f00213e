"""Plain Keras models used in the DSR experiments; they know nothing of sparsity.

Every builder takes `keras=`, the Keras module to build with: None for tf_keras
(`from tf_dsr import keras`) or Keras 3 (`import keras`).

Builders return functional models that output logits and give every layer a
stable name, so that `sparse_kernel_layers(model, arch)` can list the kernels
Dynamic Sparse Reparameterization (Mostafa & Wang 2019) makes sparse:

- `wide_resnet`: pre-activation WRN (Zagoruyko & Komodakis 2016), CIFAR-10.
- `resnet50`: bottleneck ResNet-50 v1.5 (He et al. 2016), ImageNet; optional width
  multiplier for thin dense baselines.
- `mobilenet_v1`: MobileNet v1 (Howard et al. 2017), ImageNet, with width
  multiplier `alpha`; sparse as in RigL (Evci et al. 2020).
- `lenet_300_100`: LeNet-300-100 (LeCun et al. 1998), MNIST.
- `small_cnn`: a tiny conv net for quick tests and 8x8 digit images.
"""

from models.lenet import lenet_300_100, small_cnn
from models.mobilenet import mobilenet_v1
from models.policies import sparse_kernel_layers
from models.resnet import resnet50
from models.wide_resnet import wide_resnet

__all__ = ['lenet_300_100', 'mobilenet_v1', 'resnet50', 'small_cnn',
           'sparse_kernel_layers', 'wide_resnet']
