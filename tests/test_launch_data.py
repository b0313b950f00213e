"""Tests for launch.data: preprocessing, determinism, sizes, missing data."""

import numpy as np
import pytest
import tensorflow as tf
import tensorflow_datasets as tfds

from launch import configs
from launch import data
from launch import overrides
from launch.errors import LaunchError


def _config(name, *items):
  return overrides.apply(configs.get(name), list(items))


def _batches(dataset, count):
  return [(x.numpy(), y.numpy()) for x, y in dataset.take(count)]


def test_shuffle_blocks_permutes_within_blocks():
  key = tf.constant([7, 1], tf.int64)
  values = [int(v) for v in data.shuffle_blocks(
      tf.data.Dataset.range(10), 4, key)]
  # Blocks [0..3], [4..7], [8, 9]: each permuted in place.
  assert sorted(values[:4]) == [0, 1, 2, 3]
  assert sorted(values[4:8]) == [4, 5, 6, 7]
  assert sorted(values[8:]) == [8, 9]
  again = [int(v) for v in data.shuffle_blocks(tf.data.Dataset.range(10), 4, key)]
  assert values == again  # Stateless: same key, same order.
  whole = [int(v) for v in data.shuffle_blocks(tf.data.Dataset.range(100), 100,
                                               key)]
  assert sorted(whole) == list(range(100)) and whole != list(range(100))


def test_cifar_train_map_is_a_padded_crop_and_maybe_a_flip():
  image = tf.random.stateless_uniform([32, 32, 3], [1, 2], maxval=256,
                                      dtype=tf.int32)
  image = tf.cast(image, tf.uint8)
  normalized, _ = data.cifar_eval_map(image, tf.constant(3))
  padded = np.pad(normalized.numpy(), [(4, 4), (4, 4), (0, 0)], mode='reflect')
  windows = [padded[i:i + 32, j:j + 32] for i in range(9) for j in range(9)]
  windows += [w[:, ::-1] for w in windows]
  flips = 0
  for seed in range(8):
    out, label = data.cifar_train_map(image, tf.constant(3, tf.int64),
                                      tf.constant([seed, 5], tf.int64))
    out = out.numpy()
    match = [k for k, w in enumerate(windows) if np.allclose(out, w)]
    assert match, f'seed {seed}: not a 32x32 window of the padded image'
    flips += match[0] >= 81
    assert label.dtype == tf.int32
  assert 0 < flips < 8  # Both flipped and unflipped crops occur.


def test_cifar_stream_is_deterministic_and_resumable():
  config = _config('wrn28_2_cifar10_dsr_s0.9', 'batch_size=4')
  with tfds.testing.mock_data(num_examples=12):
    full = data.load(config)
    assert full.steps_per_epoch == 3 and full.input_shape == (32, 32, 3)
    epochs = _batches(full.train, 9)  # Three epochs of three batches.
    again = _batches(data.load(config).train, 9)
    resumed = _batches(data.load(config, initial_epoch=1).train, 6)
    # From a mid-epoch backup: epoch 1 after its first two batches.
    mid_epoch = _batches(
        data.load(config, initial_epoch=1, initial_step=2).train, 4)
    evaluation = _batches(full.eval, 3)
  assert len(mid_epoch) == 4
  for (x, y), (x2, y2) in zip(epochs[5:], mid_epoch):  # Augmented alike.
    np.testing.assert_array_equal(x, x2)
    np.testing.assert_array_equal(y, y2)
  for (x, y), (x2, y2) in zip(epochs, again):
    np.testing.assert_array_equal(x, x2)
    np.testing.assert_array_equal(y, y2)
  for (x, y), (x2, y2) in zip(epochs[3:], resumed):
    np.testing.assert_array_equal(x, x2)
    np.testing.assert_array_equal(y, y2)
  assert epochs[0][0].shape == (4, 32, 32, 3) and epochs[0][0].dtype == np.float32
  assert epochs[0][1].dtype == np.int32
  # Every epoch is one permutation of the 12 labels, reshuffled each epoch.
  labels = [np.concatenate([y for _, y in epochs[3 * e:3 * e + 3]])
            for e in range(3)]
  assert sorted(labels[0]) == sorted(labels[1]) == sorted(labels[2])
  assert not np.array_equal(epochs[0][0], epochs[3][0])
  # Evaluation: the 12 examples in file order, normalized, not augmented.
  assert sum(len(y) for _, y in evaluation) == 12
  with tfds.testing.mock_data(num_examples=12):
    raw = next(iter(tfds.builder('cifar10').as_dataset(split='test',
                                                       as_supervised=True)))
  expected = (raw[0].numpy() / 255.0 - np.array([0.4914, 0.4822, 0.4465])) / (
      np.array([0.2470, 0.2435, 0.2616]))
  np.testing.assert_allclose(evaluation[0][0][0], expected, atol=1e-5)


def test_steps_per_epoch_takes_part_of_each_epoch():
  config = _config('wrn28_2_cifar10_dsr_s0.9', 'batch_size=4',
                   'steps_per_epoch=2')
  with tfds.testing.mock_data(num_examples=12):
    stream = _batches(data.load(config).train, 4)
    resumed = _batches(data.load(config, initial_epoch=1).train, 2)
  # Epoch 1 starts with its own first batch, not epoch 0's leftover third.
  for (x, _), (x2, _) in zip(stream[2:], resumed):
    np.testing.assert_array_equal(x, x2)
  with pytest.raises(LaunchError, match='steps_per_epoch 4 exceeds the 3'):
    with tfds.testing.mock_data(num_examples=12):
      data.load(overrides.apply(config, ['steps_per_epoch=4']))


def test_imagenet_preprocessing_shapes():
  config = _config('resnet50_imagenet_dsr_s0.9', 'batch_size=2',
                   'image_size=64', 'eval_steps=1')
  with tfds.testing.mock_data(num_examples=4):
    loaded = data.load(config, drop_remainder=True)
    (x, y), = _batches(loaded.train, 1)
    (ex, ey), = _batches(loaded.eval, 1)
  assert loaded.input_shape == (64, 64, 3) and loaded.eval_examples == 2
  assert x.shape == ex.shape == (2, 64, 64, 3)
  assert y.dtype == ey.dtype == np.int32 and (0 <= y).all() and (y < 1000).all()
  assert np.isfinite(x).all() and abs(float(ex.mean())) < 3


def test_digits_split():
  loaded = data.load(configs.get('lenet_digits_dsr'))
  assert (loaded.num_train, loaded.eval_examples) == (1347, 450)
  assert loaded.steps_per_epoch == 1347 // 32 and loaded.input_shape == (8, 8, 1)
  labels = np.concatenate([y.numpy() for _, y in loaded.eval])
  assert np.bincount(labels).min() >= 43  # Stratified: about 45 per class.
  x, _ = next(iter(loaded.train))
  assert 0.0 <= float(tf.reduce_min(x)) and float(tf.reduce_max(x)) <= 1.0


def test_missing_dataset_says_how_to_prepare(tmp_path):
  with pytest.raises(LaunchError) as info:
    data.load(configs.get('wrn28_2_cifar10_dsr_s0.9'), data_dir=str(tmp_path))
  message = str(info.value)
  assert "dataset 'cifar10' is not prepared" in message
  assert (f'python -m launch.prepare_data --dataset=cifar10 '
          f'--data_dir={tmp_path}') in message
  with pytest.raises(LaunchError, match='--manual_dir'):
    data.load(configs.get('resnet50_imagenet_dsr_s0.9'), data_dir=str(tmp_path))
