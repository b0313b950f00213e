"""End-to-end tests of the launcher on mock and bundled data.

- One training step for the cheap configs and one per method of the paper's
  models (tfds mock data; ResNet-50 at 32x32 inputs, WRN-28-2 at depth 10).
- A 2-epoch DSR run on mock CIFAR-10 writes checkpoints, TensorBoard events,
  the stripped SavedModel and results.json; a run stopped after epoch 1 and
  resumed ends with the same masks, weights, optimizer and DSR state.
- Bad input: clear messages, exit status 2, nothing written.
- Configs with keras=keras3 (dense, static, DSR, SET, DeepR, RigL, SNFS,
  SNIP) train end to end and
  match their tf_keras twins, FLOPs included. A Keras 3 run with a model_dir
  writes what a tf_keras run writes; stopped after an epoch, or part-way
  through one with backups, and resumed, it ends bit-identical to an
  uninterrupted run, digests included.
- The quick start prints a progress line per run, then its table.
"""

import json
import os
import re
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import tensorflow as tf
import tensorflow_datasets as tfds

import keras as keras3

import tf_dsr
from tf_dsr import keras
from tensorflow.core.util import event_pb2

from launch import data
from launch import digests
from launch import outputs
from launch import runner
from launch.errors import LaunchError

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ONE_STEP = ['epochs=1', 'steps_per_epoch=1', 'eval_steps=1', 'batch_size=2',
            'validation_freq=0']
# WRN-10-1 on 40 mock images: 4 steps per epoch, a reallocation every 3
# steps (at steps 3 and 6: one in each epoch).
TINY = ['depth=10', 'width=1', 'sparsity=0.5', 'batch_size=8',
        'steps_per_epoch=4', 'eval_steps=2', 'period=3', 'target_pruned=40']
CONFIG = 'wrn28_2_cifar10_dsr_s0.9'


def _env():
  return dict(os.environ, TF_CPP_MIN_LOG_LEVEL='2', PYTHONPATH=REPO)


def _cli(*args):
  return subprocess.run([sys.executable, '-m', 'launch.train', *args],
                        capture_output=True, text=True, cwd=REPO, env=_env())


# ----------------------------------------------------------- one step each
@pytest.mark.parametrize('name, extra', [
    ('lenet_digits_dense', []),
    ('lenet_digits_static', []),
    ('lenet_digits_dsr', []),
    ('lenet_mnist_dense', []),
    ('lenet_mnist_static', []),
    ('lenet_mnist_dsr', []),
    ('small_cnn_digits_dsr', []),
    # WRN-28-2's configs as WRN-10-2: one step runs the same code whatever
    # the depth, at under half the cost (tests/test_launch_configs.py
    # builds them at depth 28 and checks their parameter counts).
    ('wrn28_2_cifar10_dense', ['depth=10']),
    ('wrn28_2_cifar10_static_s0.9', ['depth=10']),
    ('wrn28_2_cifar10_dsr_s0.9', ['depth=10']),
    ('wrn28_2_cifar10_thin_s0.9', ['depth=10']),
    ('wrn28_2_cifar10_set_s0.9', ['depth=10']),
    ('wrn28_2_cifar10_deepr_s0.9', ['depth=10']),
    ('wrn28_2_cifar10_prune_s0.9', ['depth=10']),
    # ResNet-50 at 32x32 inputs: one step; its parameter counts do not depend
    # on the input size (tests/test_launch_configs.py checks them at 224).
    ('resnet50_imagenet_dsr_s0.9', ['image_size=32']),
])
def test_one_training_step(name, extra):
  keras.backend.clear_session()
  with tfds.testing.mock_data(num_examples=4):
    results = runner.run(runner.resolve(name, ONE_STEP + extra), verbose=0)
  assert results['steps'] == 1 and results['config'] == name
  if 'resnet50' not in name:
    # An untrained ResNet-50 in inference mode (BN moving statistics barely
    # moved after one step) gives logits in the hundreds: its loss overflows.
    assert np.isfinite(results['eval_loss'])
  assert 0 <= results['top1'] <= results['top5'] <= 1
  params = results['params']
  assert params['active'] == sum(l['active'] for l in params['per_layer'])
  assert params['total'] == sum(l['total'] for l in params['per_layer'])
  if '_dsr' in name or '_set' in name:
    assert results['dsr']['reallocations'] == 0  # The first period is longer.
  if '_deepr' in name:
    assert results['dsr']['reallocations'] == 1  # DeepR runs after every step.
  if '_prune' in name:  # Dense at the start of gradual pruning.
    assert params['active'] == params['total'] and params['sparse_total']
  if '_thin' in name:
    thin = results['thin']
    assert abs(thin['params'] - thin['target_params']) <= 0.02 * thin['target_params']


