"""The model-wide DSR state: threshold H, reallocation count, last step, step.

Every `DynamicSparseWrapper` creates these variables as weights of its own
when it is built, so every format that saves a layer's weights carries them:
`model.save` (`.keras`, `.h5`, a SavedModel directory), `save_weights`
(`.h5`, `.weights.h5`, TensorFlow format), `tf.train.Checkpoint`, and the
Keras callbacks built on them. The model's state is its first wrapper's (in
`tf_dsr.collect_wrappers` order); the other wrappers' copies keep their
initial values. A `DynamicSparsityState` gathers the first wrapper's
variables and is attached to the model as `model.dynamic_sparsity_state`
(the way Keras tracks `model.optimizer`). It also lists the rule variables
the wrappers carry (`DynamicSparseWrapper.add_auxiliary`: DeepR's `sign`,
SNFS's `dense_momentum`) as `state.<kind>`, one variable per sparse kernel in
model order; they are weights of the wrappers, so every format saves them.

`step` counts the training steps of `fit` as the `ReallocationCallback`
sees them; the schedule reads it rather than `optimizer.iterations` alone,
because a Keras SavedModel directory restores the state but not the
optimizer. The reallocation count also positions the random stream:
reallocation r draws from keys folded from (seed, r).
"""

import tensorflow as tf

from tf_dsr import _tfmot

keras = _tfmot.keras

ATTRIBUTE = 'dynamic_sparsity_state'

# name -> (dtype, initial value) of each state variable.
VARIABLES = {
    'threshold': (tf.float32, 1e-3),
    'reallocations': (tf.int64, 0),
    'last_step': (tf.int64, -1),
    'step': (tf.int64, 0),
}


def add_variables(layer):
  """Creates the state variables as non-trainable weights of `layer`.

  Returns:
    A dict from each name of `VARIABLES` to its variable.
  """
  return {
      name: layer.add_weight(
          name=f'dsr_{name}', shape=(), dtype=dtype,
          initializer=keras.initializers.Constant(value), trainable=False,
          experimental_autocast=False)
      for name, (dtype, value) in VARIABLES.items()}


class DynamicSparsityState(tf.Module):
  """Variables shared by every dynamic-sparse layer of one model.

  Attributes:
    threshold: float32 H, the global magnitude threshold.
    reallocations: int64 number of reallocations done.
    last_step: int64 global step of the last reallocation (-1 before any).
    step: int64 training steps of `fit` counted by the callback.
  """

  def __init__(self, variables):
    super().__init__(name=ATTRIBUTE)
    self.threshold = variables['threshold']
    self.reallocations = variables['reallocations']
    self.last_step = variables['last_step']
    self.step = variables['step']


def get_or_create(model, wrappers):
  """Returns the model's state, attaching it on first use.

  Args:
    model: a tf_keras model.
    wrappers: the model's built `DynamicSparseWrapper` layers, in model order;
      the first one's variables are the model's state.

  Returns:
    The model's `DynamicSparsityState`, with `state.<kind>` listing every
    kind of rule variable that all the wrappers carry.
  """
  variables = wrappers[0].state_variables
  state = getattr(model, ATTRIBUTE, None)
  if state is None or getattr(state, 'threshold', None) is not (
      variables['threshold']):
    state = DynamicSparsityState(variables)
    setattr(model, ATTRIBUTE, state)
  attach_auxiliary(state, wrappers)
  return state


def attach_auxiliary(state, wrappers):
  """Lists on `state` each kind of rule variable that every wrapper holds."""
  kinds = set.intersection(*(set(w.auxiliary_weights) for w in wrappers))
  for kind in sorted(kinds):
    values = [v for w in wrappers for v in w.auxiliary_weights[kind]]
    current = getattr(state, kind, None)
    if current is None or [id(v) for v in current] != [id(v) for v in values]:
      setattr(state, kind, values)
