"""BUILD stays in step with the tree (Bazel cannot fetch its rules offline here).

Every Python module of the packages is the `srcs` of a `py_library`, and every
test file is the `srcs` of a `py_test`; BUILD names no file that is missing.
"""

import os
import re

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PACKAGES = ('tf_dsr', 'models', 'launch', 'benchmarks', 'tests')


def _rules():
  text = open(os.path.join(ROOT, 'BUILD')).read()
  rules = {}
  for kind, body in re.findall(r'(py_library|py_test|py_binary)\((.*?)\n\)',
                               text, re.S):
    for src in re.findall(r'"([^"]+\.py)"', body.split('deps')[0]):
      rules.setdefault(kind, set()).add(src)
  return rules


def _tree():
  files = set()
  for package in PACKAGES:
    for folder, _, names in os.walk(os.path.join(ROOT, package)):
      for name in names:
        if name.endswith('.py'):
          files.add(os.path.relpath(os.path.join(folder, name), ROOT))
  return files


def _is_test(path):
  name = os.path.basename(path)
  return name.startswith('test_') or name.endswith('_test.py')


def test_every_module_and_test_is_in_build():
  rules = _rules()
  listed = set().union(*rules.values())
  tree = _tree()
  assert sorted(tree - listed) == []
  assert sorted(listed - tree) == []
  tests = {p for p in tree if _is_test(p)}
  assert sorted(tests - rules.get('py_test', set())) == []
  assert sorted(rules.get('py_test', set()) - tests) == []
