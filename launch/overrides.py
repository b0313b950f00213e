"""`--override key=value`: typed changes to a named config.

Values are parsed by the type of the config field:

- int: `epochs=3`, `batch_size=64`
- float: `sparsity=0.8`, `weight_decay=5e-4`
- bool: `augment=false` (true/false, yes/no, 1/0)
- str: `dataset=mnist`
- optional fields: `stop_epoch=none`
- by-epoch dicts: `learning_rate={0: 0.1, 30: 0.01}`, or one number for a
  constant: `period=50`

The options of the config's rule (`configs.option_types`: the fields of its
`tf_dsr.rules` dataclass) are keys too, parsed by the option's type (an int
stays an int where a float is expected; `Any` and unions take a Python
literal, or else the text): `target_pruned=30_000`, `tolerance=0.2`, or by
epoch `temperature={0: 1e-6, 20: 0.0}`. `options.NAME=value` names an option
explicitly (needed when a config field has the same name, such as DeepR's
`learning_rate`), and `options={'alpha': 1e-4}` replaces them all.

The new config is validated as a whole, so an override that makes it
inconsistent (say `sparsity=0.5` on a dense config) is rejected with a message
naming the field.
"""

import ast
import dataclasses
import math
import typing

from launch import configs
from launch.configs import ExperimentConfig
from launch.errors import LaunchError

_TRUE = ('true', 'yes', '1')
_FALSE = ('false', 'no', '0')
_NONE = ('none', 'null')
_FIXED = ('name',)  # The registry name is not a setting.
_OPTION_PREFIX = 'options.'


def overridable_keys():
  """Config fields that `--override` may set, in declaration order."""
  return [f.name for f in dataclasses.fields(ExperimentConfig)
          if f.name not in _FIXED]


def _unwrap_optional(kind):
  args = typing.get_args(kind)
  if typing.get_origin(kind) is typing.Union and type(None) in args:
    return next(a for a in args if a is not type(None)), True
  return kind, False


def _describe(kind):
  kind, optional = _unwrap_optional(kind)
  if typing.get_origin(kind) is dict:
    value = typing.get_args(kind)[1].__name__
    text = f'a dict {{epoch: {value}}} or one {value}'
  else:
    text = {bool: 'true or false', int: 'an int', float: 'a number',
            str: 'a string'}[kind]
  return text + (' or none' if optional else '')


def _scalar(kind, raw):
  """Parses `raw` (a str or a literal) as `kind`; raises ValueError."""
  if kind is bool:
    text = str(raw).strip().lower()
    if text in _TRUE or text in _FALSE:
      return text in _TRUE
    raise ValueError(raw)
  if kind is int:
    if isinstance(raw, bool):
      raise ValueError(raw)
    if isinstance(raw, int):
      return raw
    return int(str(raw).strip())
  if kind is float:
    if isinstance(raw, bool):
      raise ValueError(raw)
    value = float(raw) if isinstance(raw, (int, float)) else float(
        str(raw).strip())
    if not math.isfinite(value):
      raise ValueError(raw)
    return value
  return str(raw)


def parse_value(kind, raw):
  """Parses the text `raw` as a value of the field type `kind`.

  Raises:
    ValueError: when `raw` is not a valid `kind`.
  """
  kind, optional = _unwrap_optional(kind)
  if optional and raw.strip().lower() in _NONE:
    return None
  if typing.get_origin(kind) is dict:
    key_kind, value_kind = typing.get_args(kind)
    try:
      literal = ast.literal_eval(raw.strip())
    except (ValueError, SyntaxError):
      raise ValueError(raw) from None
    if not isinstance(literal, dict):
      return {0: _scalar(value_kind, literal)}
    return {_scalar(key_kind, k): _scalar(value_kind, v)
            for k, v in literal.items()}
  return _scalar(kind, raw)


def _option_kind(kind):
  """`(scalar type or Any, optional)` of a rule option's annotation."""
  args = typing.get_args(kind)
  optional = typing.get_origin(kind) is typing.Union and type(None) in args
  if optional:
    rest = [a for a in args if a is not type(None)]
    kind = rest[0] if len(rest) == 1 else typing.Any
  if kind not in (bool, int, float, str):
    kind = typing.Any  # Any, unions, callables: the rule checks the value.
  return kind, optional


def _describe_option(kind):
  kind, optional = _option_kind(kind)
  text = {bool: 'true or false', int: 'an int', float: 'a number',
          str: 'a string', typing.Any: 'a Python literal'}[kind]
  return (f'{text}{" or none" if optional else ""}, or a dict {{epoch: '
          'value}')