# ------------------------------------------------------------------ Keras 3
# small_cnn on digits: 2 epochs of 5 steps, a reallocation every 3 steps.
KERAS3_TINY = ['epochs=2', 'steps_per_epoch=5', 'eval_steps=2',
               'batch_size=16', 'validation_freq=0']


@pytest.mark.parametrize('method', ['dense', 'static', 'dsr', 'set', 'deepr',
                                    'rigl', 'snfs', 'snip'])
def test_keras3_config_trains_like_its_tf_keras_twin(method, request):
  """A config with keras=keras3 trains end to end; with the same seed the
  tf_keras run starts from the same weights and masks and ends the same."""
  extra = ['period=3'] if method in ('dsr', 'set', 'rigl') else []
  if method == 'dsr':
    # These two configs are keras3_runs' runs A and T (below): their results.
    runs = request.getfixturevalue('keras3_runs')['results']
    results = {'keras3': runs['a'], 'tf_keras': runs['t']}
  else:
    results = {}
    for flavour in ('tf_keras', 'keras3'):
      keras.backend.clear_session()
      config = runner.resolve(f'small_cnn_digits_{method}',
                              KERAS3_TINY + extra + [f'keras={flavour}'])
      results[flavour] = runner.run(config, verbose=0)
  twin, ours = results['tf_keras'], results['keras3']
  assert ours['steps'] == 10 and ours['flops'] == twin['flops']
  assert ours['params'] == twin['params']
  if method in ('dsr', 'set'):
    assert ours['dsr']['reallocations'] == 3  # After steps 3, 6 and 9.
  if 'dsr' in twin:
    assert ours['dsr'] == twin['dsr']
  assert ours['eval_loss'] == pytest.approx(twin['eval_loss'], rel=1e-3)


def _keras3_tiny(*extra):
  return runner.resolve('small_cnn_digits_dsr',
                        KERAS3_TINY + ['period=3', 'keras=keras3', *extra])


class _StopAfterStep(keras3.callbacks.Callback):
  """Stops a run like a preemption: an exception after training step `step`."""

  def __init__(self, step):
    super().__init__()
    self.step = step

  def on_train_batch_end(self, batch, logs=None):
    if int(self.model.optimizer.iterations.numpy()) == self.step:
      raise KeyboardInterrupt(f'stopped after step {self.step}')


class _StopAtLastEpochEnd(keras3.callbacks.Callback):
  """Stops a run at its last epoch's end, before the epoch checkpoint."""

  def on_epoch_end(self, epoch, logs=None):
    if epoch + 1 == self.params['epochs']:
      raise KeyboardInterrupt(f'stopped at the end of epoch {epoch}')


