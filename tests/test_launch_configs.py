"""Tests for launch.configs, launch.overrides and launch.modeling.

Every named config builds its model; the parameter counts are checked against
the counts derived in tests/test_models.py. A rule's options are the rule's
own: validated by it, overridable by name, by epoch when given as a dict, and
a rule registered in a test gets configs and runs without launcher edits.
"""

import contextlib
import dataclasses
import io

import numpy as np
import pytest
import tensorflow as tf

import tf_dsr
from tf_dsr import keras

from launch import configs
from launch import experiment
from launch import modeling
from launch import overrides
from launch import precheck
from launch import runner
from launch.errors import LaunchError

WRN_SPARSE, WRN_TRAINABLE = 1_451_520, 1_467_610  # See tests/test_models.py.
R50_SPARSE, R50_TRAINABLE = 22_724_608, 25_557_032
MBV1_SPARSE, MBV1_TRAINABLE = 4_163_584, 4_231_976
# LeNet-300-100 on 8x8 digits: 64*300 + 300*100 + 100*10 = 50,200 kernel
# weights; with biases 50,610.
LENET_DIGITS_SPARSE, LENET_DIGITS_TRAINABLE = 50_200, 50_610
# On 28x28 MNIST: 784*300 + 300*100 + 100*10 = 266,200 kernel weights; 266,610.
LENET_MNIST_SPARSE, LENET_MNIST_TRAINABLE = 266_200, 266_610
# small_cnn: sparse conv2 (9*16*32 = 4,608) and fc (32*10 = 320); 5,130 in all.
SMALL_SPARSE, SMALL_TRAINABLE = 4_928, 5_130

# name prefix -> (input shape, classes, sparse weights, trainable, sparse tensors)
FAMILIES = {
    'wrn28_2_cifar10': ((32, 32, 3), 10, WRN_SPARSE, WRN_TRAINABLE, 24),
    'resnet50_imagenet': ((224, 224, 3), 1000, R50_SPARSE, R50_TRAINABLE, 49),
    'mobilenet_v1_imagenet': ((224, 224, 3), 1000, MBV1_SPARSE, MBV1_TRAINABLE,
                              14),
    'lenet_digits': ((8, 8, 1), 10, LENET_DIGITS_SPARSE, LENET_DIGITS_TRAINABLE,
                     3),
    'lenet_mnist': ((28, 28, 1), 10, LENET_MNIST_SPARSE, LENET_MNIST_TRAINABLE,
                    3),
    'small_cnn_digits': ((8, 8, 1), 10, SMALL_SPARSE, SMALL_TRAINABLE, 2),
}


def _family(name):
  return next(f for f in FAMILIES if name.startswith(f + '_'))


def test_registry_has_every_paper_run():
  expected = {'wrn28_2_cifar10_dense', 'resnet50_imagenet_dense',
              'mobilenet_v1_imagenet_dense',
              'lenet_mnist_dense', 'lenet_mnist_static', 'lenet_mnist_dsr'}
  for method in configs.METHODS:
    expected |= {f'lenet_digits_{method}', f'small_cnn_digits_{method}'}
  for method in ('deepr', 'dsr', 'prune', 'rigl', 'set', 'snfs', 'snip',
                 'static', 'thin'):
    expected |= {f'wrn28_2_cifar10_{method}_s{s}'
                 for s in ('0.5', '0.6', '0.7', '0.8', '0.9')}
    expected |= {f'resnet50_imagenet_{method}_s{s}' for s in ('0.8', '0.9')}
    expected |= {f'mobilenet_v1_imagenet_{method}_s{s}'
                 for s in ('0.75', '0.9')}
  for method in ('dsr', 'rigl', 'snfs', 'snip', 'static'):
    expected |= {f'resnet50_imagenet_{method}_erk_s{s}' for s in ('0.8', '0.9')}
    expected |= {f'mobilenet_v1_imagenet_{method}_erk_s{s}'
                 for s in ('0.75', '0.9')}
  assert set(configs.names()) == expected
  assert configs.get('resnet50_imagenet_rigl_erk_s0.9').distribution == 'erk'
  assert configs.get('resnet50_imagenet_rigl_s0.9').distribution == 'uniform'
  for name in configs.names():
    assert configs.get(name).name == name


