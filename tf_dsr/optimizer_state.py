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


def slot_variables(optimizer, variables):
  """The optimizer variables that hold per-entry state for each of `variables`.

  The optimizer's state lists are found once for all `variables` (a
  reallocation asks for every sparse kernel at each call).

  Args:
    optimizer: a tf_keras optimizer (current or legacy, possibly loss-scaled),
      or None.
    variables: model variables the optimizer trains.

  Returns:
    One list per variable of the optimizer variables shaped like it; empty
    when the optimizer is None, keeps no per-entry state (plain SGD), has
    not been built yet, or does not train that variable.
  """
  variables = list(variables)
  if optimizer is None:
    return [[] for _ in variables]
  optimizer = _unwrap(optimizer)
  if hasattr(optimizer, 'get_slot_names'):  # Legacy OptimizerV2.
    found = []
    for variable in variables:
      slots = []
      for name in optimizer.get_slot_names():
        try:
          slot = optimizer.get_slot(variable, name)
        except KeyError:
          continue
        if slot.shape == variable.shape:
          slots.append(slot)
      found.append(slots)
    return found
  index_dict = getattr(optimizer, '_index_dict', None)
  if not index_dict:
    return [[] for _ in variables]
  # The state lists: attributes holding only the optimizer's own variables.
  own = {id(v) for v in optimizer.variables}
  lists = [value for value in vars(optimizer).values()
           if isinstance(value, (list, tuple)) and value and
           all(isinstance(v, tf.Variable) and id(v) in own for v in value)]
  found = []
  for variable in variables:
    index = index_dict.get(optimizer._var_key(variable))  # pylint: disable=protected-access
    found.append([] if index is None else [
        value[index] for value in lists
        if len(value) > index and value[index].shape == variable.shape])
  return found
