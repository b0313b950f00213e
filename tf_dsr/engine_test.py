"""The engine on hand-worked models: DSR end to end, invariants, one trace."""

import collections
import dataclasses

import numpy as np
import pytest
import tensorflow as tf

import tf_dsr
from tf_dsr import keras


def _model(kernels, masks, sparsity=0.5):
  """Dense layers 4 -> 2 -> 4 -> ..., wrapped, with the given flat kernels/masks.

  Kernel i has shape (units[i-1], units[i]) with units (4, 2, 4, 2, ...), so
  every kernel has 8 entries.
  """
  inputs = keras.Input((4,))
  x, wrappers = inputs, []
  for i in range(len(kernels)):
    wrapper = tf_dsr.DynamicSparseWrapper(
        keras.layers.Dense(2 if i % 2 == 0 else 4, name=f'd{i}'), sparsity)
    x = wrapper(x)
    wrappers.append(wrapper)
  model = keras.Model(inputs, x)
  pairs = [w.sparse_weights[0] for w in wrappers]
  for (k, m), kernel, mask in zip(pairs, kernels, masks):
    k.assign(np.array(kernel, np.float32).reshape(k.shape))
    m.assign(np.array(mask, np.float32).reshape(m.shape))
  return model, pairs


def _flat(variable):
  return variable.numpy().reshape(-1)


@pytest.mark.parametrize('jit_compile', [False, True])
def test_dsr_hand_worked(jit_compile):
  # Tensor 0: entries 1 and 4 are below H = 1e-3; tensor 1: entry 0.
  w0 = [0.5, 0.0005, 0.002, 0., 0.0009, -0.3, 0., 0.01]
  m0 = [1, 1, 1, 0, 1, 1, 0, 1]
  w1 = [0.0002, 0., 0., 0.7, 0., 0., 0., 0.]
  m1 = [1, 0, 0, 1, 0, 0, 0, 0]
  model, ((k0, mask0), (k1, mask1)) = _model([w0, w1], [m0, m1])
  realloc = tf_dsr.Reallocator(model, optimizer=False, target_pruned=10, seed=3,
                               jit_compile=jit_compile)
  stats = realloc.reallocate(step=7)
  # K = 3. Survivors l = (4, 1), L = 5: shares 2.4 and 0.6. Tensor 0 has only
  # two free entries (3 and 6), so it regrows 2 and tensor 1 regrows 1.
  assert (stats.pruned, stats.candidates, stats.skipped) == (3, 3, False)
  assert list(stats.regrown.values()) == [2, 1]
  assert list(stats.active.values()) == [6, 2] and stats.total_active == 8
  np.testing.assert_array_equal(_flat(mask0), [1, 0, 1, 1, 0, 1, 1, 1])
  new1 = _flat(mask1)
  assert new1[3] == 1 and new1[0] == 0 and new1.sum() == 2  # not at 0
  # Survivors keep their values; pruned and regrown weights are 0.
  np.testing.assert_allclose(_flat(k0), [0.5, 0, 0.002, 0, 0, -0.3, 0, 0.01])
  assert _flat(k1)[3] == pytest.approx(0.7)
  assert np.count_nonzero(_flat(k1)) == 1
  # K = 3 < 0.9 * 10: H doubles; the state records the call.
  assert stats.threshold_used == pytest.approx(1e-3)
  assert stats.threshold == pytest.approx(2e-3)
  assert int(realloc.state.reallocations.numpy()) == 1
  assert int(realloc.state.last_step.numpy()) == 7


