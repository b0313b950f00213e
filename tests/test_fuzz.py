"""Random wrong values at every public constructor and `reallocate`.

Each call either succeeds with the invariants intact, or raises ValueError or
TypeError whose message names one of the arguments given; never a deeper
error, never a half-changed model. Tiny models are built once; few examples
per test keep it fast.
"""

import numpy as np
import pytest
import tensorflow as tf
from hypothesis import HealthCheck
from hypothesis import given
from hypothesis import settings
from hypothesis import strategies as st

import tf_dsr
from tf_dsr import keras
from tests.helpers import masks_of
from tests.helpers import sparse_pairs
from tests.helpers import sparse_tiny_cnn
from tests.helpers import tiny_cnn

FUZZ = settings(max_examples=25, deadline=None, derandomize=True,
                suppress_health_check=list(HealthCheck))

# Values of every kind: right and wrong types, ranges and shapes.
ANY = st.one_of(
    st.none(), st.booleans(),
    st.integers(min_value=-2**70, max_value=2**70),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=4),
    st.lists(st.integers(-3, 3), max_size=3),
    st.dictionaries(st.integers(-2, 30), st.integers(-2, 30), max_size=3),
    st.builds(np.float32, st.floats(-2, 2, width=32)),
    st.builds(np.int64, st.integers(-5, 10**6)),
    st.builds(lambda v: tf.constant(v), st.integers(-3, 50)),
    st.builds(lambda v: tf.constant([v, v]), st.integers(0, 5)),
    st.builds(lambda v: tf.constant(float(v)), st.integers(0, 5)),
)
PERIODS = st.one_of(ANY, st.integers(1, 10),
                    st.dictionaries(st.integers(0, 5), st.integers(1, 5),
                                    min_size=1, max_size=3))


def _names_an_argument(error, arguments):
  message = str(error)
  return any(f'`{name}`' in message or repr(name) in message or name in message
             for name in arguments)


def _call(make, arguments):
  """Runs `make()`; a ValueError/TypeError must name one of `arguments`."""
  try:
    return make()
  except (ValueError, TypeError) as error:
    assert _names_an_argument(error, arguments), (arguments, error)
    return None


@FUZZ
@given(sparsity=st.one_of(ANY, st.floats(0, 0.99)), seed=ANY)
def test_wrapper(sparsity, seed):
  wrapper = _call(lambda: tf_dsr.DynamicSparseWrapper(
      keras.layers.Dense(3), sparsity=sparsity, seed=seed),
                  ['sparsity', 'seed'])
  if wrapper is not None:
    assert 0 <= wrapper.sparsity < 1 and isinstance(wrapper.seed, int)


@FUZZ
@given(sparsity=st.one_of(ANY, st.floats(0, 0.99)), seed=ANY,
       exclude=st.one_of(st.none(), st.text(max_size=3),
                         st.lists(st.sampled_from(['conv1', 'fc', 'nope']),
                                  max_size=2), ANY))
def test_sparsify(sparsity, seed, exclude):
  model = tiny_cnn()
  before = [w.numpy() for w in model.weights]
  sparse = _call(lambda: tf_dsr.sparsify(model, sparsity, exclude=exclude,
                                         seed=seed),
                 ['sparsity', 'seed', 'exclude', 'to_sparsify'])
  if sparse is None:  # Refused: the model is unchanged.
    for a, b in zip(before, model.weights):
      np.testing.assert_array_equal(a, b.numpy())
  else:
    assert tf_dsr.collect_wrappers(sparse)


CALLBACK_ARGUMENTS = ['period', 'stop_epoch', 'stop_step', 'seed', 'log_dir',
                      'jit_compile', 'method', 'target_pruned', 'tolerance',
                      'initial_threshold']


@FUZZ
@given(period=PERIODS, stop_epoch=ANY, stop_step=ANY, seed=ANY, log_dir=ANY,
       jit_compile=ANY, method=st.one_of(st.sampled_from(['dsr', 'set']), ANY),
       target_pruned=st.one_of(ANY, st.integers(1, 100)), tolerance=ANY,
       initial_threshold=ANY)
def test_callback(period, stop_epoch, stop_step, seed, log_dir, jit_compile,
                  method, target_pruned, tolerance, initial_threshold):
  kwargs = dict(period=period, stop_epoch=stop_epoch, stop_step=stop_step,
                seed=seed, log_dir=log_dir, jit_compile=jit_compile,
                method=method, target_pruned=target_pruned)
  if isinstance(method, str) and method == 'dsr':
    kwargs.update(tolerance=tolerance, initial_threshold=initial_threshold)
  cb = _call(lambda: tf_dsr.ReallocationCallback(**kwargs),
             CALLBACK_ARGUMENTS)
  if cb is not None:
    assert cb.schedule.period(0, 1) >= 1