@pytest.fixture(scope='module')
def keras3_runs(tmp_path_factory, monkeypatch_module):
  """Keras 3 DSR on digits, 2 epochs of 5 steps, reallocations after steps
  3, 6 and 9. A: straight through, with digests. B: 1 epoch, then --resume
  to 2. C: backups every 2 steps, stopped after step 7 (backed up after
  steps 2, 4, 5 and 7: batch 1 of epoch 1), then --resume. D: backups at
  epoch ends, stopped after the last one but before the last epoch
  checkpoint, then --resume. T: A's tf_keras twin."""
  root = tmp_path_factory.mktemp('keras3_runs')
  paths = {name: str(root / name) for name in 'abcdt'}
  digests_dir = str(root / 'digests')
  results = {}
  results['a'] = runner.run(_keras3_tiny(), model_dir=paths['a'], verbose=0,
                            digest_dir=os.path.join(digests_dir, 'a'))
  runner.run(_keras3_tiny('epochs=1'), model_dir=paths['b'], verbose=0)
  results['b'] = runner.run(_keras3_tiny(), model_dir=paths['b'], verbose=0,
                            resume=True)
  output_callbacks = runner._output_callbacks  # pylint: disable=protected-access
  monkeypatch_module.setattr(
      runner, '_output_callbacks',
      lambda *args: output_callbacks(*args) + [_StopAfterStep(7)])
  with pytest.raises(KeyboardInterrupt, match='after step 7'):
    runner.run(_keras3_tiny(), model_dir=paths['c'], verbose=0, backup_steps=2)
  monkeypatch_module.setattr(  # After the backup, before the checkpoint.
      runner, '_output_callbacks',
      lambda *args: [_StopAtLastEpochEnd()] + output_callbacks(*args))
  with pytest.raises(KeyboardInterrupt, match='end of epoch 1'):
    runner.run(_keras3_tiny(), model_dir=paths['d'], verbose=0,
               backup_steps=100)  # Backups at epoch ends only.
  monkeypatch_module.setattr(runner, '_output_callbacks', output_callbacks)
  checkpoints_d = sorted(os.listdir(os.path.join(paths['d'], 'checkpoints')))
  results['d'] = runner.run(_keras3_tiny(), model_dir=paths['d'], verbose=0,
                            resume=True)
  stopped = sorted(os.listdir(paths['c']))
  backup = tf.train.latest_checkpoint(os.path.join(paths['c'], 'backup', 'chief'))
  position = (int(tf.train.load_variable(backup, outputs.BACKUP_EPOCH_KEY)),
              int(tf.train.load_variable(backup, outputs.BACKUP_BATCH_KEY)))
  results['c'] = runner.run(_keras3_tiny(), model_dir=paths['c'], verbose=0,
                            resume=True, backup_steps=2,
                            digest_dir=os.path.join(digests_dir, 'c'))
  keras.backend.clear_session()
  results['t'] = runner.run(_keras3_tiny('keras=tf_keras'),
                            model_dir=paths['t'], verbose=0)
  return {'paths': paths, 'results': results, 'digests': digests_dir,
          'stopped': stopped, 'position': position,
          'checkpoints_d': checkpoints_d}


@pytest.fixture(scope='module')
def monkeypatch_module():
  with pytest.MonkeyPatch.context() as patch:
    yield patch


def _files(model_dir):
  """Relative paths of the files of a run directory, without the
  TensorBoard event files' host- and time-dependent names."""
  found = set()
  for directory, _, names in os.walk(model_dir):
    for name in names:
      relative = os.path.relpath(os.path.join(directory, name), model_dir)
      found.add(os.path.dirname(relative) + '/<events>'
                if 'tfevents' in name else relative)
  return found


