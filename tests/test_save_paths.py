"""Every Keras save path carries the whole DSR state: a run saved after 2
epochs, loaded into a fresh model and continued for 2 more ends bit-identical
to an uninterrupted 4-epoch run in masks, H, reallocation steps and weights.

8 steps per epoch, a reallocation every 3 steps: steps 3, 6, ..., 30 (10
reallocations), 5 before the save and 5 after it. The `.keras` file and the
`.weights.h5` file, which both Kerases write, are tested on tf_keras and
Keras 3; the other formats are tf_keras's.
"""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf

import tf_dsr
from tf_dsr import keras
from tests.helpers import FLAVOURS
from tests.helpers import masks_of
from tests.helpers import Preempted
from tests.helpers import PreemptAt
from tests.helpers import sparse_tiny_cnn
from tests.helpers import tiny_data

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
EPOCHS = 4
SAVED_AFTER = 2
EXPECTED_STEPS = [3, 6, 9, 12, 15, 18, 21, 24, 27, 30]


def _model(momentum, flavour='tf_keras'):
  k = FLAVOURS[flavour]
  optimizer = (k.optimizers.SGD(0.05, momentum=0.9) if momentum
               else k.optimizers.SGD(0.05))
  return sparse_tiny_cnn(seed=4, optimizer=optimizer, flavour=flavour)


def _callback():
  return tf_dsr.ReallocationCallback(target_pruned=20, period=3, seed=4)


def _fit(model, callbacks, initial_epoch, epochs):
  x, y = tiny_data()
  model.fit(x, y, batch_size=8, epochs=epochs, initial_epoch=initial_epoch,
            verbose=0, shuffle=False, callbacks=callbacks)


def _outcome(model, steps):
  state = model.dynamic_sparsity_state
  return {
      'steps': steps,
      'threshold': float(state.threshold.numpy()),
      'reallocations': int(state.reallocations.numpy()),
      'last_step': int(state.last_step.numpy()),
      'masks': masks_of(model),
      'weights': [v.numpy() for v in model.weights],
  }


_UNINTERRUPTED = {}


def _uninterrupted(momentum, flavour='tf_keras'):
  if (momentum, flavour) not in _UNINTERRUPTED:
    tf.config.experimental.enable_op_determinism()
    model, cb = _model(momentum, flavour), _callback()
    _fit(model, [cb], 0, EPOCHS)
    _UNINTERRUPTED[momentum, flavour] = _outcome(
        model, [s.step for s in cb.history])
  return _UNINTERRUPTED[momentum, flavour]


def _assert_same(outcome, expected):
  assert outcome['steps'] == expected['steps'] == EXPECTED_STEPS
  assert outcome['reallocations'] == expected['reallocations'] == 10
  assert outcome['last_step'] == expected['last_step'] == 30
  assert outcome['threshold'] == expected['threshold']
  for a, b in zip(outcome['masks'], expected['masks']):
    np.testing.assert_array_equal(a, b)
  assert len(outcome['weights']) == len(expected['weights'])
  for a, b in zip(outcome['weights'], expected['weights']):
    np.testing.assert_array_equal(a, b)


def _load_model(path):
  return lambda momentum, flavour: FLAVOURS[flavour].models.load_model(path)


def _load_weights(path):
  def load(momentum, flavour):
    fresh = _model(momentum, flavour)
    fresh.load_weights(path)
    return fresh
  return load


# name -> (save(model, directory) -> load(momentum, flavour) -> model, whether the
# format keeps the optimizer's own state). Formats that drop the optimizer
# (Keras restores a SavedModel directory with a new optimizer; `.h5` and
# `.weights.h5` weights files hold layer weights only) are run with plain SGD, which has none: the DSR
# state itself is carried by every format.
def _save_keras(model, d):
  model.save(os.path.join(d, 'm.keras'))
  return _load_model(os.path.join(d, 'm.keras'))


def _save_h5(model, d):
  model.save(os.path.join(d, 'm.h5'))
  return _load_model(os.path.join(d, 'm.h5'))


def _save_savedmodel(model, d):
  model.save(os.path.join(d, 'saved_model'))
  return _load_model(os.path.join(d, 'saved_model'))


def _save_weights_h5(model, d):
  model.save_weights(os.path.join(d, 'w.h5'))
  return _load_weights(os.path.join(d, 'w.h5'))


def _save_weights_keras_h5(model, d):
  model.save_weights(os.path.join(d, 'w.weights.h5'))
  return _load_weights(os.path.join(d, 'w.weights.h5'))


def _save_weights_tf(model, d):
  model.save_weights(os.path.join(d, 'w'))
  return _load_weights(os.path.join(d, 'w'))


