"""`--override key=value`: typed changes to a named config.

Values are parsed by the type of the config field:

- int: `epochs=3`, `target_pruned=20_000`
- float: `sparsity=0.8`, `weight_decay=5e-4`
- bool: `augment=false` (true/false, yes/no, 1/0)
- str: `dataset=mnist`
- optional fields: `stop_epoch=none`
- by-epoch dicts: `learning_rate={0: 0.1, 30: 0.01}`, or one number for a
  constant: `period=50`

The new config is validated as a whole, so an override that makes it
inconsistent (say `sparsity=0.5` on a dense config) is rejected with a message
naming the field.
"""

import ast
import dataclasses
import math
import typing

from launch.configs import ExperimentConfig
from launch.errors import LaunchError

_TRUE = ('true', 'yes', '1')
_FALSE = ('false', 'no', '0')
_NONE = ('none', 'null')
_FIXED = ('name',)  # The registry name is not a setting.


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


def apply(config, overrides):
  """Returns `config` with every `key=value` of `overrides` applied.

  Args:
    config: an `ExperimentConfig`.
    overrides: iterable of 'key=value' strings.

  Returns:
    A new, validated `ExperimentConfig`.

  Raises:
    LaunchError: for a malformed item, an unknown key (the message lists the
      valid ones), a value of the wrong type, or an inconsistent result.
  """
  hints = typing.get_type_hints(ExperimentConfig)
  keys = overridable_keys()
  changes = {}
  for item in overrides:
    key, sep, raw = item.partition('=')
    key = key.strip()
    if not sep or not key:
      raise LaunchError(f'--override {item!r} is not of the form key=value.')
    if key not in keys:
      raise LaunchError(f'--override {item!r}: unknown key {key!r}; valid keys '
                        f'are: {", ".join(keys)}.')
    try:
      changes[key] = parse_value(hints[key], raw)
    except (ValueError, TypeError):
      raise LaunchError(f'--override {item!r}: {key} must be '
                        f'{_describe(hints[key])}, got {raw!r}.') from None
  try:
    return dataclasses.replace(config, **changes)
  except LaunchError as error:
    raise LaunchError(f'--override {" ".join(overrides)}: {error}') from None