@pytest.mark.parametrize('jit_compile', [False, True])
def test_tensors_of_one_shape_each_get_their_own_write(jit_compile):
  # Kernels 0 and 2 have the same shape (4, 2), so the CPU default writes
  # both with one compiled write; each must still get its own values.
  w0, m0 = _W0, _M0  # Prunes entries 1 and 4; entries 3 and 6 are free.
  w1, m1 = [0.4, 0.5, 0.6, 0.7, 0., 0., 0., 0.], [1, 1, 1, 1, 0, 0, 0, 0]
  w2, m2 = [0.0001, 0.9, 0., 0., 0.8, 0., 0.7, 0.], [1, 1, 0, 0, 1, 0, 1, 0]
  model, pairs = _model([w0, w1, w2], [m0, m1, m2])
  stats = tf_dsr.Reallocator(model, optimizer=False, target_pruned=3, seed=5,
                             jit_compile=jit_compile).reallocate()
  assert stats.pruned == 3 and stats.total_active == 6 + 4 + 4
  (k0, mask0), (k1, mask1), (k2, mask2) = [
      (_flat(k), _flat(m).astype(bool)) for k, m in pairs]
  assert [int(m.sum()) for m in (mask0, mask1, mask2)] == list(
      stats.active.values())
  # Pruned: entries 1 and 4 of kernel 0, entry 0 of kernel 2; never regrown.
  assert not mask0[[1, 4]].any() and not mask2[0]
  # Survivors keep their values; everything else is 0.
  np.testing.assert_allclose(k0, [0.5, 0, 0.002, 0, 0, -0.3, 0, 0.01])
  np.testing.assert_allclose(k1, w1)
  np.testing.assert_allclose(k2, [0, 0.9, 0, 0, 0.8, 0, 0.7, 0])
  assert mask0[[0, 2, 5, 7]].all() and mask1[:4].all()
  assert mask2[[1, 4, 6]].all()


# One tensor of 8 whose reallocation (N_p = 2) prunes entries 1 and 4 and
# regrows 3 and 6, the only free ones.
_W0 = [0.5, 0.0005, 0.002, 0., 0.0009, -0.3, 0., 0.01]
_M0 = [1, 1, 1, 0, 1, 1, 0, 1]
_M1 = [1, 0, 1, 1, 0, 1, 1, 1]


def _reallocate_with_momentum(momentum):
  """Reallocates `_W0` / `_M0` with SGD momentum set to `momentum`.

  Returns:
    The kernel, mask and momentum afterwards, flat.
  """
  model, ((kernel, mask),) = _model([_W0], [_M0])
  optimizer = keras.optimizers.SGD(0.1, momentum=0.9)
  optimizer.build(model.trainable_variables)
  slot, = tf_dsr.optimizer_state.slot_variables(optimizer, [kernel])[0]
  slot.assign(np.reshape(momentum, slot.shape).astype('float32'))
  tf_dsr.Reallocator(model, target_pruned=2, optimizer=optimizer).reallocate()
  return _flat(kernel), _flat(mask), _flat(slot)


@pytest.mark.parametrize('legacy', [False, True], ids=['current', 'legacy'])
def test_slot_variables_finds_each_kernels_own_state(legacy):
  model, ((k0, _), (k1, _)) = _model([_W0, _W0], [_M0, _M0])
  family = keras.optimizers.legacy if legacy else keras.optimizers
  optimizer = family.Adam(0.1)
  # Trains the first kernel only, so the second has no state.
  optimizer.apply_gradients([(tf.zeros_like(k0), k0)])
  first, second, again = tf_dsr.optimizer_state.slot_variables(
      optimizer, [k0, k1, k0])
  assert second == []
  assert len(first) == 2 and first[0] is not first[1]  # Adam's m and v.
  assert [id(s) for s in first] == [id(s) for s in again]
  assert all(s.shape == k0.shape for s in first)
  assert tf_dsr.optimizer_state.slot_variables(None, [k0, k1]) == [[], []]


def test_optimizer_state_is_zeroed_exactly_where_entries_moved():
  _, mask, momentum = _reallocate_with_momentum([5.0] * 8)
  # The moved entries' momentum is 0; every kept entry keeps its momentum.
  np.testing.assert_array_equal(mask, _M1)
  np.testing.assert_array_equal(momentum, [5, 0, 5, 0, 0, 5, 0, 5])