def test_keras3_run_writes_what_a_tf_keras_run_writes(keras3_runs):
  paths, results = keras3_runs['paths'], keras3_runs['results']
  ours, twin = _files(paths['a']), _files(paths['t'])
  # The same files, but inside saved_model/: Keras 3's `model.export`
  # writes no Keras metadata (keras_metadata.pb, fingerprint aside).
  assert ({f for f in ours if not f.startswith('saved_model/')} ==
          {f for f in twin if not f.startswith('saved_model/')})
  assert {'checkpoints/ckpt-1.index', 'checkpoints/ckpt-2.index',
          'logs/train/<events>', 'logs/dsr/<events>', 'results.json',
          'sparse_model.npz', 'final_masks.npz', 'initial_weights.npz',
          'saved_model/saved_model.pb'} <= ours
  saved = json.load(open(os.path.join(paths['a'], 'results.json')))
  assert saved == json.loads(json.dumps(results['a']))
  assert saved.keys() == results['t'].keys()
  for key in ('params', 'dsr', 'flops', 'steps'):
    assert saved[key] == results['t'][key], key
  assert saved['compact_checkpoint']['bytes'] == os.path.getsize(
      os.path.join(paths['a'], 'sparse_model.npz'))
  # The checkpoint holds the epoch counter under the tf_keras run's key,
  # and every weight (masks and DSR state included) and optimizer variable.
  checkpoint = _checkpoint(os.path.join(paths['a'], 'checkpoints', 'ckpt-2'))
  assert checkpoint[outputs.EPOCH_KEY] == 2
  model = tf_dsr.load_sparse(os.path.join(paths['a'], 'sparse_model.npz'))
  assert isinstance(model, keras3.Model)
  assert len([k for k in checkpoint if k.startswith('model/')]) == len(
      model.weights)
  # The exported SavedModel is the stripped model: its outputs are the
  # compact checkpoint's model's.
  exported = tf.saved_model.load(os.path.join(paths['a'], 'saved_model'))
  images = np.random.default_rng(0).random((4, 8, 8, 1), np.float32)
  np.testing.assert_allclose(exported.serve(images).numpy(),
                             model(images).numpy(), rtol=1e-5, atol=1e-6)
  masks = np.load(os.path.join(paths['a'], 'final_masks.npz'))
  assert len(masks.files) == len(tf_dsr.collect_wrappers(model)) == 2
  assert float(model.dynamic_sparsity_state.threshold.numpy()) == (
      saved['dsr']['threshold'])


def _same_checkpoints(first, second):
  first = _checkpoint(os.path.join(first, 'checkpoints', 'ckpt-2'))
  second = _checkpoint(os.path.join(second, 'checkpoints', 'ckpt-2'))
  assert first.keys() == second.keys()
  # save_counter counts the saves of one process's checkpoint object (a run
  # resumed from a backup has saved one epoch checkpoint): not run state.
  for key in set(first) - {'save_counter/.ATTRIBUTES/VARIABLE_VALUE'}:
    np.testing.assert_array_equal(first[key], second[key], err_msg=key)
  return first


@pytest.mark.parametrize('resumed', ['b', 'c', 'd'])
def test_keras3_resume_ends_bit_identical(keras3_runs, resumed):
  """B resumes after epoch 1, C part-way through epoch 1 from a backup, D
  from the last epoch's backup with no training left; all end as A:
  weights, masks, DSR state, optimizer step and momentum."""
  paths, results = keras3_runs['paths'], keras3_runs['results']
  checkpoint = _same_checkpoints(paths['a'], paths[resumed])
  assert len([k for k in checkpoint if k.startswith('optimizer/')]) > 1
  for name in ('final_masks.npz', 'initial_weights.npz'):
    a, b = (np.load(os.path.join(paths[r], name)) for r in ('a', resumed))
    assert a.files == b.files
    for key in a.files:
      np.testing.assert_array_equal(a[key], b[key], err_msg=f'{name} {key}')
  for key in ('top1', 'top5', 'eval_loss', 'params', 'dsr', 'flops', 'steps'):
    assert results[resumed][key] == results['a'][key], key
  assert not os.path.exists(os.path.join(paths[resumed], 'backup'))


def test_keras3_backup_is_taken_mid_epoch_and_digests_match(keras3_runs):
  assert 'backup' in keras3_runs['stopped']
  assert 'results.json' not in keras3_runs['stopped']
  assert keras3_runs['position'] == (1, 1)  # Epoch 1, its batch 1: step 7.
  # D stopped after its last backup, before its last epoch checkpoint.
  assert 'ckpt-2.index' not in keras3_runs['checkpoints_d']
  assert 'ckpt-1.index' in keras3_runs['checkpoints_d']
  a = digests.read(os.path.join(keras3_runs['digests'], 'a', 'worker-0.jsonl'))
  c = digests.read(os.path.join(keras3_runs['digests'], 'c', 'worker-0.jsonl'))
  assert [r['event'] for r in a] == ['start'] + ['reallocation'] * 3 + ['end']
  assert a[-1] == c[-1]  # Bit-identical at the end.
  # C resumed after step 7: its reallocation after step 9 is A's.
  assert [r for r in c if r['event'] == 'reallocation'] == [a[3]]
  assert a[3]['step'] == 9 and a[3]['reallocations'] == 3


