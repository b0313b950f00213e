"""Trains a tiny sparse Keras 3 model under MirroredStrategy over 2 logical CPUs.

tests/test_distribution.py trains DSR, DeepR, RigL and SNFS with `train`
in the subprocess tests/mirrored_run.py, which imports this module (logical
devices must be set up before TensorFlow initialises its devices). Run
alone: arguments 'jit' or 'plain' (the reallocation XLA-compiled or not),
then one or more methods, 'dsr' (the default), 'deepr', 'rigl' or 'snfs',
each trained in turn in this process. After every reallocation, compares
the replicas' copies of each mask, kernel, rule variable and optimizer
variable, and counts nonzero inactive entries of kernels and momentum.
Variables synchronised on read (SNFS's `dense_momentum`) are each replica's
own by design and are not compared; their sum over replicas is what the
rule reads. Prints one JSON line of findings per method.
"""

import json
import sys

import tensorflow as tf

tf.config.set_logical_device_configuration(
    tf.config.list_physical_devices('CPU')[0],
    [tf.config.LogicalDeviceConfiguration()] * 2)

import keras  # pylint: disable=g-import-not-at-top,wrong-import-position
import numpy as np  # pylint: disable=g-import-not-at-top,wrong-import-position

import tf_dsr  # pylint: disable=g-import-not-at-top,wrong-import-position
from tf_dsr import _keras3  # pylint: disable=g-import-not-at-top,wrong-import-position


def _copies(variable):
  """The per-replica values of a Keras 3 variable."""
  stored = _keras3.tf_variable(variable)
  return [v.numpy() for v in getattr(stored, 'values', [stored])]


def _pairs(model):
  return [p for w in tf_dsr.collect_wrappers(model) for p in w.sparse_weights]


class Checker(keras.callbacks.Callback):
  """After each reallocation, compares every replica's copy of each variable."""

  def __init__(self, realloc_cb):
    super().__init__()
    self.realloc_cb = realloc_cb
    self.checked = 0
    self.copies = set()
    self.disagreements = []
    self.masked_nonzero = 0
    self.slots = set()
    self._last = None

  def on_train_batch_end(self, batch, logs=None):
    self._check()

  def on_epoch_end(self, epoch, logs=None):
    self._check()  # After SNFS's reallocation: its callback runs first.

  def _check(self):
    history = self.realloc_cb.history
    if not history or history[-1] is self._last:
      return
    self._last = history[-1]
    self.checked += 1
    variables = []
    for kernel, mask in _pairs(self.model):
      variables += [kernel, mask]
      slots, = tf_dsr.kerases.KERAS3.slot_variables(self.model.optimizer,
                                                    [kernel])
      self.slots.add(len(slots))
      for k, m, *s in zip(_copies(kernel), _copies(mask),
                          *[_copies(slot) for slot in slots]):
        # Momentum is reset where weights move and no gradient reaches an
        # inactive entry, so it stays 0 there.
        self.masked_nonzero += sum(int((v[m == 0] != 0).sum())
                                   for v in [k] + s)
    for wrapper in tf_dsr.collect_wrappers(self.model):
      for group in wrapper.auxiliary_weights.values():
        variables += [v for v in group if v.synchronization != 'on_read']
    variables += list(self.model.optimizer.variables)
    for variable in variables:
      copies = _copies(variable)
      self.copies.add(len(copies))
      if not all(np.array_equal(copies[0], c) for c in copies[1:]):
        self.disagreements.append(variable.path)


OPTIONS = {
    'dsr': dict(target_pruned=30, period=2, initial_threshold=2e-2),
    'deepr': dict(period=2, alpha=0.05),
    'rigl': dict(period=2, drop_fraction=0.3, end_step=16),
    'snfs': dict(prune_rate=0.3),  # At the end of each epoch.
}


def main():
  # 'jit': the reallocation XLA-compiled; the Keras train step is not, as XLA
  # cannot compile one function over two logical CPU devices.
  jit = len(sys.argv) > 1 and sys.argv[1] == 'jit'
  for method in sys.argv[2:] or ['dsr']:
    print(json.dumps(train(method, jit)), flush=True)


def train(method, jit, strategy=None):
  """Trains with `method` and returns the findings (a JSON-able dict).

  `strategy`: the MirroredStrategy to use; a new one if None. A process
  that trains under several strategies should pass its one strategy: a
  MirroredStrategy made after another strategy's collectives ran can reuse
  their instance keys ("Shape mismatch in the collective instance").
  """
  options = OPTIONS[method]
  if strategy is None:
    strategy = tf.distribute.MirroredStrategy(['/cpu:0', '/cpu:1'])
  keras.utils.set_random_seed(0)
  with strategy.scope():
    model = tf_dsr.sparsify(keras.Sequential([
        keras.Input((16,)),
        keras.layers.Dense(32, activation='relu', name='a'),
        keras.layers.Dense(10, name='b')]), 0.8, seed=1)
    model.compile(keras.optimizers.SGD(0.05, momentum=0.9),
                  keras.losses.SparseCategoricalCrossentropy(from_logits=True))
  rng = np.random.default_rng(0)
  x = rng.normal(size=(128, 16)).astype('float32')
  y = rng.integers(0, 10, 128)
  cb = tf_dsr.ReallocationCallback(method=method, jit_compile=jit, **options)
  checker = Checker(cb)
  model.fit(x, y, batch_size=16, epochs=2, verbose=0, callbacks=[cb, checker])
  # Read in cross-replica context: the sum over replicas.
  momentum_nonzero = sum(
      int((tf.convert_to_tensor(v).numpy()[m.numpy() == 0] != 0).sum())
      for w in tf_dsr.collect_wrappers(model)
      for v, (_, m) in zip(w.auxiliary_weights.get('dense_momentum', []),
                           w.sparse_weights))
  return {
      'method': method,
      'momentum_nonzero_where_inactive': momentum_nonzero,
      'jit': cb.reallocator.jit_compile,
      'replicas': strategy.num_replicas_in_sync,
      'reallocations': len(cb.history),
      'pruned': sum(s.pruned for s in cb.history),
      'checked': checker.checked,
      'copies': sorted(checker.copies),
      'slots': sorted(checker.slots),
      'disagreements': checker.disagreements,
      'masked_nonzero': checker.masked_nonzero,
  }


if __name__ == '__main__':
  main()
