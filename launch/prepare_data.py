"""Prepares a tfds dataset for `launch.train` (the one step that downloads).

  python -m launch.prepare_data --dataset=cifar10 --data_dir=DATA_DIR
  python -m launch.prepare_data --dataset=imagenet2012 --data_dir=DATA_DIR \
      --manual_dir=DIR_WITH_ILSVRC2012_TARS

ImageNet cannot be downloaded automatically: put ILSVRC2012_img_train.tar and
ILSVRC2012_img_val.tar (from image-net.org) in `--manual_dir` first. The
`digits` dataset ships with scikit-learn and needs no preparation.
"""

# First, before anything loads TensorFlow: quiets its start-up log.
from launch import quiet  # pylint: disable=unused-import,g-bad-import-order

import sys

from absl import app
from absl import flags
import tensorflow_datasets as tfds

from launch.errors import LaunchError

TFDS_DATASETS = ('cifar10', 'imagenet2012', 'mnist')

FLAGS = flags.FLAGS
flags.DEFINE_enum('dataset', None, TFDS_DATASETS, 'Dataset to prepare.')
flags.DEFINE_string('data_dir', None, 'tfds data directory (default: tfds\').')
flags.DEFINE_string('manual_dir', None, 'Directory with the ImageNet tars.')


def prepare(dataset, data_dir=None, manual_dir=None):
  """Downloads (or, for ImageNet, reads from `manual_dir`) and prepares `dataset`."""
  if dataset not in TFDS_DATASETS:
    raise LaunchError(f'unknown dataset {dataset!r}; valid: {list(TFDS_DATASETS)}.')
  if dataset == 'imagenet2012' and not manual_dir:
    raise LaunchError('imagenet2012 needs --manual_dir holding '
                      'ILSVRC2012_img_train.tar and ILSVRC2012_img_val.tar.')
  config = tfds.download.DownloadConfig(manual_dir=manual_dir)
  tfds.builder(dataset, data_dir=data_dir).download_and_prepare(
      download_config=config)


def main(argv):
  del argv
  try:
    prepare(FLAGS.dataset, FLAGS.data_dir, FLAGS.manual_dir)
  except LaunchError as error:
    print(f'error: {error}', file=sys.stderr)
    sys.exit(2)


if __name__ == '__main__':
  flags.mark_flag_as_required('dataset')
  app.run(main)