@FUZZ
@given(period=PERIODS, unit=st.one_of(st.sampled_from(['epoch', 'step']), ANY))
def test_period_schedule(period, unit):
  schedule = _call(lambda: tf_dsr.PeriodSchedule(period, unit=unit),
                   ['period', 'unit'])
  if schedule is not None:
    assert tf_dsr.PeriodSchedule.from_config(schedule.get_config()) == schedule


@FUZZ
@given(method=st.sampled_from(['dsr', 'set', 'deepr', 'static']),
       first=ANY, second=ANY)
def test_rules(method, first, second):
  options = {'dsr': ('target_pruned', 'tolerance'),
             'set': ('drop_fraction', 'target_pruned'),
             'deepr': ('alpha', 'temperature'),
             'static': ()}[method]
  kwargs = dict(zip(options, (first, second)))
  _call(lambda: tf_dsr.rules.make(method, **kwargs), list(options) or
        ['takes no option'])


_MODEL = {}


def _shared_model():
  """One tiny compiled sparse model for every example (built once)."""
  if not _MODEL:
    _MODEL['model'] = sparse_tiny_cnn(sparsity=0.7)
  return _MODEL['model']


def _model_state(model):
  return ([m.copy() for m in masks_of(model)],
          [k.numpy().copy() for k, _ in sparse_pairs(model)],
          [v.numpy() for v in model.layers[2].state_variables.values()])


def _assert_state(model, expected):
  masks, kernels, state = _model_state(model)
  for a, b in zip(masks + kernels + state, expected[0] + expected[1] +
                  expected[2]):
    np.testing.assert_array_equal(a, b)


@FUZZ
@given(method=st.one_of(st.sampled_from(['dsr', 'set']), ANY), seed=ANY,
       optimizer=st.one_of(st.none(), st.just(False), ANY),
       jit_compile=st.one_of(st.just(None), ANY),
       target_pruned=st.one_of(st.integers(1, 2000), ANY))
def test_reallocator(method, seed, optimizer, jit_compile, target_pruned):
  model = _shared_model()
  before = _model_state(model)
  realloc = _call(lambda: tf_dsr.Reallocator(
      model, method, seed=seed, optimizer=optimizer, jit_compile=jit_compile,
      target_pruned=target_pruned),
                  ['method', 'seed', 'optimizer', 'jit_compile',
                   'target_pruned'])
  if realloc is None:  # Refused: nothing changed, not even H.
    _assert_state(model, before)
  else:  # Made: masks and weights untouched (H starts at the rule's).
    _assert_state(model, (before[0], before[1], _model_state(model)[2]))
    assert isinstance(realloc.seed, int)


_REALLOCATOR = {}


@FUZZ
@given(step=st.one_of(ANY, st.integers(-1, 10**6),
                       st.builds(np.int32, st.integers(0, 100))))
def test_reallocate(step):
  model = _shared_model()
  if not _REALLOCATOR:
    _REALLOCATOR['r'] = tf_dsr.Reallocator(model, target_pruned=20, seed=1)
  realloc = _REALLOCATOR['r']
  before = _model_state(model)
  total = sum(int(m.sum()) for m in before[0])
  try:
    stats = realloc.reallocate(step)
  except (ValueError, TypeError) as error:
    assert '`step`' in str(error), error
    _assert_state(model, before)
    return
  assert stats.total_active == total
  for (kernel, mask), new in zip(sparse_pairs(model), masks_of(model)):
    assert set(np.unique(new)) <= {0.0, 1.0} and new.sum() >= 1
    assert (kernel.numpy()[new == 0] == 0).all()
  assert int(realloc.state.last_step.numpy()) == stats.step


def test_fuzz_covers_every_public_constructor():
  # A new public class must get a fuzz test here too.
  constructors = {'DynamicSparseWrapper', 'PeriodSchedule',
                  'ReallocationCallback', 'Reallocator', 'sparsify'}
  public = {name for name in tf_dsr.__all__
            if isinstance(getattr(tf_dsr, name), type) or name == 'sparsify'}
  # Results the library returns, which users do not construct.
  assert public - constructors <= {'DynamicSparsityState', 'FlopsReport',
                                   'ReallocationStats', 'SparsityReport'}


if __name__ == '__main__':
  pytest.main([__file__])