def _save_checkpoint(model, d):
  path = tf.train.Checkpoint(model=model, optimizer=model.optimizer).save(
      os.path.join(d, 'ckpt'))

  def load(momentum, flavour):
    fresh = _model(momentum, flavour)
    fresh.optimizer.build(fresh.trainable_variables)
    tf.train.Checkpoint(model=fresh, optimizer=fresh.optimizer).restore(
        path).assert_existing_objects_matched()
    return fresh
  return load


SAVERS = {
    'model.save .keras': (_save_keras, True),
    'model.save .h5': (_save_h5, True),
    'model.save SavedModel directory': (_save_savedmodel, False),
    'save_weights .h5': (_save_weights_h5, False),
    'save_weights .weights.h5': (_save_weights_keras_h5, False),
    'save_weights TensorFlow format': (_save_weights_tf, True),
    'tf.train.Checkpoint': (_save_checkpoint, True),
}


# What Keras 3 writes: it keeps the optimizer's state only in `.keras` files.
BOTH_KERASES = ('model.save .keras', 'save_weights .weights.h5')


@pytest.mark.parametrize('flavour, name', [
    ('tf_keras', name) for name in sorted(SAVERS)] + [
        ('keras3', name) for name in BOTH_KERASES])
def test_save_load_continue_equals_uninterrupted(tmp_path, flavour, name):
  save, keeps_optimizer = SAVERS[name]
  expected = _uninterrupted(keeps_optimizer, flavour)
  model, first = _model(keeps_optimizer, flavour), _callback()
  _fit(model, [first], 0, SAVED_AFTER)
  load = save(model, str(tmp_path))
  del model
  fresh, second = load(keeps_optimizer, flavour), _callback()
  _fit(fresh, [second], SAVED_AFTER, EPOCHS)
  _assert_same(_outcome(fresh, [s.step for s in first.history + second.history]),
               expected)


@pytest.mark.parametrize('filepath,weights_only,keeps_optimizer', [
    ('w', True, True),            # TensorFlow-format weights
    ('w.h5', True, False),        # HDF5 weights (no optimizer state)
    ('m.keras', False, True),     # the whole model
    ('saved_model', False, False),  # SavedModel directory (new optimizer)
])
def test_model_checkpoint_callback(tmp_path, filepath, weights_only,
                                   keeps_optimizer):
  expected = _uninterrupted(keeps_optimizer)
  path = str(tmp_path / filepath)
  model, first = _model(keeps_optimizer), _callback()
  # Listed before the DSR callback: it saves at the epoch's end, after every
  # batch's callbacks ran, so the saved step counter is current.
  checkpoint = keras.callbacks.ModelCheckpoint(path,
                                               save_weights_only=weights_only)
  _fit(model, [checkpoint, first], 0, SAVED_AFTER)
  load = (_load_weights(path) if weights_only else _load_model(path))
  fresh, second = load(keeps_optimizer, 'tf_keras'), _callback()
  _fit(fresh, [second], SAVED_AFTER, EPOCHS)
  _assert_same(_outcome(fresh, [s.step for s in first.history + second.history]),
               expected)



def test_backup_and_restore_listed_before_the_callback(tmp_path):
  # BackupAndRestore saves in its own on_train_batch_end, before the DSR
  # callback has counted that batch; the resumed run must still number the
  # steps from the optimizer's restored counter (backup at step 10, epoch 1
  # batch 1), so the reallocations stay at 12, 15, ... (see test_training for
  # the other order).
  expected = _uninterrupted(True)
  x, y = tiny_data()
  batches = tf.data.Dataset.from_tensor_slices((x, y)).batch(8).repeat()
  backup = str(tmp_path / 'backup')
  model, first = _model(True), _callback()
  with pytest.raises(Preempted):
    model.fit(batches, epochs=EPOCHS, steps_per_epoch=8, verbose=0,
              callbacks=[keras.callbacks.BackupAndRestore(backup, save_freq=2),
                         first, PreemptAt(11)])
  fresh, second = _model(True), _callback()
  fresh.fit(batches.skip(10), epochs=EPOCHS, steps_per_epoch=8, verbose=0,
            callbacks=[keras.callbacks.BackupAndRestore(backup, save_freq=2),
                       second])
  _assert_same(_outcome(fresh, [s.step for s in first.history + second.history]),
               expected)


_CONTINUE_IN_A_NEW_PROCESS = '''
import json, sys
import numpy as np
import tensorflow as tf
tf.config.experimental.enable_op_determinism()
from tests import test_save_paths as t
from tf_dsr import keras
model = keras.models.load_model(sys.argv[1])
cb = t._callback()
t._fit(model, [cb], t.SAVED_AFTER, t.EPOCHS)
outcome = t._outcome(model, [s.step for s in cb.history])
np.savez(sys.argv[2], *outcome.pop('masks'), *outcome.pop('weights'))
print(json.dumps(outcome))
'''


