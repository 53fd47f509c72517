"""Build config dataclasses from plain mappings, with errors that name the field.

Every config section is a dataclass with type hints; ``from_mapping`` checks
each value against its hint and reports the source (file), the dotted field
path and what was expected. ``to_mapping`` is the inverse for YAML output.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from collections.abc import Mapping
from typing import Any, TypeVar

from rundock.errors import ConfigError

T = TypeVar("T")

_EXPECTED = {str: "a string", int: "an integer", float: "a number", bool: "a boolean (true or false)"}


def _describe(hint: Any) -> str:
    origin = typing.get_origin(hint)
    if hint in _EXPECTED:
        return _EXPECTED[hint]
    if origin in (list, tuple):
        return f"a list of {_describe(typing.get_args(hint)[0]).removeprefix('a ').removeprefix('an ')}s"
    if origin is dict:
        return "a mapping of names to values"
    if origin in (typing.Union, types.UnionType):
        return " or ".join("null" if a is type(None) else _describe(a) for a in typing.get_args(hint))
    if dataclasses.is_dataclass(hint):
        return f"a mapping with fields {', '.join(f.name for f in dataclasses.fields(hint))}"
    return "any value" if hint is Any else str(hint)


def _convert(hint: Any, value: Any, source: str | None, field: str) -> Any:
    origin = typing.get_origin(hint)
    if hint is Any:
        return value
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in typing.get_args(hint):
            return None
        options = [o for o in typing.get_args(hint) if o is not type(None)]
        if len(options) == 1:  # Optional[X]: X's own error says more
            return _convert(options[0], value, source, field)
        for option in options:
            try:
                return _convert(option, value, source, field)
            except ConfigError:
                continue
    elif dataclasses.is_dataclass(hint) and isinstance(hint, type):
        if isinstance(value, hint):
            return value
        if isinstance(value, Mapping):
            return from_mapping(hint, value, source=source, prefix=field + ".")
    elif origin in (list, tuple):
        if isinstance(value, (list, tuple)):
            (item,) = typing.get_args(hint)[:1]
            return [_convert(item, v, source, f"{field}[{i}]") for i, v in enumerate(value)]
    elif origin is dict:
        if isinstance(value, Mapping):
            _, val_hint = typing.get_args(hint)
            return {str(k): _convert(val_hint, v, source, f"{field}.{k}") for k, v in value.items()}
    elif hint is bool:
        if isinstance(value, bool):
            return value
    elif hint is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
    elif hint is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif hint is str and isinstance(value, str):
        return value
    shown = repr(value) if len(repr(value)) < 60 else repr(value)[:57] + "..."
    raise ConfigError(f"expected {_describe(hint)}, got {shown} ({type(value).__name__})", source=source,
                      field=field)


def from_mapping(cls: type[T], data: Mapping[str, Any] | None, *, source: str | None = None,
                 prefix: str = "") -> T:
    """An instance of dataclass ``cls`` from ``data``; unknown or mistyped fields raise ConfigError."""
    if data is None:
        data = {}
    if not isinstance(data, Mapping):
        raise ConfigError(f"expected {_describe(cls)}, got {type(data).__name__}", source=source,
                          field=prefix.rstrip(".") or None)
    assert dataclasses.is_dataclass(cls)
    hints = typing.get_type_hints(cls)
    known = {f.name for f in dataclasses.fields(cls) if f.init}
    unknown = sorted(str(k) for k in data if k not in known)
    if unknown:
        raise ConfigError(f"unknown field; expected one of: {', '.join(sorted(known))}", source=source,
                          field=prefix + unknown[0])
    kwargs = {name: _convert(hints[name], value, source, prefix + name) for name, value in data.items()}
    return cls(**kwargs)


def to_mapping(obj: Any) -> Any:
    """Plain data (dicts, lists, scalars) for a config dataclass, for YAML or JSON."""
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {f.name: to_mapping(getattr(obj, f.name)) for f in dataclasses.fields(obj) if f.init}
    if isinstance(obj, (list, tuple)):
        return [to_mapping(v) for v in obj]
    if isinstance(obj, dict):
        return {k: to_mapping(v) for k, v in obj.items()}
    return obj