def test_non_finite_optimizer_state_is_zeroed_where_moved_and_kept_elsewhere():
  # Adam's second moment can be inf (or NaN) where the weight is finite: a
  # dropped entry's state must become 0 (0 * inf would be NaN), a kept
  # entry's must stay exactly as it was.
  inf, nan = np.inf, np.nan
  kernel, mask, momentum = _reallocate_with_momentum(
      [inf, inf, -inf, 0., nan, nan, 0., 3.])
  np.testing.assert_array_equal(mask, _M1)
  np.testing.assert_array_equal(momentum, [inf, 0, -inf, 0, 0, nan, 0, 3])
  np.testing.assert_array_equal(
      kernel, np.float32([0.5, 0, 0.002, 0, 0, -0.3, 0, 0.01]))


def test_skips_when_the_pruned_cannot_be_regrown_and_h_still_adapts():
  # Sparsity 0.25: 6 of 8 active, 5 below H, only 2 free entries.
  w = [1e-5, 1e-5, 1e-5, 1e-5, 1e-5, 0.5, 0., 0.]
  m = [1, 1, 1, 1, 1, 1, 0, 0]
  model, ((_, mask),) = _model([w], [m])
  stats = tf_dsr.Reallocator(model, optimizer=False, target_pruned=2).reallocate()
  assert stats.skipped and stats.pruned == 0 and stats.candidates == 5
  np.testing.assert_array_equal(_flat(mask), m)
  assert stats.threshold == pytest.approx(0.5e-3)


def test_invariants_over_many_random_reallocations_with_one_trace():
  rng = np.random.default_rng(0)
  kernels = [rng.normal(0, 0.01, 8) for _ in range(3)]
  masks = [(rng.random(8) < 0.4) | (np.arange(8) == 0) for _ in range(3)]
  model, pairs = _model(kernels, masks)
  realloc = tf_dsr.Reallocator(model, optimizer=False, target_pruned=3, seed=5)
  outcomes = set()
  for call in range(40):
    if call % 10 == 9:  # Nearly dense masks: H = 1 then prunes more than fit.
      for _, m in pairs:
        m.assign((np.arange(8) != call % 8).reshape(m.shape).astype('float32'))
    old = [_flat(m).astype(bool) for _, m in pairs]
    total = sum(int(o.sum()) for o in old)
    for (k, m), o in zip(pairs, old):  # fresh weights on the current masks
      k.assign((rng.normal(0, 0.01, 8) * o).reshape(k.shape).astype('float32'))
    realloc.state.threshold.assign(float(rng.choice([1e-4, 5e-3, 1.0])))
    stats = realloc.reallocate(step=call)
    careful = stats.threshold_used == 1.0  # every tensor would be emptied
    outcomes.add(('skipped' if stats.skipped else 'moved', careful))
    new = [_flat(m) for _, m in pairs]
    assert sum(int(n.sum()) for n in new) == total == stats.total_active
    for (k, _), n, o in zip(pairs, new, old):
      assert set(np.unique(n)) <= {0.0, 1.0} and n.sum() >= 1
      assert not (_flat(k)[n == 0]).any()  # inactive weights are 0
      grown = (n > 0) & ~o
      assert not (_flat(k)[grown]).any()  # regrown at 0
      if stats.skipped:
        np.testing.assert_array_equal(n, o)
  # Careful drops (H = 1 would empty tensors), plain drops and skipped calls
  # all ran on the one trace.
  assert {('moved', True), ('moved', False), ('skipped', True)} <= outcomes
  assert realloc.trace_count == 1


def test_a_non_finite_weight_changes_nothing_and_names_the_layer():
  model, ((kernel, mask), _) = _model(
      [[np.nan, 0.5, 0, 0, 0, 0, 0, 0.0001], [0.2] * 8],
      [[1, 1, 0, 0, 0, 0, 0, 1], [1] * 4 + [0] * 4])
  realloc = tf_dsr.Reallocator(model, optimizer=False, target_pruned=2)
  with pytest.raises(FloatingPointError, match=r'dynamic_sparse_d0/kernel \(1'):
    realloc.reallocate()
  np.testing.assert_array_equal(_flat(mask), [1, 1, 0, 0, 0, 0, 0, 1])
  assert _flat(kernel)[7] == pytest.approx(0.0001)
  assert int(realloc.state.reallocations.numpy()) == 0
  assert float(realloc.state.threshold.numpy()) == pytest.approx(1e-3)


