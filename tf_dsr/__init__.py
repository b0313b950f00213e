"""tf_dsr: Dynamic Sparse Reparameterization for Keras, on the tfmot pruning API.

Mostafa & Wang, ICML 2019, https://arxiv.org/abs/1902.05967.
"""

from tf_dsr import distributions
from tf_dsr import flops
from tf_dsr import rules
from tf_dsr import wrapper_keras3  # Registers the Keras 3 wrapper.
from tf_dsr._tfmot import keras
from tf_dsr.callbacks import ReallocationCallback
from tf_dsr.compact import load_sparse
from tf_dsr.compact import save_sparse
from tf_dsr.engine import collect_wrappers
from tf_dsr.engine import ReallocationStats
from tf_dsr.engine import Reallocator
from tf_dsr.flops import flops_report
from tf_dsr.flops import FlopsReport
from tf_dsr.report import SparsityReport
from tf_dsr.report import sparsity_report
from tf_dsr.schedules import PeriodSchedule
from tf_dsr.snip import snip
from tf_dsr.sparsify import sparsify
from tf_dsr.state import DynamicSparsityState
from tf_dsr.strip import strip_dynamic_sparsity
from tf_dsr.tflite import to_tflite
from tf_dsr.wrapper import DynamicSparseWrapper

__version__ = '0.1.0'

__all__ = [
    'DynamicSparseWrapper',
    'DynamicSparsityState',
    'FlopsReport',
    'PeriodSchedule',
    'ReallocationCallback',
    'ReallocationStats',
    'Reallocator',
    'SparsityReport',
    'collect_wrappers',
    'distributions',
    'flops',
    'flops_report',
    'keras',
    'load_sparse',
    'rules',
    'save_sparse',
    'snip',
    'sparsify',
    'sparsity_report',
    'strip_dynamic_sparsity',
    'to_tflite',
]