def test_keras3_resume_refuses_another_keras_and_writes_nothing(keras3_runs):
  model_dir = keras3_runs['paths']['a']
  index = os.path.join(model_dir, 'checkpoints', 'checkpoint')
  before = sorted(os.listdir(model_dir)), open(index).read()
  with pytest.raises(LaunchError, match=r"--resume: the config differs from "
                     r"the run in .* \(keras: 'keras3' -> 'tf_keras'\)"):
    runner.run(_keras3_tiny('keras=tf_keras', 'epochs=3'), model_dir=model_dir,
               resume=True, verbose=0)
  assert (sorted(os.listdir(model_dir)), open(index).read()) == before


# ------------------------------------------------------------- 2-epoch run
def _events(directory):
  """tag -> list of (step, value) from the TF2 event files in `directory`."""
  found = {}
  for name in tf.io.gfile.listdir(directory):
    if 'tfevents' not in name:
      continue
    for record in tf.data.TFRecordDataset(os.path.join(directory, name)):
      event = event_pb2.Event.FromString(record.numpy())
      for value in event.summary.value:
        scalar = tf.make_ndarray(value.tensor) if value.HasField('tensor') else (
            value.simple_value)
        found.setdefault(value.tag, []).append((event.step, float(scalar)))
  return found


def _checkpoint(path):
  reader = tf.train.load_checkpoint(path)
  return {k: reader.get_tensor(k) for k in reader.get_variable_to_shape_map()
          if not k.startswith('_CHECKPOINTABLE_OBJECT_GRAPH')}


@pytest.fixture(scope='module')
def runs(tmp_path_factory):
  """A: 2 epochs straight. B: 1 epoch, then --resume to 2 epochs."""
  root = tmp_path_factory.mktemp('runs')
  uninterrupted, resumed = str(root / 'a'), str(root / 'b')
  with tfds.testing.mock_data(num_examples=40):
    keras.backend.clear_session()
    results = runner.run(runner.resolve(CONFIG, TINY + ['epochs=2']),
                         model_dir=uninterrupted, verbose=0)
    # B's SavedModel exports are not read (A's is): B skips them.
    keras.backend.clear_session()
    runner.run(runner.resolve(CONFIG, TINY + ['epochs=1']), model_dir=resumed,
               verbose=0, export=False)
    first_half = _checkpoint(os.path.join(resumed, 'checkpoints', 'ckpt-1'))
    keras.backend.clear_session()
    resumed_results = runner.run(runner.resolve(CONFIG, TINY + ['epochs=2']),
                                 model_dir=resumed, resume=True, verbose=0,
                                 export=False)
  return {'a': uninterrupted, 'b': resumed, 'results': results,
          'resumed_results': resumed_results, 'b_epoch1': first_half}


def test_run_writes_checkpoints_logs_export_and_results(runs):
  model_dir = runs['a']
  assert sorted(os.listdir(model_dir)) == [
      'checkpoints', 'config.json', 'final_masks.npz', 'initial_weights.npz',
      'logs', 'results.json', 'saved_model', 'sparse_model.npz']
  state = tf.train.get_checkpoint_state(os.path.join(model_dir, 'checkpoints'))
  assert [os.path.basename(p) for p in state.all_model_checkpoint_paths] == [
      'ckpt-1', 'ckpt-2']
  saved = json.load(open(os.path.join(model_dir, 'results.json')))
  assert saved == json.loads(json.dumps(runs['results']))
  assert saved['steps'] == 8 and saved['epochs'] == 2
  assert saved['options'] == {'target_pruned': 40, 'tolerance': 0.1,
                              'initial_threshold': 1e-3}
  assert saved['dsr'] == {'reallocations': 2, 'threshold': pytest.approx(
      saved['dsr']['threshold']), 'last_step': 6}
  assert saved['wall_time_seconds'] > 0 and saved['eval_examples'] == 16
  params = saved['params']
  # WRN-10-1: three blocks of two 3x3 convs; 0.5 of each kept at the start,
  # and reallocation moves weights between layers but keeps the total.
  sparse = [l for l in params['per_layer'] if l['sparse']]
  assert len(sparse) == 6 and params['sparse_total'] == 9 * (
      16 * 16 + 16 * 16 + 16 * 32 + 32 * 32 + 32 * 64 + 64 * 64)
  assert params['sparse_active'] == params['sparse_total'] // 2
  assert params['active'] == params['total'] - params['sparse_active']
  assert json.load(open(os.path.join(model_dir, 'config.json')))['config'] == CONFIG

  train_events = _events(os.path.join(model_dir, 'logs', 'train'))
  for tag in ('epoch_loss', 'epoch_top1', 'epoch_top5', 'epoch_learning_rate'):
    assert [step for step, _ in train_events[tag]] == [0, 1], tag
  assert train_events['epoch_learning_rate'][0][1] == pytest.approx(0.1)
  assert 'epoch_top1' in _events(os.path.join(model_dir, 'logs', 'validation'))
  dsr_events = _events(os.path.join(model_dir, 'logs', 'dsr'))
  assert [step for step, _ in dsr_events['dsr/threshold']] == [3, 6]
  assert all(v == params['sparse_active'] for _, v in dsr_events['dsr/total_active'])


