"""Which kernels of a layer a wrapper makes sparse, and how they are named.

A wrapper's `kernels` argument chooses them: None keeps the layer's default
kernels (tfmot's registry on tf_keras, `tf_dsr._keras3.SPARSE_KERNELS` on
Keras 3, or the layer's own `get_prunable_weights()`); otherwise it is a
tuple of kernel names, chosen among the layer's kernel-like variables (its
variables of rank >= 2 but for biases, each held by an attribute of the
layer or of a sublayer that its `call` reads; a frozen layer's too).

A kernel is named by the attribute that holds it, without a leading
underscore (`kernel`, `recurrent_kernel`, `depthwise_kernel`), led by the
sublayer that owns it when that is needed to tell a set of kernels apart
(`query/kernel`, `key/kernel`). Wrappers name their sparse tensors
`<wrapper>/<kernel name>` from the same function (`names`), so the name a
user passes in `kernels` is the one stats and the report print. Both the
short and the sublayer-led form are accepted.

Choosing reads only the built layer and changes nothing: a wrong name raises
before any mask exists or any kernel entry is zeroed.
"""


def find_attribute(layer, variable):
  """Returns `(owner, name)` such that `owner.name is variable`, or raises."""
  owners = [layer] + list(layer._flatten_layers(include_self=False))  # pylint: disable=protected-access
  for owner in owners:
    for name, value in vars(owner).items():
      if value is variable:
        return owner, name
  raise ValueError(
      f'Cannot find the attribute of layer {layer.name!r} that holds its prunable '
      f'weight {variable.name!r}, so its forward pass cannot be masked. Expose the '
      'weight as an attribute that `call` reads (for example `self.kernel`).')


def names(layer, targets):
  """The names of the kernels held at `targets`, `(owner, attribute)` pairs.

  Short (`kernel`) when the short names are unique among `targets`, led by
  the owning sublayer otherwise (`first/kernel`), numbered as a last resort.
  """
  paths = [[name.lstrip('_')] if owner is layer else
           [owner.name, name.lstrip('_')] for owner, name in targets]
  tails = [path[-1] for path in paths]
  if len(set(tails)) != len(tails):
    tails = ['/'.join(path) for path in paths]
  if len(set(tails)) != len(tails):
    tails = [f'{tail}_{i}' for i, tail in enumerate(tails)]
  return tails


def check_argument(kernels):
  """A wrapper's `kernels` argument as a tuple of names, or None; or raises.

  Raises:
    ValueError: unless `kernels` is None or a non-empty list or tuple of
      distinct non-empty strings.
  """
  if kernels is None:
    return None
  if (not isinstance(kernels, (list, tuple)) or not kernels or
      not all(isinstance(name, str) and name for name in kernels) or
      len(set(kernels)) != len(kernels)):
    raise ValueError(
        '`kernels` must be None (the layer\'s default kernels) or a non-empty '
        'list or tuple of distinct kernel names such as '
        f"('depthwise_kernel', 'pointwise_kernel'), got {kernels!r}.")
  return tuple(kernels)


def kernel_like(layer):
  """`{name: (variable, (owner, attribute))}` of the built layer's kernels.

  Its variables of rank >= 2 that an attribute of the layer or of a
  sublayer holds, but for biases (attributes named `bias` or `*_bias`, as
  EinsumDense's rank-2 bias), in the order of `layer.weights`.
  """
  found = []
  for variable in layer.weights:
    if len(variable.shape) < 2:
      continue
    try:
      target = find_attribute(layer, variable)
    except ValueError:
      continue
    if target[1].lstrip('_').endswith('bias'):  # EinsumDense's are rank 2.
      continue
    found.append((variable, target))
  short = names(layer, [target for _, target in found])
  return {name: entry for name, entry in zip(short, found)}


def choose(layer, kernels, default):
  """The variables of the built `layer` to make sparse, in order.

  Args:
    layer: a built layer of either Keras.
    kernels: None, or a tuple of kernel names (see `check_argument`).
    default: the layer's default kernels (a list of variables).

  Returns:
    `default` when `kernels` is None, else the named variables in the order
    of `kernels`.

  Raises:
    ValueError: naming `kernels`, echoing it and listing the layer's
      kernel-like variables, when a name is not one of them.
  """
  if kernels is None:
    return list(default)
  candidates = kernel_like(layer)
  by_name = dict(candidates)
  for variable, (owner, attribute) in candidates.values():
    if owner is not layer:
      by_name.setdefault(f'{owner.name}/{attribute.lstrip("_")}',
                         (variable, (owner, attribute)))
  unknown = [name for name in kernels if name not in by_name]
  if unknown:
    raise ValueError(
        f'`kernels` {kernels!r} names {unknown}, which layer {layer.name!r} '
        f'({type(layer).__name__}) does not have; its kernel-like variables '
        f'are {list(candidates)}.')
  chosen = [by_name[name][0] for name in kernels]
  if len({id(v) for v in chosen}) != len(chosen):
    raise ValueError(f'`kernels` {kernels!r} names one kernel of layer '
                     f'{layer.name!r} twice.')
  return chosen
