"""Training with DSR: masks hold under every optimizer, invariants over many
reallocations, optimizer state reset, determinism, schedules, resume.

The behaviours both Kerases share (one hand-worked reallocation, the
invariants over many and the schedules of `fit`) run on tf_keras
and Keras 3 (`flavour`)."""

import numpy as np
import pytest
import tensorflow as tf

import tf_dsr
from tf_dsr import keras
from tests.helpers import assert_masked_weights_zero
from tests.helpers import assert_reset_where_moved
from tests.helpers import custom_train_step
from tests.helpers import FLAVOURS
from tests.helpers import masks_of
from tests.helpers import Preempted
from tests.helpers import PreemptAt
from tests.helpers import sparse_pairs
from tests.helpers import sparse_tiny_cnn
from tests.helpers import tiny_data


class _CheckEveryStep(keras.callbacks.Callback):
  """Asserts after every training step (and reallocation) that masked weights are 0."""

  def __init__(self):
    super().__init__()
    self.steps = 0

  def on_train_batch_end(self, batch, logs=None):
    assert_masked_weights_zero(self.model)
    self.steps += 1


OPTIMIZERS = {
    'sgd_momentum': lambda: keras.optimizers.SGD(0.05, momentum=0.9),
    'nesterov': lambda: keras.optimizers.SGD(0.05, momentum=0.9, nesterov=True),
    'sgd_weight_decay': lambda: keras.optimizers.SGD(
        0.05, momentum=0.9, weight_decay=5e-4),
    'adam': lambda: keras.optimizers.Adam(1e-2),
    'adamw': lambda: keras.optimizers.AdamW(1e-2, weight_decay=1e-2),
    'rmsprop': lambda: keras.optimizers.RMSprop(1e-2, momentum=0.5),
    'legacy_sgd_momentum': lambda: keras.optimizers.legacy.SGD(
        0.05, momentum=0.9),
    'legacy_adam': lambda: keras.optimizers.legacy.Adam(1e-2),
}


@pytest.mark.parametrize('name', sorted(OPTIMIZERS))
def test_masked_weights_are_zero_after_every_step(name):
  model = sparse_tiny_cnn(optimizer=OPTIMIZERS[name]())
  x, y = tiny_data()
  check = _CheckEveryStep()
  # Reallocate every 2 steps with a large H so that many weights move.
  cb = tf_dsr.ReallocationCallback(target_pruned=30, period=2,
                                   initial_threshold=5e-2)
  model.fit(x, y, batch_size=16, epochs=2, verbose=0, callbacks=[cb, check])
  assert check.steps == 8
  assert len(cb.history) == 4
  assert sum(s.pruned for s in cb.history) > 0


def _slots(optimizer, kernel):
  return tf_dsr.optimizer_state.slot_variables(optimizer, [kernel])[0]


@pytest.mark.parametrize('name', ['sgd_momentum', 'adam', 'legacy_sgd_momentum'])
def test_optimizer_state_is_reset_where_weights_moved(name):
  model = sparse_tiny_cnn(optimizer=OPTIMIZERS[name]())
  x, y = tiny_data()
  model.fit(x, y, batch_size=16, epochs=1, verbose=0,
            callbacks=[tf_dsr.ReallocationCallback(target_pruned=5, period=1000)])
  optimizer = model.optimizer
  pairs = sparse_pairs(model)
  slots = [_slots(optimizer, kernel) for kernel, _ in pairs]
  assert all(slots), 'the optimizer should keep per-weight state'
  # Fill every slot with ones so that a reset is visible.
  for group in slots:
    for slot in group:
      slot.assign(tf.ones_like(slot))
  before = masks_of(model)
  realloc = tf_dsr.Reallocator(model, target_pruned=50, seed=3,
                               initial_threshold=5e-2)
  realloc.state.threshold.assign(5e-2)
  stats = realloc.reallocate()
  assert stats.pruned > 0
  assert assert_reset_where_moved(pairs, slots, before) == stats.pruned


