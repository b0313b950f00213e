"""The launcher's FLOPs (results.json, per method) and sparse-init fields.

small_cnn on 8x8x1 images, counted by hand (2 FLOPs per multiply-add):
- conv1 (dense in every method): 3*3*1*16 = 144 entries at 8*8 = 64
  positions: 18,432 FLOPs;
- conv2 (sparse): 3*3*16*32 = 4,608 entries at 4*4 = 16 positions (stride 2):
  147,456 FLOPs, at sparsity 0.5 2,304 active: 73,728;
- fc (sparse): 32*10 = 320 entries once: 640, at 0.5 160 active: 320.
f_D = 166,528; f_S at 0.5 = 92,480.
"""

import json

import pytest

from tf_dsr import keras

from launch import configs
from launch import outputs
from launch import runner
from launch.errors import LaunchError

ONE_STEP = ['epochs=1', 'steps_per_epoch=1', 'eval_steps=1', 'batch_size=2',
            'validation_freq=0']
F_D = 18_432 + 147_456 + 640
F_S = 18_432 + 73_728 + 320


def _run(name, overrides=ONE_STEP):
  keras.backend.clear_session()
  return runner.run(runner.resolve(name, overrides), verbose=0)['flops']


@pytest.mark.parametrize('name', ['small_cnn_digits_static',
                                  'small_cnn_digits_dsr'])
def test_sparse_methods_train_at_three_sparse_forward_passes(name):
  flops = _run(name)
  assert (flops['inference'], flops['dense_inference']) == (F_S, F_D)
  assert flops['inference_fraction'] == pytest.approx(92_480 / 166_528)
  assert flops['training_multiplier'] == pytest.approx(92_480 / 166_528)


def test_dense_and_thin_are_relative_to_the_full_dense_model():
  assert _run('small_cnn_digits_dense') == {
      'inference': F_D, 'dense_inference': F_D, 'inference_fraction': 1.0,
      'training_multiplier': 1.0}
  thin = _run('small_cnn_digits_thin')
  assert thin['dense_inference'] == F_D and thin['inference'] < F_D
  assert thin['inference_fraction'] == pytest.approx(thin['inference'] / F_D)
  assert thin['training_multiplier'] == pytest.approx(
      thin['inference_fraction'])


def test_gradual_pruning_integrates_its_schedule():
  # 6 steps; pruning from step 2 to step 4, every step, to 0.5 (cubic):
  # the sparsity during steps 0..5 is 0, 0, 0, 0.5 - 0.5 * 0.5**3 = 0.4375,
  # 0.5, 0.5: mean 1.4375 / 6. Only conv2 and fc (147,456 + 640 dense
  # FLOPs) are pruned, so the multiplier is 1 - mean * 148,096 / 166,528.
  flops = _run('small_cnn_digits_prune', [
      'epochs=3', 'steps_per_epoch=2', 'eval_steps=1', 'batch_size=2',
      'validation_freq=0', 'prune_begin_epoch=1', 'prune_end_epoch=2',
      'prune_frequency=1'])
  assert flops['dense_inference'] == F_D
  assert flops['training_multiplier'] == pytest.approx(
      1 - 1.4375 / 6 * 148_096 / 166_528)
  assert F_S <= flops['inference'] < F_D


def test_erk_and_sparse_fan_in_reach_the_model_through_the_config():
  # ERK on conv2 (3,3,16,32) and fc (32,10) at 0.5, budget 2,304 + 160 =
  # 2,464: raw densities 54/4,608 and 42/320, eps = 2,464 / (54 + 42) = 25.7,
  # so fc would get 3.4: it is dense (320) and conv2 keeps 2,464 - 320 =
  # 2,144. f_S = 18,432 + 2,144*16*2 + 640 = 87,680.
  flops = _run('small_cnn_digits_static', ONE_STEP + [
      'distribution=erk', 'init_scale=sparse_fan_in'])
  assert flops['inference'] == 87_680


@pytest.mark.parametrize('name, override, match', [
    ('small_cnn_digits_dense', 'distribution=erk',
     "`distribution` must be 'uniform'.*'erk'"),
    ('small_cnn_digits_prune', 'init_scale=sparse_fan_in',
     "`init_scale` must be 'dense'.*'sparse_fan_in'"),
    ('small_cnn_digits_dsr', 'distribution=ERK', "`distribution`.*'ERK'"),
    ('small_cnn_digits_dsr', 'erk_power_scale=0.5',
     '`erk_power_scale`.*0.5'),
    ('small_cnn_digits_static', 'init_scale=fan_in', "`init_scale`.*'fan_in'"),
])
def test_sparse_init_fields_are_checked(name, override, match):
  with pytest.raises(LaunchError, match=match):
    runner.resolve(name, [override])


def test_a_run_saved_before_the_sparse_init_fields_still_resumes(tmp_path):
  run_dir = outputs.RunDir(str(tmp_path))
  settings = json.loads(json.dumps(
      runner.resolve('small_cnn_digits_dsr').to_dict()))
  older = {k: v for k, v in settings.items()
           if k not in configs.SPARSE_INIT_DEFAULTS}
  run_dir.write_json(run_dir.config, {'config': 'small_cnn_digits_dsr',
                                      'overrides': [], 'settings': older})
  # No checkpoint yet, so the resume starts over once the configs agree.
  assert run_dir.check_start(True, settings, configs.default_settings()) == (
      outputs.Start())
  erk = json.loads(json.dumps(runner.resolve(
      'small_cnn_digits_dsr', ['distribution=erk']).to_dict()))
  with pytest.raises(LaunchError, match="distribution: 'uniform' -> 'erk'"):
    run_dir.check_start(True, erk, configs.default_settings())
