"""Input pipelines: the paper's augmentation and evaluation preprocessing.

Datasets: `cifar10`, `imagenet2012` and `mnist` through tensorflow_datasets
(prepared beforehand in `data_dir`; nothing is downloaded here), and `digits`,
scikit-learn's 8x8 handwritten digits, which ship with the package.

Determinism contract: the training stream is infinite and epoch `e`'s batches
are a pure function of `(seed, e)`: a stateless shuffle keyed by both and
stateless augmentation keyed by `(seed, e, position)`, independent of
TensorFlow's global seed. A run resumed at epoch `e`, step `k` (part-way
through the epoch, from a mid-epoch backup) therefore sees exactly the batches
an uninterrupted run sees from there on.
Batches are global: under a distribution strategy Keras splits each one across
the replicas (and, with several workers, each worker keeps its share of the
same global stream).
"""

import dataclasses
from typing import Callable, Tuple

import numpy as np
from sklearn import datasets
from sklearn import model_selection
import tensorflow as tf
import tensorflow_datasets as tfds

from launch.errors import LaunchError

AUTOTUNE = tf.data.AUTOTUNE
_CIFAR_MEAN, _CIFAR_STD = (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)
_MNIST_MEAN, _MNIST_STD = (0.1307,), (0.3081,)
_IMAGENET_MEAN = (0.485 * 255, 0.456 * 255, 0.406 * 255)
_IMAGENET_STD = (0.229 * 255, 0.224 * 255, 0.225 * 255)
_IMAGENET_SIZE = 224


@dataclasses.dataclass(frozen=True)
class Source:
  """A dataset before batching: examples and how to preprocess them.

  Attributes:
    train: unbatched (raw image, int32 label) training examples.
    eval: unbatched (raw image, int32 label) evaluation examples.
    num_train: number of training examples.
    num_eval: number of evaluation examples.
    num_classes: number of labels.
    input_shape: shape of one preprocessed image.
    train_map: (image, label, seed) -> (image, label) with augmentation; `seed`
      is an int64 [2] tensor for stateless random ops.
    eval_map: (image, label) -> (image, label).
  """
  train: tf.data.Dataset
  eval: tf.data.Dataset
  num_train: int
  num_eval: int
  num_classes: int
  input_shape: Tuple[int, ...]
  train_map: Callable
  eval_map: Callable


@dataclasses.dataclass(frozen=True)
class Data:
  """Batched pipelines for `model.fit` and `model.evaluate`.

  Attributes:
    train: infinite stream of global training batches (see the module's
      determinism contract); pass `steps_per_epoch` to `fit`.
    eval: finite evaluation batches.
    steps_per_epoch: training steps per epoch.
    num_train: training examples in the dataset.
    eval_examples: evaluation examples `eval` yields.
    num_classes: number of labels.
    input_shape: shape of one input image.
    initial_epoch: the epoch `train` starts in.
    initial_step: the batch of `initial_epoch` it starts at.
  """
  train: tf.data.Dataset
  eval: tf.data.Dataset
  steps_per_epoch: int
  num_train: int
  eval_examples: int
  num_classes: int
  input_shape: Tuple[int, ...]
  initial_epoch: int = 0
  initial_step: int = 0


def _normalize(image, mean, std):
  return (tf.cast(image, tf.float32) - mean) / std


def _label(label):
  return tf.cast(label, tf.int32)


# ------------------------------------------------------------- preprocessing
def cifar_train_map(image, label, seed):
  """Normalize, pad 4 (reflect), random 32x32 crop, random horizontal flip."""
  image = _normalize(tf.cast(image, tf.float32) / 255.0, _CIFAR_MEAN, _CIFAR_STD)
  image = tf.pad(image, [[4, 4], [4, 4], [0, 0]], mode='REFLECT')
  crop_seed, flip_seed = tf.unstack(tf.random.experimental.stateless_split(seed, 2))
  image = tf.image.stateless_random_crop(image, [32, 32, 3], crop_seed)
  return tf.image.stateless_random_flip_left_right(image, flip_seed), _label(label)


def cifar_eval_map(image, label):
  image = _normalize(tf.cast(image, tf.float32) / 255.0, _CIFAR_MEAN, _CIFAR_STD)
  return image, _label(label)


def mnist_eval_map(image, label):
  image = _normalize(tf.cast(image, tf.float32) / 255.0, _MNIST_MEAN, _MNIST_STD)
  return image, _label(label)


