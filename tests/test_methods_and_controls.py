"""The comparison methods and the controls, through the launcher, on digits.

- static, SET, DeepR and DSR keep masked weights exactly 0 and the active
  count fixed (SET and static per tensor too); static never moves a mask.
- prune (tfmot's gradual pruning) reaches its target sparsity.
- thin matches the sparse model's parameter count within 2%.
- each control of docs/algorithm.md section 7 starts from exactly the structure (and,
  for the "saved" control, the values) the DSR run exported, and a DSR run
  stopped after epoch E keeps its masks frozen from then on.

DeepR, RigL and SNFS under MirroredStrategy are tested in
tests/test_distribution.py, which trains them in the same subprocess as DSR.
"""

import os

import numpy as np
import pytest
import tensorflow as tf

from tf_dsr import keras

from launch import configs
from launch import data as data_lib
from launch import modeling
from launch import runner
from launch import strategy as strategy_lib

# 1 epoch of 20 steps on digits; a reallocation every 5 steps.
SHORT = ['epochs=1', 'steps_per_epoch=20', 'validation_freq=0', 'eval_steps=2']


def _train(name, extra=()):
  """Builds, attaches and trains `name` in process; returns (model, initial masks, kernels)."""
  keras.backend.clear_session()
  config = runner.resolve(name, SHORT + list(extra))
  keras.utils.set_random_seed(config.seed)
  data = data_lib.load(config)
  built, callbacks, _ = runner._build(  # pylint: disable=protected-access
      config, data, strategy_lib.create('default', None), 1, None, 0)
  model = built.model
  masks = modeling.masks_by_name(model)
  model.fit(data.train, epochs=1, steps_per_epoch=data.steps_per_epoch,
            callbacks=callbacks, verbose=0)
  return model, masks, callbacks


@pytest.mark.parametrize('method, extra', [
    ('static', []),
    ('snip', []),
    ('set', ['period=5']),
    ('deepr', []),
    ('dsr', ['period=5']),
    ('rigl', ['period=5']),
    ('snfs', ['schedule=constant']),
])
def test_sparse_methods_keep_masked_weights_zero_and_count_fixed(method, extra):
  model, initial, callbacks = _train(f'lenet_digits_{method}', extra)
  final = modeling.masks_by_name(model)
  assert final.keys() == initial.keys() and len(final) == 3
  for wrapper in modeling.tf_dsr.collect_wrappers(model):
    for kernel, mask in wrapper.sparse_weights:
      assert (kernel.numpy()[mask.numpy() == 0] == 0).all(), kernel.name
  total = lambda masks: sum(int(m.sum()) for m in masks.values())
  assert total(final) == total(initial)
  moved = sum(int((final[k] != initial[k]).sum()) for k in final)
  if method in ('static', 'snip'):
    # A static callback (or none) licenses `fit` and never reallocates.
    assert moved == 0
    assert not any(getattr(cb, 'history', None) for cb in callbacks)
    return
  assert moved > 0  # The rule did move masks ...
  state = model.dynamic_sparsity_state
  # ... after every 5th step (DSR, SET), after every step (DeepR), every 5th
  # step until 75% of training (RigL: 5, 10), at the epoch's end (SNFS).
  assert int(state.reallocations.numpy()) == {'deepr': 20, 'rigl': 2,
                                              'snfs': 1}.get(method, 4)
  if method in ('set', 'rigl'):  # SET and RigL keep each tensor's count.
    for key in final:
      assert final[key].sum() == initial[key].sum(), key
  if method == 'deepr':
    signs = [s.numpy() for s in state.sign]
    for (kernel, mask), sign in zip(
        [p for w in modeling.tf_dsr.collect_wrappers(model)
         for p in w.sparse_weights], signs):
      values = kernel.numpy()[mask.numpy() > 0]
      # Every active weight has its connection's sign (or is exactly 0).
      assert (values * sign[mask.numpy() > 0] >= 0).all()


def test_prune_reaches_its_target_sparsity():
  model, initial, callbacks = _train(
      'lenet_digits_prune', ['prune_begin_epoch=0', 'prune_end_epoch=1',
                             'prune_frequency=5'])
  assert not initial and len(callbacks) == 1
  counts = modeling.parameter_counts(model)
  sparse = [l for l in counts['per_layer'] if l['sparse']]
  assert [l['name'] for l in sparse] == ['fc1', 'fc2', 'fc3']
  # Every kernel at exactly 90% zeros (tfmot rounds per tensor), the same
  # active count as the static model at 0.9; the biases stay.
  assert counts['sparse_active'] == pytest.approx(0.1 * counts['sparse_total'],
                                                  abs=3)
  for layer in model.layers:
    for weight, mask, _ in getattr(layer, 'pruning_vars', []):
      assert np.mean(mask.numpy() == 0) == pytest.approx(0.9, abs=1e-3)
      assert (weight.numpy()[mask.numpy() == 0] == 0).all()


@pytest.mark.parametrize('family, sparsity', [
    ('lenet_digits', 0.8), ('lenet_digits', 0.9), ('small_cnn_digits', 0.5),
    ('small_cnn_digits', 0.8)])
