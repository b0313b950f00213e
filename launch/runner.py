"""One experiment end to end: config -> strategy -> data -> model -> fit -> export.

`run(config, model_dir=...)` is what `python -m launch.train` calls; the quick
start and the tests call it directly. See `launch.outputs` for what it writes
(and `launch.keras3_outputs` for how a Keras 3 run writes it).
"""

import importlib.util
import json
import os
import shutil
import tempfile
import time

import tensorflow as tf

import tf_dsr
from tf_dsr import keras

from launch import configs
from launch import data as data_lib
from launch import digests
from launch import keras3_outputs
from launch import modeling
from launch import outputs
from launch import overrides as overrides_lib
from launch import strategy as strategy_lib
from launch.errors import LaunchError


def resolve(name, overrides=()):
  """The registered config `name` with `key=value` `overrides` applied."""
  return overrides_lib.apply(configs.get(name), overrides)


def _say(verbose, message):
  if verbose:
    print(f'[launch] {message}', flush=True)


def _steps_per_execution(config, on_tpu):
  if not on_tpu:
    return 1
  k = config.tpu_steps_per_execution
  late = sorted({p for p in (config.period or {}).values() if p % k})
  if late:
    raise LaunchError(f'tpu_steps_per_execution {k} must divide every DSR '
                      f'period, but does not divide {late}; override one of them.')
  return k


def _results(config, overrides, model, built, final, data, strategy, steps,
             start):
  results = {
      'config': config.name,
      'overrides': list(overrides),
      'method': config.method,
      'sparsity': config.sparsity,
      'options': config.options,
      'top1': float(final['top1']),
      'top5': float(final['top5']),
      'eval_loss': float(final['loss']),
      'eval_examples': data.eval_examples,
      'params': modeling.parameter_counts(model),
      'epochs': config.epochs,
      'steps': steps,
      'seed': config.seed,
      # TF names its MultiWorkerMirroredStrategy class CollectiveAllReduceStrategy.
      'strategy': ('MultiWorkerMirroredStrategy' if isinstance(
          strategy, tf.distribute.MultiWorkerMirroredStrategy) else
                   type(strategy).__name__),
      'replicas': strategy.num_replicas_in_sync,
      'wall_time_seconds': round(time.time() - start, 3),
  }
  if built.width_multiplier is not None:
    results['thin'] = {'width_multiplier': built.width_multiplier,
                       'params': modeling.trainable_count(model),
                       'target_params': built.target_params}
  state = getattr(model, 'dynamic_sparsity_state', None)
  reallocations = 0
  if config.method in configs.reallocating() and state is not None:
    reallocations = int(state.reallocations.numpy())
    results['dsr'] = {'reallocations': reallocations,
                      'threshold': float(state.threshold.numpy()),
                      'last_step': int(state.last_step.numpy())}
  flops = modeling.flops_results(config, built, steps, reallocations,
                                 data.steps_per_epoch)
  if flops is not None:
    results['flops'] = flops
  return results


def _write_compact(model, write_dir):
  """Writes the compact sparse checkpoint; its size for results.json."""
  size = tf_dsr.save_sparse(model, write_dir.sparse_checkpoint)
  stored = tf_dsr.sparsity_report(model).stored_bytes
  return {'file': os.path.basename(write_dir.sparse_checkpoint),
          'bytes': size, 'dense_float32_bytes': stored.model_dense,
          'ratio': round(size / stored.model_dense, 4)}


def _build(config, data, strategy, steps_per_execution, dsr_log_dir, verbose,
           log_reallocations=None):
  """Builds, compiles and binds the model; returns (built, callbacks, checkpoint).

  Everything a checkpoint holds (masks, DSR state, optimizer slots, the epoch
  counter) exists when this returns, so a restore applies at once.
  """
  method = modeling.method(config.method)
  extra = {}
  if getattr(method, 'needs_sample', False):  # SNIP chooses masks on a batch.
    extra['sample'] = next(iter(data.train))
  built = method.build(config, data.input_shape, data.num_classes,
                       strategy.scope, steps_per_epoch=data.steps_per_epoch,
                       **extra)
  model = built.model
  with strategy.scope():
    modeling.compile_model(model, config, data.steps_per_epoch,
                           steps_per_execution)
    if log_reallocations is None:
      log_reallocations = verbose == 1
    callbacks = method.attach(model, config, log_dir=dsr_log_dir,
                              verbose=log_reallocations,
                              steps_per_epoch=data.steps_per_epoch)
    epoch = tf.Variable(0, dtype=tf.int64, trainable=False, name='epoch')
  if built.width_multiplier is not None:
    _say(verbose, f'thin model: width multiplier {built.width_multiplier} gives '
         f'{modeling.trainable_count(model):,} trainable parameters; the '
         f'sparse model at sparsity {config.sparsity} has '
         f'{built.target_params:,} active')
  checkpoint = tf.train.Checkpoint(epoch=epoch, **_checkpointed(model))
  return built, callbacks, checkpoint


