"""Compact sparse checkpoints: save_sparse / load_sparse."""

import io
import json
import zipfile

import numpy as np
import pytest

import tf_dsr
from tf_dsr import keras
from tf_dsr import compact
from tests.helpers import masks_of
from tests.helpers import sparse_pairs
from tests.helpers import sparse_tiny_cnn
from tests.helpers import tiny_data


@pytest.fixture(scope='module')
def trained():
  """A tiny sparse CNN after a few reallocations (masks moved, H adapted).

  Trained once for the module: the tests save it, predict with it and
  compare against it, and none changes it (they load into other models).
  """
  model = sparse_tiny_cnn(sparsity=0.8)
  x, y = tiny_data()
  cb = tf_dsr.ReallocationCallback(period=2, seed=0, target_pruned=20,
                                   initial_threshold=1e-2)
  model.fit(x, y, batch_size=16, epochs=2, callbacks=[cb], verbose=0)
  return model


def _fresh():
  return sparse_tiny_cnn(sparsity=0.8, seed=7)


def _weights(model):
  """The layers' weights without the DSR state (checked on its own)."""
  state = {id(v) for w in tf_dsr.collect_wrappers(model)
           for v in w.state_variables.values()}
  return [w for layer in model.layers for w in layer.weights
          if id(w) not in state]


def _snapshot(model):
  return [v.numpy().copy() for v in _weights(model)]


def _rewrite(path, edit):
  """Rewrites the .npz at `path` after `edit(manifest, arrays)`."""
  with np.load(path) as archive:
    arrays = {k: archive[k] for k in archive.files}
  manifest = json.loads(arrays['manifest'].tobytes())
  edit(manifest, arrays)
  arrays['manifest'] = np.frombuffer(json.dumps(manifest).encode(), np.uint8)
  buffer = io.BytesIO()
  np.savez(buffer, **arrays)
  with open(path, 'wb') as f:
    f.write(buffer.getvalue())


def test_mask_encoding_is_the_smaller_of_bits_and_indices():
  # 1000 entries: bits take 125 bytes; int32 indices 4 bytes per active one.
  assert compact.mask_encoding(1000, 31) == 'indices'   # 124 < 125
  assert compact.mask_encoding(1000, 32) == 'bits'      # 128 > 125
  assert compact.sparse_bytes(1000, 100) == 400 + 125
  assert compact.sparse_bytes(1000, 10) == 40 + 40
  assert compact.sparse_bytes(1000, 10, itemsize=2) == 20 + 40


def test_floats_are_stored_as_little_endian_byte_planes():
  # 1.0 = 0x3F800000 and 2.0 = 0x40000000: byte k of each value in row k.
  planes = compact._encode(np.array([1.0, 2.0], np.float32), 'float32', 'w')
  np.testing.assert_array_equal(planes, [[0x00, 0x00], [0x00, 0x00],
                                         [0x80, 0x00], [0x3F, 0x40]])
  entry = {'dtype': 'float32', 'values_dtype': 'float32'}
  np.testing.assert_array_equal(compact._decode_values(planes, entry, 2),
                                [1.0, 2.0])
  # float16 1.0 = 0x3C00, 2.0 = 0x4000.
  planes = compact._encode(np.array([1.0, 2.0], np.float32), 'float16', 'w')
  np.testing.assert_array_equal(planes, [[0x00, 0x00], [0x3C, 0x40]])


def test_round_trip_gives_bit_identical_predictions_and_state(tmp_path,
                                                             trained):
  model = trained
  path = str(tmp_path / 'm.npz')
  size = tf_dsr.save_sparse(model, path)
  assert size == (tmp_path / 'm.npz').stat().st_size
  x, _ = tiny_data(8, seed=3)
  expected = model.predict(x, verbose=0)
  target = _fresh()
  assert any((a != b).any() for a, b in zip(masks_of(target), masks_of(model)))
  assert tf_dsr.load_sparse(path, model=target) is target
  np.testing.assert_array_equal(target.predict(x, verbose=0), expected)
  for a, b in zip(_weights(target), _weights(model)):
    np.testing.assert_array_equal(a.numpy(), b.numpy())
  state, saved = target.dynamic_sparsity_state, model.dynamic_sparsity_state
  assert state.threshold.numpy() == saved.threshold.numpy()
  assert state.reallocations.numpy() == saved.reallocations.numpy() > 0
  assert state.last_step.numpy() == -1  # The optimizer's step is not stored.


