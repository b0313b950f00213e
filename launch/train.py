"""Trains one named experiment: `python -m launch.train --config=NAME --model_dir=DIR`.

  python -m launch.train --config=wrn28_2_cifar10_dsr_s0.9 --model_dir=runs/wrn_dsr_s0.9
  python -m launch.train --config=small_cnn_digits_dsr --model_dir=/tmp/run \
      --override epochs=2 --override batch_size=64
  python -m launch.train --config=wrn28_2_cifar10_dsr_s0.9 --model_dir=runs/wrn_dsr_s0.9 --resume
  # The same in Keras 3 (dense, static, dsr, set; launch.keras3_outputs).
  python -m launch.train --config=small_cnn_digits_dsr --model_dir=/tmp/run_k3 \
      --override keras=keras3
  # Preemptible machines: back up every 500 steps; a restart loses at most 500.
  python -m launch.train --config=resnet50_imagenet_dsr_s0.9 --model_dir=runs/r50 \
      --backup_steps=500 --resume
  # Several workers: TF_CONFIG on each; --digest_dir logs per-worker digests.
  TF_CONFIG=... python -m launch.train --config=small_cnn_digits_dsr \
      --model_dir=/tmp/run --strategy=multi_worker --digest_dir=/tmp/digests

`python -m launch.configs` lists the configs; `--override key=value`
(repeatable) changes any of their fields. See `launch.outputs` for what is
written to `--model_dir`. Bad input (unknown config or key, a dataset that is
not prepared, `--resume` with no checkpoint, no TPU) prints `error: ...` and
exits with status 2 before anything is written; an unknown config name, an
unusable --model_dir or a malformed TF_CONFIG (or --resume of a model
directory that does not exist) is reported before TensorFlow is even imported. A multi-worker run that loses
a worker stops every other worker within seconds with `error: ...` and status
1; restart all of them with `--resume`.

A run shows Keras' progress bar; `-v 1` (absl's `--verbosity`) adds one line
per reallocation (H, K and the active count). TensorFlow's own Python log stays
at WARNING either way.
"""

# First, before anything loads TensorFlow: quiets its start-up log.
from launch import quiet  # pylint: disable=unused-import,g-bad-import-order

import os
import sys

from absl import app
from absl import flags
from absl import logging

# Only what needs no TensorFlow: `main` imports the rest of the launcher (and
# TensorFlow) after `launch.precheck` has checked what it can.
from launch import precheck
from launch.errors import ClusterError
from launch.errors import LaunchError

FLAGS = flags.FLAGS
flags.DEFINE_string('config', None, 'Experiment config name (python -m '
                    'launch.configs lists them).')
flags.DEFINE_multi_string('override', [], 'key=value change to the config, '
                          'for example epochs=10; repeatable.')
flags.DEFINE_string('model_dir', None, 'Output directory: checkpoints, '
                    'TensorBoard logs, saved_model/, results.json.')
flags.DEFINE_string('data_dir', None, 'tensorflow_datasets data directory '
                    '(default: tfds\' own).')
flags.DEFINE_enum('strategy', 'default', precheck.STRATEGIES,
                  'Distribution strategy.')
flags.DEFINE_string('tpu', 'local', 'With --strategy=tpu: "local" on a TPU VM, '
                    'or the TPU name for a pod slice.')
flags.DEFINE_string('digest_dir', None, 'If set, every process appends '
                    'digests of its masks, H and weights after each '
                    'reallocation to DIR/worker-<task>.jsonl (launch.digests).')
flags.DEFINE_integer('backup_steps', 0, 'Also back up the run every N steps '
                     '(and at each epoch end) with Keras BackupAndRestore, so '
                     'that --resume continues mid-epoch after a preemption; 0: '
                     'epoch checkpoints only.', lower_bound=0)
flags.DEFINE_bool('resume', False, 'Continue the run in --model_dir from its '
                  'last checkpoint.')


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'unexpected arguments: {argv[1:]}')
  # absl's -v picks our reallocation lines; TensorFlow's INFO lines stay out.
  log_reallocations = FLAGS.verbosity >= 1
  logging.set_verbosity(logging.WARNING)
  try:
    # A model directory it cannot use, --resume of a run that does not
    # exist, a malformed TF_CONFIG or an unknown config name is reported in
    # well under a second: before TensorFlow is imported.
    precheck.check_command_line(FLAGS.model_dir, FLAGS.strategy,
                                FLAGS.resume, config=FLAGS.config)
    from launch import runner  # pylint: disable=g-import-not-at-top
    config = runner.resolve(FLAGS.config, FLAGS.override)
    runner.run(config, model_dir=FLAGS.model_dir, data_dir=FLAGS.data_dir,
               strategy=FLAGS.strategy, tpu=FLAGS.tpu, resume=FLAGS.resume,
               overrides=FLAGS.override, digest_dir=FLAGS.digest_dir,
               backup_steps=FLAGS.backup_steps,
               log_reallocations=log_reallocations)
  except LaunchError as error:
    print(f'error: {error}', file=sys.stderr)
    sys.exit(2)
  except ClusterError as error:
    print(f'error: {error}', file=sys.stderr)
    # Exit at once, without the interpreter's teardown: with the cluster
    # gone, the collective runtime's threads can block it, and objects
    # collected then failed on closed pipes (a `multiprocessing.pool`
    # finalizer printed `OSError: [Errno 9] Bad file descriptor` with a
    # traceback after the message). Checkpoints and backups are written
    # synchronously and the log streams are flushed here; only TensorBoard
    # events since its last flush (each epoch's end) are dropped, and the
    # resumed run writes that epoch's again.
    logging.flush()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(1)  # pylint: disable=protected-access


if __name__ == '__main__':
  flags.mark_flags_as_required(['config', 'model_dir'])
  app.run(main)
