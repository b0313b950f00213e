"""Trains a tiny DSR model under MirroredStrategy over 2 logical CPUs.

Run as a subprocess by test_distribution.py (logical devices must be set up
before TensorFlow initialises its devices):

  python -m tests.mirrored_run MODE [METHOD]       # one run
  python -m tests.mirrored_run MODE:METHOD ...     # several, one after another

MODE is 'graph' or 'jit' (an XLA-compiled reallocation), METHOD 'dsr' (the
default), 'deepr', 'rigl' or 'snfs'. MODE 'keras3' trains METHOD's Keras 3
model of tests/keras3_mirrored_run.py instead, the reallocation XLA-compiled
(its 'jit'); MODE 'compiled' runs tests/compiled_run.py's mode METHOD
('mirrored', or 'mirrored_xla_step', which fails half-way through a training
step: name it last). Each run builds its own model and prints one JSON line
of findings, with its 'MODE:METHOD' as 'run', in the order of the arguments;
all share one MirroredStrategy, and several runs in one process pay
TensorFlow's start-up once.
"""

import json
import sys

import tensorflow as tf

tf.config.set_logical_device_configuration(
    tf.config.list_physical_devices('CPU')[0],
    [tf.config.LogicalDeviceConfiguration()] * 2)

import tf_dsr  # pylint: disable=g-import-not-at-top,wrong-import-position
from tf_dsr import keras  # pylint: disable=g-import-not-at-top,wrong-import-position
from tests.helpers import sparse_pairs  # pylint: disable=g-import-not-at-top,wrong-import-position
from tests.helpers import sparse_tiny_cnn  # pylint: disable=g-import-not-at-top,wrong-import-position
from tests.helpers import tiny_data  # pylint: disable=g-import-not-at-top,wrong-import-position
from tests import compiled_run  # pylint: disable=g-import-not-at-top,wrong-import-position
# Sets the same two logical devices again, before TensorFlow initialises.
from tests import keras3_mirrored_run  # pylint: disable=g-import-not-at-top,wrong-import-position


def replicas_agree(variable):
  values = [v.numpy() for v in variable.values]
  return len(values) == 2 and all((values[0] == v).all() for v in values[1:])


class Checker(keras.callbacks.Callback):
  """After each step, compares every replica's copy of masks, kernels, state."""

  def __init__(self, realloc_cb):
    super().__init__()
    self.realloc_cb = realloc_cb
    self.checked_after_reallocation = 0
    self.disagreements = []
    self.masked_nonzero = 0

  def on_train_batch_end(self, batch, logs=None):
    self._check()

  def on_epoch_end(self, epoch, logs=None):
    self._check()  # SNFS reallocates at epoch ends.

  def _check(self):
    if not self.realloc_cb.history or (
        self.realloc_cb.history[-1].step != self.realloc_cb._seen_step):  # pylint: disable=protected-access
      return
    if self.realloc_cb.history[-1] is getattr(self, '_last_checked', None):
      return
    self._last_checked = self.realloc_cb.history[-1]
    self.checked_after_reallocation += 1
    state = self.model.dynamic_sparsity_state
    variables = [state.threshold, state.reallocations, state.last_step]
    variables += list(getattr(state, 'sign', []))  # DeepR's fixed signs.
    # SNFS's dense momentum is summed over replicas, not mirrored: each
    # replica's masks must agree all the same.
    for kernel, mask in sparse_pairs(self.model):
      variables += [kernel, mask]
      for k, m in zip(kernel.values, mask.values):
        self.masked_nonzero += int((k.numpy()[m.numpy() == 0] != 0).sum())
    for slot in self.model.optimizer.variables:
      if hasattr(slot, 'values'):
        variables.append(slot)
    self.disagreements += [v.name for v in variables if not replicas_agree(v)]


def run(strategy, mode, method):
  """One run of `method` with the reallocation compiled (`mode` 'jit') or not."""
  # XLA-compiled reallocation; the Keras train step is not compiled here, as
  # XLA cannot compile one function over two logical CPU devices.
  jit = mode == 'jit'
  with strategy.scope():
    model = sparse_tiny_cnn(sparsity=0.8)
  x, y = tiny_data(n=128)
  if method == 'deepr':  # After every step, with noise (T > 0).
    cb = tf_dsr.ReallocationCallback(method='deepr', period=1, alpha=1e-3,
                                     temperature=1e-3, jit_compile=jit)
  elif method == 'rigl':  # Growth by the gradient summed over replicas.
    cb = tf_dsr.ReallocationCallback(method='rigl', period=2, end_step=16,
                                     jit_compile=jit)
  elif method == 'snfs':  # At epoch ends, by the summed momentum.
    cb = tf_dsr.ReallocationCallback(method='snfs', end_step=32,
                                     jit_compile=jit)
  else:
    cb = tf_dsr.ReallocationCallback(target_pruned=30, period=2,
                                     initial_threshold=2e-2, jit_compile=jit)
  checker = Checker(cb)
  model.fit(x, y, batch_size=16, epochs=2, verbose=0, callbacks=[cb, checker])
  print(json.dumps({
      'run': f'{mode}:{method}',
      'jit': cb.reallocator.jit_compile,
      'replicas': strategy.num_replicas_in_sync,
      'reallocations': len(cb.history),
      'pruned': sum(s.pruned for s in cb.history),
      'checked': checker.checked_after_reallocation,
      'disagreements': checker.disagreements,
      'masked_nonzero': checker.masked_nonzero,
      'mirrored_masks': all(hasattr(m, 'values') for _, m in sparse_pairs(model)),
      'mirrored_signs': [hasattr(v, 'values') for v in getattr(
          model.dynamic_sparsity_state, 'sign', [])],
  }), flush=True)


def main(argv):
  if len(argv) in (1, 2) and ':' not in argv[0]:
    runs = [(argv[0], argv[1] if len(argv) > 1 else 'dsr')]
  else:
    runs = [tuple(a.split(':')) for a in argv]
  strategy = tf.distribute.MirroredStrategy(['/cpu:0', '/cpu:1'])
  for mode, method in runs:
    if mode == 'compiled':
      print(json.dumps(dict(run=f'{mode}:{method}',
                            **compiled_run.MODES[method](strategy))),
            flush=True)
    elif mode == 'keras3':
      print(json.dumps(dict(run=f'{mode}:{method}',
                            **keras3_mirrored_run.train(method, jit=True,
                                                     strategy=strategy))),
            flush=True)
    else:
      run(strategy, mode, method)


if __name__ == '__main__':
  main(sys.argv[1:])
