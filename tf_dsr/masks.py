"""How a mask is stored: a bool variable, one byte per weight.

A `DynamicSparseWrapper` keeps each kernel's mask in a non-trainable
variable of dtype `DTYPE` (bool, 1 byte per weight; earlier versions kept
float32 masks like their kernels, 4 bytes, which `mask_dtype='float32'`
still builds). The contract every reader and writer of masks shares:

- a mask says which weights are active (True, or 1 in a float32 mask);
  `active(mask)` gives a bool tensor for a mask of either dtype;
- the masked forward pass is `kernel * tf.cast(mask, kernel dtype)`: exactly
  the kernel's value or 0, in any floating dtype, and the kernel's gradient is
  the incoming gradient times the mask, as with float32 masks;
- TensorFlow checkpoints (`model.save_weights` in the TF format,
  `tf.train.Checkpoint`, `ModelCheckpoint`, `BackupAndRestore`) store each
  bool mask as float32 through `CheckpointValue`, as earlier versions did, so
  checkpoints of either layout load into either. The `.keras`, `.h5` and
  `.weights.h5` files and SavedModel directories store the variable as it is
  (1 byte per weight); weights files of the float32 layout are cast to bool
  on loading, and a whole saved model of that layout, rebuilt from its config
  (which has no `mask_dtype`), keeps float32 masks.
"""

import tensorflow as tf
from tensorflow.python.distribute import load_context  # pylint: disable=g-direct-tensorflow-import

# One byte per weight, cast exactly to 0.0/1.0 in every float dtype
# (tests/test_mask_layout.py), and run by the test suite under XLA,
# MirroredStrategy, MultiWorkerMirroredStrategy and mixed precision. Not
# uint8 (also one byte): MultiWorkerMirroredStrategy broadcasts each new
# variable's initial value with a collective op that takes bool but not
# uint8 or int8 (tests/test_multi_worker.py failed with uint8 masks).
DTYPE = tf.bool

# The dtype TensorFlow checkpoints store masks in (the dtype of the masks of
# versions before `DTYPE`), so checkpoints of either version load.
CHECKPOINT_DTYPE = tf.float32

# The attribute under which a checkpoint stores a variable's value; the same
# name here lets a mask saved by a plain variable restore into
# `CheckpointValue` and back.
_VARIABLE_VALUE = 'VARIABLE_VALUE'


DTYPES = ('bool', 'float32')


def validate_dtype(dtype):
  """Raises ValueError unless `dtype` is one of `DTYPES`."""
  if not isinstance(dtype, str) or dtype not in DTYPES:
    raise ValueError(f'`mask_dtype` must be one of {list(DTYPES)}, got '
                     f'{dtype!r}.')


def in_saved_model_load():
  """True while a SavedModel is being loaded (`keras.models.load_model`)."""
  return load_context.in_load_context()


def active(mask):
  """A bool tensor, True where `mask` (bool or 0/1) marks an active weight."""
  return tf.cast(mask, tf.bool)


class CheckpointValue(tf.__internal__.tracking.Trackable):
  """What a TensorFlow checkpoint saves for one mask variable: its float32 value.

  A checkpoint checks each restored tensor's dtype against the dtype the
  object declares, so a bool variable cannot read the float32 masks that
  earlier versions wrote. The wrapper lists this object under the mask's name
  instead of the variable: it declares float32 (what every version writes)
  and casts what it restores to the variable's dtype.

  Args:
    variable: the mask variable (plain or distributed).
  """

  def __init__(self, variable):
    self._variable = variable

  def _serialize_to_tensors(self):
    with tf.device(self._variable.device):
      value = tf.cast(self._variable, CHECKPOINT_DTYPE)
    return {_VARIABLE_VALUE: value}

  def _restore_from_tensors(self, restored_tensors):
    (value,) = restored_tensors.values()
    return self._variable.assign(tf.cast(value, self._variable.dtype))