def test_keras_file_continued_in_a_new_process(tmp_path):
  expected = _uninterrupted(True)
  model, first = _model(True), _callback()
  _fit(model, [first], 0, SAVED_AFTER)
  model.save(str(tmp_path / 'm.keras'))
  result = subprocess.run(
      [sys.executable, '-c', _CONTINUE_IN_A_NEW_PROCESS,
       str(tmp_path / 'm.keras'), str(tmp_path / 'arrays.npz')],
      cwd=ROOT, env={**os.environ, 'PYTHONPATH': ROOT}, capture_output=True,
      text=True, check=True)
  outcome = json.loads(result.stdout.strip().splitlines()[-1])
  arrays = np.load(str(tmp_path / 'arrays.npz'))
  arrays = [arrays[f'arr_{i}'] for i in range(len(arrays.files))]
  num_masks = len(expected['masks'])
  outcome['masks'] = arrays[:num_masks]
  outcome['weights'] = arrays[num_masks:]
  outcome['steps'] = [s.step for s in first.history] + outcome['steps']
  _assert_same(outcome, expected)


# Rules with per-weight variables of their own: DeepR's `sign` (changed by
# every reallocation) and SNFS's `dense_momentum` (accumulated every step).
_RULES = {
    'deepr': (lambda: tf_dsr.ReallocationCallback(
        method='deepr', period=1, seed=4, alpha=1e-3, temperature=1e-6),
              'sign'),
    # end_step given: each `fit` would otherwise set it from its own length.
    'snfs': (lambda: tf_dsr.ReallocationCallback(method='snfs', seed=4,
                                                 end_step=16),
             'dense_momentum'),
}


def _rule_outcome(model, kind):
  state = model.dynamic_sparsity_state
  return {'threshold': float(state.threshold.numpy()),
          'reallocations': int(state.reallocations.numpy()),
          'masks': masks_of(model),
          kind: [v.numpy() for v in getattr(state, kind)],
          'weights': [v.numpy() for v in model.weights]}


_RULE_UNINTERRUPTED = {}


def _rule_uninterrupted(rule):
  if rule not in _RULE_UNINTERRUPTED:
    tf.config.experimental.enable_op_determinism()
    make, kind = _RULES[rule]
    model = _model(False)
    _fit(model, [make()], 0, 2)
    _RULE_UNINTERRUPTED[rule] = _rule_outcome(model, kind)
  return _RULE_UNINTERRUPTED[rule]


@pytest.mark.parametrize('rule,path', [
    ('deepr', 'm.keras'), ('deepr', 'm.h5'), ('deepr', 'saved_model'),
    ('deepr', 'w.h5'), ('deepr', 'w.weights.h5'), ('deepr', 'w'),
    ('snfs', 'm.h5'), ('snfs', 'w.weights.h5')])
def test_rule_variables_survive_every_format(tmp_path, rule, path):
  """A rule's own variables are wrapper weights: every format carries them."""
  expected = _rule_uninterrupted(rule)
  make, kind = _RULES[rule]
  model = _model(False)
  _fit(model, [make()], 0, 1)
  path = str(tmp_path / path)
  second = make()
  if path.endswith(('.keras', 'm.h5', 'saved_model')):
    model.save(path)
    fresh = keras.models.load_model(path)
  else:
    model.save_weights(path)
    fresh = _model(False)
    if path.endswith('.h5'):
      # Weights files hold no config: the rule's variables must exist before
      # loading, and `set_model` makes them.
      second.set_model(fresh)
    fresh.load_weights(path)
  _fit(fresh, [second], 1, 2)
  outcome = _rule_outcome(fresh, kind)
  assert outcome['reallocations'] == expected['reallocations'] > 0
  assert outcome['threshold'] == expected['threshold']
  for name in ('masks', kind, 'weights'):
    assert len(outcome[name]) == len(expected[name])
    for a, b in zip(outcome[name], expected[name]):
      np.testing.assert_array_equal(a, b)


def test_weights_file_with_rule_variables_needs_the_rule_attached(tmp_path):
  make, _ = _RULES['deepr']
  model = _model(False)
  _fit(model, [make()], 0, 1)
  model.save_weights(str(tmp_path / 'w.weights.h5'))
  fresh = _model(False)
  # Keras loads layer by layer, so layers before the first wrapper may have
  # been loaded when this raises (as for any mismatched weights file).
  with pytest.raises(ValueError, match=r"1 more variables for layer "
                     r"'dynamic_sparse_conv2'.*DeepR's `sign`.*"
                     r'callback\.set_model\(model\)'):
    fresh.load_weights(str(tmp_path / 'w.weights.h5'))
