"""Choosing a layer's sparse kernels (`kernels=` on the wrapper and on
`sparsify`), on tf_keras and Keras 3 (`flavour`): both kernels of a
SeparableConv2D, an LSTM's input kernel only, wrong names, saved files."""

import numpy as np
import pytest

import tf_dsr
from tf_dsr import distributions
from tests.helpers import FLAVOURS
from tests.helpers import masks_of

BOTH = ('depthwise_kernel', 'pointwise_kernel')


def _separable_model(k, kernels=BOTH, depth_multiplier=1):
  """2 channels -> SeparableConv2D(2 filters, 1x1, no bias), both kernels
  sparse at 0.5: depthwise (1, 1, 2, m) keeps m of 2m entries, pointwise
  (1, 1, 2m, 2) 2m of 4m."""
  inputs = k.Input((1, 1, 2))
  outputs = tf_dsr.DynamicSparseWrapper(
      k.layers.SeparableConv2D(2, 1, use_bias=False, name='sep',
                               depth_multiplier=depth_multiplier),
      sparsity=0.5, seed=0, kernels=kernels)(inputs)
  return k.Model(inputs, outputs)


def _set(variable, value):
  variable.assign(np.asarray(value).astype(variable.numpy().dtype))


@pytest.mark.parametrize('flavour', FLAVOURS)
def test_both_separable_kernels_are_masked_in_the_forward_pass(flavour):
  model = _separable_model(FLAVOURS[flavour])
  wrapper, = tf_dsr.collect_wrappers(model)
  assert wrapper.sparse_names == ['dynamic_sparse_sep/depthwise_kernel',
                                  'dynamic_sparse_sep/pointwise_kernel']
  assert [int(m.sum()) for m in masks_of(model)] == [1, 2]
  (depthwise, depthwise_mask), (pointwise, pointwise_mask) = (
      wrapper.sparse_weights)
  # Kernels non-zero everywhere, so only the masks can zero a product:
  # out_j = sum_c x_c * d_c * md_c * p_cj * mp_cj.
  _set(depthwise, [[[[2.], [3.]]]])
  _set(pointwise, [[[[5., 1.], [7., 1.]]]])
  _set(depthwise_mask, [[[[1], [0]]]])
  _set(pointwise_mask, [[[[1, 0], [1, 1]]]])
  x = np.array([[[[1., 10.]]]], np.float32)
  # out_0 = 1*2*5 + 10*0*7 = 10 (depthwise mask); out_1 = 0 (pointwise
  # mask on channel 0, depthwise mask on channel 1).
  np.testing.assert_allclose(model(x).numpy().ravel(), [10., 0.])
  _set(depthwise_mask, [[[[0], [1]]]])
  _set(pointwise_mask, [[[[1, 1], [0, 1]]]])
  # out_0 = 1*0*5 + 10*3*7*0 = 0; out_1 = 10*3*1 = 30.
  np.testing.assert_allclose(model(x).numpy().ravel(), [0., 30.])


@pytest.mark.parametrize('flavour', FLAVOURS)
def test_the_engine_reallocates_the_depthwise_kernel_too(flavour):
  model = _separable_model(FLAVOURS[flavour], depth_multiplier=2)
  wrapper, = tf_dsr.collect_wrappers(model)
  (depthwise, depthwise_mask), (pointwise, pointwise_mask) = (
      wrapper.sparse_weights)
  # Depthwise (1, 1, 2, 2), 2 active; pointwise (1, 1, 4, 2), 4 active.
  _set(depthwise_mask, np.reshape([1, 1, 0, 0], (1, 1, 2, 2)))
  _set(depthwise, np.reshape([1e-4, 0.5, 0., 0.], (1, 1, 2, 2)))
  _set(pointwise_mask, np.reshape([1, 1, 1, 1, 0, 0, 0, 0], (1, 1, 4, 2)))
  _set(pointwise, np.reshape([.5, .6, .7, .8, 0, 0, 0, 0], (1, 1, 4, 2)))
  realloc = tf_dsr.Reallocator(model, target_pruned=1, tolerance=0.1,
                               initial_threshold=1e-3, optimizer=False, seed=0)
  stats = realloc.reallocate(1)
  # |1e-4| < H = 1e-3 prunes depthwise entry 0 only (K = 1); one entry is
  # regrown at a position inactive before, in either kernel.
  assert list(stats.active) == wrapper.sparse_names
  assert stats.pruned == 1 and stats.total_active == 6
  assert sum(stats.regrown.values()) == 1
  new_depthwise = np.asarray(depthwise_mask.numpy()).astype(int).ravel()
  assert list(new_depthwise[:2]) == [0, 1]
  np.testing.assert_array_equal(depthwise.numpy().ravel()[:2], [0., 0.5])
  np.testing.assert_array_equal(
      np.asarray(pointwise_mask.numpy()).astype(int).ravel()[:4], [1] * 4)