def test_thin_matches_the_sparse_parameter_count(family, sparsity):
  keras.backend.clear_session()
  config = runner.resolve(f'{family}_thin', [f'sparsity={sparsity}'])
  built = modeling.method('thin').build(config, (8, 8, 1), 10)
  sparse = modeling.method('static').build(
      runner.resolve(f'{family}_static', [f'sparsity={sparsity}']), (8, 8, 1), 10)
  target = modeling.parameter_counts(sparse.model)['active']
  assert built.target_params == target
  params = modeling.trainable_count(built.model)
  assert abs(params - target) <= 0.02 * target and built.width_multiplier < 1


# ------------------------------------------------------------------ controls
def _arrays(path):
  with np.load(path) as arrays:
    return {k: arrays[k] for k in arrays.files}


@pytest.fixture(scope='module')
def source(tmp_path_factory):
  """A DSR run on digits whose masks moved; it exports masks and step-0 weights."""
  root = tmp_path_factory.mktemp('controls')
  keras.backend.clear_session()
  model_dir = str(root / 'dsr')
  runner.run(runner.resolve('lenet_digits_dsr', SHORT + ['period=5']),
             model_dir=model_dir, verbose=0, export=False)
  return root, model_dir


def _control(root, source_dir, name, extra):
  keras.backend.clear_session()
  model_dir = str(root / name)
  runner.run(runner.resolve('lenet_digits_static', SHORT + extra),
             model_dir=model_dir, verbose=0, export=False)
  return _arrays(os.path.join(model_dir, modeling.INITIAL_WEIGHTS))


def test_controls_start_from_the_exported_structure_and_values(source):
  root, source_dir = source
  masks = _arrays(os.path.join(source_dir, modeling.FINAL_MASKS))
  initial = _arrays(os.path.join(source_dir, modeling.INITIAL_WEIGHTS))
  assert len(masks) == 3
  # DSR moved the source's masks, so its final structure is not its initial one.
  assert any((masks[k] != initial[k]).any() for k in masks)
  mask_of = {}  # kernel variable name -> its final mask.
  for name in initial:
    if name.endswith('/kernel:0'):
      layer = name.split('/')[0]
      mask_of[name] = masks[f'dynamic_sparse_{layer}/kernel_mask:0']
  assert len(mask_of) == 3

  saved = _control(root, source_dir, 'saved', [
      f'masks_from={source_dir}', 'initial_values=saved'])
  fresh = _control(root, source_dir, 'fresh', [
      f'masks_from={source_dir}', 'initial_values=random', 'seed=7'])
  static = _control(root, source_dir, 'static', [])
  for control in (saved, fresh):
    assert control.keys() == initial.keys()
    for key in masks:
      np.testing.assert_array_equal(control[key], masks[key], err_msg=key)
  for name, value in initial.items():
    if name in masks:
      continue
    expected = value * mask_of[name] if name in mask_of else value
    # The "lottery ticket" control: the source's own step-0 values, exactly.
    np.testing.assert_array_equal(saved[name], expected, err_msg=name)
  for name, mask in mask_of.items():
    # A fresh initialisation: non-zero exactly on the exported structure,
    # with values the source never had.
    np.testing.assert_array_equal(fresh[name] != 0, mask > 0, err_msg=name)
    both = (mask > 0) & (initial[name] != 0)
    assert both.any() and not (fresh[name] == initial[name])[both].any()
  # Random structure and random values: not the exported structure.
  assert any((static[k] != masks[k]).any() for k in masks)


def test_dsr_stopped_after_an_epoch_keeps_its_masks(tmp_path):
  keras.backend.clear_session()
  model_dir = str(tmp_path / 'stop')
  results = runner.run(
      runner.resolve('lenet_digits_dsr', SHORT + [
          'epochs=2', 'period=5', 'stop_epoch=1']),
      model_dir=model_dir, verbose=0, export=False)
  # Reallocations at steps 5, 10, 15, 20 of epoch 0 and none in epoch 1.
  assert results['dsr']['reallocations'] == 4
  assert results['dsr']['last_step'] == 20 and results['steps'] == 40
  readers = [tf.train.load_checkpoint(os.path.join(model_dir, 'checkpoints',
                                                   f'ckpt-{i}')) for i in (1, 2)]
  keys = [k for k in readers[0].get_variable_to_shape_map() if '_mask/' in k]
  assert len(keys) == 3
  for key in keys:
    np.testing.assert_array_equal(readers[0].get_tensor(key),
                                  readers[1].get_tensor(key))


def test_controls_config_validation():
  with pytest.raises(configs.LaunchError, match="`initial_values` must be 'random'"):
    runner.resolve('lenet_digits_static', ['initial_values=saved'])
  with pytest.raises(configs.LaunchError, match='`masks_from` must be None'):
    runner.resolve('lenet_digits_dsr', ['masks_from=/x'])
  with pytest.raises(configs.LaunchError, match='final_masks.npz does not exist'):
    modeling.method('static').build(
        runner.resolve('lenet_digits_static', ['masks_from=/nonexistent']),
        (8, 8, 1), 10)


def test_small_builders_scale_their_widths():
  import models  # pylint: disable=g-import-not-at-top
  lenet = models.lenet_300_100(input_shape=(8, 8, 1), width_multiplier=0.5)
  assert [lenet.get_layer(n).units for n in ('fc1', 'fc2')] == [150, 50]
  cnn = models.small_cnn(width_multiplier=0.5)
  assert [cnn.get_layer(n).filters for n in ('conv1', 'conv2')] == [8, 16]
  with pytest.raises(ValueError, match='width_multiplier must be a positive'):
    models.small_cnn(width_multiplier=0)