def digits_eval_map(image, label):
  return image / 16.0, _label(label)  # Pixel values are 0..16.


def imagenet_train_map(image_bytes, label, seed, size=_IMAGENET_SIZE):
  """Random-resized crop (area 8%-100%, aspect 3/4-4/3) to `size`, random flip."""
  box_seed, flip_seed = tf.unstack(tf.random.experimental.stateless_split(seed, 2))
  shape = tf.io.extract_jpeg_shape(image_bytes)
  begin, crop, _ = tf.image.stateless_sample_distorted_bounding_box(
      shape, bounding_boxes=tf.constant([0.0, 0.0, 1.0, 1.0], shape=[1, 1, 4]),
      seed=box_seed, min_object_covered=0.0, aspect_ratio_range=(3 / 4, 4 / 3),
      area_range=(0.08, 1.0), max_attempts=10,
      use_image_if_no_bounding_boxes=True)
  window = tf.stack([begin[0], begin[1], crop[0], crop[1]])
  image = tf.io.decode_and_crop_jpeg(image_bytes, window, channels=3)
  image = tf.image.resize(image, [size, size], method='bilinear')
  image = tf.image.stateless_random_flip_left_right(image, flip_seed)
  return _normalize(image, _IMAGENET_MEAN, _IMAGENET_STD), _label(label)


def imagenet_eval_map(image_bytes, label, size=_IMAGENET_SIZE):
  """Resize the shorter side to size * 256 / 224, then a central size x size crop."""
  image = tf.io.decode_jpeg(image_bytes, channels=3)
  height, width = tf.unstack(tf.cast(tf.shape(image)[:2], tf.float32))
  scale = round(size * 256 / 224) / tf.minimum(height, width)
  new_h = tf.cast(tf.round(height * scale), tf.int32)
  new_w = tf.cast(tf.round(width * scale), tf.int32)
  image = tf.image.resize(image, tf.stack([new_h, new_w]), method='bilinear')
  top, left = (new_h - size) // 2, (new_w - size) // 2
  image = tf.ensure_shape(image[top:top + size, left:left + size], [size, size, 3])
  return _normalize(image, _IMAGENET_MEAN, _IMAGENET_STD), _label(label)


# ------------------------------------------------------------------ sources
def prepare_command(dataset, data_dir=None):
  """The shell command that prepares tfds `dataset` in `data_dir`."""
  text = (f'python -m launch.prepare_data --dataset={dataset} '
          f'--data_dir={data_dir or "DATA_DIR"}')
  if dataset == 'imagenet2012':
    text += ' --manual_dir=DIR_WITH_ILSVRC2012_TARS'
  return text


def _prepare_hint(name, data_dir):
  where = data_dir or '~/tensorflow_datasets (or $TFDS_DATA_DIR)'
  text = f'Prepare it once with: {prepare_command(name, data_dir)}'
  if name == 'imagenet2012':
    text += (' (download ILSVRC2012_img_train.tar and ILSVRC2012_img_val.tar '
             'from image-net.org into that directory first)')
  return text + f'. The data_dir searched was {where}.'


def _tfds_split(name, split, data_dir, **kwargs):
  """Loads a prepared tfds split and its size, or raises LaunchError."""
  builder = tfds.builder(name, data_dir=data_dir)
  try:
    dataset = builder.as_dataset(split=split, shuffle_files=False, **kwargs)
  except (AssertionError, FileNotFoundError, tf.errors.NotFoundError) as error:
    raise LaunchError(f'dataset {name!r} is not prepared in --data_dir '
                      f'({type(error).__name__}: {str(error).splitlines()[0]}). '
                      + _prepare_hint(name, data_dir)) from None
  size = int(dataset.cardinality())
  if size < 0:
    size = builder.info.splits[split].num_examples
  return dataset, size


def _tfds_source(name, data_dir, splits, num_classes, input_shape, train_map,
                 eval_map, cache):
  train, num_train = _tfds_split(name, splits[0], data_dir, as_supervised=True)
  evaluation, num_eval = _tfds_split(name, splits[1], data_dir,
                                     as_supervised=True)
  if cache:  # Small datasets: keep the raw uint8 images in memory.
    train, evaluation = train.cache(), evaluation.cache()
  return Source(train, evaluation, num_train, num_eval, num_classes,
                input_shape, train_map, eval_map)


