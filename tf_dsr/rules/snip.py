"""SNIP: the masks of `tf_dsr.snip`, kept static while training."""

import dataclasses

from tf_dsr.rules import base
from tf_dsr.rules import static


@base.register
@dataclasses.dataclass(frozen=True)
class SNIP(static.Static):
  """Single-shot network pruning: masks chosen once, then static.

  Lee et al., "SNIP: Single-shot Network Pruning based on Connection
  Sensitivity", ICLR 2019, https://arxiv.org/abs/1810.02340. The masks come
  from `tf_dsr.snip` (connection sensitivity `|g * w|` on one batch before
  training); training then keeps them, exactly like 'static'. The separate
  name labels reports. Its one dense gradient, before training, is
  negligible in the training FLOPs (`3 f_S` per step, as for 'static').
  No options.
  """
  name = 'snip'
  label = 'SNIP'