def test_saved_model_is_stripped_and_matches_results(runs):
  model = keras.models.load_model(os.path.join(runs['a'], 'saved_model'),
                                  compile=False)
  assert not any('dynamic_sparse' in layer.name for layer in model.layers)
  results = runs['results']
  for layer in results['params']['per_layer']:
    if layer['sparse']:
      kernel = model.get_layer(layer['name']).kernel.numpy()
      assert np.count_nonzero(kernel) <= layer['active']
  model.compile(loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                metrics=[keras.metrics.SparseCategoricalAccuracy(name='top1')])
  with tfds.testing.mock_data(num_examples=40):
    evaluation = data.load(runner.resolve(CONFIG, TINY)).eval
    scores = model.evaluate(evaluation, verbose=0, return_dict=True)
  assert scores['top1'] == pytest.approx(results['top1'], abs=1e-6)


def test_compact_checkpoint_is_written_with_its_size(runs):
  path = os.path.join(runs['a'], 'sparse_model.npz')
  compact = runs['results']['compact_checkpoint']
  assert compact['file'] == 'sparse_model.npz'
  assert compact['bytes'] == os.path.getsize(path)
  assert compact['bytes'] < compact['dense_float32_bytes']
  model = tf_dsr.load_sparse(path)  # Rebuilt from the stored config.
  final = np.load(os.path.join(runs['a'], 'final_masks.npz'))
  # In order: Keras names the variables of a deserialized wrapper without
  # its layer's scope (tfmot's too), so names do not identify them.
  masks = [mask.numpy() for wrapper in tf_dsr.collect_wrappers(model)
           for _, mask in wrapper.sparse_weights]
  assert len(masks) == len(final.files) == 6
  for mask, name in zip(masks, final.files):
    np.testing.assert_array_equal(mask, final[name])
  assert float(model.dynamic_sparsity_state.threshold.numpy()) == (
      runs['results']['dsr']['threshold'])


def test_resume_continues_exactly(runs):
  uninterrupted = _checkpoint(os.path.join(runs['a'], 'checkpoints', 'ckpt-2'))
  resumed = _checkpoint(os.path.join(runs['b'], 'checkpoints', 'ckpt-2'))
  assert uninterrupted.keys() == resumed.keys()
  masks = [k for k in uninterrupted if '_mask/' in k]
  # H, reallocation count, last step and step counter: weights of every
  # wrapper (the first one's are the model's state).
  state = [k for k in uninterrupted if '/dsr_' in k]
  slots = [k for k in uninterrupted if 'optimizer' in k]
  assert len(masks) == 6 and len(state) == 4 * 6 and slots
  for key in uninterrupted:
    np.testing.assert_array_equal(uninterrupted[key], resumed[key], err_msg=key)
  # The resumed epoch did move masks (a reallocation at step 6).
  moved = [k for k in masks if not np.array_equal(runs['b_epoch1'][k], resumed[k])]
  assert moved
  assert runs['resumed_results']['top1'] == runs['results']['top1']