def _checkpointed(model):
  """What a checkpoint of `model` holds besides the epoch counter."""
  if keras3_outputs.is_keras3_model(model):
    return keras3_outputs.checkpointed(model)
  return {'model': model, 'optimizer': model.optimizer}


def _output_callbacks(write_dir, checkpoint, is_chief, model_keras):
  """A checkpoint per epoch and, on the chief, the TensorBoard scalars."""
  manager = tf.train.CheckpointManager(checkpoint, write_dir.checkpoints,
                                       max_to_keep=3)
  epoch_checkpoint = (keras3_outputs.EpochCheckpoint if model_keras is not keras
                      else outputs.EpochCheckpoint)
  callbacks = [epoch_checkpoint(manager, checkpoint.epoch)]
  if is_chief:
    callbacks.append(model_keras.callbacks.TensorBoard(
        write_dir.logs, histogram_freq=0, write_graph=False, profile_batch=0))
  return callbacks


def _fits(config, data, data_dir, on_tpu, keras3_run):
  """`(train, initial_epoch, epochs, steps_per_epoch)` of each `fit` call.

  One call, but for a Keras 3 run resumed part-way through an epoch: Keras
  3's `fit` cannot start an epoch at a later batch (tf_keras's does, after
  `BackupAndRestore`), so a first call trains the epoch's remaining steps
  from `data.train`, which starts at that batch, and a second the later
  epochs from a stream that starts at the next epoch.
  """
  first, steps = data.initial_epoch, data.steps_per_epoch
  if not (keras3_run and data.initial_step):
    return [(data.train, first, config.epochs, steps)]
  fits = [(data.train, first, first + 1, steps - data.initial_step)]
  if first + 1 < config.epochs:
    rest = data_lib.load(config, data_dir, first + 1, drop_remainder=on_tpu)
    fits.append((rest.train, first + 1, config.epochs, steps))
  return fits


