"""The profile summary of `benchmarks.reallocation_profile`, on a hand-built profile."""

import argparse
import importlib

import pytest

from tensorflow.tsl.profiler.protobuf import xplane_pb2  # pylint: disable=g-direct-tensorflow-import


def _profile_module(monkeypatch):
  # The module adds XLA's profiling flag to XLA_FLAGS when it is missing;
  # here it is present (and restored after the test), so the test process's
  # environment is left as it was.
  monkeypatch.setenv('XLA_FLAGS', '--xla_cpu_enable_xprof_traceme=true')
  return importlib.import_module('benchmarks.reallocation_profile')


def test_operation_times_sums_tensorflow_ops_by_type_and_xla_ops_by_name(
    monkeypatch):
  profile = _profile_module(monkeypatch)
  space = xplane_pb2.XSpace()
  plane = space.planes.add(name='/host:CPU')
  for key, name in {1: 'Mul_3:Mul', 2: 'Mul_7:Mul', 3: 'fusion.2',
                    4: 'ExecutorState::Process', 5: 'cond.8',
                    6: 'program', 7: 'SelectV2_1:SelectV2'}.items():
    plane.event_metadata[key].name = name
  ms = 10**9  # picoseconds
  compute = plane.lines.add(name='tf_Compute/-1')
  for key, duration in [(1, 2 * ms), (2, 4 * ms), (4, 50 * ms), (7, 1 * ms)]:
    compute.events.add(metadata_id=key, duration_ps=duration)
  eigen = plane.lines.add(name='tf_numa_-1_Eigen/-2')
  for key, duration in [(3, 3 * ms), (3, 5 * ms), (5, 40 * ms)]:
    eigen.events.add(metadata_id=key, duration_ps=duration)
  # The Python thread's events (the tf.function's own span) are not ops.
  plane.lines.add(name='python').events.add(metadata_id=6,
                                            duration_ps=90 * ms)

  rows = profile.operation_times(space, calls=2)

  # Per call: Mul (2 + 4) / 2, fusion.2 (3 + 5) / 2, SelectV2 1 / 2; the
  # runtime's spans, the conditional (which holds other ops) and Python's
  # span are left out.
  assert rows == [('XLA', 'fusion.2', 4.0), ('TensorFlow', 'Mul', 3.0),
                  ('TensorFlow', 'SelectV2', 0.5)]


def test_counts_must_be_whole_numbers_of_at_least_one(monkeypatch):
  profile = _profile_module(monkeypatch)
  assert profile._positive_int('3') == 3  # pylint: disable=protected-access
  for bad in ('0', '-2', '1.5', 'x'):
    with pytest.raises(argparse.ArgumentTypeError, match=repr(bad)):
      profile._positive_int(bad)  # pylint: disable=protected-access
