"""Digests of a run's state, for checking that workers and runs agree bit for bit.

`python -m launch.train ... --digest_dir=DIR` makes every process of the run
(each worker of a multi-worker run, or the one process of any other) append
one JSON line to `DIR/worker-<task>.jsonl` at the start of training, after
every reallocation and at the end of training:

    {"event": "reallocation", "step": 30, "reallocations": 3,
     "threshold": "0x1.0624dd2f1a9fcp-10", "masks": "<sha256>",
     "weights": "<sha256>", "optimizer": "<sha256>"}

`threshold` is H as an exact hexadecimal float; `masks`, `weights` (every
model variable, masks and DSR state included) and `optimizer` (every
optimizer variable) are SHA-256 digests of the raw bytes of the variables,
in the model's order. Distributed variables are read from this process's
first local replica copy, so reading them runs no collective and each worker
digests what it holds itself. Two processes hold bit-identical state exactly
when their lines are equal.
"""

import hashlib
import json
import os

import numpy as np

import tensorflow as tf

import tf_dsr
from tf_dsr import keras


def _local_value(variable):
  """This process's own copy of `variable`, as a numpy array."""
  values = getattr(variable, 'values', None)
  if values:  # A distributed variable: its first local replica copy.
    variable = values[0]
  return np.asarray(variable.numpy())


def digest(variables):
  """SHA-256 hex digest of the dtypes, shapes and bytes of `variables`, in order."""
  sha = hashlib.sha256()
  for variable in variables:
    value = _local_value(variable)
    sha.update(f'{value.dtype.str}{value.shape};'.encode())
    sha.update(np.ascontiguousarray(value).tobytes())
  return sha.hexdigest()


def state_digest(model):
  """The digest dict of `model` (see the module docstring), without `event`."""
  masks = [mask for wrapper in tf_dsr.collect_wrappers(model)
           for _, mask in wrapper.sparse_weights]
  record = {'step': None, 'reallocations': None, 'threshold': None,
            'masks': digest(masks), 'weights': digest(model.weights),
            'optimizer': digest(model.optimizer.variables
                                if model.optimizer is not None else [])}
  state = getattr(model, 'dynamic_sparsity_state', None)
  if state is not None:
    record['step'] = int(_local_value(state.last_step))
    record['reallocations'] = int(_local_value(state.reallocations))
    record['threshold'] = float(_local_value(state.threshold)).hex()
  return record


class DigestWriterMixin:
  """Appends the model's digest to a JSON-lines file at the start, after each
  reallocation of `reallocation_callback`, and at the end of training.

  A callback of either Keras: `DigestWriter` (tf_keras) or
  `launch.keras3_outputs.DigestWriter`.

  Args:
    path: the file to append to (its directory is created).
    reallocation_callback: the run's `tf_dsr.ReallocationCallback`, or None
      (then only the start and the end are written). Place this callback
      after it in the list passed to `fit`.
  """

  def __init__(self, path, reallocation_callback=None):
    super().__init__()
    self.path = path
    self.reallocation_callback = reallocation_callback
    self._seen = 0
    self._supports_tf_logs = True

  def _write(self, event):
    record = dict(event=event, **state_digest(self.model))
    record['iterations'] = int(_local_value(self.model.optimizer.iterations))
    tf.io.gfile.makedirs(os.path.dirname(self.path))
    with tf.io.gfile.GFile(self.path, 'a') as f:
      f.write(json.dumps(record) + '\n')

  def on_train_begin(self, logs=None):
    history = getattr(self.reallocation_callback, 'history', [])
    self._seen = len(history)
    self._write('start')

  def on_train_batch_end(self, batch, logs=None):
    if self.reallocation_callback is None:
      return
    history = self.reallocation_callback.history
    if len(history) > self._seen:
      self._seen = len(history)
      self._write('reallocation')

  def on_train_end(self, logs=None):
    self._write('end')


class DigestWriter(DigestWriterMixin, keras.callbacks.Callback):
  __doc__ = DigestWriterMixin.__doc__


def read(path):
  """The records of a digest file, as a list of dicts."""
  with tf.io.gfile.GFile(path) as f:
    return [json.loads(line) for line in f if line.strip()]