def test_paper_settings():
  """docs/algorithm.md section 5, column by column."""
  wrn = configs.get('wrn28_2_cifar10_dsr_s0.9')
  assert (wrn.arch, wrn.depth, wrn.width, wrn.dataset) == (
      'wide_resnet', 28, 2, 'cifar10')
  assert (wrn.sparsity, wrn.stop_epoch) == (0.9, 190)
  assert wrn.options == {'target_pruned': 20_000, 'tolerance': 0.1,
                         'initial_threshold': 1e-3}
  assert wrn.period == {0: 100, 25: 200, 80: 400, 140: 800}
  assert (wrn.epochs, wrn.batch_size, wrn.weight_decay) == (200, 100, 5e-4)
  assert wrn.learning_rate == {0: 0.1, 60: 0.02, 120: 0.004, 160: 0.0008}
  assert (wrn.momentum, wrn.nesterov, wrn.augment) == (0.9, True, True)
  r50 = configs.get('resnet50_imagenet_dsr_s0.8')
  assert (r50.arch, r50.dataset, r50.sparsity) == ('resnet50', 'imagenet2012', 0.8)
  assert r50.stop_epoch == 95
  assert r50.options == {'target_pruned': 400_000, 'tolerance': 0.1,
                         'initial_threshold': 1e-3}
  assert r50.period == {0: 1000, 25: 2000, 50: 4000, 75: 8000}
  assert (r50.epochs, r50.batch_size, r50.weight_decay) == (100, 256, 1e-4)
  assert r50.learning_rate == {0: 0.1, 30: 0.01, 60: 0.001, 90: 0.0001}
  # MobileNet v1: RigL's sparsities, N_p scaled from ResNet-50's by the
  # sparse weight count (400,000 * 4,163,584 / 22,724,608 = 73,288).
  mbv1 = configs.get('mobilenet_v1_imagenet_dsr_s0.75')
  assert (mbv1.arch, mbv1.dataset, mbv1.sparsity) == (
      'mobilenet_v1', 'imagenet2012', 0.75)
  assert mbv1.options['target_pruned'] == 73_000
  assert (mbv1.epochs, mbv1.batch_size, mbv1.weight_decay) == (100, 256, 4e-5)
  assert (mbv1.period, mbv1.stop_epoch) == (r50.period, r50.stop_epoch)
  # Baselines share everything but the method's own settings.
  static = configs.get('wrn28_2_cifar10_static_s0.9')
  assert static.period is None and static.options == {}
  # SET: DSR's N_p, period and stop epoch; DeepR after every step, never
  # stopping, T annealed at the learning-rate drops.
  set_ = configs.get('wrn28_2_cifar10_set_s0.9')
  assert set_.options == {'target_pruned': 20_000}
  assert (set_.period, set_.stop_epoch) == (wrn.period, wrn.stop_epoch)
  deepr = configs.get('wrn28_2_cifar10_deepr_s0.9')
  assert deepr.options == {'alpha': 1e-5,
                           'temperature': {0: 1e-7, 60: 1e-8, 120: 0.0}}
  assert (deepr.period, deepr.stop_epoch) == ({0: 1}, None)
  assert configs.get('lenet_mnist_dsr').options['target_pruned'] == 1_000
  for name in configs.names():
    if configs.get(name).method in ('dense', 'prune', 'thin'):
      assert configs.get(name).options == {}, name
  assert (static.learning_rate, static.epochs, static.batch_size) == (
      wrn.learning_rate, wrn.epochs, wrn.batch_size)
  assert configs.get('wrn28_2_cifar10_dense').sparsity == 0
  assert configs.get('resnet50_imagenet_thin_s0.9').width_multiplier is None
  # On a TPU no reallocation is late: steps per execution divide every period.
  for name in configs.names():
    config = configs.get(name)
    if name.startswith(('wrn', 'resnet', 'mobilenet')) and (
        config.method == 'dsr'):
      assert all(p % config.tpu_steps_per_execution == 0
                 for p in config.period.values())


