"""What a run writes to its model directory, and how it writes it safely.

Layout of `--model_dir`:

    config.json        the resolved config and overrides (written at start)
    checkpoints/       tf.train.CheckpointManager: model (masks and DSR state
                       included), optimizer, epoch counter; one per epoch
    logs/train, logs/validation   Keras TensorBoard scalars (loss, top-1,
                       top-5, learning rate)
    logs/dsr           DSR scalars per reallocation (H, K, active, densities)
    saved_model/       the final model with masks baked in (SavedModel)
    results.json       final top-1/top-5, parameter counts, wall time
    initial_weights.npz  every weight at step 0 (sparse methods; by name)
    final_masks.npz    the final masks (sparse methods; by name): with
                       initial_weights.npz, what the controls start from

Only a complete checkpoint is ever listed in `checkpoints/checkpoint` (the
manager updates that index after writing), and `saved_model/` and
`results.json` are written under temporary names and renamed, so an
interrupted run leaves nothing that a later `--resume` would trip on. Paths go
through `tf.io.gfile`, so `gs://` directories work too.
"""

import io
import json
import os
import uuid

import numpy as np

import tensorflow as tf

from tf_dsr import keras

from launch.errors import LaunchError

EPOCH_KEY = 'epoch/.ATTRIBUTES/VARIABLE_VALUE'
# Settings a resumed run may change: they do not affect the trained weights.
RESUMABLE_CHANGES = ('epochs', 'eval_steps', 'validation_freq')


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

  def latest_checkpoint(self):
    """Path prefix of the newest complete checkpoint, or None."""
    if not tf.io.gfile.isdir(self.checkpoints):
      return None
    return tf.train.latest_checkpoint(self.checkpoints)

  def check_start(self, resume, settings):
    """Validates `--resume` against the directory's state, before anything is written.

    Args:
      resume: whether the user asked to resume.
      settings: the JSON form of the requested config.

    Returns:
      `(checkpoint, epoch)`: the checkpoint to restore and the epochs it has
      completed, or `(None, 0)` for a fresh run.

    Raises:
      LaunchError: `--resume` without a checkpoint, a fresh run over an
        existing one, or a resumed run whose config differs in a setting that
        affects training.
    """
    latest = self.latest_checkpoint()
    if resume and latest is None:
      raise LaunchError(f'--resume: no checkpoint in {self.checkpoints}; start '
                        'the run without --resume.')
    if not resume and latest is not None:
      raise LaunchError(f'--model_dir {self.path} already holds a run '
                        f'(checkpoint {os.path.basename(latest)}); pass --resume '
                        'to continue it, or choose another --model_dir.')
    if latest is None:
      return None, 0
    if tf.io.gfile.exists(self.config):
      with tf.io.gfile.GFile(self.config) as f:
        saved = json.load(f)['settings']
      changed = sorted(k for k in set(saved) | set(settings)
                       if saved.get(k) != settings.get(k) and
                       k not in RESUMABLE_CHANGES)
      if changed:
        details = ', '.join(f'{k}: {saved.get(k)!r} -> {settings.get(k)!r}'
                            for k in changed)
        raise LaunchError(f'--resume: the config differs from the run in '
                          f'{self.path} ({details}); only '
                          f'{", ".join(RESUMABLE_CHANGES)} may change.')
    return latest, int(tf.train.load_variable(latest, EPOCH_KEY))

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
    """Saves `model` as a SavedModel in `saved_model/`, replacing an old one whole."""
    temporary = f'{self.saved_model}.tmp-{uuid.uuid4().hex}'
    model.save(temporary, save_format='tf', include_optimizer=False)
    if tf.io.gfile.exists(self.saved_model):
      old = f'{self.saved_model}.old-{uuid.uuid4().hex}'
      tf.io.gfile.rename(self.saved_model, old)
      tf.io.gfile.rename(temporary, self.saved_model)
      tf.io.gfile.rmtree(old)
    else:
      tf.io.gfile.rename(temporary, self.saved_model)


class EpochCheckpoint(keras.callbacks.Callback):
  """Saves a checkpoint after every epoch, numbered by epochs completed.

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
