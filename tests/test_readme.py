"""The README's first example ("## Using it") runs as written, on Keras 3 and,
with its tf_keras model block in place of the Keras 3 one, on tf_keras.

500 examples in batches of 50 for 5 epochs: 50 steps. The period is 5 steps
in epochs 0-1 and 10 in epochs 2-3, and epoch 4 is frozen: reallocations
after steps 5, 10, 15, 20, 30 and 40.
"""

import os
import re

import keras as keras3
import numpy as np
import pytest

import tf_dsr
from tests.helpers import FLAVOURS

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _using_it_blocks():
  """The Keras 3 example and the tf_keras model block of "## Using it"."""
  text = open(os.path.join(REPO, 'README.md')).read()
  section = text[text.index('## Using it\n'):]
  example, tf_keras_model = re.findall(r'```python\n(.*?)```', section,
                                       re.S)[:2]
  return example, tf_keras_model


def _run(flavour):
  example, tf_keras_model = _using_it_blocks()
  if flavour == 'tf_keras':
    # The Keras 3 model (from `model = keras.Sequential` to its `])`)
    # becomes the tf_keras block; data and every other line stay.
    start = example.index('model = keras.Sequential')
    end = example.index('\n])\n', start) + len('\n])\n')
    example = example[:start] + tf_keras_model + example[end:]
  # As in the reader's fresh interpreter: layers auto-named from scratch
  # ('conv2d', which the example excludes), whatever ran before in this
  # process.
  FLAVOURS[flavour].backend.clear_session()
  namespace = {}
  exec(compile(example, 'README.md', 'exec'), namespace)  # pylint: disable=exec-used
  return namespace


@pytest.mark.parametrize('flavour', FLAVOURS)
def test_the_readme_first_example_runs_as_written(flavour, tmp_path,
                                                   monkeypatch):
  monkeypatch.chdir(tmp_path)  # It writes TensorBoard logs to logs/dsr.
  namespace = _run(flavour)
  model, plain, cb = namespace['model'], namespace['plain'], namespace['cb']
  keras = FLAVOURS[flavour]
  assert isinstance(model, keras.Model) and isinstance(plain, keras.Model)
  assert isinstance(model, keras3.Model) == (flavour == 'keras3')
  assert [s.step for s in cb.history] == [5, 10, 15, 20, 30, 40]
  assert all(s.total_active == 21_632 for s in cb.history)
  assert sum(s.pruned for s in cb.history) > 0
  # Conv2D stays dense; the Dense kernel (26 * 26 * 32 = 21,632 inputs by
  # 10) keeps round(0.1 * 216,320) = 21,632 active weights.
  report = tf_dsr.sparsity_report(model)
  assert report.sparse_active == 21_632 and report.sparse_total == 216_320
  assert os.listdir(tmp_path / 'logs' / 'dsr')
  # The stripped model has no wrappers, the masked kernel, the same outputs.
  assert not tf_dsr.collect_wrappers(plain)
  (kernel, mask), = tf_dsr.collect_wrappers(model)[0].sparse_weights
  np.testing.assert_array_equal(
      plain.layers[-1].kernel.numpy(),
      kernel.numpy() * np.asarray(mask.numpy(), kernel.numpy().dtype))
  x = namespace['x'][:8]
  np.testing.assert_allclose(plain.predict(x, verbose=0),
                             model.predict(x, verbose=0), rtol=1e-5,
                             atol=1e-6)