def test_unknown_config_lists_valid_names():
  with pytest.raises(LaunchError, match='unknown config') as info:
    configs.get('wrn28_2_cifar10_dsr_s0.95')
  for name in configs.names():
    assert name in str(info.value)


def test_the_names_file_lists_every_config():
  # launch.precheck reads the names without TensorFlow from this file.
  assert precheck.config_names() == configs.names(), (
      'launch/config_names.txt is out of date; write it again with '
      '`python -m launch.configs > launch/config_names.txt`')
  with pytest.raises(LaunchError) as info:
    precheck.check_config_name('wrn28_2_cifar10_dsr_s0.95')
  with pytest.raises(LaunchError) as registry_info:
    configs.get('wrn28_2_cifar10_dsr_s0.95')
  assert str(info.value) == str(registry_info.value)
  precheck.check_config_name('wrn28_2_cifar10_dsr_s0.9')  # Raises nothing.


def test_overrides_parse_by_field_type():
  base = configs.get('wrn28_2_cifar10_dsr_s0.9')
  config = overrides.apply(base, [
      'epochs=3', 'batch_size=64', 'sparsity=0.8', 'target_pruned=1_000',
      'period={0: 10, 2: 20}', 'learning_rate=0.05', 'stop_epoch=none',
      'augment=false', 'weight_decay=1e-4', 'dataset=cifar10'])
  assert (config.epochs, config.batch_size, config.sparsity) == (3, 64, 0.8)
  assert config.options == {'target_pruned': 1000, 'tolerance': 0.1,
                            'initial_threshold': 1e-3}
  assert isinstance(config.options['target_pruned'], int)
  assert config.period == {0: 10, 2: 20}
  assert config.learning_rate == {0: 0.05}
  assert config.stop_epoch is None and config.augment is False
  assert config.weight_decay == 1e-4
  assert config.name == base.name and base.epochs == 200  # base untouched


@pytest.mark.parametrize('item, message', [
    ('epoch=3', r"unknown key 'epoch'; valid keys are: arch, dataset, .*epochs"),
    ('epochs', 'not of the form key=value'),
    ('=3', 'not of the form key=value'),
    ('epochs=1.5', "epochs must be an int, got '1.5'"),
    ('sparsity=high', "sparsity must be a number, got 'high'"),
    ('augment=maybe', "augment must be true or false, got 'maybe'"),
    ('period={0: 1.5}', r'period must be a dict \{epoch: int\}'),
    ('learning_rate={0: 0.1', 'learning_rate must be a dict'),
    ('sparsity=1.0', r'`sparsity` must be in \(0, 1\)'),
    ('epochs=0', '`epochs` must be an int >= 1, got 0'),
    ('depth=27', r'`depth` must be such that \(depth - 4\) % 6 == 0'),
    ('period={1: 100}', '`period` must be a dict'),
    ('width_multiplier=0.5', "applies only to method 'thin'"),
    ('image_size=64', "only 'imagenet2012' can be resized"),
    ('name=x', "unknown key 'name'"),
])
def test_bad_overrides_name_the_key(item, message):
  with pytest.raises(LaunchError, match=message):
    overrides.apply(configs.get('wrn28_2_cifar10_dsr_s0.9'), [item])


def test_override_inconsistent_with_method():
  with pytest.raises(LaunchError, match="`sparsity` must be 0 for method 'dense'"):
    overrides.apply(configs.get('wrn28_2_cifar10_dense'), ['sparsity=0.5'])
  with pytest.raises(LaunchError, match="unknown key 'target_pruned' "
                     r"\(an option of 'dsr', 'set', not of method 'static'\)"):
    overrides.apply(configs.get('wrn28_2_cifar10_static_s0.9'),
                    ['target_pruned=5'])
  with pytest.raises(LaunchError, match='`weight_decay` must be 0'):
    overrides.apply(configs.get('lenet_digits_dsr'), ['weight_decay=1e-4'])


def _configs_main(argv):
  """`configs.main(argv)`: its status, stdout and stderr."""
  out, err = io.StringIO(), io.StringIO()
  with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
    status = configs.main(argv)
  return [status, out.getvalue(), err.getvalue()]


