"""ReallocationCallback: runs a Reallocator on a schedule during `model.fit`."""

import tensorflow as tf

from tf_dsr import _tfmot
from tf_dsr import engine
from tf_dsr import rules
from tf_dsr import schedules
from tf_dsr import validation

keras = _tfmot.keras


def _validate_stop(value, argument):
  return validation.check_int(argument, value, low=0, optional=True)


class ReallocationCallback(keras.callbacks.Callback):
  """Runs a reallocation rule (DSR by default) on a schedule during `model.fit`.

  Mostafa & Wang, ICML 2019, https://arxiv.org/abs/1902.05967. After every
  training step g > 0 with g % P == 0 (P from `period`), and before the stop
  point, the callback runs one reallocation of a `tf_dsr.Reallocator` on the
  model (see `tf_dsr.rules` for the rules). The model-wide state (H, the
  number of reallocations, the step of the last one, the training step)
  lives in variables of the model's wrappers, so every Keras format carries
  it and a resumed run continues exactly. The schedule counts steps with
  that saved step counter, so it continues even from a format that does
  not restore the optimizer (a Keras SavedModel directory).

  Pass exactly one callback to each `fit` of a model with wrappers: `fit`
  without one raises, and so do two callbacks, or a callback on a model a
  `Reallocator` has been reallocating.

  Rules with `at_epoch_end` (SNFS) reallocate at the end of every epoch
  instead of on `period`. For rules that grow by the dense gradient (RigL),
  the callback records it in the step before each reallocation; for rules
  whose schedule spans training (RigL, SNFS) without an `end_step`, it sets
  one from the fit's epochs and steps per epoch.

  With `steps_per_execution = k > 1` the callback sees every k-th step: a
  reallocation due within an execution runs once at its end (see
  `tf_dsr.schedules`); choose P as a multiple of k to avoid any rounding.

  Example:
    ```python
    cb = tf_dsr.ReallocationCallback(
        target_pruned=20_000, period={0: 100, 25: 200, 80: 400, 140: 800},
        stop_epoch=190)
    model.fit(ds, epochs=200, callbacks=[cb])
    ```

  Args:
    period: steps between reallocations: an int, a dict from epoch to period,
      or a `tf_dsr.PeriodSchedule` (by epoch or by step).
    stop_epoch: no reallocation from this (0-based) epoch on; None for never.
    stop_step: no reallocation at or after this global step; None for never.
    seed: integer seed of the random streams.
    log_dir: if set, TensorBoard scalars per reallocation: H, K, total active
      and each layer's density.
    verbose: if true, print one line per reallocation.
    jit_compile: compile the reallocation as one XLA program (TPUs need
      it) rather than its flat core and per-shape writes as separate ones.
      None chooses per device (`tf_dsr.engine.default_jit_compile`).
    method: the rule: a name of `tf_dsr.rules.REGISTRY` ('dsr', the default;
      'set', 'deepr', 'rigl', 'snfs', 'snip', 'static') or a
      `tf_dsr.rules.Rule` object.
    **options: the rule's options, checked here (for 'dsr': `target_pruned`,
      `tolerance`, `initial_threshold`; for 'set': `drop_fraction` or
      `target_pruned`; for 'deepr': `alpha`, `temperature`, `learning_rate`,
      meant to run with `period=1`).

  Raises:
    TypeError: for an option the rule does not take, naming its options.
    ValueError: for a bad value, naming the argument.

  Attributes:
    rule: the `tf_dsr.rules.Rule`.
    reallocator: the `Reallocator`, once the callback has a model.
    history: the `ReallocationStats` of every reallocation this callback ran.
  """

  def __init__(self, period=100, stop_epoch=None, stop_step=None, seed=0,
               log_dir=None, verbose=False, jit_compile=None, method='dsr',
               **options):
    super().__init__()
    self.rule = rules.make(method, **options)
    engine.check_seed_and_jit_compile(seed, jit_compile)
    self.schedule = schedules.as_schedule(period)
    self.stop_epoch = _validate_stop(stop_epoch, 'stop_epoch')
    self.stop_step = _validate_stop(stop_step, 'stop_step')
    self.seed = int(seed)
    if log_dir is not None and not isinstance(log_dir, (str, bytes)) and (
        not hasattr(log_dir, '__fspath__')):
      raise ValueError(f'`log_dir` must be a path or None, got {log_dir!r}.')
    self.log_dir = log_dir
    self.verbose = verbose
    self.jit_compile = jit_compile
    self.reallocator = None
    self.history = []
    self._writer = None
    self._epoch = 0
    self._epoch_begin_iterations = 0
    self._epoch_start_step = None
    self._seen_step = 0
    self._execution = None  # Steps per batch callback, once seen.
    # Keep batch logs as tensors: no host sync per step.
    self._supports_tf_logs = True

  @property
  def method(self):
    """The rule's registry name."""
    return self.rule.name

  def set_model(self, model):
    super().set_model(model)
    if self.reallocator is None or self.reallocator.model is not model:
      self.reallocator = engine.Reallocator(
          model, self.rule, seed=self.seed, jit_compile=self.jit_compile,
          _callback=self)
    # `fit` sets its callbacks' model before it makes its train step: the
    # step is traced afresh, so a step left by a `fit` that the wrappers'
    # check stopped mid-trace is not reused (Keras 3 would refuse to create
    # the optimizer's variables in it).
    self.reallocator._flavour.forget_train_function(model)  # pylint: disable=protected-access

  def on_train_begin(self, logs=None):
    # Registers this callback as the driver of this `fit` (the wrappers check
    # it when Keras traces the train step); raises for a second driver.
    self.reallocator._binding.begin_fit(self, self.params)  # pylint: disable=protected-access
    params = self.params or {}
    if params.get('epochs') and params.get('steps'):
      rule = self.rule.for_training(params['epochs'] * params['steps'])
      if rule is not self.rule:
        # Only the Python-side schedule changes (`end_step`): no retrace.
        self.rule = self.reallocator.rule = rule
    if self.log_dir and self._writer is None:
      self._writer = tf.summary.create_file_writer(self.log_dir)
    # Rules that grow by gradient hook the forward pass; make the hook now if
    # the model was not built when the callback got it.
    self.reallocator.gradient_recorder  # pylint: disable=pointless-statement

  def _saved_step(self):
    """The state's step counter, or None while the model is not built."""
    try:
      return self.reallocator.state.step
    except ValueError:
      return None

  def on_epoch_begin(self, epoch, logs=None):
    # The step counter is read here rather than at train begin: a callback
    # such as BackupAndRestore restores it in its own `on_train_begin`, which
    # may run after this one's. One read per epoch, no sync per step. The
    # state's own counter is saved with the state, so it also holds where the
    # optimizer's was not restored (a Keras SavedModel directory restores a
    # new optimizer at step 0) or was replaced (a new `compile`).
    self._epoch = epoch
    iterations = int(self.model.optimizer.iterations.numpy())
    saved = self._saved_step()
    self._epoch_begin_iterations = max(
        iterations, 0 if saved is None else int(saved.numpy()))
    self._epoch_start_step = None

  def on_train_batch_begin(self, batch, logs=None):
    if self._epoch_start_step is None:
      # The first batch index of an epoch is 0, or later in an epoch that
      # BackupAndRestore resumed part-way through.
      self._epoch_start_step = self._epoch_begin_iterations - batch
      self._seen_step = self._epoch_begin_iterations
    if self.rule.dense_gradients == 'last':
      # Record the dense gradient only in a batch that ends in a
      # reallocation (until the batch size in steps is known, in every one).
      first = self._epoch_start_step + batch + 1
      last = first + (self._execution or 1) - 1
      self.reallocator.record_gradients(
          self._execution is None or (self._active(last) and (
              self.schedule.due(self._epoch, first, last))))

  def _active(self, step):
    if self.stop_epoch is not None and self._epoch >= self.stop_epoch:
      return False
    stops = [s for s in (self.stop_step, self.rule.stop_step) if s is not None]
    return not stops or step < min(stops)

  def on_train_batch_end(self, batch, logs=None):
    if self._epoch_start_step is None:  # Driven without on_train_batch_begin.
      self._epoch_start_step = self._seen_step = self._epoch_begin_iterations
    step = self._epoch_start_step + batch + 1
    first = self._seen_step + 1
    self._seen_step = step
    self._execution = step - first + 1
    saved = self._saved_step()
    if saved is not None:
      saved.assign(step)  # An assignment, no host sync.
    if self.rule.at_epoch_end or not self._active(step):
      return
    if not self.schedule.due(self._epoch, first, step):
      return
    self._reallocate(step)

  def on_epoch_end(self, epoch, logs=None):
    if self.rule.at_epoch_end and self._active(self._seen_step):
      self._reallocate(self._seen_step)

  def _reallocate(self, step):
    if step <= int(self.reallocator.state.last_step.numpy()):
      return  # Already done at this step (a resumed run).
    self._record(self.reallocator.reallocate(step))

  def on_train_end(self, logs=None):
    self.reallocator._binding.end_fit(self)  # pylint: disable=protected-access
    # The next `fit` traces its train step again, so the wrappers check again
    # that a callback drives it.
    self.reallocator._flavour.forget_train_function(self.model)  # pylint: disable=protected-access
    if self.rule.dense_gradients == 'last':
      self.reallocator.record_gradients(False)
    if self._writer is not None:
      self._writer.flush()

  def _record(self, stats):
    self.history.append(stats)
    if self.verbose:
      # The leading newline keeps the line clear of Keras's progress bar.
      print(f'\n[tf_dsr] step {stats.step}: H {stats.threshold_used:.3g} -> '
            f'{stats.threshold:.3g}, K {stats.pruned}, active '
            f'{stats.total_active}' + (' (skipped)' if stats.skipped else ''))
    if self._writer is None:
      return
    sizes = {name: mask.shape.num_elements()
             for name, _, mask in self.reallocator.sparse_tensors()}
    with self._writer.as_default(step=stats.step):
      tf.summary.scalar('dsr/threshold', stats.threshold_used)
      tf.summary.scalar('dsr/pruned', stats.pruned)
      tf.summary.scalar('dsr/total_active', stats.total_active)
      for name, active in stats.active.items():
        tf.summary.scalar(f'dsr_density/{name}', active / sizes[name])