def run(config, model_dir=None, data_dir=None, strategy='default', tpu='local',
        resume=False, overrides=(), verbose=1, export=True, digest_dir=None,
        backup_steps=0, log_reallocations=None):
  """Trains, evaluates and exports one experiment.

  Args:
    config: an `ExperimentConfig`.
    model_dir: output directory (see `launch.outputs`); None writes nothing.
    data_dir: tfds data directory (None: tfds' default).
    strategy: a strategy name of `launch.strategy`.
    tpu: the TPU for strategy 'tpu'.
    resume: continue the run in `model_dir` from its newest checkpoint or
      backup, exactly where it stopped.
    overrides: the `key=value` strings `config` was made with (recorded).
    verbose: Keras' `fit` verbosity: 0 silent, 1 progress bars, 2 one line
      per epoch; above 0 also a line when the run starts, resumes and ends.
    log_reallocations: print one line per reallocation (H, K, active count);
      None: when `verbose == 1`.
    export: write the stripped SavedModel (experiment grids may skip it).
    digest_dir: if set, every process appends digests of its masks, H and
      weights to `digest_dir/worker-<task>.jsonl` (see `launch.digests`).
    backup_steps: with `model_dir`, also back up every this many steps (and
      at each epoch end) with Keras's BackupAndRestore (a Keras 3 run with
      `launch.keras3_outputs.MidEpochBackup`), so that `resume` continues
      part-way through an epoch; 0 for epoch checkpoints only.

  Returns:
    The results dict that is also written to `results.json`.

  Raises:
    LaunchError: for bad input, before anything is written to `model_dir`.
    ClusterError: a multi-worker run lost a worker.
  """
  start = time.time()
  if resume and not model_dir:
    raise LaunchError('--resume needs --model_dir.')
  if backup_steps < 0:
    raise LaunchError(f'backup_steps must be >= 0, got {backup_steps}.')
  if backup_steps and not model_dir:
    raise LaunchError(f'backup_steps={backup_steps} needs --model_dir (the '
                      'backups are written there).')
  settings = json.loads(json.dumps(config.to_dict()))
  run_dir = outputs.RunDir(model_dir) if model_dir else None
  if run_dir:
    run_dir.check_writable()
  if run_dir and importlib.util.find_spec('tensorboard') is None:
    raise LaunchError('TensorBoard logs need the tensorboard package, which '
                      'TensorFlow >= 2.21 no longer installs: pip install '
                      'tensorboard.')
  begin = (run_dir.check_start(resume, settings, configs.default_settings())
           if run_dir else outputs.Start())

  strategy = strategy_lib.create(strategy, tpu)
  on_tpu = strategy_lib.is_tpu(strategy)
  model_keras = modeling.keras_module(config)
  if on_tpu:
    model_keras.mixed_precision.set_global_policy('mixed_bfloat16')
  replicas = strategy.num_replicas_in_sync
  if config.batch_size % replicas:
    raise LaunchError(f'batch_size {config.batch_size} is not divisible by the '
                      f'{replicas} replicas of {type(strategy).__name__}.')
  steps_per_execution = _steps_per_execution(config, on_tpu)
  model_keras.utils.set_random_seed(config.seed)
  data = data_lib.load(config, data_dir, begin.epoch, drop_remainder=on_tpu,
                       initial_step=begin.step)
  initial_epoch = data.initial_epoch

  is_chief, task = strategy_lib.worker(strategy)
  scratch = None
  write_dir = run_dir
  if run_dir and not is_chief:  # Other workers save to a scratch directory.
    scratch = tempfile.mkdtemp(prefix=f'dsr_worker{task}_')
    write_dir = outputs.RunDir(scratch)

  built, callbacks, checkpoint = _build(
      config, data, strategy, steps_per_execution,
      write_dir.dsr_logs if write_dir else None, verbose, log_reallocations)
  model = built.model
  keras3_run = model_keras is not keras
  if begin.backup:
    # BackupAndRestore restores this again when `fit` starts; restoring here
    # too covers a run whose last backup was its last step (no `fit` left).
    # A Keras 3 run is restored here only (launch.keras3_outputs).
    saved = (keras3_outputs.checkpointed(model) if keras3_run else
             {'model': model})
    tf.train.Checkpoint(**saved).restore(
        begin.checkpoint).expect_partial().assert_existing_objects_matched()
    _say(verbose, f'resumed from backup {begin.checkpoint} at epoch '
         f'{initial_epoch}, step {data.initial_step} of the epoch')
  elif begin.checkpoint:
    checkpoint.restore(begin.checkpoint).assert_existing_objects_matched()
    _say(verbose, f'resumed from {begin.checkpoint} after epoch {initial_epoch}')
  if write_dir:
    if is_chief:
      run_dir.write_json(run_dir.config, {'config': config.name,
                                          'overrides': list(overrides),
                                          'settings': settings})
      if not begin.checkpoint and modeling.masks_by_name(model):
        # The weights at step 0, for the controls of docs/algorithm.md section 7.
        run_dir.write_arrays(run_dir.initial_weights,
                             modeling.weights_by_name(model))
    if backup_steps or begin.backup:
      # After the method's callbacks, so a backup holds that step's
      # reallocation; before the epoch checkpoint, so it is never older.
      callbacks.append(
          keras3_outputs.MidEpochBackup(  # Other workers: to scratch.
              write_dir.backup, backup_steps, data.steps_per_epoch,
              keras3_outputs.checkpointed(model), data.initial_step)
          if keras3_run else
          outputs.MidEpochBackup(run_dir.backup, backup_steps,
                                 data.steps_per_epoch))
    callbacks += _output_callbacks(write_dir, checkpoint, is_chief,
                                   model_keras)
  if digest_dir:
    reallocation = next((c for c in callbacks
                         if isinstance(c, tf_dsr.ReallocationCallback)), None)
    writer = (keras3_outputs.DigestWriter if keras3_run else
              digests.DigestWriter)
    callbacks.append(writer(os.path.join(digest_dir, f'worker-{task}.jsonl'),
                            reallocation))

  try:
    with strategy_lib.lost_workers_stop_cleanly(strategy, model_dir):
      if initial_epoch < config.epochs:
        for train, first, last, steps in _fits(config, data, data_dir, on_tpu,
                                               keras3_run):
          model.fit(train, epochs=last, initial_epoch=first,
                    steps_per_epoch=steps,
                    validation_data=data.eval if config.validation_freq else None,
                    validation_freq=config.validation_freq or 1,
                    callbacks=callbacks, verbose=verbose,
                    shuffle=False)  # `data.train` is shuffled already.
        if (run_dir and is_chief and tf.io.gfile.isdir(run_dir.backup) and
            (keras3_run or not tf.io.gfile.listdir(run_dir.backup))):
          # Keras leaves it empty; a Keras 3 run's backup is removed here.
          tf.io.gfile.rmtree(run_dir.backup)
      elif begin.backup and write_dir:
        # Stopped between the last epoch's backup and its checkpoint: write
        # that checkpoint now, and drop the backup as `fit` would have.
        for callback in callbacks:
          if isinstance(callback, outputs.EpochCheckpointMixin):
            callback.on_epoch_end(initial_epoch - 1)
        if is_chief:
          tf.io.gfile.rmtree(run_dir.backup)
      final = model.evaluate(data.eval, verbose=0, return_dict=True)
      results = _results(config, overrides, model, built, final, data, strategy,
                         int(model.optimizer.iterations.numpy()), start)
      if write_dir and is_chief:
        masks = modeling.masks_by_name(model)
        if masks:
          write_dir.write_arrays(write_dir.final_masks, masks)
          results['compact_checkpoint'] = _write_compact(model, write_dir)
        if export:
          write_dir.export(tf_dsr.strip_dynamic_sparsity(model))
        results['wall_time_seconds'] = round(time.time() - start, 3)
        write_dir.write_json(write_dir.results, results)
  finally:
    if scratch:  # Also when training failed.
      shutil.rmtree(scratch, ignore_errors=True)
  params = results['params']
  _say(verbose, f'{config.name}: top-1 {results["top1"]:.4f}, top-5 '
       f'{results["top5"]:.4f}, active parameters {params["active"]:,} of '
       f'{params["total"]:,}, {results["wall_time_seconds"]:.0f} s' +
       (f'; wrote {run_dir.path}' if run_dir else ''))
  return results