def test_configs_cli():
  # In this process: `configs.main` only prints (and its options come from
  # tf_dsr.rules, which this process has imported already);
  # tests/test_output.py runs `python -m launch.configs` itself.
  listed, shown, bad = [_configs_main(argv)
                        for argv in ([], ['lenet_digits_dsr'], ['nope'])]
  assert listed[0] == 0 and listed[1].split() == configs.names()
  assert shown[0] == 0 and '"target_pruned": 250' in shown[1]
  assert bad[0] == 2 and "unknown config 'nope'" in bad[2]


# ------------------------------------------------------------------ options
def test_rule_options_are_checked_by_the_rule():
  dsr = configs.get('lenet_digits_dsr')
  with pytest.raises(LaunchError, match=r"`options` is invalid for method "
                     r"'dsr'.*`tolerance` must be .*got 2"):
    dataclasses.replace(dsr, options=dict(dsr.options, tolerance=2))
  with pytest.raises(LaunchError, match=r"`options` is invalid for method "
                     r"'dsr'.*no option 'nope'; its options are "
                     r"\['target_pruned', 'tolerance', 'initial_threshold'\]"):
    dataclasses.replace(dsr, options=dict(dsr.options, nope=1))
  with pytest.raises(LaunchError, match=r"`options` is invalid.*needs the "
                     r"option\(s\) \['target_pruned'\]"):
    dataclasses.replace(dsr, options={})
  with pytest.raises(LaunchError, match=r"`options` must be empty for method "
                     r"'dense'.*got \{'alpha': 1\}"):
    dataclasses.replace(configs.get('lenet_digits_dense'), options={'alpha': 1})
  with pytest.raises(LaunchError, match=r"`options` is invalid for method "
                     r"'static'.*no option 'alpha'"):
    dataclasses.replace(configs.get('lenet_digits_static'),
                        options={'alpha': 1})
  with pytest.raises(LaunchError, match="`options` must be a dict"):
    dataclasses.replace(dsr, options=[('target_pruned', 5)])


def test_by_epoch_options():
  # 10 steps per epoch: steps 0-19 are epochs 0 and 1, step 20 starts epoch 2.
  value = configs.ByEpoch({0: 1.0, 2: 0.5}, steps_per_epoch=10)
  assert [value(s) for s in (0, 19, 20, 1000)] == [1.0, 1.0, 0.5, 0.5]
  deepr = dataclasses.replace(
      configs.get('lenet_digits_deepr'),
      options={'alpha': 1e-4, 'temperature': {0: 1.0, 2: 0.5},
               'learning_rate': 0.1})
  options = configs.rule_options(deepr, steps_per_epoch=10)
  assert options['temperature'] == configs.ByEpoch({0: 1.0, 2: 0.5}, 10)
  assert options['alpha'] == 1e-4  # Other values are passed unchanged.
  rule = tf_dsr.rules.make('deepr', **options)
  assert rule.call_inputs(19, None)['temperature'] == 1.0
  assert rule.call_inputs(20, None)['temperature'] == 0.5
  # Hashable, and equal rules hash alike: tf_dsr reuses one compiled
  # reallocation program for a hashable rule instead of one per call.
  assert hash(rule) == hash(tf_dsr.rules.make(
      'deepr', **configs.rule_options(deepr, steps_per_epoch=10)))
  # Each piece is checked by the rule; an option that takes no callable
  # takes no by-epoch value; the keys are epochs from 0.
  with pytest.raises(LaunchError, match=r"`options`.*`temperature` from "
                     r"epoch 5.*`temperature` must be .*got -1"):
    dataclasses.replace(deepr, options={'temperature': {0: 1e-6, 5: -1}})
  dsr = configs.get('lenet_digits_dsr')
  with pytest.raises(LaunchError, match="option `target_pruned` takes no "
                     "by-epoch value"):
    dataclasses.replace(dsr, options={'target_pruned': {0: 100, 2: 200}})
  with pytest.raises(LaunchError, match=r"`options` must be .*`temperature`"
                     r" is \{first epoch: value\}"):
    dataclasses.replace(deepr, options={'temperature': {1: 1e-6}})


