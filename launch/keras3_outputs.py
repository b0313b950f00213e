"""What a Keras 3 run writes to its model directory, and how.

A Keras 3 run (`keras='keras3'`) writes the same layout as a tf_keras run
(`launch.outputs`), with the same TensorFlow checkpoint format and keys, so
`RunDir.check_start`, `--resume` and the tools that read a run directory
treat both alike. Two things are written differently:

- `checkpoints/` and `backup/chief/`: a Keras 3 model is not a TensorFlow
  trackable graph of its layers (a `tf.train.Checkpoint(model=model)` would
  miss the masks and every non-trainable weight), so the checkpoint holds
  the model's weights (`model.weights`: kernels, masks, the DSR state,
  batch-norm statistics) and the optimizer's variables (step count and
  momentum) as two lists, by position, under `model/` and `optimizer/`, next
  to the same `epoch` counter (and, in a backup, the same
  `ckpt_saved_epoch`/`ckpt_saved_batch` position) as a tf_keras run.
  Keras 3's own `BackupAndRestore` writes a `.weights.h5` file in place (not
  atomic) and cannot continue part-way through an epoch, so `MidEpochBackup`
  here writes a `tf.train.CheckpointManager` checkpoint instead.
- `saved_model/`: Keras 3's `model.export` (an inference SavedModel with a
  `serve` endpoint and a `serving_default` signature; reload it with
  `tf.saved_model.load` or `keras.layers.TFSMLayer`), of the stripped
  model, where tf_keras writes a Keras SavedModel.
"""

import keras as keras3
import tensorflow as tf

from launch import digests
from launch import outputs


class _Variables(tf.Module):
  """A list of variables, tracked by position for a `tf.train.Checkpoint`."""

  def __init__(self, variables):
    super().__init__()
    self.values = list(variables)


def checkpointed(model):
  """The objects a checkpoint of Keras 3 `model` holds (`tf.train.Checkpoint` kwargs).

  The optimizer must be built (`launch.modeling.compile_model` builds it), so
  that its momentum variables exist and a restore applies at once.
  """
  return {'model': _Variables(model.weights),
          'optimizer': _Variables(model.optimizer.variables)}


def is_keras3_model(model):
  """Whether `model` is a Keras 3 model (else a tf_keras one)."""
  return isinstance(model, keras3.Model)


class EpochCheckpoint(outputs.EpochCheckpointMixin, keras3.callbacks.Callback):
  __doc__ = outputs.EpochCheckpointMixin.__doc__


class DigestWriter(digests.DigestWriterMixin, keras3.callbacks.Callback):
  __doc__ = digests.DigestWriterMixin.__doc__


class MidEpochBackup(keras3.callbacks.Callback):
  """Backs up a Keras 3 run every `every_steps` steps and at each epoch end.

  The role of `launch.outputs.MidEpochBackup` (Keras's `BackupAndRestore`
  on tf_keras), with the same files and keys: a `tf.train.CheckpointManager`
  checkpoint in `backup_dir/chief` holding `checkpointed(model)` and the
  position (`ckpt_saved_epoch`: the epoch, `ckpt_saved_batch`: the last
  batch of it that was trained), which `RunDir.check_start` reads. Restoring
  is the runner's (before `fit`), as is continuing part-way through an epoch
  (a first `fit` of the epoch's remaining steps, `first_step` then being
  the batch it starts at). Place it after the `ReallocationCallback`, so a
  backup after step s holds step s's reallocation, and before the epoch
  checkpoint, so it is never older. The backup is kept when `fit` ends; the
  runner removes it when training is over.

  Args:
    backup_dir: the directory of the backups.
    every_steps: steps between mid-epoch backups; 0 for epoch ends only.
    steps_per_epoch: training steps per epoch.
    objects: what to back up (`checkpointed(model)`).
    first_step: the batch of its first epoch the next `fit` starts at.
  """

  def __init__(self, backup_dir, every_steps, steps_per_epoch, objects,
               first_step=0):
    super().__init__()
    self.every_steps = every_steps
    self.steps_per_epoch = steps_per_epoch
    self.first_step = first_step
    self._saved_epoch = tf.Variable(0, dtype=tf.int64, trainable=False)
    self._saved_batch = tf.Variable(0, dtype=tf.int64, trainable=False)
    checkpoint = tf.train.Checkpoint(ckpt_saved_epoch=self._saved_epoch,
                                     ckpt_saved_batch=self._saved_batch,
                                     **objects)
    self._manager = tf.train.CheckpointManager(
        checkpoint, f'{backup_dir}/chief', max_to_keep=1)
    self._epoch = 0
    self._offset = first_step
    self._last_backup_batch = None

  def on_epoch_begin(self, epoch, logs=None):
    self._epoch = epoch
    self._last_backup_batch = None

  def on_train_batch_begin(self, batch, logs=None):
    if self._last_backup_batch is None:  # Batch 0, or where a resume starts.
      self._last_backup_batch = self._offset + batch - 1

  def on_train_batch_end(self, batch, logs=None):
    batch += self._offset
    if self.every_steps and batch - self._last_backup_batch >= self.every_steps:
      self._back_up_after(batch)

  def on_epoch_end(self, epoch, logs=None):
    self._back_up_after(self.steps_per_epoch - 1)
    self._offset = 0  # Every later epoch starts at its batch 0.

  def _back_up_after(self, batch):
    self._saved_epoch.assign(self._epoch)
    self._saved_batch.assign(batch)
    self._manager.save()
    self._last_backup_batch = batch


def export(model, path):
  """Writes Keras 3 `model`'s inference SavedModel (`model.export`) to `path`."""
  model.export(path, verbose=False)