def _dense_1x8(flavour):
  """One Dense layer from 1 input to 8 units, no bias, at sparsity 0.5."""
  k = FLAVOURS[flavour]
  return tf_dsr.sparsify(
      k.Sequential([k.Input((1,)), k.layers.Dense(8, use_bias=False,
                                                  name='fc')]), 0.5, seed=0)


@pytest.mark.parametrize('flavour', FLAVOURS)
def test_one_reallocation_worked_by_hand(flavour):
  model = _dense_1x8(flavour)
  (kernel, mask), = sparse_pairs(model)
  mask.assign(np.array([[1, 1, 1, 1, 0, 0, 0, 0]]).astype(mask.numpy().dtype))
  kernel.assign([[0.5, 1e-4, -2e-4, -0.3, 0, 0, 0, 0]])
  realloc = tf_dsr.Reallocator(model, target_pruned=2, tolerance=0.1,
                               initial_threshold=1e-3, optimizer=False, seed=0)
  stats = realloc.reallocate(1)
  # |w| < H = 1e-3 prunes entries 1 and 2 (K = 2); the two regrown go to 2
  # of the positions inactive before (4..7), at value 0; K = N_p, so H stays.
  new_mask = np.asarray(mask.numpy()).astype(int)[0]
  assert stats.pruned == 2 and stats.total_active == 4
  assert list(new_mask[:4]) == [1, 0, 0, 1] and new_mask[4:].sum() == 2
  np.testing.assert_array_equal(
      kernel.numpy()[0], np.float32([0.5, 0, 0, -0.3, 0, 0, 0, 0]))
  assert float(realloc.state.threshold.numpy()) == pytest.approx(1e-3)


@pytest.mark.parametrize('flavour', FLAVOURS)
def test_invariants_over_many_reallocations_while_training(flavour):
  model = sparse_tiny_cnn(sparsity=0.7, flavour=flavour)
  x, y = tiny_data(n=96)
  realloc = tf_dsr.Reallocator(model, target_pruned=40, seed=5)
  pairs = sparse_pairs(model)
  sizes = [int(np.prod(m.shape)) for _, m in pairs]
  total_active = sum(int(m.numpy().sum()) for _, m in pairs)
  # Exact initial counts: round((1 - 0.7) * n).
  assert [int(m.numpy().sum()) for _, m in pairs] == [
      round(0.3 * n) for n in sizes]
  moved_across_layers = False
  thresholds = []
  train_step = custom_train_step(model)
  for step in range(1, 41):
    train_step(x[step % 6 * 16:][:16], y[step % 6 * 16:][:16])
    before = masks_of(model)
    stats = realloc.reallocate(step)
    thresholds.append(stats.threshold)
    after = masks_of(model)
    assert stats.total_active == total_active
    assert sum(int(m.sum()) for m in after) == total_active
    for (kernel, _), old, new in zip(pairs, before, after):
      assert set(np.unique(new)) <= {0.0, 1.0}
      assert new.sum() >= 1
      assert (kernel.numpy()[new == 0] == 0).all()
    if [int(m.sum()) for m in after] != [int(m.sum()) for m in before]:
      moved_across_layers = True
    assert stats.step == step
  assert moved_across_layers, 'per-layer counts should change (cross-layer moves)'
  assert int(realloc.state.reallocations.numpy()) == 40
  assert int(realloc.state.last_step.numpy()) == 40
  assert len(set(thresholds)) > 1, 'H should adapt'


def _train_run(seed, epochs=2, period=3, spe=1, flavour='tf_keras', **kwargs):
  model = sparse_tiny_cnn(seed=seed, flavour=flavour)
  model.compile(model.optimizer, model.loss, steps_per_execution=spe)
  x, y = tiny_data()
  cb = tf_dsr.ReallocationCallback(target_pruned=20, period=period, seed=seed,
                                   **kwargs)
  model.fit(x, y, batch_size=8, epochs=epochs, verbose=0, shuffle=False,
            callbacks=[cb])
  return model, cb


