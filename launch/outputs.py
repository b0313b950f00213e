"""What a run writes to its model directory, and how it writes it safely.

Layout of `--model_dir`:

    config.json        the resolved config and overrides (written at start)
    checkpoints/       tf.train.CheckpointManager: model (masks and DSR state
                       included), optimizer, epoch counter; one per epoch
                       (Keras 3: weights and optimizer variables as lists;
                       see launch.keras3_outputs)
    backup/            with --backup_steps: keras BackupAndRestore's backup
                       every N steps and at every epoch end (same contents,
                       plus the position in the epoch); removed when
                       training ends (Keras 3: launch.keras3_outputs's
                       MidEpochBackup, the same files)
    logs/train, logs/validation   Keras TensorBoard scalars (loss, top-1,
                       top-5, learning rate)
    logs/dsr           DSR scalars per reallocation (H, K, active, densities)
    saved_model/       the final model with masks baked in (SavedModel;
                       Keras 3: `model.export`'s, see launch.keras3_outputs)
    results.json       final top-1/top-5, parameter counts, wall time
    initial_weights.npz  every weight at step 0 (sparse methods; by name)
    final_masks.npz    the final masks (sparse methods; by name): with
                       initial_weights.npz, what the controls start from
    sparse_model.npz   the final model as a compact sparse checkpoint
                       (tf_dsr.save_sparse; DSR-family methods); its size
                       is in results.json under compact_checkpoint

Only a complete checkpoint is ever listed in `checkpoints/checkpoint` and
`backup/chief/checkpoint` (a CheckpointManager writes the checkpoint's files,
then replaces that index file by an atomic rename), and `saved_model/` and
`results.json` are written under temporary names and renamed, so an
interrupted run leaves nothing that a later `--resume` would trip on. Paths go
through `tf.io.gfile`, so `gs://` directories work too.
"""

import dataclasses
import io
import json
import os
from typing import Optional
import uuid

import numpy as np

import tensorflow as tf

from tf_dsr import keras

from launch import precheck
from launch.errors import LaunchError

EPOCH_KEY = 'epoch/.ATTRIBUTES/VARIABLE_VALUE'
# What keras.callbacks.BackupAndRestore records of its position.
BACKUP_EPOCH_KEY = 'ckpt_saved_epoch/.ATTRIBUTES/VARIABLE_VALUE'
BACKUP_BATCH_KEY = 'ckpt_saved_batch/.ATTRIBUTES/VARIABLE_VALUE'
# Settings a resumed run may change: they do not affect the trained weights.
RESUMABLE_CHANGES = ('epochs', 'eval_steps', 'validation_freq')


@dataclasses.dataclass(frozen=True)
class Start:
  """Where a run starts: fresh, or from a checkpoint or a mid-epoch backup.

  Attributes:
    checkpoint: the checkpoint to restore, or None for a fresh run.
    epoch: the epoch training starts in.
    step: the batch of `epoch` training starts at (0 but after a mid-epoch
      backup; it may equal the steps per epoch, meaning the next epoch).
    backup: whether `checkpoint` is a `BackupAndRestore` backup.
  """
  checkpoint: Optional[str] = None
  epoch: int = 0
  step: int = 0
  backup: bool = False


