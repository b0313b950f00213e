"""Keeps TensorFlow's removable start-up log lines out of the command-line tools.

Import this module before anything that imports TensorFlow (the entry points
of `launch/` and `benchmarks/` import it first). It sets one environment
default, and only if the variable is unset, so a user's own value wins:

- `TF_CPP_MIN_LOG_LEVEL=3`: TensorFlow's C++ log below FATAL. This removes
  the CPU-feature notice, the XLA service and compilation notices and, on a
  machine with CUDA libraries but no GPU, the `failed call to cuInit` error.
  The C++ errors it also hides reach Python as exceptions, which the tools
  print. `TF_CPP_MIN_LOG_LEVEL=0` shows everything again.

What no setting removes on TensorFlow 2.21: the shared libraries log, as they
load and before they read any setting, `WARNING: All log messages before
absl::InitializeLog() ...`, the oneDNN notice and, without CUDA, `Could not
find cuda drivers`, each twice (`TF_CPP_MIN_LOG_LEVEL`, `ABSL_MIN_LOG_LEVEL`,
`GLOG_minloglevel` and `CUDA_VISIBLE_DEVICES=-1` leave them).
`TF_ENABLE_ONEDNN_OPTS=0` would remove the oneDNN notice by switching oneDNN's
kernels off, which changes speed and rounding, so the tools leave it alone.

TensorFlow's Python log goes through absl's: the tools keep absl at WARNING
(`absl.logging.set_verbosity`), which hides TensorFlow's INFO lines (the
SavedModel export's `Assets written to ...`, `Writing fingerprint ...`, the
saver's `Sharding callback duration ...`). TensorFlow also gives its logger a
handler of its own when it loads before absl's is installed, so each warning
came out twice; the `tensorflow` logger stops passing records on to absl's
(`propagate = False`) and each comes out once.

The library (`import tf_dsr`) sets none of this: a program that uses it keeps
its own settings.
"""

import logging
import os

os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '3')
logging.getLogger('tensorflow').propagate = False
