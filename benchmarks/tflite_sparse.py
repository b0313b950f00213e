"""TFLite inference time: dense MobileNet v1 vs sparse ones, one thread.

MobileNet v1 (224x224, alpha 1.0, random weights and batch-norm statistics)
with RigL's sparse policy (`models.sparse_kernel_layers(..., 'mobilenet_v1')`:
the 13 pointwise convs and the classifier) made sparse by `tf_dsr.sparsify`
at each `--sparsities`, stripped and converted by `tf_dsr.to_tflite` with
sparse weight storage (`tf.lite.Optimize.EXPERIMENTAL_SPARSITY`, which reads
the 1x1 conv weights through DENSIFY ops); the dense model is converted
without it. Each file runs in three Python interpreters with one thread:

- `xnnpack`: the default `tf.lite.Interpreter` (the XNNPACK delegate);
- `xnnpack+latest`: the same with `experimental_default_delegate_latest_features`,
  the only delegate option the Python interpreter exposes;
- `builtin`: TFLite's own kernels (`BUILTIN_WITHOUT_DEFAULT_DELEGATES`).

XNNPACK turns on its sparse inference (NCHW layout with sparse 1x1 convs,
Elsen et al., "Fast Sparse ConvNets", arXiv 1911.09723) by itself when a
delegated op reads a DENSIFY'd weight: there is no flag to set. It then runs
it only if its CPU check allows: on x86 it refuses every CPU with AVX (its
sparse kernels are SSE only), so on such a CPU all three columns run the
1x1 convs dense. The benchmark prints which case this CPU is.

Invocations are interleaved (a few of each file and interpreter in turn,
repeated) and medians compared, since the machine may be shared. Each
output is also checked against the Keras model's.

    python -m benchmarks.tflite_sparse [--sparsities 0.8 0.9] [--rounds 7]
"""

# First, before anything loads TensorFlow: quiets its start-up log.
from launch import quiet  # pylint: disable=unused-import,g-bad-import-order

import argparse
import statistics
import time
import warnings

import numpy as np
import tensorflow as tf

import tf_dsr
from models import mobilenet_v1
from models import sparse_kernel_layers

keras = tf_dsr.keras

_INTERPRETERS = {
    'xnnpack': {},
    'xnnpack+latest': dict(experimental_default_delegate_latest_features=True),
    'builtin': dict(experimental_op_resolver_type=(
        tf.lite.experimental.OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES)),
}


def _cpu_has_avx():
  """True / False from /proc/cpuinfo's flags; None where it cannot be read."""
  try:
    with open('/proc/cpuinfo', encoding='utf-8') as f:
      for line in f:
        if line.startswith('flags'):
          return 'avx' in line.split(':', 1)[1].split()
  except OSError:
    pass
  return None


def _randomize_batch_norm(model, rng):
  """Trained-like batch-norm statistics, so that folding them changes weights."""
  for layer in model.layers:
    if isinstance(layer, keras.layers.BatchNormalization):
      n = layer.gamma.shape[0]
      layer.gamma.assign(rng.uniform(0.5, 1.5, n))
      layer.beta.assign(0.1 * rng.normal(size=n))
      layer.moving_mean.assign(0.1 * rng.normal(size=n))
      layer.moving_variance.assign(rng.uniform(0.5, 1.5, n))


def build_files(sparsities, alpha, size):
  """`{label: (flatbuffer, keras model)}`: the dense model, then each sparsity."""

  def fresh():  # The same weights each time (sparsify zeroes them in place).
    keras.utils.set_random_seed(0)
    model = mobilenet_v1(alpha=alpha, input_shape=(size, size, 3))
    _randomize_batch_norm(model, np.random.default_rng(0))
    return model

  dense = fresh()
  names = set(sparse_kernel_layers(dense, 'mobilenet_v1'))
  files = {'dense': (tf_dsr.to_tflite(dense, sparse=False), dense)}
  for sparsity in sparsities:
    sparse = tf_dsr.sparsify(fresh(), sparsity,
                             exclude=lambda layer: layer.name not in names)
    stripped = tf_dsr.strip_dynamic_sparsity(sparse)
    files[f's{sparsity:g}'] = (tf_dsr.to_tflite(stripped), stripped)
  return files


