"""BUILD says what each module imports (Bazel cannot fetch its rules offline here).

BUILD is Starlark; its `py_library`, `py_binary` and `py_test` calls are read
with Python's `ast` (keyword arguments with literal values). Each module's
imports are read with `ast` too, including imports inside functions. The
tests check that:

- every `.py` file of the project is in the `srcs` of exactly one target, and
  BUILD names no file that is missing;
- test files (`test_*.py`, `*_test.py`) are `py_test`s and nothing else is;
  test helpers are `testonly`, and only test code depends on them;
- every target lists in its own `deps` (not through another target) each
  project target its modules import, counting the `__init__.py` of every
  package on the way and, for a test, the `conftest.py` pytest loads beside
  it; and each third-party package they import, as `@pypi//NAME`;
- every dep names a target of BUILD or a `@pypi//` package.

A failure names the module and the dep it is missing.
"""

import ast
import os
import sys
import sysconfig

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PACKAGES = ('tf_dsr', 'models', 'launch', 'benchmarks', 'tests')
RULES = ('py_library', 'py_binary', 'py_test')
# Import name -> the `@pypi//` name of the distribution that provides it.
PYPI = {
    'absl': 'absl_py',
    'hypothesis': 'hypothesis',
    'keras': 'keras',
    'matplotlib': 'matplotlib',
    'numpy': 'numpy',
    'pytest': 'pytest',
    'sklearn': 'scikit_learn',
    'tensorboard': 'tensorboard',
    'tensorflow': 'tensorflow',
    'tensorflow_datasets': 'tensorflow_datasets',
    'tensorflow_model_optimization': 'tensorflow_model_optimization',
    'tf_keras': 'tf_keras',
}


def _is_stdlib(name):
  if hasattr(sys, 'stdlib_module_names'):  # Python >= 3.10
    return name in sys.stdlib_module_names or name == '__future__'
  stdlib = sysconfig.get_paths()['stdlib']
  return name in sys.builtin_module_names or any(
      os.path.exists(os.path.join(stdlib, name + suffix))
      for suffix in ('', '.py'))


def parse_build(text):
  """`{name: {'kind', 'srcs', 'deps', 'testonly'}}` for each rule call of BUILD."""
  targets = {}
  for statement in ast.parse(text).body:
    call = getattr(statement, 'value', None)
    if not (isinstance(call, ast.Call) and isinstance(call.func, ast.Name) and
            call.func.id in RULES):
      continue
    args = {kw.arg: ast.literal_eval(kw.value) for kw in call.keywords}
    name = args['name']
    assert name not in targets, f'BUILD: two targets named {name!r}'
    targets[name] = {'kind': call.func.id, 'srcs': list(args.get('srcs', [])),
                     'deps': list(args.get('deps', [])),
                     'testonly': bool(args.get('testonly', False))}
  return targets


def tree():
  files = set()
  for package in PACKAGES:
    for folder, _, names in os.walk(os.path.join(ROOT, package)):
      files.update(os.path.relpath(os.path.join(folder, name), ROOT)
                   for name in names if name.endswith('.py'))
  return files


def is_test(path):
  name = os.path.basename(path)
  return name.startswith('test_') or name.endswith('_test.py')


def _module_file(dotted):
  """The project file of module `dotted`, or None."""
  base = os.path.join(*dotted.split('.'))
  for candidate in (base + '.py', os.path.join(base, '__init__.py')):
    if os.path.isfile(os.path.join(ROOT, candidate)):
      return candidate
  return None


def _loaded_files(dotted):
  """Project files that importing `dotted` runs: each package on the way."""
  parts = dotted.split('.')
  found = []
  for end in range(1, len(parts) + 1):
    path = _module_file('.'.join(parts[:end]))
    if path:
      found.append(path)
  return found