@pytest.mark.parametrize('flavour', FLAVOURS)
def test_the_choice_survives_keras_files_and_clones(flavour, tmp_path):
  k = FLAVOURS[flavour]
  k.utils.set_random_seed(0)
  model = _separable_model(k)
  x = np.random.default_rng(0).normal(size=(3, 1, 1, 2)).astype('float32')
  path = str(tmp_path / 'model.keras')
  model.save(path)
  loaded = k.models.load_model(path)
  cloned = k.models.clone_model(model)
  for other in (loaded, cloned):
    wrapper, = tf_dsr.collect_wrappers(other)
    assert wrapper.kernels == BOTH
    assert wrapper.get_config()['kernels'] == list(BOTH)
    assert wrapper.sparse_names == tf_dsr.collect_wrappers(
        model)[0].sparse_names
  for a, b in zip(masks_of(loaded), masks_of(model)):
    np.testing.assert_array_equal(a, b)
  np.testing.assert_allclose(loaded(x).numpy(), model(x).numpy(), rtol=1e-6)


def test_the_choice_survives_an_h5_file(tmp_path):
  k = FLAVOURS['tf_keras']
  model = _separable_model(k)
  path = str(tmp_path / 'model.h5')
  model.save(path)
  loaded = k.models.load_model(path)
  assert tf_dsr.collect_wrappers(loaded)[0].kernels == BOTH
  for a, b in zip(masks_of(loaded), masks_of(model)):
    np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize('flavour', FLAVOURS)
def test_default_configs_have_no_kernels_entry(flavour):
  k = FLAVOURS[flavour]
  wrapper = tf_dsr.DynamicSparseWrapper(
      k.layers.SeparableConv2D(2, 1, name='sep'), sparsity=0.5)
  wrapper.build((None, 1, 1, 2))
  assert wrapper.kernels is None and 'kernels' not in wrapper.get_config()
  assert wrapper.sparse_names == ['dynamic_sparse_sep/pointwise_kernel']


@pytest.mark.parametrize('flavour', FLAVOURS)
def test_lstm_with_its_input_kernel_only_keeps_the_recurrent_kernel_dense(
    flavour):
  k = FLAVOURS[flavour]
  wrapper = tf_dsr.DynamicSparseWrapper(k.layers.LSTM(3, name='lstm'),
                                        sparsity=0.5, kernels=('kernel',))
  wrapper.build((None, 4, 2))
  assert wrapper.sparse_names == ['dynamic_sparse_lstm/kernel']
  (kernel, mask), = wrapper.sparse_weights
  cell = wrapper.layer.cell
  assert kernel is cell.kernel
  # kernel (2, 12): 12 of 24 entries zeroed; recurrent (3, 12): none.
  assert int(np.asarray(mask.numpy()).sum()) == 12
  assert np.count_nonzero(cell.kernel.numpy()) == 12
  assert np.count_nonzero(cell.recurrent_kernel.numpy()) == 3 * 12
  assert [w for w in wrapper.weights if 'mask' in w.name] == [mask]


@pytest.mark.parametrize('flavour', FLAVOURS)
def test_unknown_kernel_names_are_refused_before_anything_changes(flavour):
  k = FLAVOURS[flavour]
  message = (r"`kernels` \('kernal',\) names \['kernal'\].*'lstm'.*"
             r"\['kernel', 'recurrent_kernel'\]")
  built = k.layers.LSTM(3, name='lstm')
  built.build((None, 4, 2))
  with pytest.raises(ValueError, match=message):
    tf_dsr.DynamicSparseWrapper(built, sparsity=0.5, kernels=('kernal',))
  # An unbuilt layer is checked when the wrapper builds, before any mask.
  wrapper = tf_dsr.DynamicSparseWrapper(k.layers.LSTM(3, name='lstm'),
                                        sparsity=0.5, kernels=('kernal',))
  with pytest.raises(ValueError, match=message):
    wrapper.build((None, 4, 2))
  assert not [w for w in wrapper.weights if 'mask' in w.name]
  assert np.count_nonzero(wrapper.layer.cell.kernel.numpy()) == 2 * 12
  with pytest.raises(ValueError, match=r"`sparsity` \[0.5\] must list one "
                     r"value per kernel of `kernels` \('depthwise_kernel', "
                     r"'pointwise_kernel'\)"):
    tf_dsr.DynamicSparseWrapper(k.layers.SeparableConv2D(2, 1), [0.5],
                                kernels=BOTH)
  for bad in ('kernel', (), ('kernel', 'kernel'), [1]):
    with pytest.raises(ValueError, match=r'`kernels` must be None.*got ' +
                       repr(bad).replace('(', r'\(').replace(')', r'\)')
                       .replace('[', r'\[').replace(']', r'\]')):
      tf_dsr.DynamicSparseWrapper(k.layers.Dense(2), sparsity=0.5,
                                  kernels=bad)


