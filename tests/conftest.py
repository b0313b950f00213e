"""pytest's hooks and fixtures; the shared helpers are in `tests/helpers.py`.

Nothing here imports TensorFlow at module level: pytest-xdist's controller
imports this file before it starts the workers, and would otherwise keep one
core idle while TensorFlow loads.
"""

import os
import shutil
import tempfile

os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')

import pytest  # pylint: disable=g-import-not-at-top

# XLA's persistent compilation cache, shared by every process of the run:
# both pytest-xdist workers and the TensorFlow processes the tests start
# inherit it from this (the first) process's environment. A program that
# another process already compiled (the same HLO, checked in full on load)
# is then loaded instead of compiled again: the multi-worker, preemption and
# launcher runs compile the same reallocation and train steps many times
# over. The cache lives in a fresh directory, removed at the end of the run.
_XLA_CACHE_FLAG = '--tf_xla_persistent_cache_directory'
_OWN_XLA_CACHE = None
if _XLA_CACHE_FLAG not in os.environ.get('TF_XLA_FLAGS', ''):
  _OWN_XLA_CACHE = tempfile.mkdtemp(prefix='tf_dsr_tests_xla_cache_')
  os.environ['TF_XLA_FLAGS'] = ' '.join(filter(None, [
      os.environ.get('TF_XLA_FLAGS'), f'{_XLA_CACHE_FLAG}={_OWN_XLA_CACHE}']))


def pytest_unconfigure(config):
  del config
  if _OWN_XLA_CACHE is not None:
    shutil.rmtree(_OWN_XLA_CACHE, ignore_errors=True)


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
