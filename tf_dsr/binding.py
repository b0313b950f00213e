"""Who moves a model's masks: the guard against silently static training.

A model with `DynamicSparseWrapper` layers must be trained with something
that moves its masks. In Keras's own training loop (`fit`, whose compiled
step `train_on_batch` shares) that is a `ReallocationCallback`, for the
duration of that `fit`; in a custom training loop it is a `Reallocator`. The
wrappers of one model share one `Binding`, which the callback and the
`Reallocator` register with and the wrappers consult whenever they are
called in training mode (when Keras traces its train step, or at every step
when it runs eagerly).

Contract shared by this file: no TensorFlow ops; plain Python bookkeeping
(run while a step is traced, never converted by autograph).
"""

import weakref

import tensorflow as tf

from tf_dsr import _tfmot


class Binding:
  """The drivers of one model's wrappers.

  Attributes:
    callback: the `ReallocationCallback` of the `fit` that is running, or None.
    fit_params: the `params` dict Keras gave that `fit`'s callbacks (one
      object per `fit`), to tell a second callback of the same `fit` from a
      callback left over from a `fit` that was interrupted.
  """

  def __init__(self):
    self.callback = None
    self.fit_params = None
    self._reallocators = weakref.WeakSet()
    self._in_use = weakref.WeakSet()

  def add_reallocator(self, reallocator):
    """Registers a `Reallocator` made for a custom training loop."""
    self._reallocators.add(reallocator)

  def mark_in_use(self, reallocator):
    """Records that `reallocator` ran a reallocation."""
    self._in_use.add(reallocator)

  def reallocators_in_use(self):
    return list(self._in_use)

  def has_reallocator(self):
    return len(self._reallocators) > 0

  def begin_fit(self, callback, params):
    """Registers `callback` as the driver of the `fit` that starts.

    Raises:
      ValueError: when another `ReallocationCallback` drives the same `fit`,
        or a `Reallocator` has been reallocating this model.
    """
    if (self.callback is not None and self.callback is not callback and
        self.fit_params is params):
      raise ValueError(
          'Two `tf_dsr.ReallocationCallback`s were passed to one `fit` of the '
          'same model; they would run on one shared state (H, step counter) '
          'and undo each other\'s schedule. Pass exactly one.')
    used = [r for r in self._in_use if r is not callback.reallocator]
    if used:
      raise ValueError(
          'This model\'s masks are already moved by a `tf_dsr.Reallocator` '
          f'(seed {used[0].seed}, rule {used[0].rule.name!r}) that has run '
          'reallocations, and a `tf_dsr.ReallocationCallback` was passed to '
          '`fit`; both would move the masks. Use the callback alone with '
          '`fit`, or the Reallocator alone in a custom loop.')
    self.callback = callback
    self.fit_params = params

  def end_fit(self, callback):
    if self.callback is callback:
      self.callback = None
      self.fit_params = None

  @tf.autograph.experimental.do_not_convert
  def check_training(self, layer_name,
                     in_train_function=_tfmot.in_keras_train_function):
    """Raises ValueError unless something moves the masks of this training.

    Args:
      layer_name: the wrapper being called in training mode (for the message).
      in_train_function: tells whether the wrapper's Keras runs its own train
        step (tf_keras's by default; the Keras 3 wrapper passes its own).
    """
    if self.callback is not None:
      return
    if in_train_function():
      raise ValueError(
          f'{layer_name!r} is being trained by Keras (`fit` or '
          '`train_on_batch`) without a `tf_dsr.ReallocationCallback` in that '
          '`fit`\'s callbacks, so its mask would never move (silently static '
          'sparse training). Pass `callbacks=[tf_dsr.ReallocationCallback(...)]` '
          'to every `fit` (`method=\'static\', stop_step=0` for static sparse '
          'training on purpose). A `tf_dsr.Reallocator` serves custom training '
          'loops only.')
    if not self.has_reallocator():
      raise ValueError(
          f'{layer_name!r} is being trained, but no `tf_dsr.Reallocator` is '
          'attached to its model, so its mask would never move (silently static '
          'sparse training). In a custom training loop, create '
          '`tf_dsr.Reallocator(model, ...)` and call its `reallocate(step)` '
          'between steps; with `fit`, pass '
          '`callbacks=[tf_dsr.ReallocationCallback(...)]`.')


def of(wrappers):
  """The `Binding` shared by `wrappers` (one model's), created on first use."""
  found = [w._binding for w in wrappers if w._binding is not None]  # pylint: disable=protected-access
  binding = found[0] if found else Binding()
  for wrapper in wrappers:
    wrapper._binding = binding  # pylint: disable=protected-access
  return binding