def test_same_seed_gives_bit_identical_masks():
  tf.config.experimental.enable_op_determinism()
  first, cb1 = _train_run(seed=1)
  second, cb2 = _train_run(seed=1)
  assert len(cb1.history) == len(cb2.history) == 5  # steps 3, 6, ..., 15
  for a, b in zip(masks_of(first), masks_of(second)):
    np.testing.assert_array_equal(a, b)
  third, _ = _train_run(seed=2)
  assert any((a != b).any() for a, b in zip(masks_of(first), masks_of(third)))


@pytest.mark.parametrize('flavour', FLAVOURS)
def test_steps_per_execution_rounds_reallocations_to_the_execution_end(
    flavour):
  # P = 3 with 2 steps per execution: due at 3, 6, 9, 12, 15 -> run at the
  # end of the execution containing each: steps 4, 6, 10, 12, 16.
  _, cb = _train_run(seed=0, period=3, spe=2, flavour=flavour)
  assert [s.step for s in cb.history] == [4, 6, 10, 12, 16]


@pytest.mark.parametrize('flavour', FLAVOURS)
def test_period_by_epoch_and_stop_epoch(flavour):
  # 8 steps per epoch. Epoch 0: P=4 -> steps 4, 8; epoch 1: P=8 -> step 16;
  # epoch 2 and later: stopped.
  _, cb = _train_run(seed=0, epochs=4, period={0: 4, 1: 8}, stop_epoch=2,
                     flavour=flavour)
  assert [s.step for s in cb.history] == [4, 8, 16]


@pytest.mark.parametrize('flavour', FLAVOURS)
def test_period_by_step_and_stop_step(flavour):
  schedule = tf_dsr.PeriodSchedule({0: 5, 10: 2}, unit='step')
  _, cb = _train_run(seed=0, epochs=2, period=schedule, stop_step=15,
                     flavour=flavour)
  # Steps 5 and 10 under P=5 (10 is also the start of P=2), then 12, 14.
  assert [s.step for s in cb.history] == [5, 10, 12, 14]


RESUMABLE = {
    'dsr': dict(target_pruned=20, period=3),
    # end_step given: without it each `fit` would set it from its own length.
    'rigl': dict(method='rigl', period=3, end_step=40),
    # Its dense-gradient momentum is state that the checkpoint must carry.
    'snfs': dict(method='snfs', end_step=40),
}


@pytest.mark.parametrize('method', sorted(RESUMABLE))
def test_resume_from_checkpoint_equals_uninterrupted(tmp_path, method):
  tf.config.experimental.enable_op_determinism()
  x, y = tiny_data()

  def fresh():
    model = sparse_tiny_cnn(seed=4)
    cb = tf_dsr.ReallocationCallback(seed=4, **RESUMABLE[method])
    return model, cb

  model, cb = fresh()
  model.fit(x, y, batch_size=8, epochs=4, verbose=0, shuffle=False,
            callbacks=[cb])
  expected = masks_of(model)
  expected_h = float(model.dynamic_sparsity_state.threshold.numpy())
  expected_weights = model.get_weights()

  model, cb = fresh()
  model.fit(x, y, batch_size=8, epochs=2, verbose=0, shuffle=False,
            callbacks=[cb])
  checkpoint = tf.train.Checkpoint(model=model, optimizer=model.optimizer)
  path = checkpoint.save(str(tmp_path / 'ckpt'))

  # A new process would build everything again: new model, new callback.
  model, cb = fresh()
  model.optimizer.build(model.trainable_variables)
  tf.train.Checkpoint(model=model, optimizer=model.optimizer).restore(
      path).assert_existing_objects_matched()
  model.fit(x, y, batch_size=8, epochs=4, initial_epoch=2, verbose=0,
            shuffle=False, callbacks=[cb])
  # The state was restored when the callback created it (deferred restore).
  assert int(model.dynamic_sparsity_state.reallocations.numpy()) == {
      'dsr': 10, 'rigl': 10, 'snfs': 4}[method]
  for a, b in zip(masks_of(model), expected):
    np.testing.assert_array_equal(a, b)
  assert float(model.dynamic_sparsity_state.threshold.numpy()) == expected_h
  for a, b in zip(model.get_weights(), expected_weights):
    np.testing.assert_array_equal(a, b)



