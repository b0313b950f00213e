"""`launch.train` that kills itself with SIGKILL at a chosen point (for tests).

    python tests/preemption_run.py PHASE N SEED [launch.train flags...]

PHASE says where the process dies, at the N-th such event of this process
(SEED draws the random delays):

- `none`: never; a normal run.
- `step`: during a training step: a timer started as the N-th batch begins
  fires 0-20 ms later, while that step (or the next) runs.
- `reallocation`: during the N-th reallocation: a timer started as it begins
  fires 0-5 ms later, and if the reallocation finishes first the process dies
  as it returns, before anything can save its result.
- `backup_write` / `checkpoint_write`: during the N-th save of a mid-epoch
  backup / epoch checkpoint: a timer fires 0-10 ms into the write, and if the
  write finishes first the process dies as it returns.
- `backup_index` / `checkpoint_index`: the N-th save of a backup / epoch
  checkpoint dies after writing its files, just before the manager replaces
  its index file (the half-written state a resume must ignore).

Before dying it prints `[fault] SIGKILL <phase> <n>` to stderr.

With `--wait_for_stdin` as the first flag, the process imports TensorFlow
and the launcher, then waits for one line on stdin, a JSON list of further
flags, before it does anything else. A test can so start the next process of
a chain while the current one runs, and decide its last flags (`--resume`)
once the current one has ended.
"""

import json
import os
import random
import signal
import sys
import threading

import tensorflow as tf
from tensorflow.python.checkpoint import checkpoint_management
from absl import app

import tf_dsr
from tf_dsr import keras

from launch import train

PHASES = ('none', 'step', 'reallocation', 'backup_write', 'checkpoint_write',
          'backup_index', 'checkpoint_index')


def _die(phase, n):
  print(f'[fault] SIGKILL {phase} {n}', file=sys.stderr, flush=True)
  os.kill(os.getpid(), signal.SIGKILL)


def _die_later(phase, n, seconds):
  timer = threading.Timer(seconds, _die, (phase, n))
  timer.daemon = True
  timer.start()


def _nth(n):
  """A counter that is true exactly at its n-th call."""
  calls = [0]

  def hit():
    calls[0] += 1
    return calls[0] == n
  return hit


def install(phase, n, rng):
  """Patches the point `phase` so the process dies at its `n`-th event."""
  if phase == 'step':
    hit = _nth(n)
    original = keras.callbacks.CallbackList.on_train_batch_begin

    def on_train_batch_begin(self, batch, logs=None):
      if hit():
        _die_later(phase, n, rng.uniform(0, 0.02))
      return original(self, batch, logs)
    keras.callbacks.CallbackList.on_train_batch_begin = on_train_batch_begin

  elif phase == 'reallocation':
    hit = _nth(n)
    original = tf_dsr.Reallocator.reallocate

    def reallocate(self, *args, **kwargs):
      if not hit():
        return original(self, *args, **kwargs)
      _die_later(phase, n, rng.uniform(0, 0.005))
      original(self, *args, **kwargs)
      _die(phase, n)
    tf_dsr.Reallocator.reallocate = reallocate

  elif phase in ('backup_write', 'checkpoint_write', 'backup_index',
                 'checkpoint_index'):
    kind, moment = phase.split('_')
    hit = _nth(n)
    dying = threading.local()
    save = tf.train.CheckpointManager.save
    record = checkpoint_management.update_checkpoint_state_internal

    def is_kind(directory):
      in_backup = os.sep + 'backup' + os.sep in directory + os.sep
      return in_backup == (kind == 'backup')

    def manager_save(self, *args, **kwargs):
      if not (is_kind(self.directory) and hit()):
        return save(self, *args, **kwargs)
      if moment == 'write':
        _die_later(phase, n, rng.uniform(0, 0.01))
        save(self, *args, **kwargs)
        _die(phase, n)
      dying.now = True
      return save(self, *args, **kwargs)

    def update_state(*args, **kwargs):
      if getattr(dying, 'now', False):
        _die(phase, n)
      return record(*args, **kwargs)
    tf.train.CheckpointManager.save = manager_save
    checkpoint_management.update_checkpoint_state_internal = update_state

  elif phase != 'none':
    raise ValueError(f'unknown phase {phase!r}; valid phases are {PHASES}.')


def main():
  phase, n, seed = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
  flags = sys.argv[4:]
  if flags[:1] == ['--wait_for_stdin']:
    flags = flags[1:] + json.loads(sys.stdin.readline())
  install(phase, n, random.Random(seed))
  app.run(train.main, argv=['train'] + flags)


if __name__ == '__main__':
  main()