def _cifar10(config, data_dir):
  train_map = cifar_train_map if config.augment else (
      lambda image, label, seed: cifar_eval_map(image, label))
  return _tfds_source('cifar10', data_dir, ('train', 'test'), 10, (32, 32, 3),
                      train_map, cifar_eval_map, cache=True)


def _mnist(config, data_dir):
  del config  # No augmentation for MNIST (configs reject augment=true).
  return _tfds_source('mnist', data_dir, ('train', 'test'), 10, (28, 28, 1),
                      lambda image, label, seed: mnist_eval_map(image, label),
                      mnist_eval_map, cache=True)


def _imagenet2012(config, data_dir):
  size = config.image_size or _IMAGENET_SIZE
  decoders = {'image': tfds.decode.SkipDecoding()}  # Decode only the crop.
  splits = []
  for split in ('train', 'validation'):
    dataset, count = _tfds_split('imagenet2012', split, data_dir,
                                 decoders=decoders)
    splits.append((dataset.map(lambda ex: (ex['image'], ex['label'])), count))
  if config.augment:
    train_map = lambda image, label, seed: imagenet_train_map(image, label, seed,
                                                              size)
  else:
    train_map = lambda image, label, seed: imagenet_eval_map(image, label, size)
  return Source(splits[0][0], splits[1][0], splits[0][1], splits[1][1], 1000,
                (size, size, 3), train_map,
                lambda image, label: imagenet_eval_map(image, label, size))


def _digits(config, data_dir):
  """scikit-learn's digits: 1,347 training and 450 test images (stratified)."""
  del config, data_dir
  digits = datasets.load_digits()
  images = digits.images.astype(np.float32)[..., None]
  x_train, x_test, y_train, y_test = model_selection.train_test_split(
      images, digits.target, test_size=0.25, random_state=0,
      stratify=digits.target)
  return Source(tf.data.Dataset.from_tensor_slices((x_train, y_train)),
                tf.data.Dataset.from_tensor_slices((x_test, y_test)),
                len(x_train), len(x_test), 10, (8, 8, 1),
                lambda image, label, seed: digits_eval_map(image, label),
                digits_eval_map)


_SOURCES = {
    'cifar10': _cifar10,
    'digits': _digits,
    'imagenet2012': _imagenet2012,
    'mnist': _mnist,
}


def source(config, data_dir=None):
  """The unbatched `Source` of `config.dataset`, or a LaunchError saying how to prepare it."""
  if config.dataset not in _SOURCES:
    raise LaunchError(f'unknown dataset {config.dataset!r}; valid datasets are '
                      f'{list(_SOURCES)}.')
  return _SOURCES[config.dataset](config, data_dir)


# ----------------------------------------------------------------- pipelines
def _options():
  options = tf.data.Options()
  options.deterministic = True
  # Each worker reads the same global stream and keeps its replicas' share.
  options.experimental_distribute.auto_shard_policy = (
      tf.data.experimental.AutoShardPolicy.DATA)
  return options


def shuffle_blocks(examples, block_size, key):
  """Permutes `examples` within consecutive blocks of `block_size`.

  A dataset that fits in one block gets a uniform random permutation. The
  permutation is stateless (seeded by `key` and the block's position), so it
  is the same in every process and independent of TensorFlow's global seed.
  tfds writes its records in a shuffled order, so for a dataset larger than a
  block (ImageNet) each block is itself a random sample of the data.

  Args:
    examples: a `tf.data.Dataset` of fixed-rank elements.
    block_size: examples per block (the shuffle buffer).
    key: int64 [2] seed tensor.

  Returns:
    The shuffled dataset.
  """
  def permute(index, block):
    size = tf.shape(tf.nest.flatten(block)[0])[0]
    keys = tf.random.stateless_uniform(
        [size], tf.random.experimental.stateless_fold_in(key, index))
    order = tf.argsort(keys)
    return tf.nest.map_structure(lambda t: tf.gather(t, order), block)

  return examples.batch(block_size).enumerate().map(permute).unbatch()