def _model(k):
  inputs = k.Input((3, 3, 2))
  x = k.layers.SeparableConv2D(4, 3, name='sep')(inputs)
  x = k.layers.Reshape((1, 4))(x)
  x = k.layers.LSTM(3, name='lstm')(x)
  return k.Model(inputs, k.layers.Dense(2, name='fc')(x))


@pytest.mark.parametrize('flavour', FLAVOURS)
def test_sparsify_chooses_kernels_by_class_name_or_callable(flavour):
  k = FLAVOURS[flavour]
  model = _model(k)
  by_dict = tf_dsr.sparsify(model, 0.5, kernels={
      k.layers.SeparableConv2D: BOTH, 'lstm': ('kernel',)})
  by_callable = tf_dsr.sparsify(
      model, 0.5, kernels=lambda layer: (BOTH if layer.name == 'sep' else
                                         ('kernel',) if layer.name == 'lstm'
                                         else None))
  for sparse in (by_dict, by_callable):
    assert [name for w in tf_dsr.collect_wrappers(sparse)
            for name in w.sparse_names] == [
                'dynamic_sparse_sep/depthwise_kernel',
                'dynamic_sparse_sep/pointwise_kernel',
                'dynamic_sparse_lstm/kernel', 'dynamic_sparse_fc/kernel']
  # A layer name wins over its class.
  sparse = tf_dsr.sparsify(model, 0.5, kernels={
      k.layers.SeparableConv2D: BOTH, 'sep': ('depthwise_kernel',)})
  assert tf_dsr.collect_wrappers(sparse)[0].kernels == ('depthwise_kernel',)


@pytest.mark.parametrize('flavour', FLAVOURS)
def test_sparsify_erk_sparsities_line_up_with_the_chosen_kernels(flavour):
  k = FLAVOURS[flavour]
  model = _model(k)
  sparse = tf_dsr.sparsify(model, 0.5, distribution='erk',
                           kernels={'sep': BOTH, 'lstm': ('kernel',)})
  sep, lstm, fc = tf_dsr.collect_wrappers(sparse)
  shapes = [(3, 3, 2, 1), (1, 1, 2, 4), (4, 12), (3, 2)]
  counts = distributions.active_counts(shapes, 0.5, 'erk')
  assert len(sep.sparsity) == 2 and not isinstance(lstm.sparsity, list)
  assert [int(np.asarray(m).sum()) for m in masks_of(sparse)] == counts
  # The uniform budget over the chosen kernels: 9 + 4 + 24 + 3.
  assert sum(counts) == 40


@pytest.mark.parametrize('flavour', FLAVOURS)
def test_sparsify_refuses_bad_kernels_and_changes_nothing(flavour):
  k = FLAVOURS[flavour]
  model = _model(k)
  before = [w.numpy().copy() for w in model.weights]
  with pytest.raises(ValueError, match=r"`kernels` \('nope',\).*'lstm'.*"
                     r"\['kernel', 'recurrent_kernel'\]"):
    # 'sep', wrapped first, is left as it was too.
    tf_dsr.sparsify(model, 0.5, kernels={'sep': BOTH, 'lstm': ('nope',)})
  with pytest.raises(ValueError, match=r"`kernels` names layers .*\['nosuch'\]"):
    tf_dsr.sparsify(model, 0.5, kernels={'nosuch': ('kernel',)})
  with pytest.raises(ValueError, match=r"`kernels` must be None, a dict.*"
                     r"got 'kernel'"):
    tf_dsr.sparsify(model, 0.5, kernels='kernel')
  with pytest.raises(ValueError, match=r"`kernels` entry 'lstm': 'kernel'"):
    tf_dsr.sparsify(model, 0.5, kernels={'lstm': 'kernel'})
  for a, b in zip(before, model.weights):
    np.testing.assert_array_equal(a, b.numpy())


@pytest.mark.parametrize('flavour', FLAVOURS)
def test_a_sparsity_per_kernel_follows_the_order_of_kernels(flavour):
  k = FLAVOURS[flavour]
  wrapper = tf_dsr.DynamicSparseWrapper(
      k.layers.SeparableConv2D(2, 1, name='sep'), sparsity=[0.0, 0.5],
      kernels=('pointwise_kernel', 'depthwise_kernel'))
  wrapper.build((None, 1, 1, 2))
  assert wrapper.sparse_names == ['dynamic_sparse_sep/pointwise_kernel',
                                  'dynamic_sparse_sep/depthwise_kernel']
  # Pointwise (1, 1, 2, 2) dense: 4 of 4; depthwise (1, 1, 2, 1): 1 of 2.
  assert [int(np.asarray(m.numpy()).sum())
          for _, m in wrapper.sparse_weights] == [4, 1]