def test_existing_run_is_protected(runs):
  index = os.path.join(runs['a'], 'checkpoints', 'checkpoint')
  before = open(index).read()
  with pytest.raises(LaunchError, match='already holds a run .* pass --resume'):
    runner.run(runner.resolve(CONFIG, TINY + ['epochs=2']), model_dir=runs['a'])
  with pytest.raises(LaunchError,
                     match=r"differs .* \(sparsity: 0.5 -> 0.6\); only epochs"):
    runner.run(runner.resolve(CONFIG, TINY + ['epochs=3', 'sparsity=0.6']),
               model_dir=runs['a'], resume=True)
  assert open(index).read() == before


# --------------------------------------------------------------- bad input
def test_resume_without_checkpoint_writes_nothing(tmp_path):
  model_dir = tmp_path / 'run'
  with pytest.raises(LaunchError, match='--resume: no checkpoint in'):
    runner.run(runner.resolve('small_cnn_digits_dsr'), model_dir=str(model_dir),
               resume=True)
  assert not model_dir.exists()


@pytest.mark.parametrize('backup_steps, model_dir, message', [
    (-1, 'run', 'backup_steps must be >= 0, got -1'),
    (5, None, 'backup_steps=5 needs --model_dir'),
])
def test_bad_backup_steps_writes_nothing(tmp_path, backup_steps, model_dir,
                                         message):
  model_dir = str(tmp_path / model_dir) if model_dir else None
  with pytest.raises(LaunchError, match=message):
    runner.run(runner.resolve(CONFIG), model_dir=model_dir,
               backup_steps=backup_steps)
  assert not os.listdir(tmp_path)


def test_missing_data_writes_nothing(tmp_path):
  model_dir = tmp_path / 'run'
  with pytest.raises(LaunchError, match='python -m launch.prepare_data'):
    runner.run(runner.resolve(CONFIG), model_dir=str(model_dir),
               data_dir=str(tmp_path / 'data'))
  assert not model_dir.exists()


@pytest.mark.parametrize('args, message', [
    (['--config=wrn28_2_cifar10_dsr_s0.95'],
     r"unknown config 'wrn28_2_cifar10_dsr_s0.95'; valid configs are:\n"
     r"(  \S+\n)*  wrn28_2_cifar10_dsr_s0.9\n"),
    (['--config=small_cnn_digits_dsr', '--override', 'epoch=2'],
     r"--override 'epoch=2': unknown key 'epoch'; valid keys are: .*, epochs, "),
    (['--config=small_cnn_digits_dsr', '--resume'],
     r'--resume: no checkpoint in .*; start the run without --resume'),
])
def test_cli_bad_input_exits_2_and_writes_nothing(tmp_path, args, message):
  model_dir = tmp_path / 'run'
  done = _cli(*args, f'--model_dir={model_dir}')
  assert done.returncode == 2, done.stderr
  assert re.search('error: ' + message, done.stderr), done.stderr
  assert 'Traceback' not in done.stderr
  assert not model_dir.exists()


@pytest.mark.parametrize('config, model_dir, message', [
    ('small_cnn_digits_dsr', 'missing/run', 'its parent directory'),
    ('small_cnn_digits_dsr_s0.5', 'run',
     "unknown config 'small_cnn_digits_dsr_s0.5'; valid configs are:"),
])
def test_cli_checks_before_importing_tensorflow(tmp_path, config, model_dir,
                                                message):
  # launch.precheck runs first, so a mistake there is reported at once.
  code = textwrap.dedent('''
      import sys
      from absl import flags
      from launch import train
      flags.FLAGS(['train', '--config=' + sys.argv[1],
                   '--model_dir=' + sys.argv[2]])
      try:
        train.main(['train'])
      except SystemExit as exit:
        print(exit.code, 'tensorflow' in sys.modules)
  ''')
  done = subprocess.run(
      [sys.executable, '-c', code, config, str(tmp_path / model_dir)],
      capture_output=True, text=True, cwd=REPO, env=_env())
  assert done.stdout.split() == ['2', 'False'], done.stderr
  assert message in done.stderr
  assert not (tmp_path / model_dir).exists()


