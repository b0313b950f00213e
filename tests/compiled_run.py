"""DSR training with XLA-compiled steps and `steps_per_execution`.

Shared by tests/test_compiled_steps.py, which imports the model, data and
training helpers below for its single-device tests, and tests/mirrored_run.py,
which runs the MirroredStrategy modes below in its subprocess for
tests/test_distribution.py: two logical CPU devices must be set up before
TensorFlow initialises its devices, which a pytest process has long done.
Run alone, `main` does that first, then runs the modes named on the command
line, in order:

  mirrored           fit under MirroredStrategy (2 logical CPUs),
                     steps_per_execution=2, three times: with the train step
                     and the reallocation uncompiled; with the reallocation
                     compiled; and with both compiled, the train step's
                     forward and backward pass per replica (`ReplicaCompiled`,
                     the most of the step XLA takes on CPUs, see below).
                     Reports whether the replicas' copies agree and how the
                     compiled runs' masks compare with the uncompiled one's.
  mirrored_xla_step  the same fit with the Keras train step compiled
                     (jit_compile=True); reports the error it raises. Name it
                     last: it fails half-way through a training step.

It prints one JSON line, {mode: findings}, as the last line of stdout.
"""

import json
import sys

import numpy as np
import tensorflow as tf

import tf_dsr
from tf_dsr import keras

SPARSITY = 0.7
TARGET_PRUNED = 24
INITIAL_THRESHOLD = 2e-2


class ReplicaCompiled(keras.Model):
  """A functional model whose train step compiles each replica's part.

  `compile(jit_compile=True)` compiles the whole step, the gradients'
  all-reduce included, which TensorFlow cannot do under MirroredStrategy on
  CPU devices (see `mirrored_xla_step`). This step compiles what each replica
  computes alone, the forward pass, loss and gradients, with XLA
  (`tf.function(jit_compile=True)`, traced once per replica device) and
  leaves the all-reduce and the optimizer update to the strategy, as an
  uncompiled step does.
  """

  def __init__(self, *args, **kwargs):
    super().__init__(*args, **kwargs)
    self.compiled_gradients = tf.function(self._gradients, jit_compile=True)

  def _gradients(self, x, y):
    with tf.GradientTape() as tape:
      outputs = self(x, training=True)
      loss = self.compute_loss(x, y, outputs)
    return outputs, tape.gradient(loss, self.trainable_variables)

  def train_step(self, data):
    x, y = data
    outputs, gradients = self.compiled_gradients(x, y)
    self.optimizer.apply_gradients(zip(gradients, self.trainable_variables))
    return self.compute_metrics(x, y, outputs, None)


def build_model(seed=0, jit_compile=False, steps_per_execution=1,
                replica_compiled=False):
  """A compiled 16 -> 32 -> 10 MLP with both kernels sparse (0.7).

  Two sparse tensors, so a reallocation also moves weights between layers.
  Call under `strategy.scope()` for a distributed model. `replica_compiled`
  makes it a `ReplicaCompiled` model over the same layers.
  """
  keras.utils.set_random_seed(seed)
  inputs = keras.Input((16,))
  x = keras.layers.Dense(32, activation='relu', name='fc1')(inputs)
  outputs = keras.layers.Dense(10, name='fc2')(x)
  model = tf_dsr.sparsify(keras.Model(inputs, outputs, name='mlp'), SPARSITY,
                          seed=seed)
  if replica_compiled:
    model = ReplicaCompiled(model.inputs, model.outputs, name='mlp')
  model.compile(keras.optimizers.SGD(0.05, momentum=0.9),
                keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                jit_compile=jit_compile,
                steps_per_execution=steps_per_execution)
  return model


def make_data(n, seed=0):
  rng = np.random.default_rng(seed)
  x = rng.normal(size=(n, 16)).astype('float32')
  y = rng.integers(0, 10, size=n)
  return x, y


def sparse_pairs(model):
  """`(kernel, mask)` variables of every DynamicSparseWrapper in `model`."""
  return [pair for wrapper in tf_dsr.collect_wrappers(model)
          for pair in wrapper.sparse_weights]


def local(variable):
  """The first local copy of a (possibly distributed) variable, as numpy."""
  return getattr(variable, 'values', [variable])[0].numpy()


class Probe(keras.callbacks.Callback):
  """Records what the callbacks see, around a `ReallocationCallback`.

  Put one instance before the `ReallocationCallback` in the callback list
  (`before=True`) and one after it: the first records the global step of
  every callback (one per execution) and, at every step, the smallest
  relative distance between an active weight's magnitude and H, as the next
  reallocation will compare them; the second records the steps after which
  the masks had changed.
  """

  def __init__(self, before):
    super().__init__()
    self.before = before
    self.steps = []
    self.gaps = {}
    self.mask_changes = []
    self._masks = None

  def on_train_begin(self, logs=None):
    self._masks = [local(m) for _, m in sparse_pairs(self.model)]

  def on_train_batch_end(self, batch, logs=None):
    step = int(local(self.model.optimizer.iterations))
    if self.before:
      self.steps.append(step)
      threshold = float(local(self.model.dynamic_sparsity_state.threshold))
      magnitudes = np.concatenate([
          np.abs(local(k))[local(m) > 0] for k, m in sparse_pairs(self.model)])
      self.gaps[step] = float(
          np.min(np.abs(magnitudes - threshold)) / threshold)
      return
    masks = [local(m) for _, m in sparse_pairs(self.model)]
    if any((a != b).any() for a, b in zip(masks, self._masks)):
      self.mask_changes.append(step)
    self._masks = masks