def test_overrides_of_rule_options():
  dsr = configs.get('lenet_digits_dsr')
  config = overrides.apply(dsr, ['tolerance=0.2', 'target_pruned=30000'])
  assert config.options == {'target_pruned': 30_000, 'tolerance': 0.2,
                            'initial_threshold': 1e-3}
  with pytest.raises(LaunchError, match=r"unknown key 'tolerance' \(an option "
                     r"of 'dsr', not of method 'set'\); valid keys are: arch, "
                     r".*, seed, keras, drop_fraction, target_pruned\."):
    overrides.apply(configs.get('lenet_digits_set'), ['tolerance=0.2'])
  with pytest.raises(LaunchError, match="option tolerance of method 'dsr' "
                     "must be a number"):
    overrides.apply(dsr, ['tolerance=high'])
  with pytest.raises(LaunchError, match=r"`options` is invalid.*`tolerance`"):
    overrides.apply(dsr, ['tolerance=1.5'])
  deepr = configs.get('lenet_digits_deepr')
  config = overrides.apply(deepr, [
      'temperature={0: 1e-5, 10: 0}', 'alpha=0', 'options.learning_rate=0.5',
      'learning_rate=0.2'])
  assert config.options == {'alpha': 0, 'temperature': {0: 1e-5, 10: 0},
                            'learning_rate': 0.5}
  assert config.learning_rate == {0: 0.2}  # The config's field, not DeepR's.
  assert overrides.apply(deepr, ['temperature=1e-3']).options[
      'temperature'] == 1e-3
  config = overrides.apply(configs.get('lenet_digits_set'),
                           ["options={'drop_fraction': 0.1}"])
  assert config.options == {'drop_fraction': 0.1}
  assert overrides.apply(configs.get('lenet_digits_set'), [
      'drop_fraction=0.2', 'target_pruned=none']).options == {
          'drop_fraction': 0.2, 'target_pruned': None}
  # A new method's options: those of the method the config ends up with.
  config = overrides.apply(dsr, ['method=set', 'options={}',
                                 'drop_fraction=0.3'])
  assert (config.method, config.options) == ('set', {'drop_fraction': 0.3})
  # In a grid, an option reaches only the methods that have it.
  assert experiment.applicable(['tolerance=0.2', 'period=2', 'epochs=1'],
                               'set') == ['period=2', 'epochs=1']
  assert experiment.applicable(['tolerance=0.2', 'period=2'], 'dsr') == [
      'tolerance=0.2', 'period=2']
  assert experiment.applicable(['period=2', 'target_pruned=9'], 'static') == []


@dataclasses.dataclass(frozen=True)
class _Frozen(tf_dsr.rules.Rule):
  """A throwaway rule that never moves a mask, with one option."""
  name = 'test_frozen'
  label = 'frozen (test)'
  scale: float = 1.0

  def __post_init__(self):
    tf_dsr.rules.base.check_number('scale', self.scale, low=0, low_open=True)

  def drop(self, inputs):
    return tf_dsr.rules.Drop(tf.zeros_like(inputs.masks),
                             tf.zeros_like(inputs.active))


@dataclasses.dataclass(frozen=True)
class _Needy(tf_dsr.rules.Rule):
  """A throwaway rule with a required option."""
  name = 'test_needy'
  label = 'needy (test)'
  needed: float

  def drop(self, inputs):
    return tf_dsr.rules.Drop(tf.zeros_like(inputs.masks),
                             tf.zeros_like(inputs.active))


