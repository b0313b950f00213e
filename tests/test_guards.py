"""Misuse is caught at once: every `fit` needs exactly one driver of the masks."""

import numpy as np
import pytest

import tf_dsr
from tf_dsr import keras
from tests.helpers import custom_train_step
from tests.helpers import masks_of
from tests.helpers import sparse_tiny_cnn
from tests.helpers import tiny_data

NO_CALLBACK = 'without a `tf_dsr.ReallocationCallback`'


def _fit(model, callbacks=(), **kwargs):
  x, y = tiny_data()
  model.fit(x, y, batch_size=16, epochs=1, verbose=0, callbacks=list(callbacks),
            **kwargs)


def _callback():
  return tf_dsr.ReallocationCallback(target_pruned=10, period=2)


def test_every_fit_without_a_callback_raises():
  model = sparse_tiny_cnn()
  for _ in range(2):
    with pytest.raises(ValueError, match=NO_CALLBACK):
      _fit(model)
  assert int(model.optimizer.iterations.numpy()) == 0


def test_a_fit_without_the_callback_after_one_with_it_raises():
  model = sparse_tiny_cnn()
  _fit(model, [_callback()])
  assert int(model.optimizer.iterations.numpy()) == 4
  before = [v.numpy() for v in model.trainable_weights]
  with pytest.raises(ValueError, match=NO_CALLBACK):
    _fit(model)
  # Nothing trained: the error comes when the step is traced.
  for variable, value in zip(model.trainable_weights, before):
    np.testing.assert_array_equal(variable.numpy(), value)
  _fit(model, [_callback()])  # A new callback in the next fit is fine.
  assert int(model.optimizer.iterations.numpy()) == 8


def test_a_fit_without_the_callback_after_compile_again_raises():
  model = sparse_tiny_cnn()
  _fit(model, [_callback()])
  model.compile(keras.optimizers.SGD(0.01), model.loss)
  with pytest.raises(ValueError, match=NO_CALLBACK):
    _fit(model)


def test_an_unused_reallocator_does_not_license_fit():
  model = sparse_tiny_cnn()
  tf_dsr.Reallocator(model, target_pruned=10)
  with pytest.raises(ValueError, match=NO_CALLBACK):
    _fit(model)
  with pytest.raises(ValueError, match=NO_CALLBACK):
    x, y = tiny_data()
    model.train_on_batch(x, y)


def test_an_eager_fit_without_a_callback_raises():
  model = sparse_tiny_cnn()
  model.compile(model.optimizer, model.loss, run_eagerly=True)
  with pytest.raises(ValueError, match=NO_CALLBACK):
    _fit(model)


def test_a_custom_loop_needs_a_reallocator():
  model = sparse_tiny_cnn()
  x, y = tiny_data()
  step = custom_train_step(model)
  with pytest.raises(ValueError, match='no `tf_dsr.Reallocator`'):
    step(x[:8], y[:8])
  realloc = tf_dsr.Reallocator(model, target_pruned=10)
  step = custom_train_step(model)
  step(x[:8], y[:8])
  assert realloc.reallocate(1).step == 1


def test_two_callbacks_in_one_fit_raise_before_any_step():
  model = sparse_tiny_cnn()
  before = masks_of(model)
  with pytest.raises(ValueError, match='Two `tf_dsr.ReallocationCallback`s'):
    _fit(model, [_callback(), _callback()])
  assert int(model.optimizer.iterations.numpy()) == 0
  for a, b in zip(masks_of(model), before):
    np.testing.assert_array_equal(a, b)
  _fit(model, [_callback()])  # One is fine afterwards.


def test_a_callback_on_a_model_a_reallocator_moves_raises():
  model = sparse_tiny_cnn()
  realloc = tf_dsr.Reallocator(model, target_pruned=10)
  realloc.reallocate(0)
  with pytest.raises(ValueError, match='already moved by a `tf_dsr.Reallocator`'):
    _fit(model, [_callback()])
  assert int(model.optimizer.iterations.numpy()) == 0
  del realloc  # Once it is gone, it can no longer move the masks.
  _fit(model, [_callback()])


def test_a_reallocator_called_during_a_fit_with_the_callback_raises():
  model = sparse_tiny_cnn()
  realloc = tf_dsr.Reallocator(model, target_pruned=10)
  calls = keras.callbacks.LambdaCallback(
      on_train_batch_end=lambda batch, logs: realloc.reallocate(batch))
  with pytest.raises(ValueError, match='is driving this model'):
    _fit(model, [_callback(), calls])
