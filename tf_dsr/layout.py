"""The flat index space of a model's sparse tensors.

A reallocation acts on every sparse tensor of a model at once. Instead of one
piece of program per tensor, tf_dsr lays all of them end to end in one flat
vector, each a contiguous *segment* padded with inactive entries to a
multiple of `ROW` entries. Per-tensor quantities are then vectors of length
`T` (the number of tensors), and the whole reallocation is a program whose
size does not depend on `T` except for reading and writing the variables:
it traces and compiles in the same time for 2 tensors or 200.

Because segments are whole rows of a `[num_rows, ROW]` view, per-tensor sums
are a row reduction (a matmul, which runs at memory speed on CPU) followed by
a segment sum over rows, and a per-tensor value is broadcast to every entry
by gathering it per row. No weight-sized segment-id vector is ever stored.

Contract shared by this file: tensors in, tensors out; static shapes; every
function compiles with XLA.
"""

import dataclasses
import math
from typing import Tuple

import tensorflow as tf

#: Entries per row of the flat space; every segment starts on a row.
ROW = 128
# Codes of `count`: up to three flags per entry packed in one float32, whose
# row sums (at most ROW * 65793 < 2**24) stay exact.
_BASES = (1.0, 256.0, 65536.0)


def block_ids(block_sizes):
  """int32: the index of the block of each element, blocks laid end to end.

  Built in the program (a scatter of block starts and a cumsum), so no
  constant as long as the blocks is stored in the graph.

  Args:
    block_sizes: Python ints, each at least 1.
  """
  total = sum(block_sizes)
  starts, position = [], 0
  for size in block_sizes[:-1]:
    position += size
    starts.append(position)
  if not starts:
    return tf.zeros([total], tf.int32)
  marks = tf.scatter_nd(tf.constant(starts, tf.int32)[:, None],
                        tf.ones([len(starts)], tf.int32), [total])
  return tf.cumsum(marks)


@dataclasses.dataclass(frozen=True)
class Layout:
  """Where each sparse tensor lives in the flat index space.

  Attributes:
    names: one unique name per tensor (`layer/kernel`).
    shapes: the tensors' shapes.
    sparsities: each tensor's configured initial sparsity (sizes the random
      draws of the regrowth; never affects which entries are chosen).
  """
  names: Tuple[str, ...]
  shapes: Tuple[Tuple[int, ...], ...]
  sparsities: Tuple[float, ...]

  def __post_init__(self):
    if not self.names:
      raise ValueError('A layout needs at least one sparse tensor.')
    if len(set(self.names)) != len(self.names):
      raise ValueError(f'Sparse tensor names must be unique, got {self.names}.')

  @property
  def num_tensors(self):
    return len(self.names)

  @property
  def sizes(self):
    """Entries per tensor (without padding)."""
    return tuple(math.prod(shape) for shape in self.shapes)

  @property
  def rows(self):
    """Rows per segment."""
    return tuple(-(-size // ROW) for size in self.sizes)

  @property
  def starts(self):
    """First flat index of each segment."""
    starts, position = [], 0
    for rows in self.rows:
      starts.append(position)
      position += rows * ROW
    return tuple(starts)

  @property
  def num_rows(self):
    return sum(self.rows)

  @property
  def size(self):
    """Length of the flat space, padding included."""
    return self.num_rows * ROW

  # ------------------------------------------------------------ moving data
  def flatten(self, tensors, padding=0):
    """Lays `tensors` (one per segment) end to end, padded with `padding`."""
    pieces = []
    for tensor, size, rows in zip(tensors, self.sizes, self.rows):
      pieces.append(tf.reshape(tensor, [-1]))
      if rows * ROW > size:
        pieces.append(tf.fill([rows * ROW - size],
                              tf.constant(padding, tensor.dtype)))
    return tf.concat(pieces, 0) if len(pieces) > 1 else pieces[0]

  def unflatten(self, flat):
    """The segments of `flat`, each reshaped to its tensor's shape."""
    return [tf.reshape(flat[start:start + size], shape)
            for start, size, shape in zip(self.starts, self.sizes, self.shapes)]

  # ------------------------------------------------------ per-tensor values
  def row_segments(self):
    """int32 `[num_rows]`: the segment of each row, built in the program."""
    return block_ids(self.rows)

  def broadcast(self, values, row_segments=None):
    """Each segment's entry of the `[T]` vector `values`, at every flat index."""
    if row_segments is None:
      row_segments = self.row_segments()
    per_row = tf.gather(values, row_segments)
    return tf.reshape(tf.broadcast_to(per_row[:, None], [self.num_rows, ROW]),
                      [-1])

  def count(self, *flags, row_segments=None):
    """The number of True entries of each bool flat tensor, per segment.

    Up to three flags are counted in one pass (one matmul).

    Returns:
      One int64 `[T]` vector per flag.
    """
    if not 1 <= len(flags) <= len(_BASES):
      raise ValueError(f'count takes 1 to {len(_BASES)} flags, got {len(flags)}.')
    if row_segments is None:
      row_segments = self.row_segments()
    code = sum(base * tf.cast(flag, tf.float32)
               for base, flag in zip(_BASES, flags))
    rows = tf.matmul(tf.reshape(code, [self.num_rows, ROW]),
                     tf.ones([ROW, 1], tf.float32))[:, 0]
    rows = tf.cast(rows, tf.int64)
    # Decode per row (each count <= ROW < 256), then sum rows per segment.
    parts = tf.stack([rows // int(base) % 256 for base in _BASES[:len(flags)]],
                     axis=1)
    totals = tf.math.unsorted_segment_sum(parts, row_segments,
                                          self.num_tensors)
    return tuple(totals[:, i] for i in range(len(flags)))

  def segment_sum(self, flat, row_segments=None):
    """The sum of each segment of a float flat tensor (float32 row sums)."""
    if row_segments is None:
      row_segments = self.row_segments()
    rows = tf.reduce_sum(tf.reshape(flat, [self.num_rows, ROW]), axis=1)
    return tf.math.unsorted_segment_sum(rows, row_segments, self.num_tensors)

  def segment_max(self, flat, row_segments=None):
    """The largest entry of each segment of a float flat tensor."""
    if row_segments is None:
      row_segments = self.row_segments()
    rows = tf.reduce_max(tf.reshape(flat, [self.num_rows, ROW]), axis=1)
    return tf.math.unsorted_segment_max(rows, row_segments, self.num_tensors)

  def segment_min(self, flat, row_segments=None):
    """The smallest entry of each segment of a numeric flat tensor."""
    if row_segments is None:
      row_segments = self.row_segments()
    rows = tf.reduce_min(tf.reshape(flat, [self.num_rows, ROW]), axis=1)
    return tf.math.unsorted_segment_min(rows, row_segments, self.num_tensors)
