"""Writes a small sparse model in every Keras save format, for loading tests.

`tests/data/float32_masks/` holds what this script wrote with tf_dsr as it
was before masks became uint8 (commit bd6d234, float32 masks), so that
`tests/test_mask_layout.py` can check that files of that layout still load.
To regenerate them, check that commit out and run, from its root:

    python -m tests.old_layout_files tests/data/float32_masks

The model is a small sparse MLP trained for two epochs with reallocations
(its masks have moved from their initial draw), saved as `.keras`, legacy
`.h5`, a SavedModel directory, `save_weights` to `.h5`, `.weights.h5` and the
TensorFlow format, and `tf.train.Checkpoint`; `expected.npz` holds its masks,
weights and predictions on a fixed input.
"""

import os
import sys

import numpy as np
import tensorflow as tf

import tf_dsr
from tf_dsr import keras


def build():
  """The sparse model, untrained (the same in every version of tf_dsr)."""
  keras.utils.set_random_seed(7)
  model = keras.Sequential([
      keras.Input((6,)),
      keras.layers.Dense(12, activation='relu', name='hidden'),
      keras.layers.Dense(3, name='out'),
  ])
  model = tf_dsr.sparsify(model, 0.6, seed=7)
  model.compile(keras.optimizers.SGD(0.1, momentum=0.9),
                keras.losses.SparseCategoricalCrossentropy(from_logits=True))
  return model


def inputs():
  """The fixed input the predictions are made on."""
  return np.random.default_rng(7).normal(size=(32, 6)).astype(np.float32)


def main(directory):
  model = build()
  x = inputs()
  y = np.random.default_rng(8).integers(0, 3, size=32)
  model.fit(x, y, batch_size=8, epochs=2, verbose=0, shuffle=False,
            callbacks=[tf_dsr.ReallocationCallback(target_pruned=4, period=2,
                                                   seed=7)])
  os.makedirs(directory, exist_ok=True)
  path = lambda name: os.path.join(directory, name)
  model.save(path('model.keras'))
  model.save(path('model.h5'))
  model.save(path('saved_model'), save_format='tf')
  model.save_weights(path('weights.h5'))
  model.save_weights(path('model.weights.h5'))
  model.save_weights(path('tf_weights'))
  tf.train.Checkpoint(model=model).write(path('checkpoint'))
  masks = [m.numpy() for w in tf_dsr.collect_wrappers(model)
           for _, m in w.sparse_weights]
  np.savez(path('expected.npz'),
           predictions=model.predict(x, verbose=0),
           **{f'mask{i}': m for i, m in enumerate(masks)},
           **{f'weight{i}': v.numpy() for i, v in enumerate(model.weights)})


if __name__ == '__main__':
  main(sys.argv[1])
