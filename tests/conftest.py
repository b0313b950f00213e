"""pytest's hooks and fixtures; the shared helpers are in `tests/helpers.py`.

Nothing here imports TensorFlow at module level: pytest-xdist's controller
imports this file before it starts the workers, and would otherwise keep one
core idle while TensorFlow loads.
"""

import os

os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')

import pytest  # pylint: disable=g-import-not-at-top


def pytest_collection_modifyitems(items):
  """Runs the longest files first: `slow` ones, then tests/, then unit tests.

  pytest-xdist hands out whole files in this order (pytest.ini turns off its
  own reordering by test count, `--no-loadscope-reorder`), so the files that
  start several TensorFlow processes no longer start last and leave one
  worker running alone at the end; the short unit tests fill in the gaps.
  """
  tests_dir = os.path.dirname(os.path.abspath(__file__))

  def rank(item):
    if item.get_closest_marker('slow'):
      return 0
    return 1 if str(item.path).startswith(tests_dir + os.sep) else 2

  items.sort(key=rank)  # Stable: the order within each file is kept.


@pytest.fixture
def data():
  from tests import helpers  # pylint: disable=g-import-not-at-top
  return helpers.tiny_data()