class _Runner:
  """One interpreter on one flatbuffer, fed one fixed image."""

  def __init__(self, content, image, threads, **options):
    self.interpreter = tf.lite.Interpreter(model_content=content,
                                           num_threads=threads, **options)
    self.interpreter.allocate_tensors()
    self.interpreter.set_tensor(
        self.interpreter.get_input_details()[0]['index'], image)
    self.output = self.interpreter.get_output_details()[0]['index']

  def invoke(self):
    start = time.perf_counter()
    self.interpreter.invoke()
    return time.perf_counter() - start

  def result(self):
    return self.interpreter.get_tensor(self.output)


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--sparsities', type=float, nargs='+', default=[0.8, 0.9])
  parser.add_argument('--alpha', type=float, default=1.0)
  parser.add_argument('--size', type=int, default=224)
  parser.add_argument('--threads', type=int, default=1)
  parser.add_argument('--rounds', type=int, default=7)
  parser.add_argument('--invokes', type=int, default=10)
  args = parser.parse_args()
  warnings.filterwarnings('ignore', message='.*tf.lite.Interpreter is deprecated')

  print(f'building MobileNet v1 (alpha {args.alpha:g}, {args.size}x{args.size}) '
        f'dense and at sparsities {args.sparsities}, converting to TFLite ...',
        flush=True)
  files = build_files(args.sparsities, args.alpha, args.size)
  image = np.random.default_rng(1).normal(
      size=(1, args.size, args.size, 3)).astype('float32')
  runners, errors = {}, {}
  for label, (content, model) in files.items():
    expected = model(image, training=False).numpy()
    for kind, options in _INTERPRETERS.items():
      runner = _Runner(content, image, args.threads, **options)
      runner.invoke()  # Warm-up, untimed.
      errors[label, kind] = float(np.abs(runner.result() - expected).max())
      runners[label, kind] = runner
  times = {key: [] for key in runners}
  for round_index in range(args.rounds):
    print(f'round {round_index + 1}/{args.rounds}: timing {args.invokes} '
          f'invocations of each file in each interpreter ...', flush=True)
    for key, runner in runners.items():
      times[key] += [runner.invoke() for _ in range(args.invokes)]

  ms = {key: 1e3 * statistics.median(values) for key, values in times.items()}
  kinds = list(_INTERPRETERS)
  print(f'\nMobileNet v1 {args.alpha:g} {args.size}, batch 1, {args.threads} '
        f'thread(s), median of {args.rounds} x {args.invokes} interleaved '
        'invocations; ms, and in () dense time / this time in the same '
        'interpreter')
  print(f'{"file":<8}{"MB":>7}' + ''.join(f'{k:>22}' for k in kinds) +
        f'{"max |tflite - keras|":>22}')
  for label, (content, _) in files.items():
    cells = ''.join(
        f'{ms[label, k]:>13.2f} ({ms["dense", k] / ms[label, k]:.2f}x)'
        for k in kinds)
    error = max(errors[label, k] for k in kinds)
    print(f'{label:<8}{len(content) / 1e6:>7.2f}{cells}{error:>22.1e}')
  avx = _cpu_has_avx()
  if avx:
    print('\nThis CPU has AVX: XNNPACK does not run its sparse inference here '
          '(its x86 sparse kernels are SSE only, and it keeps AVX CPUs dense), '
          'so the sparse files run their 1x1 convs dense.')
  elif avx is None:
    print('\nCould not read the CPU flags: whether XNNPACK ran its sparse '
          'inference is unknown.')
  else:
    print('\nThis CPU has no AVX: XNNPACK may run the sparse files with its '
          'sparse inference.')


if __name__ == '__main__':
  main()