@pytest.mark.parametrize('make,pattern', [
    (lambda m: tf_dsr.Reallocator(m, optimizer=False, target_pruned=5, periods=3),
     r"takes no option 'periods'.*\['target_pruned', 'tolerance', "
     r"'initial_threshold'\]"),
    (lambda m: tf_dsr.Reallocator(m, optimizer=False, target_pruned=5, drop_fraction=0.3),
     "takes no option 'drop_fraction'"),
    (lambda m: tf_dsr.Reallocator(m, optimizer=False), "needs the option.*'target_pruned'"),
    (lambda m: tf_dsr.Reallocator(m, optimizer=False, method='static', target_pruned=5),
     r"'static' takes no option 'target_pruned'.*\[\]"),
    (lambda m: tf_dsr.Reallocator(m, optimizer=False, method=tf_dsr.rules.DSR(5), tolerance=0.2),
     'set them on the rule'),
])
def test_options_are_checked_when_the_reallocator_is_made(make, pattern):
  model, _ = _model([[0.1] * 8], [[1] * 4 + [0] * 4])
  with pytest.raises(TypeError, match=pattern):
    make(model)
  assert not hasattr(model, 'dynamic_sparsity_state')


def test_callback_checks_options_at_construction():
  with pytest.raises(TypeError, match="'dsr' takes no option 'periods'"):
    tf_dsr.ReallocationCallback(target_pruned=5, periods=3)
  with pytest.raises(TypeError, match=r"'set' takes no option 'tolerance'.*"
                     r"\['drop_fraction', 'target_pruned'\]"):
    tf_dsr.ReallocationCallback(method='set', drop_fraction=0.2, tolerance=0.1)
  with pytest.raises(ValueError, match='`drop_fraction`.*1.5'):
    tf_dsr.ReallocationCallback(method='set', drop_fraction=1.5)
  cb = tf_dsr.ReallocationCallback(method='set', drop_fraction=0.25)
  assert cb.rule == tf_dsr.rules.SET(drop_fraction=0.25)
  assert cb.method == 'set'


def test_layout_names_every_tensor_once():
  model, _ = _model([[0.1] * 8] * 3, [[1] * 4 + [0] * 4] * 3)
  layout = tf_dsr.Reallocator(model, optimizer=False, target_pruned=1).layout
  assert layout.names == ('dynamic_sparse_d0/kernel', 'dynamic_sparse_d1/kernel',
                          'dynamic_sparse_d2/kernel')
  assert layout.starts == (0, 128, 256) and layout.size == 384


def _program_graph_def(realloc):
  """The GraphDef of the traced program, its functions in its library."""
  concrete, = realloc._function._list_all_concrete_functions()  # pylint: disable=protected-access
  return concrete.graph.as_graph_def()


def _program_ops(realloc):
  """Op types of the traced program, its functions (core, loop bodies) included."""
  graph_def = _program_graph_def(realloc)
  ops = collections.Counter(node.op for node in graph_def.node)
  for function in graph_def.library.function:
    ops.update(node.op for node in function.node_def)
  return ops


def test_program_size_does_not_grow_with_control_flow_per_tensor():
  sizes = {}
  for num_layers in (2, 8):
    model, _ = _model([[0.1] * 8] * num_layers,
                      [[1] * 4 + [0] * 4] * num_layers)
    realloc = tf_dsr.Reallocator(model, optimizer=False, target_pruned=2)
    realloc.reallocate()
    sizes[num_layers] = _program_ops(realloc)
  control_flow = ('While', 'StatelessWhile', 'If', 'StatelessIf')
  loops = [sum(ops[k] for k in control_flow) for ops in sizes.values()]
  # One conditional (keep-largest), one growth fallback loop and one
  # capacity loop, whatever the number of tensors; only reading and writing
  # each variable adds ops (about 50 per tensor here).
  assert loops == [3, 3]
  growth = (sum(sizes[8].values()) - sum(sizes[2].values())) / 6
  assert growth < 80, growth