def test_a_loaded_model_trains_on_with_the_callback(tmp_path, trained):
  model = trained
  path = str(tmp_path / 'm.npz')
  tf_dsr.save_sparse(model, path)
  target = tf_dsr.load_sparse(path, model=_fresh())
  before = masks_of(target)
  done = int(target.dynamic_sparsity_state.reallocations.numpy())
  x, y = tiny_data()
  cb = tf_dsr.ReallocationCallback(target_pruned=20, period=2, seed=0)
  target.fit(x, y, batch_size=16, epochs=1, callbacks=[cb], verbose=0)
  assert int(target.dynamic_sparsity_state.reallocations.numpy()) == done + 2
  assert any((a != b).any() for a, b in zip(before, masks_of(target)))
  assert sum(m.sum() for m in masks_of(target)) == sum(m.sum() for m in before)


def test_load_without_a_model_rebuilds_it_from_the_stored_config(tmp_path,
                                                                 trained):
  model = trained
  path = str(tmp_path / 'm.npz')
  tf_dsr.save_sparse(model, path)
  rebuilt = tf_dsr.load_sparse(path)
  assert rebuilt is not model
  assert [type(l).__name__ for l in rebuilt.layers] == [
      type(l).__name__ for l in model.layers]
  x, _ = tiny_data(8, seed=3)
  np.testing.assert_array_equal(rebuilt.predict(x, verbose=0),
                                model.predict(x, verbose=0))


def test_load_without_a_model_of_a_subclassed_model_asks_for_one(tmp_path,
                                                                 trained):
  path = str(tmp_path / 'm.npz')
  tf_dsr.save_sparse(trained, path)
  _rewrite(path, lambda manifest, arrays: manifest.update(model_config=None))
  with pytest.raises(ValueError, match='pass the model to load into'):
    tf_dsr.load_sparse(path)


@pytest.mark.parametrize('dtype,tolerance', [('float16', 1e-3),
                                              ('bfloat16', 1e-2)])
def test_16_bit_values_halve_the_values_and_keep_the_masks(tmp_path, dtype,
                                                           tolerance,
                                                           trained):
  model = trained
  full, half = str(tmp_path / 'full.npz'), str(tmp_path / 'half.npz')
  tf_dsr.save_sparse(model, full)
  tf_dsr.save_sparse(model, half, values_dtype=dtype)
  with np.load(full) as f32, np.load(half) as f16:
    # Every weight array is float32, stored as byte planes: 4 rows, 2 in
    # 16 bits; sparse values and dense weights alike.
    floats = [k for k in f32.files
              if k.startswith('w') and not k.endswith(('.bits', '.indices'))]
    assert any(k.endswith('.values') for k in floats)
    for key in floats:
      assert f32[key].shape[0] == 4 and f16[key].shape == (
          2, f32[key].shape[1])
  target = tf_dsr.load_sparse(half, model=_fresh())
  for a, b in zip(masks_of(target), masks_of(model)):
    np.testing.assert_array_equal(a, b)
  for (k, _), (saved, _) in zip(sparse_pairs(target), sparse_pairs(model)):
    assert k.dtype == 'float32'
    np.testing.assert_allclose(k.numpy(), saved.numpy(), rtol=tolerance,
                               atol=1e-6)
  x, _ = tiny_data(8, seed=3)
  np.testing.assert_allclose(target.predict(x, verbose=0),
                             model.predict(x, verbose=0), atol=5 * tolerance)


def test_values_that_overflow_float16_are_refused(tmp_path):
  model = _fresh()
  kernel, mask = sparse_pairs(model)[0]
  kernel.assign(kernel.numpy() + 1e6 * mask.numpy())
  with pytest.raises(ValueError, match="values_dtype.*overflow float16"):
    tf_dsr.save_sparse(model, str(tmp_path / 'm.npz'), values_dtype='float16')
  assert not list(tmp_path.iterdir())


