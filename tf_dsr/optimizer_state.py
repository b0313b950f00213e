"""Finding an optimizer's per-weight state (momentum, Adam moments, ...).

DSR resets that state wherever a weight is regrown or pruned. tf_keras has two
optimizer families: the current one keeps per-variable lists of slot variables
indexed by `_index_dict`; the legacy one (`OptimizerV2`) exposes named slots.
A `LossScaleOptimizer` (mixed precision) wraps either.
"""

import tensorflow as tf


def _unwrap(optimizer):
  while hasattr(optimizer, 'inner_optimizer'):
    optimizer = optimizer.inner_optimizer
  return optimizer


def slot_variables(optimizer, variable):
  """The optimizer variables that hold per-entry state for `variable`.

  Args:
    optimizer: a tf_keras optimizer (current or legacy, possibly loss-scaled),
      or None.
    variable: a model variable the optimizer trains.

  Returns:
    A list of variables shaped like `variable`; empty when the optimizer is
    None, keeps no per-entry state (plain SGD), or has not been built yet.
  """
  if optimizer is None:
    return []
  optimizer = _unwrap(optimizer)
  shape = variable.shape
  if hasattr(optimizer, 'get_slot_names'):  # Legacy OptimizerV2.
    slots = []
    for name in optimizer.get_slot_names():
      try:
        slot = optimizer.get_slot(variable, name)
      except KeyError:
        continue
      if slot.shape == shape:
        slots.append(slot)
    return slots
  index_dict = getattr(optimizer, '_index_dict', None)
  if not index_dict:
    return []
  index = index_dict.get(optimizer._var_key(variable))  # pylint: disable=protected-access
  if index is None:
    return []
  own = {id(v) for v in optimizer.variables}
  slots = []
  for value in vars(optimizer).values():
    if not isinstance(value, (list, tuple)) or len(value) <= index:
      continue
    if not value or not all(isinstance(v, tf.Variable) and id(v) in own
                            for v in value):
      continue
    slot = value[index]
    if slot.shape == shape:
      slots.append(slot)
  return slots
