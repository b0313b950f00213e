"""Reallocation rules, one module per method, and their registry.

`make('dsr', target_pruned=...)` builds a rule from its name and options;
`REGISTRY` maps each name to its class. Adding a method is one module here,
one import line below and its tests.
"""

from tf_dsr.rules.base import Drop
from tf_dsr.rules.base import get_rule
from tf_dsr.rules.base import make
from tf_dsr.rules.base import register
from tf_dsr.rules.base import REGISTRY
from tf_dsr.rules.base import Rule
from tf_dsr.rules.base import RuleInputs
from tf_dsr.rules.deepr import DeepR
from tf_dsr.rules.dsr import DSR
from tf_dsr.rules.rigl import RigL
from tf_dsr.rules.set import SET
from tf_dsr.rules.snfs import SNFS
from tf_dsr.rules.snip import SNIP
from tf_dsr.rules.static import Static

__all__ = ['DSR', 'DeepR', 'Drop', 'REGISTRY', 'Rule', 'RigL', 'RuleInputs',
           'SET', 'SNFS', 'SNIP', 'Static', 'get_rule', 'make', 'register']