class RunDir:
  """Paths and safe writes inside one model directory.

  Args:
    path: the model directory (local or gs://).
  """

  def __init__(self, path):
    self.path = path
    self.checkpoints = os.path.join(path, 'checkpoints')
    self.logs = os.path.join(path, 'logs')
    self.dsr_logs = os.path.join(self.logs, 'dsr')
    self.saved_model = os.path.join(path, 'saved_model')
    self.results = os.path.join(path, 'results.json')
    self.config = os.path.join(path, 'config.json')
    self.initial_weights = os.path.join(path, 'initial_weights.npz')
    self.final_masks = os.path.join(path, 'final_masks.npz')
    self.sparse_checkpoint = os.path.join(path, 'sparse_model.npz')
    self.backup = os.path.join(path, 'backup')

  def check_writable(self):
    """Raises LaunchError unless the directory can be created and written.

    Checked before anything is written: a path that is a file, lies under a
    file or a missing directory, or cannot be written
    (`launch.precheck.check_model_dir`; only local paths are probed).
    """
    precheck.check_model_dir(self.path)

  def latest_backup(self):
    """`(path, epoch, batch)` of the newest complete mid-epoch backup, or None.

    `epoch` is the epoch the backup was taken in and `batch` the index of the
    last batch of it that was trained.
    """
    chief = os.path.join(self.backup, 'chief')
    path = (tf.train.latest_checkpoint(chief) if tf.io.gfile.isdir(chief)
            else None)
    if path is None:
      return None
    return (path, int(tf.train.load_variable(path, BACKUP_EPOCH_KEY)),
            int(tf.train.load_variable(path, BACKUP_BATCH_KEY)))

  def latest_checkpoint(self):
    """Path prefix of the newest complete checkpoint, or None."""
    if not tf.io.gfile.isdir(self.checkpoints):
      return None
    return tf.train.latest_checkpoint(self.checkpoints)

  def check_start(self, resume, settings, defaults=None):
    """Validates `--resume` against the directory's state, before anything is written.

    A run resumes from its newest state: the mid-epoch backup when there is
    one (it is written at every epoch end before the epoch checkpoint, and
    removed when training ends, so it is never older), else the newest
    epoch checkpoint. A run that was stopped before it saved anything (its
    config.json is there) starts over, so a restart script may always pass
    `--resume`.

    Args:
      resume: whether the user asked to resume.
      settings: the JSON form of the requested config.
      defaults: the JSON form of each config field's default; a field the
        saved config lacks (added to the launcher since) counts as its
        default there.

    Returns:
      A `Start`.

    Raises:
      LaunchError: `--resume` without a checkpoint, a fresh run over an
        existing one, or a resumed run whose config differs in a setting that
        affects training.
    """
    latest, backup = self.latest_checkpoint(), self.latest_backup()
    found = backup[0] if backup else latest
    started = tf.io.gfile.exists(self.config)
    if resume and found is None and not started:
      raise LaunchError(precheck.no_checkpoint_message(self.path))
    if not resume and found is not None:
      raise LaunchError(f'--model_dir {self.path} already holds a run '
                        f'(checkpoint {os.path.basename(found)}); pass --resume '
                        'to continue it, or choose another --model_dir.')
    if not resume:
      return Start()
    if started:
      with tf.io.gfile.GFile(self.config) as f:
        saved = json.load(f)['settings']
      saved = dict({k: v for k, v in (defaults or {}).items()
                    if k in settings}, **saved)
      changed = sorted(k for k in set(saved) | set(settings)
                       if saved.get(k) != settings.get(k) and
                       k not in RESUMABLE_CHANGES)
      if changed:
        details = ', '.join(f'{k}: {saved.get(k)!r} -> {settings.get(k)!r}'
                            for k in changed)
        raise LaunchError(f'--resume: the config differs from the run in '
                          f'{self.path} ({details}); only '
                          f'{", ".join(RESUMABLE_CHANGES)} may change.')
    if found is None:  # Stopped before its first checkpoint: start over.
      return Start()
    if backup:
      path, epoch, batch = backup
      return Start(checkpoint=path, epoch=epoch, step=batch + 1, backup=True)
    return Start(checkpoint=latest,
                 epoch=int(tf.train.load_variable(latest, EPOCH_KEY)))

  def write_json(self, path, data):
    """Writes `data` as JSON to `path` through a temporary file and a rename."""
    tf.io.gfile.makedirs(os.path.dirname(path))
    temporary = f'{path}.tmp-{uuid.uuid4().hex}'
    with tf.io.gfile.GFile(temporary, 'w') as f:
      json.dump(data, f, indent=2, sort_keys=False)
    tf.io.gfile.rename(temporary, path, overwrite=True)

  def write_arrays(self, path, arrays):
    """Writes `{name: array}` as an `.npz` file through a temporary file and a rename."""
    tf.io.gfile.makedirs(os.path.dirname(path))
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    temporary = f'{path}.tmp-{uuid.uuid4().hex}'
    with tf.io.gfile.GFile(temporary, 'wb') as f:
      f.write(buffer.getvalue())
    tf.io.gfile.rename(temporary, path, overwrite=True)

  def export(self, model):
    """Saves `model` as a SavedModel in `saved_model/`, replacing an old one whole.

    A tf_keras model as a Keras SavedModel; a Keras 3 model with
    `model.export` (see `launch.keras3_outputs`).
    """
    temporary = f'{self.saved_model}.tmp-{uuid.uuid4().hex}'
    if isinstance(model, keras.Model):
      model.save(temporary, save_format='tf', include_optimizer=False)
    else:  # Keras 3: its inference SavedModel (launch.keras3_outputs).
      from launch import keras3_outputs  # pylint: disable=g-import-not-at-top
      keras3_outputs.export(model, temporary)
    if tf.io.gfile.exists(self.saved_model):
      old = f'{self.saved_model}.old-{uuid.uuid4().hex}'
      tf.io.gfile.rename(self.saved_model, old)
      tf.io.gfile.rename(temporary, self.saved_model)
      tf.io.gfile.rmtree(old)
    else:
      tf.io.gfile.rename(temporary, self.saved_model)