def test_bad_arguments_name_the_argument(tmp_path):
  model = _fresh()
  with pytest.raises(ValueError, match="`values_dtype`.*'int8'"):
    tf_dsr.save_sparse(model, str(tmp_path / 'm.npz'), values_dtype='int8')
  with pytest.raises(ValueError, match='`path`.*does not exist'):
    tf_dsr.save_sparse(model, str(tmp_path / 'no' / 'm.npz'))
  with pytest.raises(ValueError, match='`path` must be'):
    tf_dsr.save_sparse(model, 3)
  with pytest.raises(ValueError, match='`model`'):
    tf_dsr.save_sparse(keras.layers.Dense(3), str(tmp_path / 'm.npz'))
  with pytest.raises(ValueError, match='`path`.*does not exist'):
    tf_dsr.load_sparse(str(tmp_path / 'missing.npz'), model=model)


def _assert_refused(path, model, match):
  before = _snapshot(model)
  with pytest.raises(ValueError, match=match):
    tf_dsr.load_sparse(path, model=model)
  for a, b in zip(before, _weights(model)):
    np.testing.assert_array_equal(a, b.numpy())
  assert getattr(model, 'dynamic_sparsity_state', None) is None


def test_truncated_and_corrupt_files_are_refused_leaving_the_model(tmp_path,
                                                                   trained):
  path = str(tmp_path / 'm.npz')
  tf_dsr.save_sparse(trained, path)
  data = open(path, 'rb').read()
  truncated = str(tmp_path / 'truncated.npz')
  with open(truncated, 'wb') as f:
    f.write(data[:len(data) * 2 // 3])
  _assert_refused(truncated, _fresh(), 'truncated or corrupt')
  # A byte in the middle of the largest deflated member: bad CRC or data.
  # (Not just the file's middle byte, which may fall in a zip header field
  # that readers ignore.)
  member = max(zipfile.ZipFile(path).infolist(), key=lambda i: i.compress_size)
  start = member.header_offset + 30 + len(member.filename) + len(member.extra)
  corrupt = bytearray(data)
  corrupt[start + member.compress_size // 2] ^= 0xFF
  with open(str(tmp_path / 'corrupt.npz'), 'wb') as f:
    f.write(bytes(corrupt))
  _assert_refused(str(tmp_path / 'corrupt.npz'), _fresh(), 'truncated or corrupt')
  np.savez(str(tmp_path / 'foreign.npz'), a=np.ones(3))
  _assert_refused(str(tmp_path / 'foreign.npz'), _fresh(), 'without a tf_dsr manifest')
  np.save(str(tmp_path / 'array.npy'), np.ones(3))
  _assert_refused(str(tmp_path / 'array.npy'), _fresh(), 'not an .npz archive')


def test_a_file_of_another_model_is_refused_leaving_the_model(tmp_path,
                                                              trained):
  path = str(tmp_path / 'm.npz')
  tf_dsr.save_sparse(trained, path)
  # Other sparse layers: conv2 dense, conv1 sparse.
  keras.utils.set_random_seed(0)
  from tests.helpers import tiny_cnn  # pylint: disable=g-import-not-at-top
  other = tf_dsr.sparsify(tiny_cnn(), 0.8, exclude=['conv2'])
  _assert_refused(path, other, 'does not match `model`.*weight 0')
  # Other widths.
  inputs = keras.Input((8, 8, 1))
  x = keras.layers.Conv2D(8, 3, padding='same', name='conv1')(inputs)
  x = keras.layers.Conv2D(12, 3, padding='same', name='conv2')(x)
  x = keras.layers.GlobalAveragePooling2D()(x)
  wider = tf_dsr.sparsify(keras.Model(inputs, keras.layers.Dense(10)(x)), 0.8,
                          exclude=['conv1'])
  _assert_refused(path, wider, r'shape \(3, 3, 8, 16\).*\(3, 3, 8, 12\)')


def test_wrong_names_and_inconsistent_arrays_are_refused(tmp_path, trained):
  path = str(tmp_path / 'm.npz')
  tf_dsr.save_sparse(trained, path)

  def rename(manifest, arrays):
    manifest['weights'][1]['short'] = 'gamma'
  _rewrite(path, rename)
  _assert_refused(path, _fresh(), "weight 1 is .* in the file")

  tf_dsr.save_sparse(trained, path)

  def drop_a_value(manifest, arrays):
    sparse = next(i for i, e in enumerate(manifest['weights'])
                  if e['encoding'] == 'bits')
    arrays[f'w{sparse}.values'] = arrays[f'w{sparse}.values'][:, :-1]
  _rewrite(path, drop_a_value)
  _assert_refused(path, _fresh(), 'byte planes of shape')


def test_indices_encoding_round_trips(tmp_path):
  # At sparsity 0.99 indices are smaller than a bit mask.
  keras.utils.set_random_seed(0)
  model = tf_dsr.sparsify(keras.Sequential([keras.layers.Dense(
      200, input_shape=(100,), name='fc')]), 0.99)
  path = str(tmp_path / 'm.npz')
  tf_dsr.save_sparse(model, path)
  with np.load(path) as archive:
    assert 'w0.indices' in archive.files and 'w0.bits' not in archive.files
  keras.utils.set_random_seed(1)
  target = tf_dsr.sparsify(keras.Sequential([keras.layers.Dense(
      200, input_shape=(100,), name='fc')]), 0.99, seed=5)
  tf_dsr.load_sparse(path, model=target)
  for a, b in zip(_weights(target), _weights(model)):
    np.testing.assert_array_equal(a.numpy(), b.numpy())


def test_sparsity_report_shows_dense_and_compact_bytes(tmp_path):
  model = sparse_tiny_cnn(sparsity=0.75)
  stored = tf_dsr.sparsity_report(model).stored_bytes
  # conv2: 1152 entries, 288 active: 288 * 4 value bytes + a 144-byte bit
  # mask (int32 indices would take 1152). fc: 160 entries, 40 active:
  # 160 + 20.
  assert stored.dense == {'dynamic_sparse_conv2/kernel': 4608,
                          'dynamic_sparse_fc/kernel': 640}
  assert stored.compact == {'dynamic_sparse_conv2/kernel': 1296,
                            'dynamic_sparse_fc/kernel': 180}
  # Every other weight (conv1 80, biases 16 + 10) stays 4 bytes each.
  assert stored.model_dense == 4 * (1312 + 80 + 16 + 10)
  assert stored.model_compact == 1296 + 180 + 4 * (80 + 16 + 10)
  assert '1,296' in str(tf_dsr.sparsity_report(model))
  # The report counts what save_sparse stores (before deflate).
  path = str(tmp_path / 'm.npz')
  tf_dsr.save_sparse(model, path)
  with np.load(path) as archive:
    payload = sum(archive[k].nbytes for k in archive.files if k.startswith('w'))
  assert payload == stored.model_compact


def test_snfs_momentum_is_stored_and_used_after_loading(tmp_path):
  model = sparse_tiny_cnn(sparsity=0.8)
  x, y = tiny_data()
  model.fit(x, y, batch_size=16, epochs=2, verbose=0,
            callbacks=[tf_dsr.ReallocationCallback(method='snfs', seed=0)])
  momentum = [v.numpy() for v in model.dynamic_sparsity_state.dense_momentum]
  assert any(m.any() for m in momentum)
  path = str(tmp_path / 'm.npz')
  tf_dsr.save_sparse(model, path)
  target = tf_dsr.load_sparse(path, model=_fresh())
  loaded = target.dynamic_sparsity_state.dense_momentum
  for a, b in zip(loaded, momentum):
    np.testing.assert_array_equal(a.numpy(), b)
  cb = tf_dsr.ReallocationCallback(method='snfs', seed=0)
  target.fit(x, y, batch_size=16, epochs=1, verbose=0, callbacks=[cb])
  # The Reallocator took the loaded variables rather than new zeros.
  assert target.dynamic_sparsity_state.dense_momentum[0] is loaded[0]
  assert len(cb.history) == 1