def test_a_registered_rule_needs_no_launcher_edit(tmp_path):
  tf_dsr.rules.register(_Frozen)
  tf_dsr.rules.register(_Needy)
  try:
    assert {'test_frozen', 'test_needy'} <= set(configs.methods())
    assert 'test_frozen' in configs.reallocating()
    assert configs.label('test_frozen') == 'frozen (test)'
    assert experiment.method_order()[-2:] == ('test_frozen', 'test_needy')
    registry = configs.build_registry()
    dsr = configs.get('lenet_digits_dsr')
    config = registry['lenet_digits_test_frozen']
    # The family's schedule and the rule's defaults.
    assert (config.period, config.stop_epoch, config.options) == (
        dsr.period, dsr.stop_epoch, {})
    assert 'wrn28_2_cifar10_test_frozen_s0.9' in registry
    assert 'lenet_mnist_test_frozen' not in registry  # docs/algorithm.md's 3 methods.
    # No value for a required option: no named config.
    assert not [name for name in registry if 'test_needy' in name]
    assert overrides.apply(config, ['scale=2']).options == {'scale': 2}
    with pytest.raises(LaunchError, match=r"`options` is invalid for method "
                       r"'test_frozen'.*`scale` must be .*got 0"):
      overrides.apply(config, ['scale=0'])
    with pytest.raises(LaunchError, match=r"needs the option\(s\) \['needed'\]"):
      overrides.apply(config, ['method=test_needy'])
    assert overrides.apply(config, ['method=test_needy', 'needed=3']).options == {
        'needed': 3}
    assert isinstance(modeling.method('test_frozen'), modeling.DynamicSparse)
    keras.backend.clear_session()
    results = runner.run(overrides.apply(config, [
        'scale=2', 'period=1', 'epochs=1', 'steps_per_epoch=3', 'eval_steps=1',
        'validation_freq=0']), verbose=0)
    assert results['dsr']['reallocations'] == 3
    assert results['options'] == {'scale': 2}
  finally:
    tf_dsr.rules.REGISTRY.pop('test_frozen', None)
    tf_dsr.rules.REGISTRY.pop('test_needy', None)
  assert 'test_frozen' not in configs.methods()
  with pytest.raises(LaunchError, match="unknown method 'test_frozen'"):
    modeling.method('test_frozen')


# ------------------------------------------------------------------ models
def _initial_active(config, sparse_sizes):
  return sum(max(1, round((1 - config.sparsity) * n)) for n in sparse_sizes)


_FULL_SIZE = ('wrn28_2_cifar10', 'resnet50_imagenet', 'mobilenet_v1_imagenet')


def _model_checks():
  """The configs whose models are built and counted.

  Every small config. Of the full-size families, each build path once at
  sparsity 0.9 (dense, gradual pruning, and the sparse build that every rule
  shares, with `dsr` and `static`), and `thin` at every sparsity, since its
  width search depends on it. The configs left out differ from a built one
  only in fields the config tests above check.
  """
  names = []
  for name in configs.names():
    config = configs.get(name)
    if (_family(name) in _FULL_SIZE and config.method != 'thin' and
        (config.method not in ('dense', 'prune', 'dsr', 'static') or
         config.sparsity not in (0.0, 0.9))):
      continue
    names.append(name)
  return names


@pytest.mark.parametrize('name', _model_checks())
def test_configs_build_their_models(name):
  keras.backend.clear_session()
  config = configs.get(name)
  shape, classes, sparse, trainable, tensors = FAMILIES[_family(name)]
  method = modeling.method(config.method)
  extra = {}
  if getattr(method, 'needs_sample', False):  # SNIP: one batch of data.
    rng = np.random.default_rng(0)
    extra['sample'] = (rng.normal(size=(4,) + shape).astype('float32'),
                       np.arange(4) % classes)
  built = method.build(config, shape, classes, **extra)
  model = built.model
  assert model.output_shape == (None, classes)
  report = tf_dsr.sparsity_report(model)
  if config.method == 'dense':
    assert report.model_total == trainable and not report.tensors
  elif config.method == 'prune':
    # tfmot's wrappers on the same kernels, dense at the start.
    counts = modeling.parameter_counts(model)
    assert (counts['sparse_total'], counts['total']) == (sparse, trainable)
    assert counts['active'] == trainable and len(report.tensors) == tensors
    assert sum(l['sparse'] for l in counts['per_layer']) == tensors
    assert all(t.name.startswith('prune_low_magnitude_') for t in report.tensors)
  elif config.method == 'thin':
    assert report.model_total < trainable and not report.tensors
    # The target is the sparse model's active count (checked below for the
    # sparse configs), and the thin model is within 2% of it.
    assert abs(report.model_total - built.target_params) <= (
        0.02 * built.target_params)
    assert 0 < built.width_multiplier < 1
  else:
    assert len(report.tensors) == tensors
    assert report.sparse_total == sparse and report.model_total == trainable
    sizes = [t.total for t in report.tensors]
    assert report.sparse_active == _initial_active(config, sizes)
    assert report.model_active == trainable - sparse + report.sparse_active


