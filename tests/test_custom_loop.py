"""Custom training loops: the README example runs as written; the Reallocator
finds (or is told) the optimizer; `reallocate` takes every kind of int step."""

import os
import re

import numpy as np
import pytest
import tensorflow as tf

import tf_dsr
from tf_dsr import keras
from tests.helpers import masks_of
from tests.helpers import sparse_pairs
from tests.helpers import tiny_cnn

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _readme_custom_loop():
  text = open(os.path.join(ROOT, 'README.md')).read()
  section = text[text.index('Custom training loops use'):]
  return re.search(r'```python\n(.*?)```', section, re.S).group(1)


def test_the_readme_custom_loop_runs_as_written():
  namespace = {}
  exec(compile(_readme_custom_loop(), 'README.md', 'exec'), namespace)  # pylint: disable=exec-used
  realloc, model = namespace['realloc'], namespace['model']
  # 1000 examples / 50 per batch * 4 repeats = 80 steps, every 10th reallocates.
  assert namespace['step'] == 80
  assert namespace['stats'].step == 80
  assert int(realloc.state.reallocations.numpy()) == 8
  # Dense 20x64 and 64x2 at sparsity 0.9: round(0.1 * 1280) + round(0.1 * 128).
  assert namespace['stats'].total_active == 128 + 13
  # The optimizer given is the one whose momentum is reset.
  assert realloc.optimizer is namespace['optimizer']
  assert namespace['optimizer'].variables


def _sparse_uncompiled():
  keras.utils.set_random_seed(0)
  return tf_dsr.sparsify(tiny_cnn(), 0.8, exclude=['conv1'])


def test_an_uncompiled_model_needs_an_optimizer_or_an_explicit_false():
  model = _sparse_uncompiled()
  with pytest.raises(ValueError, match='`optimizer` is None.*not compiled'):
    tf_dsr.Reallocator(model, target_pruned=10)
  assert not hasattr(model, 'dynamic_sparsity_state')
  with pytest.raises(TypeError, match="`optimizer`.*'sgd'"):
    tf_dsr.Reallocator(model, target_pruned=10, optimizer='sgd')
  realloc = tf_dsr.Reallocator(model, target_pruned=10, optimizer=False)
  assert realloc.optimizer is None
  optimizer = keras.optimizers.SGD(0.1, momentum=0.9)
  assert tf_dsr.Reallocator(model, target_pruned=10,
                            optimizer=optimizer).optimizer is optimizer


def test_the_optimizer_given_is_reset_where_weights_move():
  model = _sparse_uncompiled()
  optimizer = keras.optimizers.SGD(0.1, momentum=0.9)
  optimizer.build(model.trainable_variables)
  pairs = sparse_pairs(model)
  slots = tf_dsr.optimizer_state.slot_variables(optimizer,
                                               [k for k, _ in pairs])
  for group in slots:
    for slot in group:
      slot.assign(tf.ones_like(slot))
  before = masks_of(model)
  realloc = tf_dsr.Reallocator(model, target_pruned=50, optimizer=optimizer,
                               initial_threshold=5e-2)
  stats = realloc.reallocate(1)
  assert stats.pruned > 0
  for (_, mask), group, old in zip(pairs, slots, before):
    moved = (old > 0) != (mask.numpy() > 0)
    assert moved.any() or not stats.regrown
    for slot in group:
      assert (slot.numpy()[moved] == 0).all()
      assert (slot.numpy()[(old > 0) & (mask.numpy() > 0)] == 1).all()


@pytest.mark.parametrize('step', [
    7, np.int64(7), np.int32(7), tf.constant(7), tf.constant(7, tf.int64),
    np.array(7)])
def test_reallocate_takes_python_numpy_and_tensor_ints(step):
  realloc = tf_dsr.Reallocator(_sparse_uncompiled(), target_pruned=10,
                               optimizer=False)
  stats = realloc.reallocate(step)
  assert stats.step == 7 and isinstance(stats.step, int)
  assert int(realloc.state.last_step.numpy()) == 7


@pytest.mark.parametrize('step', [
    1.5, True, '3', None, -2, tf.constant(1.0), tf.constant([1, 2]),
    np.float32(2.0)])
def test_a_bad_step_is_refused_and_changes_nothing(step):
  model = _sparse_uncompiled()
  realloc = tf_dsr.Reallocator(model, target_pruned=10, optimizer=False)
  before = masks_of(model)
  with pytest.raises(ValueError, match='`step`'):
    realloc.reallocate(step)
  assert int(realloc.state.reallocations.numpy()) == 0
  for a, b in zip(masks_of(model), before):
    np.testing.assert_array_equal(a, b)


def test_reallocate_inside_a_tf_function_says_to_call_it_eagerly():
  model = _sparse_uncompiled()
  realloc = tf_dsr.Reallocator(model, target_pruned=10, optimizer=False)

  @tf.function
  def step_and_reallocate(step):
    return realloc.reallocate(step)

  with pytest.raises(RuntimeError, match='call it eagerly between training'):
    step_and_reallocate(tf.constant(3))
  assert int(realloc.state.reallocations.numpy()) == 0