def _option_scalar(kind, optional, value):
  """`value` (a literal, or text that is none) as an option value of `kind`."""
  if value is None:
    if optional or kind is typing.Any:
      return None
    raise ValueError(value)
  if kind is float and isinstance(value, int) and not isinstance(value, bool):
    return value  # 20_000 stays an int where a float is expected.
  if kind is typing.Any:
    return value
  return _scalar(kind, value)


def parse_option(kind, raw):
  """Parses the text `raw` as a value of a rule option annotated `kind`.

  A dict literal is a by-epoch value: its keys are epochs, its values parsed
  like a single value.

  Raises:
    ValueError: when `raw` is not a valid value.
  """
  kind, optional = _option_kind(kind)
  text = raw.strip()
  if text.lower() in _NONE:
    return _option_scalar(kind, optional, None)
  try:
    literal = ast.literal_eval(text)
  except (ValueError, SyntaxError):
    if kind in (int, float) or text[:1] in '{[(':
      raise ValueError(raw) from None
    literal = text  # A bare word for a str or Any option.
  if isinstance(literal, dict):
    return {_scalar(int, k): _option_scalar(kind, optional, v)
            for k, v in literal.items()}
  return _option_scalar(kind, optional, literal)


def _parse_options(raw):
  """`options={...}`: a dict literal from option name to value."""
  literal = ast.literal_eval(raw.strip())
  if not isinstance(literal, dict) or not all(isinstance(k, str)
                                              for k in literal):
    raise ValueError(raw)
  return literal


def _unknown_key(item, key, name, method, fields, option_kinds):
  """The LaunchError for an override key that is neither a field nor an option."""
  owners = [m for m in configs.methods() if name in configs.option_types(m)]
  where = (f' (an option of {", ".join(map(repr, owners))}, not of method '
           f'{method!r})' if owners else '')
  return LaunchError(
      f'--override {item!r}: unknown key {key!r}{where}; valid keys are: '
      f'{", ".join(_valid_keys(fields, option_kinds))}.')


def _valid_keys(fields, option_kinds):
  keys = list(fields)
  keys += [name if name not in fields else _OPTION_PREFIX + name
           for name in option_kinds]
  return keys


def apply(config, overrides):
  """Returns `config` with every `key=value` of `overrides` applied.

  Args:
    config: an `ExperimentConfig`.
    overrides: iterable of 'key=value' strings: config fields, and options of
      the (new) method's rule.

  Returns:
    A new, validated `ExperimentConfig`.

  Raises:
    LaunchError: for a malformed item, an unknown key (the message lists the
      valid ones: the config's fields and its rule's options), a value of the
      wrong type, or an inconsistent result.
  """
  overrides = list(overrides)
  hints = typing.get_type_hints(ExperimentConfig)
  fields = overridable_keys()
  items = []
  for item in overrides:
    key, sep, raw = item.partition('=')
    key = key.strip()
    if not sep or not key:
      raise LaunchError(f'--override {item!r} is not of the form key=value.')
    items.append((item, key, raw))
  # The options are those of the method the config ends up with.
  method = config.method
  for _, key, raw in items:
    if key == 'method':
      method = raw.strip()
  option_kinds = configs.option_types(method)
  changes, options = {}, dict(config.options)
  for item, key, raw in items:
    explicit = key.startswith(_OPTION_PREFIX)
    name = key[len(_OPTION_PREFIX):] if explicit else key
    if explicit or (key not in fields and key in option_kinds):
      if name not in option_kinds:
        raise _unknown_key(item, key, name, method, fields, option_kinds)
      try:
        options[name] = parse_option(option_kinds[name], raw)
      except (ValueError, TypeError):
        raise LaunchError(
            f'--override {item!r}: option {name} of method {method!r} must '
            f'be {_describe_option(option_kinds[name])}, got {raw!r}.'
        ) from None
      continue
    if key not in fields:
      raise _unknown_key(item, key, key, method, fields, option_kinds)
    if key == 'options':
      try:
        options = _parse_options(raw)
      except (ValueError, SyntaxError, TypeError):
        raise LaunchError(f'--override {item!r}: options must be a dict '
                          f'{{option name: value}}, got {raw!r}.') from None
      continue
    try:
      changes[key] = parse_value(hints[key], raw)
    except (ValueError, TypeError):
      raise LaunchError(f'--override {item!r}: {key} must be '
                        f'{_describe(hints[key])}, got {raw!r}.') from None
  if options != config.options:
    changes['options'] = options
  try:
    return dataclasses.replace(config, **changes)
  except LaunchError as error:
    raise LaunchError(f'--override {" ".join(overrides)}: {error}') from None
