"""Where one reallocation's time goes: CPU time per operation, inside and outside XLA.

For whoever makes the engine faster. It builds the sparse set of
`benchmarks.reallocation_cost` (ResNet-50's 49 tensors at sparsity 0.8, DSR
with N_p 400,000 and an SGD optimizer with Nesterov momentum, so the momentum
reset is included), runs a few untimed reallocations, then records `--calls`
more with TensorFlow's profiler and prints, per call, the CPU time of every
operation: TensorFlow kernels by op type (what runs outside XLA: slicing the
core's result per tensor, reading variables), XLA's compiled operations
(fusions, scatters, gathers, concatenations) by name; with `jit_compile`
False the core and the per-shape writes are separate XLA programs, and
operations of the same name in different programs are summed. Times are summed over threads, so they add
up to more than the wall time when operations run in parallel. XLA reports
its operations to the profiler only with `--xla_cpu_enable_xprof_traceme`,
which this program adds to `XLA_FLAGS` before TensorFlow loads.

    python -m benchmarks.reallocation_profile [--jit_compile default|true|false]
        [--method dsr|rigl] [--calls 5] [--top 30]
"""

import os

_FLAG = '--xla_cpu_enable_xprof_traceme=true'
if _FLAG not in os.environ.get('XLA_FLAGS', ''):
  os.environ['XLA_FLAGS'] = (os.environ.get('XLA_FLAGS', '') + ' ' +
                             _FLAG).strip()

# Before anything loads TensorFlow: quiets its start-up log.
from launch import quiet  # pylint: disable=unused-import,g-bad-import-order,g-import-not-at-top

import argparse  # pylint: disable=g-import-not-at-top,g-bad-import-order
import collections  # pylint: disable=g-import-not-at-top
import glob  # pylint: disable=g-import-not-at-top
import re  # pylint: disable=g-import-not-at-top
import tempfile  # pylint: disable=g-import-not-at-top

import tensorflow as tf  # pylint: disable=g-import-not-at-top
from tensorflow.tsl.profiler.protobuf import xplane_pb2  # pylint: disable=g-import-not-at-top,g-direct-tensorflow-import

import tf_dsr  # pylint: disable=g-import-not-at-top
from benchmarks import reallocation_cost  # pylint: disable=g-import-not-at-top

# XLA's operation names (`fusion.3`, `wrapped_scatter.4`, `concat.1`).
_HLO_NAME = re.compile(r'^[a-z][a-z0-9_\-]*(\.\d+)?$')
# Control-flow operations whose time includes the operations inside them.
_CONTAINERS = ('cond', 'conditional', 'while', 'call')


def operation_times(xspace, calls):
  """`[(kind, name, ms per call)]` from a profile, largest first.

  Args:
    xspace: an `XSpace` (the profiler's `*.xplane.pb`).
    calls: how many reallocations it recorded.

  Returns:
    kind is 'TensorFlow' (summed by op type) or 'XLA' (by operation name);
    XLA's control-flow operations, whose time contains their branches', are
    left out.
  """
  totals = collections.Counter()
  for plane in xspace.planes:
    names = plane.event_metadata
    for line in plane.lines:
      if line.name == 'python':
        continue
      for event in line.events:
        name = names[event.metadata_id].name
        if ':' in name and '::' not in name:  # `op_name:OpType`
          totals[('TensorFlow', name.rsplit(':', 1)[1])] += event.duration_ps
        elif _HLO_NAME.match(name) and name.split('.')[0] not in _CONTAINERS:
          totals[('XLA', name)] += event.duration_ps
  return [(kind, name, picoseconds / calls / 1e9)
          for (kind, name), picoseconds in totals.most_common()]


def _positive_int(text):
  """argparse type: an int of at least 1, or an error echoing the value."""
  try:
    value = int(text)
  except ValueError:
    value = 0
  if value < 1:
    raise argparse.ArgumentTypeError(
        f'must be a whole number of at least 1, got {text!r}')
  return value


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--jit_compile', choices=['default', 'true', 'false'],
                      default='default')
  parser.add_argument('--method', choices=['dsr', 'rigl'], default='dsr')
  parser.add_argument('--calls', type=_positive_int, default=5)
  parser.add_argument('--top', type=_positive_int, default=30)
  args = parser.parse_args()
  jit = {'default': None, 'true': True, 'false': False}[args.jit_compile]

  print('building ResNet-50 with its sparse set at sparsity 0.8 ...',
        flush=True)
  optimizer = tf_dsr.keras.optimizers.SGD(0.1, momentum=0.9, nesterov=True)
  model = reallocation_cost.build(0.8, optimizer)
  for wrapper in tf_dsr.collect_wrappers(model):
    for kernel, mask in wrapper.sparse_weights:
      kernel.assign(tf.random.normal(kernel.shape, stddev=0.02) *
                    tf.cast(mask, kernel.dtype))
  if args.method == 'dsr':
    reallocator = tf_dsr.Reallocator(model, target_pruned=400_000,
                                     optimizer=optimizer, jit_compile=jit)
  else:
    reallocator = tf_dsr.Reallocator(model, 'rigl', schedule='constant',
                                     optimizer=optimizer, jit_compile=jit)
    for value in reallocator.gradient_recorder.values:
      value.assign(tf.random.normal(value.shape))
  print(f'{args.method}, jit_compile={reallocator.jit_compile}: compiling and '
        'warming up (untimed) ...', flush=True)
  for _ in range(3):
    reallocator.reallocate()
  print(f'profiling {args.calls} reallocations ...', flush=True)
  with tempfile.TemporaryDirectory() as log_dir:
    tf.profiler.experimental.start(log_dir)
    for _ in range(args.calls):
      reallocator.reallocate()
    tf.profiler.experimental.stop()
    xspace = xplane_pb2.XSpace()
    path, = glob.glob(os.path.join(log_dir, '**', '*.xplane.pb'),
                      recursive=True)
    with open(path, 'rb') as f:
      xspace.ParseFromString(f.read())
  rows = operation_times(xspace, args.calls)
  total = sum(ms for _, _, ms in rows)
  for kind in ('TensorFlow', 'XLA'):
    print(f'{kind} operations: {sum(ms for k, _, ms in rows if k == kind):.1f}'
          ' ms of CPU time per call')
  print(f'{"where":<12}{"operation":<40}{"ms/call":>9}{"share":>8}')
  for kind, name, ms in rows[:args.top]:
    print(f'{kind:<12}{name[:39]:<40}{ms:>9.2f}{ms / total:>8.1%}')


if __name__ == '__main__':
  main()