def train_stream(src, batch_size, steps_per_epoch, seed, shuffle_buffer,
                 initial_epoch=0, initial_step=0):
  """Infinite global batches; epoch e's batches depend only on (seed, e).

  Args:
    src: a `Source`.
    batch_size: global batch size.
    steps_per_epoch: batches per epoch, at most the number of full batches
      (the rest of the epoch's examples are skipped).
    seed: non-negative int.
    shuffle_buffer: shuffle block in examples (see `shuffle_blocks`).
    initial_epoch: the first epoch the stream yields.
    initial_step: the first batch of `initial_epoch` it yields (a run resumed
      part-way through an epoch); the examples before it are skipped before
      preprocessing.

  Returns:
    A `tf.data.Dataset` of (images, labels) batches.
  """
  base_seed = tf.constant(seed, tf.int64)
  first_epoch = tf.constant(initial_epoch, tf.int64)
  skip_examples = tf.constant(initial_step * batch_size, tf.int64)

  def epoch_batches(epoch):
    key = tf.stack([base_seed, epoch])
    order_key = tf.random.experimental.stateless_fold_in(key, -1)
    examples = shuffle_blocks(src.train, shuffle_buffer, order_key).enumerate()
    # Positions (and so the augmentation seeds) are kept when skipping.
    examples = examples.skip(
        tf.where(tf.equal(epoch, first_epoch), skip_examples, 0))
    examples = examples.map(
        lambda i, example: src.train_map(
            *example, tf.random.experimental.stateless_fold_in(key, i)),
        num_parallel_calls=AUTOTUNE, deterministic=True)
    steps = tf.where(tf.equal(epoch, first_epoch),
                     tf.constant(steps_per_epoch - initial_step, tf.int64),
                     tf.constant(steps_per_epoch, tf.int64))
    return examples.batch(batch_size, drop_remainder=True).take(steps)

  stream = tf.data.Dataset.counter(initial_epoch).flat_map(epoch_batches)
  return stream.prefetch(AUTOTUNE).with_options(_options())


def eval_batches(src, batch_size, steps=None, drop_remainder=False):
  """Finite global evaluation batches (at most `steps` of them)."""
  batches = src.eval.map(src.eval_map, num_parallel_calls=AUTOTUNE,
                         deterministic=True)
  batches = batches.batch(batch_size, drop_remainder=drop_remainder)
  if steps is not None:
    batches = batches.take(steps)
  return batches.prefetch(AUTOTUNE).with_options(_options())


def load(config, data_dir=None, initial_epoch=0, drop_remainder=False,
         initial_step=0):
  """The training stream and evaluation batches of `config`.

  Args:
    config: an `ExperimentConfig` (dataset, batch_size, augment, seed,
      shuffle_buffer, steps_per_epoch, eval_steps, image_size).
    data_dir: tfds data directory (None: tfds' default).
    initial_epoch: first epoch of the training stream (a resumed run's).
    drop_remainder: drop the last partial evaluation batch (TPUs need static
      shapes).
    initial_step: first batch of `initial_epoch` (a run resumed part-way
      through an epoch); the number of steps per epoch means the start of
      the next epoch.

  Returns:
    A `Data`.

  Raises:
    LaunchError: when the dataset is not prepared, or the batch or step counts
      do not fit its size.
  """
  src = source(config, data_dir)
  full_steps = src.num_train // config.batch_size
  if full_steps < 1:
    raise LaunchError(f'batch_size {config.batch_size} is larger than the '
                      f'{src.num_train} training examples of {config.dataset!r}.')
  steps = config.steps_per_epoch or full_steps
  if steps > full_steps:
    raise LaunchError(f'steps_per_epoch {steps} exceeds the {full_steps} full '
                      f'batches of {config.batch_size} in {config.dataset!r}.')
  eval_full = (src.num_eval // config.batch_size if drop_remainder else
               -(-src.num_eval // config.batch_size))
  eval_steps = min(config.eval_steps or eval_full, eval_full)
  if eval_steps < 1:
    raise LaunchError(f'no evaluation batch of {config.batch_size} fits the '
                      f'{src.num_eval} evaluation examples of {config.dataset!r}.')
  eval_examples = min(eval_steps * config.batch_size, src.num_eval)
  if initial_step >= steps:  # A backup taken after an epoch's last batch.
    initial_epoch, initial_step = initial_epoch + 1, 0
  return Data(
      train=train_stream(src, config.batch_size, steps, config.seed,
                         config.shuffle_buffer, initial_epoch, initial_step),
      eval=eval_batches(src, config.batch_size, eval_steps, drop_remainder),
      steps_per_epoch=steps, num_train=src.num_train,
      eval_examples=eval_examples, num_classes=src.num_classes,
      input_shape=src.input_shape, initial_epoch=initial_epoch,
      initial_step=initial_step)
