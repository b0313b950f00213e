"""snip: sparsify a model with SNIP's masks (connection sensitivity)."""

import numpy as np
import tensorflow as tf

from tf_dsr import engine
from tf_dsr import kerases
from tf_dsr import sparsify as sparsify_lib
from tf_dsr import validation


def _top_entries(scores, count):
  """bool mask of the `count` largest scores; ties go to earlier entries."""
  chosen = np.zeros(scores.shape, bool)
  if count <= 0:
    return chosen
  cut = np.partition(scores, scores.size - count)[scores.size - count]
  chosen[scores > cut] = True
  ties = np.flatnonzero(scores == cut)
  chosen[ties[:count - int(chosen.sum())]] = True
  return chosen


def snip(model, sparsity, inputs, targets, loss, exclude=None, seed=0,
         **sparsify_options):
  """Sparsifies `model` with SNIP's masks, chosen on one batch.

  Lee et al., ICLR 2019, https://arxiv.org/abs/1810.02340. The connection
  sensitivity of a weight is `|g * w|`, the magnitude of the loss gradient
  times the weight, at the model's initial (dense) weights on
  (`inputs`, `targets`). The model is wrapped like `tf_dsr.sparsify(model,
  sparsity, ...)` (same layers, same number of active weights in all), then
  the active weights are the most sensitive ones over all sparse kernels
  together (ties to the first in layer order), with at least one per kernel;
  they keep their initial values and every other entry is 0. With a
  `distribution=` ('uniform', 'er', 'erk'; see `tf_dsr.sparsify`) each
  kernel keeps the count that distribution gives it and the ranking is
  within each kernel instead. Train the result with `method='snip'` (static
  masks).

  The gradient is taken with `training=False`, so batch normalisation uses
  its moving statistics and the model's state is not changed.

  Example:
    ```python
    x, y = next(iter(train_ds))
    model = tf_dsr.snip(model, 0.9, x, y, 'sparse_categorical_crossentropy')
    model.compile(...)
    model.fit(train_ds, callbacks=[tf_dsr.ReallocationCallback(method='snip')])
    ```

  Args:
    model: a built Sequential or functional model, dense, of tf_keras or of
      Keras 3 (TensorFlow backend); the result is a model of the same Keras,
      with the same masks for the same weights and batch.
    sparsity: as for `tf_dsr.sparsify`.
    inputs: one batch of model inputs.
    targets: its targets.
    loss: a Keras loss (name, function or `Loss`), called as
      `loss(targets, predictions)`.
    exclude: as for `tf_dsr.sparsify`.
    seed: as for `tf_dsr.sparsify` (SNIP's choice itself is deterministic).
    **sparsify_options: further options of `tf_dsr.sparsify`; with
      `distribution`, per-kernel budgets (see above).

  Returns:
    The sparsified model.

  Raises:
    ValueError: for a model that is not built, a non-finite gradient, or any
      error of `tf_dsr.sparsify`.
  """
  flavour = kerases.of(model, 'model')
  if not isinstance(model, flavour.model_type) or not model.built:
    raise ValueError('`model` must be a built tf_keras or Keras 3 model, got '
                     f'{model!r}.')
  seed = validation.check_int('seed', seed)
  loss_fn = flavour.keras.losses.get(loss)
  variables = model.trainable_variables
  with tf.GradientTape() as tape:
    value = tf.reduce_mean(loss_fn(targets, model(inputs, training=False)))
  grads = tape.gradient(value, variables)
  # Keyed by the stored `tf.Variable`: the wrappers hold the same layers.
  dense = {flavour.tf_variable(v).ref(): (
      v.numpy(), None if g is None else np.asarray(g))
           for v, g in zip(variables, grads)}

  sparse = sparsify_lib.sparsify(model, sparsity, exclude=exclude,
                                 seed=seed, **sparsify_options)
  pairs = [pair for wrapper in engine.collect_wrappers(sparse)
           for pair in wrapper.sparse_weights]
  scores, budget = [], 0
  for kernel, mask in pairs:
    weights, grad = dense[flavour.tf_variable(kernel).ref()]
    if grad is None:
      grad = np.zeros_like(weights)
    score = np.abs(grad * weights).astype(np.float64).ravel()
    if not np.isfinite(score).all():
      raise ValueError(
          f'The loss gradient of {kernel.name!r} on the SNIP batch is not '
          'finite; check `inputs`, `targets` and `loss`.')
    scores.append(score)
    budget += int(np.count_nonzero(mask.numpy()))
  if 'distribution' in sparsify_options:
    # The distribution's count per kernel, ranked within each kernel.
    chosen = np.concatenate([
        _top_entries(score, int(np.count_nonzero(mask.numpy())))
        for score, (_, mask) in zip(scores, pairs)])
  else:
    # Each kernel keeps its most sensitive entry, then the rest of the budget
    # goes to the most sensitive entries over all kernels.
    reserved = [_top_entries(score, 1) for score in scores]
    flat = np.concatenate(scores)
    flat[np.concatenate(reserved)] = -1.0
    chosen = _top_entries(flat, budget - len(pairs))
    chosen |= np.concatenate(reserved)
  fan_in = sparsify_options.get('init_scale', 'dense') == 'sparse_fan_in'
  position = 0
  for (kernel, mask), score in zip(pairs, scores):
    new = chosen[position:position + score.size].reshape(mask.shape)
    position += score.size
    weights, _ = dense[flavour.tf_variable(kernel).ref()]
    values = weights * new
    if fan_in:  # 1 / sqrt(density) of SNIP's own mask.
      values = values * np.sqrt(new.size / max(int(new.sum()), 1))
    mask.assign(new.astype(tf.as_dtype(mask.dtype).as_numpy_dtype))
    kernel.assign(values.astype(weights.dtype))
  return sparse