class EpochCheckpointMixin:
  """Saves a checkpoint after every epoch, numbered by epochs completed.

  A callback of either Keras: `EpochCheckpoint` (tf_keras) or
  `launch.keras3_outputs.EpochCheckpoint`.

  Args:
    manager: a `tf.train.CheckpointManager` whose checkpoint holds `epoch`.
    epoch: an int64 variable set to the number of completed epochs.
  """

  def __init__(self, manager, epoch):
    super().__init__()
    self.manager = manager
    self.epoch = epoch

  def on_epoch_end(self, epoch, logs=None):
    self.epoch.assign(epoch + 1)
    self.manager.save(checkpoint_number=epoch + 1)


class EpochCheckpoint(EpochCheckpointMixin, keras.callbacks.Callback):
  __doc__ = EpochCheckpointMixin.__doc__


class MidEpochBackup(keras.callbacks.BackupAndRestore):
  """Keras's `BackupAndRestore`, every `every_steps` steps and at each epoch end.

  Place it after the callbacks that change the model at a batch's end (the
  `ReallocationCallback`): a backup taken after step s then holds step s's
  reallocation. On resume, `fit` restores the backup in `on_train_begin` and
  continues at the batch after it; the run's data stream must start there too
  (`launch.data.load(..., initial_step=)`).

  Two fixes over the base class: the position saved is the last batch of the
  execution (the base class records its first, which repeats steps after a
  resume when `steps_per_execution > 1`), and steps are counted as steps, not
  as executions. The backup at each epoch end keeps it at least as new as the
  epoch checkpoint written after it.

  Args:
    backup_dir: directory of the backups (read by every worker, written by
      the chief).
    every_steps: steps between mid-epoch backups; 0 for epoch ends only.
    steps_per_epoch: training steps per epoch.
  """

  def __init__(self, backup_dir, every_steps, steps_per_epoch):
    super().__init__(backup_dir, save_freq=every_steps or 'epoch',
                     delete_checkpoint=True)
    self.every_steps = every_steps
    self.steps_per_epoch = steps_per_epoch
    self._last_backup_batch = None

  def _implements_train_batch_hooks(self):
    return bool(self.every_steps)

  def on_epoch_begin(self, epoch, logs=None):
    super().on_epoch_begin(epoch, logs)
    self._last_backup_batch = None

  def on_train_batch_begin(self, batch, logs=None):
    if self._last_backup_batch is None:  # Batch 0, or where a resume starts.
      self._last_backup_batch = batch - 1

  def on_train_batch_end(self, batch, logs=None):
    if self.every_steps and batch - self._last_backup_batch >= self.every_steps:
      self._back_up_after(batch)

  def on_epoch_end(self, epoch, logs=None):
    self._back_up_after(self.steps_per_epoch - 1)

  def _back_up_after(self, batch):
    self._training_state._ckpt_saved_batch.assign(batch)
    self._training_state.back_up(epoch=self._current_epoch)
    self._last_backup_batch = batch