def test_thin_target_is_the_sparse_active_count():
  """The thin model matches what the sparse model of the same sparsity keeps."""
  for sparsity in ('0.5', '0.9'):
    sparse = modeling.method('static').build(
        configs.get(f'wrn28_2_cifar10_static_s{sparsity}'), (32, 32, 3), 10)
    # A set width skips the width search (test_configs_build_their_models
    # runs it for every thin config); the target is found before it.
    thin = modeling.method('thin').build(
        overrides.apply(configs.get(f'wrn28_2_cifar10_thin_s{sparsity}'),
                        ['width_multiplier=0.25']), (32, 32, 3), 10)
    assert thin.width_multiplier == 0.25
    assert thin.target_params == tf_dsr.sparsity_report(sparse.model).model_active
  # WRN-28-2 at 0.9 keeps 145,152 + 16,090 = 161,242 +- rounding: 161,245.
  assert thin.target_params == 161_245


def test_search_width_on_a_known_curve():
  # params = 100 c**2 + 10 with an integer channel count c = round(100 m), so
  # the count moves in steps: c = 49 gives 240,110 and c = 50 gives 250,010.
  count = lambda m: 100 * round(100 * m) ** 2 + 10
  multiplier, params = modeling.search_width(count, 250_010, tolerance=0.001)
  assert params == 250_010 and round(100 * multiplier) == 50
  # 245,010 falls between the steps: 240,110 is 2.00% below (4,900 / 245,010),
  # 250,010 is 2.04% above, so only the first is within a 2% tolerance.
  multiplier, params = modeling.search_width(count, 245_010, tolerance=0.02)
  assert params == 240_110 and round(100 * multiplier) == 49
  with pytest.raises(LaunchError, match='closest is'):
    modeling.search_width(count, 245_010, tolerance=0.001)


@pytest.mark.parametrize('schedule_type', [modeling.PiecewiseByEpoch,
                                           modeling.PiecewiseByEpochKeras3])
def test_learning_rate_schedule_by_epoch(schedule_type):
  schedule = schedule_type({0: 0.1, 2: 0.01, 5: 0.001}, 10)
  rates = [float(schedule(tf.constant(step))) for step in (0, 19, 20, 49, 50, 999)]
  assert rates == pytest.approx([0.1, 0.1, 0.01, 0.01, 0.001, 0.001])
  restored = schedule_type.from_config(schedule.get_config())
  assert float(restored(tf.constant(20))) == pytest.approx(0.01)


def test_keras_field_picks_the_keras_and_refuses_what_keras3_lacks():
  assert configs.get('lenet_digits_dsr').keras == 'tf_keras'
  for method in configs.KERAS3_METHODS:
    assert overrides.apply(configs.get(f'small_cnn_digits_{method}'),
                           ['keras=keras3']).keras == 'keras3'
  with pytest.raises(LaunchError, match=r"config field `keras` must be one of "
                     r"\['tf_keras', 'keras3'\], got 'keras2'"):
    overrides.apply(configs.get('lenet_digits_dsr'), ['keras=keras2'])
  for name in ('small_cnn_digits_prune', 'wrn28_2_cifar10_thin_s0.9'):
    method = configs.get(name).method
    with pytest.raises(LaunchError, match=(
        rf"config field `keras` must be 'tf_keras' for method '{method}': "
        r"Keras 3 runs only the methods \['dense', 'dsr', 'set', 'deepr', "
        r"'rigl', 'snfs', 'snip', 'static'\], "
        r"got 'keras3'")):
      overrides.apply(configs.get(name), ['keras=keras3'])