# -------------------------------------------------------------- quick start
def test_quickstart_prints_its_table():
  done = subprocess.run(
      [sys.executable, '-m', 'launch.quickstart', '--seeds=2', '--override',
       'epochs=5'], capture_output=True, text=True, cwd=REPO, env=_env())
  assert done.returncode == 0, done.stderr
  labels = ['dense', 'static sparse', 'DSR', 'DSR (Keras 3)']
  rows = re.findall(r'^(dense|static sparse|DSR|DSR \(Keras 3\)) +([\d,]+) / '
                    r'([\d,]+) +(\d+) +([\d.]+) \+- ([\d.]+) +(\d+)$',
                    done.stdout, re.MULTILINE)
  assert [r[0] for r in rows] == labels, done.stdout
  # LeNet-300-100 on 64 inputs: 50,610 parameters; at sparsity 0.9 the
  # kernels keep 1,920 + 3,000 + 100 and the 410 biases stay: 5,430 (the
  # same in Keras 3).
  assert [(r[1], r[2]) for r in rows] == [('50,610', '50,610')] + [
      ('5,430', '50,610')] * 3
  for row in rows:
    assert row[3] == '210' and row[6] == '2'  # 5 epochs of 42 steps, 2 seeds.
    assert 0 <= float(row[5]) < 0.3
  # Chance is 0.1. After 5 of the quick start's 30 epochs the dense model is
  # near its final accuracy; the sparse ones, at 1/10 of the fan-in, are
  # still climbing (about 0.65 here, 0.96 after 30 epochs).
  assert float(rows[0][4]) > 0.9
  assert all(float(row[4]) > 0.3 for row in rows[1:])
  # One progress line per run, in order, with the time so far and left.
  progress = re.findall(r'^\[quickstart\] run (\d) of 8: (dense|static sparse|'
                        r'DSR|DSR \(Keras 3\)), seed (\d): test accuracy '
                        r'[\d.]+ in \d+ s; elapsed [\w ]+, about [\w ]+ left$',
                        done.stdout, re.MULTILINE)
  assert progress == [(str(i + 1), label, str(seed))
                      for i, (label, seed) in enumerate(
                          (m, s) for m in labels for s in (0, 1))], done.stdout
  assert done.stdout.startswith('[quickstart] 8 runs: dense, static sparse, '
                                'DSR, DSR (Keras 3) x 2 seeds\n'), done.stdout


def _unwritable_dir(tmp_path):
  """A directory this process cannot write to (root ignores permissions)."""
  if os.geteuid() == 0:
    return '/sys/tf_dsr_run'  # sysfs refuses new entries even to root.
  locked = tmp_path / 'locked'
  locked.mkdir()
  locked.chmod(0o500)
  return str(locked / 'run')


@pytest.mark.parametrize('kind, message', [
    ('file', r'--model_dir \S+ is a file, not a directory'),
    ('under_a_file', r'--model_dir \S+: its parent \S+ is a file'),
    ('missing_parent', r'--model_dir \S+: its parent directory \S+ does not '
                       r'exist; create it first'),
    ('unwritable', r'--model_dir \S+ is not writable'),
])
def test_cli_unusable_model_dir_exits_2_and_writes_nothing(tmp_path, kind,
                                                            message):
  a_file = tmp_path / 'a_file'
  a_file.write_text('keep me')
  model_dir = {
      'file': str(a_file),
      'under_a_file': str(a_file / 'run'),
      'missing_parent': str(tmp_path / 'missing' / 'run'),
      'unwritable': _unwritable_dir(tmp_path),
  }[kind]
  before = sorted(p.name for p in tmp_path.iterdir())
  done = _cli('--config=small_cnn_digits_dsr', f'--model_dir={model_dir}')
  assert done.returncode == 2, done.stderr
  assert re.search('error: ' + message, done.stderr), done.stderr
  assert 'Traceback' not in done.stderr
  assert sorted(p.name for p in tmp_path.iterdir()) == before
  assert a_file.read_text() == 'keep me'
  assert kind == 'file' or not os.path.exists(model_dir)