def train(train_jit, realloc_jit, steps_per_execution, period, n, epochs,
          batch_size=8, strategy=None):
  """Builds, trains and returns `(model, callback, before, after)` probes.

  `train_jit`: False, True (`compile(jit_compile=True)`) or 'replica' (a
  `ReplicaCompiled` model).
  """
  if strategy is None:
    strategy = tf.distribute.get_strategy()
  with strategy.scope():
    model = build_model(jit_compile=train_jit is True,
                        steps_per_execution=steps_per_execution,
                        replica_compiled=train_jit == 'replica')
  x, y = make_data(n)
  cb = tf_dsr.ReallocationCallback(
      target_pruned=TARGET_PRUNED, period=period,
      initial_threshold=INITIAL_THRESHOLD, seed=0, jit_compile=realloc_jit)
  before, after = Probe(before=True), Probe(before=False)
  model.fit(x, y, batch_size=batch_size, epochs=epochs, verbose=0,
            shuffle=False, callbacks=[before, cb, after])
  return model, cb, before, after


def _replicas_agree(variable):
  values = [v.numpy() for v in variable.values]
  return len(values) == 2 and all(
      np.array_equal(values[0], v) for v in values[1:])


def _mirrored_run(strategy, realloc_jit, train_jit=False):
  model, cb, _, _ = train(train_jit=train_jit, realloc_jit=realloc_jit,
                          steps_per_execution=2, period=4, n=128, epochs=2,
                          batch_size=16, strategy=strategy)
  state = model.dynamic_sparsity_state
  variables = [state.threshold, state.reallocations, state.last_step]
  masked_nonzero = 0
  for kernel, mask in sparse_pairs(model):
    variables += [kernel, mask]
    for k, m in zip(kernel.values, mask.values):
      masked_nonzero += int((k.numpy()[m.numpy() == 0] != 0).sum())
  variables += [v for v in model.optimizer.variables if hasattr(v, 'values')]
  compiled_gradients = getattr(model, 'compiled_gradients', None)
  return model, {
      'jit': cb.reallocator.jit_compile,
      'replica_step_traces': (compiled_gradients.experimental_get_tracing_count()
                              if compiled_gradients else 0),
      'mirrored': [hasattr(v, 'values') for v in variables],
      'checked': [v.name for v in variables],
      'disagreements': [v.name for v in variables if not _replicas_agree(v)],
      'masked_nonzero': masked_nonzero,
      'history_steps': [s.step for s in cb.history],
      'pruned': [s.pruned for s in cb.history],
      'reallocations': [int(v.numpy()) for v in state.reallocations.values],
      'last_step': [int(v.numpy()) for v in state.last_step.values],
  }


def _compare(model, reference):
  """How `model`'s masks, kernels and H differ from `reference`'s."""
  pairs = list(zip(sparse_pairs(model), sparse_pairs(reference)))
  return {
      'mask_differences': [int((local(a) != local(b)).sum())
                           for (_, a), (_, b) in pairs],
      'kernel_max_difference': max(float(np.abs(local(a) - local(b)).max())
                                   for (a, _), (b, _) in pairs),
      'thresholds': [float(local(m.dynamic_sparsity_state.threshold))
                     for m in (model, reference)],
  }


def mirrored(strategy):
  """Compiled and uncompiled steps and reallocations under MirroredStrategy."""
  compiled, compiled_report = _mirrored_run(strategy, realloc_jit=True)
  replica, replica_report = _mirrored_run(strategy, realloc_jit=True,
                                          train_jit='replica')
  plain, plain_report = _mirrored_run(strategy, realloc_jit=False)
  return {
      'replicas': strategy.num_replicas_in_sync,
      'compiled': compiled_report,
      'replica_compiled': replica_report,
      'uncompiled': plain_report,
      'compiled_vs_uncompiled': _compare(compiled, plain),
      'replica_compiled_vs_uncompiled': _compare(replica, plain),
  }


def mirrored_xla_step(strategy):
  """fit with an XLA-compiled Keras train step under MirroredStrategy."""
  try:
    _, cb, _, _ = train(train_jit=True, realloc_jit=True,
                        steps_per_execution=2, period=4, n=64, epochs=1,
                        batch_size=16, strategy=strategy)
  except Exception as error:  # pylint: disable=broad-except
    return {'replicas': strategy.num_replicas_in_sync,
            'error_type': type(error).__name__, 'error': str(error)}
  return {'replicas': strategy.num_replicas_in_sync, 'error_type': None,
          'error': None, 'history_steps': [s.step for s in cb.history]}


MODES = {'mirrored': mirrored, 'mirrored_xla_step': mirrored_xla_step}


def main():
  modes = sys.argv[1:]
  unknown = [mode for mode in modes if mode not in MODES]
  if not modes or unknown:
    sys.exit(f'usage: python -m tests.compiled_run MODE...; modes: '
             f'{sorted(MODES)}, got {modes}')
  tf.config.set_logical_device_configuration(
      tf.config.list_physical_devices('CPU')[0],
      [tf.config.LogicalDeviceConfiguration()] * 2)
  strategy = tf.distribute.MirroredStrategy(['/cpu:0', '/cpu:1'])
  print(json.dumps({mode: MODES[mode](strategy) for mode in modes}))


if __name__ == '__main__':
  main()