def test_keras_backup_and_restore_resumes_mid_epoch_exactly(tmp_path):
  # 8 steps per epoch, 3 epochs, a reallocation every 3 steps (3, 6, ..., 24)
  # and a Keras backup every 2 steps. Preempted after step 11: the backup of
  # step 10 (epoch 1, batch 1) is restored, and the callback must number the
  # resumed epoch's steps from 11 (not from 0 or 10 + 2), so reallocations run
  # at exactly the uninterrupted run's steps with its masks and state.
  tf.config.experimental.enable_op_determinism()
  x, y = tiny_data()
  batches = tf.data.Dataset.from_tensor_slices((x, y)).batch(8).repeat()

  def fit(model, callbacks, data):
    model.fit(data, epochs=3, steps_per_epoch=8, verbose=0,
              callbacks=callbacks)

  model = sparse_tiny_cnn(seed=5)
  cb = tf_dsr.ReallocationCallback(target_pruned=20, period=3, seed=5)
  fit(model, [cb], batches)
  expected = [v.numpy() for v in model.weights]

  backup_dir = str(tmp_path / 'backup')
  model = sparse_tiny_cnn(seed=5)
  first = tf_dsr.ReallocationCallback(target_pruned=20, period=3, seed=5)
  with pytest.raises(Preempted):
    fit(model, [first, keras.callbacks.BackupAndRestore(backup_dir, save_freq=2),
                PreemptAt(11)], batches)
  assert [s.step for s in first.history] == [3, 6, 9]

  # A new process: new model, callbacks; the data resumes after step 10, as
  # launch.data's stream does (Keras does not skip the data it replays).
  model = sparse_tiny_cnn(seed=5)
  second = tf_dsr.ReallocationCallback(target_pruned=20, period=3, seed=5)
  fit(model, [second, keras.callbacks.BackupAndRestore(backup_dir, save_freq=2)],
      batches.skip(10))
  assert [s.step for s in second.history] == [12, 15, 18, 21, 24]
  state = model.dynamic_sparsity_state
  assert int(state.reallocations.numpy()) == 8
  assert int(state.last_step.numpy()) == 24
  assert int(model.optimizer.iterations.numpy()) == 24
  for variable, value in zip(model.weights, expected):
    np.testing.assert_array_equal(variable.numpy(), value, err_msg=variable.name)


def test_training_under_xla_compiled_steps():
  model = sparse_tiny_cnn()
  model.compile(model.optimizer, model.loss, jit_compile=True)
  x, y = tiny_data()
  cb = tf_dsr.ReallocationCallback(target_pruned=20, period=2,
                                   initial_threshold=2e-2, jit_compile=True)
  model.fit(x, y, batch_size=16, epochs=1, verbose=0, callbacks=[cb])
  assert len(cb.history) == 2
  assert_masked_weights_zero(model)


def test_tensorboard_scalars(tmp_path):
  _, cb = _train_run(seed=0, epochs=1, log_dir=str(tmp_path))
  tags = set()
  for event_file in tmp_path.iterdir():
    for record in tf.compat.v1.train.summary_iterator(str(event_file)):
      tags |= {v.tag for v in record.summary.value}
  assert {'dsr/threshold', 'dsr/pruned', 'dsr/total_active'} <= tags
  assert 'dsr_density/dynamic_sparse_conv2/kernel' in tags
  assert 'dsr_density/dynamic_sparse_fc/kernel' in tags


def test_refuses_to_reallocate_nan_weights():
  model = sparse_tiny_cnn()
  realloc = tf_dsr.Reallocator(model, target_pruned=10)
  kernel, mask = sparse_pairs(model)[1]
  before = masks_of(model)
  kernel.assign(tf.tensor_scatter_nd_update(
      kernel, [[0, 0]], [float('nan')]))
  with pytest.raises(FloatingPointError, match='dynamic_sparse_fc/kernel'):
    realloc.reallocate()
  for a, b in zip(masks_of(model), before):
    np.testing.assert_array_equal(a, b)
  assert int(realloc.state.reallocations.numpy()) == 0
  assert np.isfinite(mask.numpy()).all()