def imports_of(path):
  """`(project files, third-party top-level names)` that module `path` imports.

  The module's own packages count too (running `launch/train.py` as
  `launch.train` runs `launch/__init__.py`), and so does the `conftest.py`
  beside a test.
  """
  package = os.path.dirname(path).replace(os.sep, '.')
  tree_ = ast.parse(open(os.path.join(ROOT, path)).read(), path)
  names = [package] if package else []
  for node in ast.walk(tree_):
    if isinstance(node, ast.Import):
      names += [alias.name for alias in node.names]
    elif isinstance(node, ast.ImportFrom):
      if node.level:
        base = package.split('.')[:len(package.split('.')) - node.level + 1]
        module = '.'.join(base + ([node.module] if node.module else []))
      else:
        module = node.module
      names.append(module)
      # `from launch import quiet` imports the module launch.quiet.
      names += [f'{module}.{alias.name}' for alias in node.names]
  project, third_party = set(), set()
  for name in names:
    top = name.split('.')[0]
    if top in PACKAGES:
      project.update(_loaded_files(name))
    elif not _is_stdlib(top):
      third_party.add(top)
  conftest = os.path.join(os.path.dirname(path), 'conftest.py')
  if is_test(path) and os.path.isfile(os.path.join(ROOT, conftest)):
    project.add(conftest)
  project.discard(path)
  return project, third_party


@pytest.fixture(scope='module')
def targets():
  return parse_build(open(os.path.join(ROOT, 'BUILD')).read())


@pytest.fixture(scope='module')
def owner(targets):
  owners = {}
  for name, target in targets.items():
    for src in target['srcs']:
      owners.setdefault(src, []).append(name)
  return owners


def test_every_module_is_in_exactly_one_target(owner):
  files = tree()
  orphans = sorted(f for f in files if f not in owner)
  assert not orphans, ('modules in no BUILD target (add each to the srcs of '
                       f'one): {orphans}')
  shared = {f: o for f, o in owner.items() if len(o) > 1}
  assert not shared, f'modules in more than one BUILD target: {shared}'
  missing = sorted(set(owner) - files)
  assert not missing, f'BUILD names files that do not exist: {missing}'


def test_tests_are_py_tests_and_helpers_testonly(targets):
  for name, target in targets.items():
    tests = [src for src in target['srcs'] if is_test(src)]
    if target['kind'] == 'py_test':
      assert tests == target['srcs'] and len(tests) == 1, (
          f'{name}: a py_test has one test file as its srcs, got '
          f'{target["srcs"]}')
    else:
      assert not tests, f'{name}: test files {tests} belong in py_test targets'
    in_tests = any(src.startswith('tests/') for src in target['srcs'])
    if target['kind'] != 'py_test' and in_tests:
      assert target['testonly'], f'{name}: a test helper must be testonly = True'
    if target['kind'] != 'py_test' and not target['testonly']:
      for dep in target['deps']:
        if dep.startswith(':'):
          assert not targets[dep[1:]]['testonly'], (
              f'{name} is not testonly but depends on testonly {dep}')


def test_deps_name_targets_or_pypi_packages(targets):
  for name, target in targets.items():
    for dep in target['deps']:
      assert (dep.startswith(':') and dep[1:] in targets) or (
          dep.startswith('@pypi//') and dep[len('@pypi//'):] in PYPI.values()
      ), f'{name}: dep {dep!r} is neither a target of BUILD nor a known @pypi package'


def test_every_import_is_a_direct_dep(targets, owner):
  missing = []
  for name, target in sorted(targets.items()):
    deps = set(target['deps'])
    for src in target['srcs']:
      project, third_party = imports_of(src)
      for path in sorted(project):
        dep_targets = owner.get(path)
        if not dep_targets:
          continue  # Reported by test_every_module_is_in_exactly_one_target.
        if dep_targets[0] != name and f':{dep_targets[0]}' not in deps:
          missing.append(f'{src} imports {path}: add ":{dep_targets[0]}" to '
                         f'the deps of {name}')
      for top in sorted(third_party):
        if top not in PYPI:
          missing.append(f'{src} imports {top}, which is not in '
                         f'tests/test_build_file.py PYPI: add its @pypi name')
        elif f'@pypi//{PYPI[top]}' not in deps:
          missing.append(f'{src} imports {top}: add "@pypi//{PYPI[top]}" to '
                         f'the deps of {name}')
  assert missing == [], '\n'.join(missing)


def test_parse_build_reads_rule_calls():
  text = '''
load("@rules_python//python:defs.bzl", "py_library", "py_test")
package(default_visibility = ["//visibility:public"])
py_library(name = "a", srcs = ["a/x.py"], deps = ["@pypi//numpy"])
py_test(name = "t", srcs = ["a/x_test.py"], deps = [":a"], testonly = True)
'''
  assert parse_build(text) == {
      'a': {'kind': 'py_library', 'srcs': ['a/x.py'], 'deps': ['@pypi//numpy'],
            'testonly': False},
      't': {'kind': 'py_test', 'srcs': ['a/x_test.py'], 'deps': [':a'],
            'testonly': True}}