@pytest.mark.parametrize('make', [
    lambda m: tf_dsr.Reallocator(m, optimizer=False, target_pruned=5, jit_compile='yes'),
    lambda m: tf_dsr.ReallocationCallback(target_pruned=5, jit_compile='yes'),
])
def test_jit_compile_must_be_a_bool_or_none(make):
  model, _ = _model([[0.1] * 8], [[1] * 4 + [0] * 4])
  with pytest.raises(ValueError, match="`jit_compile`.*'yes'"):
    make(model)
  assert not hasattr(model, 'dynamic_sparsity_state')


def test_models_with_the_same_sparse_tensors_share_one_program():
  rng = np.random.default_rng(3)
  kernels = [rng.normal(0, 0.01, 8) for _ in range(3)]
  masks = [rng.random(8) < 0.5 for _ in range(3)]
  runs = {}
  for name, seed in (('first', 1), ('second', 1), ('other seed', 2)):
    model, pairs = _model(kernels, masks)
    realloc = tf_dsr.Reallocator(model, optimizer=False, target_pruned=2,
                                 seed=seed, initial_threshold=5e-3)
    for step in range(1, 4):
      realloc.reallocate(step)
    runs[name] = (realloc, [_flat(m).copy() for _, m in pairs])
  first, second, other = (runs[n][0] for n in ('first', 'second',
                                                'other seed'))
  # One program, traced once, for the three models; the seed is an argument.
  assert first._function is second._function is other._function  # pylint: disable=protected-access
  assert first.trace_count == other.trace_count == 1
  for a, b in zip(runs['first'][1], runs['second'][1]):
    np.testing.assert_array_equal(a, b)
  assert any((a != b).any() for a, b in zip(runs['first'][1],
                                             runs['other seed'][1]))
  # Another rule option, optimizer state or layout gets its own program.
  model, _ = _model(kernels, masks)
  dsr = tf_dsr.Reallocator(model, optimizer=False, target_pruned=3, seed=1)
  dsr.reallocate(1)
  model, _ = _model(kernels, masks)
  model.compile(keras.optimizers.SGD(0.1, momentum=0.9), 'mse')
  model.optimizer.build(model.trainable_variables)
  with_slots = tf_dsr.Reallocator(model, target_pruned=2, seed=1,
                                  initial_threshold=5e-3)
  with_slots.reallocate(1)
  model, _ = _model(kernels[:2], masks[:2])
  smaller = tf_dsr.Reallocator(model, optimizer=False, target_pruned=2,
                               seed=1, initial_threshold=5e-3)
  smaller.reallocate(1)
  programs = {id(r._function) for r in (first, dsr, with_slots, smaller)}  # pylint: disable=protected-access
  assert len(programs) == 4
  assert all(r.trace_count == 1 for r in (dsr, with_slots, smaller))


def test_a_rule_that_cannot_be_hashed_keeps_one_program_per_reallocator():
  # A user's rule with a list option cannot key the shared program cache;
  # its Reallocator keeps its own program rather than making one per call.
  @dataclasses.dataclass(frozen=True)
  class NotedDSR(tf_dsr.rules.DSR):
    traced_options = ('target_pruned', 'tolerance', 'notes')
    notes: list = dataclasses.field(default_factory=list)

  rule = NotedDSR(target_pruned=2, initial_threshold=5e-3, notes=['a'])
  with pytest.raises(TypeError):
    hash(rule)
  rng = np.random.default_rng(5)
  model, _ = _model([rng.normal(0, 0.01, 8) for _ in range(2)],
                    [rng.random(8) < 0.5 for _ in range(2)])
  realloc = tf_dsr.Reallocator(model, rule, optimizer=False, seed=1)
  functions = []
  for step in range(1, 5):
    realloc.reallocate(step)
    functions.append(realloc._function)  # pylint: disable=protected-access
  assert all(f is functions[0] for f in functions)
  assert realloc.trace_count == 1


