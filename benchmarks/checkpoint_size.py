"""Size of a compact sparse checkpoint vs the dense float32 checkpoint.

ResNet-50 with the paper's sparse set (the 48 bottleneck convs and the final
FC, 22,724,608 of its 25.6M weights) at sparsity 0.9 (`--sparsity`), freshly
initialised. The dense baselines are the stripped (plain Keras) model's
weights as a TensorFlow checkpoint and as `.weights.h5`; the compact files
are `tf_dsr.save_sparse` with float32 values (lossless), float16 and
bfloat16. Also printed: where the compact bytes go before the archive's
deflate (the masks' bits and constant weights such as batch-norm parameters
compress; random float bits hardly do).

    python -m benchmarks.checkpoint_size [--sparsity 0.9]
"""

import argparse
import os
import tempfile

import numpy as np

import tf_dsr
from benchmarks.reallocation_cost import build


def _size(directory, prefix):
  return sum(os.path.getsize(os.path.join(directory, name))
             for name in os.listdir(directory) if name.startswith(prefix))


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--sparsity', type=float, default=0.9)
  args = parser.parse_args()

  model = build(args.sparsity, None)
  report = tf_dsr.sparsity_report(model)
  dense = tf_dsr.strip_dynamic_sparsity(model)
  with tempfile.TemporaryDirectory() as directory:
    dense.save_weights(os.path.join(directory, 'dense_ckpt'))
    tf_size = _size(directory, 'dense_ckpt')
    h5 = os.path.join(directory, 'dense.weights.h5')
    dense.save_weights(h5)
    h5_size = os.path.getsize(h5)
    sizes = {}
    for dtype in (None, 'float16', 'bfloat16'):
      sizes[dtype or 'float32'] = tf_dsr.save_sparse(
          model, os.path.join(directory, f'{dtype}.npz'), values_dtype=dtype)
    # Batch-norm parameters start constant (deflate removes them); after
    # training they are not. Random ones show the lossless size of a
    # trained-like model.
    rng = np.random.default_rng(0)
    for weight in model.weights:
      short = weight.name.split('/')[-1].split(':')[0]
      if short in ('gamma', 'moving_variance'):
        weight.assign(1 + 0.1 * np.abs(rng.normal(size=weight.shape)))
      elif short in ('beta', 'moving_mean'):
        weight.assign(0.1 * rng.normal(size=weight.shape))
    trained_like = tf_dsr.save_sparse(model, os.path.join(directory, 'bn.npz'))
    # Check the lossless file really is lossless on this model.
    path = os.path.join(directory, 'bn.npz')
    loaded = tf_dsr.load_sparse(path, model=build(args.sparsity, None))
    x = np.random.default_rng(0).normal(size=(2, 224, 224, 3)).astype('float32')
    identical = bool((loaded(x).numpy() == model(x).numpy()).all())

  sparse, stored = report.tensors, report.stored_bytes
  values = 4 * report.sparse_active
  masks = stored.sparse_compact - values
  others = stored.model_dense - stored.sparse_dense
  print(f'ResNet-50, {len(sparse)} sparse tensors, {report.sparse_total:,} '
        f'sparse weights at sparsity {args.sparsity}: '
        f'{report.sparse_active:,} active; {others // 4:,} other weights')
  print(f'{"file":<48}{"bytes":>14}{"vs TF ckpt":>12}')
  rows = [('dense float32, TF checkpoint (stripped model)', tf_size),
          ('dense float32, .weights.h5 (stripped model)', h5_size)]
  rows += [(f'compact, {name} values', size) for name, size in sizes.items()]
  rows.append(('compact, float32, random batch-norm parameters', trained_like))
  for name, size in rows:
    print(f'{name:<48}{size:>14,}{size / tf_size:>12.2%}')
  print(f'lossless float32 compact file gives bit-identical predictions: '
        f'{identical}')
  print('compact float32 payload before deflate: active values '
        f'{values:,} ({values / tf_size:.2%}), masks {masks:,} '
        f'({masks / tf_size:.2%}), other weights {others:,} '
        f'({others / tf_size:.2%})')


if __name__ == '__main__':
  main()