def test_rules_that_differ_only_in_call_inputs_share_one_program():
  # DeepR's options reach the program as call inputs, so a second rule with
  # other values reuses the first one's program, and computes with its own
  # values. T = 0 and no weight crosses zero: the first call moves each
  # active weight by -lr * alpha * sign(w) and drops nothing.
  kernel = [0.5, -0.5, 0.0, 0.0, 0.25, -0.25, 0.0, 0.0]
  mask = [1, 1, 0, 0, 1, 1, 0, 0]
  runs = []
  for alpha, lr in ((0.0, 0.1), (0.5, 0.2)):
    model, ((k, m),) = _model([kernel], [mask])
    realloc = tf_dsr.Reallocator(model, 'deepr', optimizer=False, seed=1,
                                 alpha=alpha, temperature=0.0,
                                 learning_rate=lr)
    assert realloc.reallocate(1).pruned == 0
    runs.append((realloc, _flat(k), _flat(m)))
  (first, k0, m0), (second, k1, m1) = runs
  assert second._function is first._function  # pylint: disable=protected-access
  assert second.trace_count == 1
  np.testing.assert_array_equal(m0, mask)
  np.testing.assert_array_equal(m1, mask)
  np.testing.assert_array_equal(k0, kernel)  # alpha = 0.
  np.testing.assert_allclose(k1, [0.4, -0.4, 0, 0, 0.15, -0.15, 0, 0],
                             rtol=1e-6)


def test_an_option_read_while_traced_must_be_listed_as_traced():
  # DSR's next threshold reads `tolerance`: a rule that leaves it out of
  # `traced_options` (and so would share programs across tolerances) fails
  # at its first trace, naming the option, and changes nothing.
  @dataclasses.dataclass(frozen=True)
  class LooseDSR(tf_dsr.rules.DSR):
    traced_options = ('target_pruned',)

  model, ((k, m),) = _model([np.linspace(-0.1, 0.1, 8)], [[1, 0] * 4])
  realloc = tf_dsr.Reallocator(model, LooseDSR(target_pruned=1),
                               optimizer=False)
  with pytest.raises(TypeError, match=r'LooseDSR\.tolerance is not in '
                     r'LooseDSR\.traced_options'):
    realloc.reallocate(1)
  np.testing.assert_array_equal(_flat(m), [1, 0] * 4)
  np.testing.assert_allclose(_flat(k), np.linspace(-0.1, 0.1, 8), rtol=1e-6)
  assert model.dynamic_sparsity_state.threshold.numpy() == np.float32(1e-3)
  assert int(model.dynamic_sparsity_state.reallocations.numpy()) == 0


def _float_concats_of_core(realloc):
  """Names of float32 ConcatV2 nodes at the top level of the traced core."""
  core, = [f for f in _program_graph_def(realloc).library.function
           if f.signature.name.startswith('__inference_core_')]
  return [node.name for node in core.node_def if node.op == 'ConcatV2'
          and node.attr['T'].type == tf.float32.as_datatype_enum]


@pytest.mark.parametrize('method,options,lays_out_weights', [
    ('dsr', dict(target_pruned=3), False),
    ('set', dict(drop_fraction=0.3), True),
])
def test_the_flat_weights_are_laid_out_only_for_rules_that_read_them(
    method, options, lays_out_weights):
  # DSR reads the flags of one byte per entry; the float32 weights (a copy
  # of every kernel) are laid out only in the branch that spares an emptied
  # tensor, which is not part of the core's top level. SET reads them.
  rng = np.random.default_rng(1)
  model, _ = _model([rng.normal(0, 0.01, 8) for _ in range(2)],
                    [rng.random(8) < 0.5 for _ in range(2)])
  realloc = tf_dsr.Reallocator(model, method, optimizer=False, **options)
  realloc.reallocate(1)
  assert bool(_float_concats_of_core(realloc)) == lays_out_weights
