"""Build config dataclasses from plain mappings, with errors that name the field.

Every config section is a dataclass with type hints; ``from_mapping`` checks
each value against its hint and reports the source (file), the dotted field
path and what was expected. ``to_mapping`` is the inverse for YAML output.

Numbers: every ``int`` or ``float`` field (also inside lists and mappings) must
be finite (no ``.nan``, ``.inf``, ``-.inf``) and zero or more; a field made
with ``positive()`` must be above zero. ``check_numbers`` applies the same rule
to an object built in Python, so both ways in are checked in this one place.
"""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from collections.abc import Mapping
from typing import Any, TypeVar

from rundock.errors import ConfigError

T = TypeVar("T")

_EXPECTED = {str: "a string", int: "an integer", float: "a number", bool: "a boolean (true or false)"}
POSITIVE = "positive"  # field metadata: the number must be above zero


def positive(default: Any) -> Any:
    """A dataclass field whose number must be above zero (``x: float = positive(2.0)``)."""
    return dataclasses.field(default=default, metadata={POSITIVE: True})


def _check_number(value: int | float, source: str | None, field: str, above_zero: bool) -> None:
    finite = not isinstance(value, float) or math.isfinite(value)
    if not finite or value < 0 or (above_zero and value == 0):
        kind = "an integer" if isinstance(value, int) else "a finite number"
        raise ConfigError(f"expected {kind} {'above 0' if above_zero else '>= 0'}, got {value!r}", source=source,
                          field=field)


def _check(hint: Any, value: Any, source: str | None, field: str, above_zero: bool) -> None:
    if value is None or hint is Any:
        return
    origin = typing.get_origin(hint)
    if hint in (int, float):
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            _check_number(value, source, field, above_zero)
    elif origin in (typing.Union, types.UnionType):
        for option in typing.get_args(hint):
            if option in (int, float) or typing.get_origin(option) in (list, tuple, dict) or \
                    dataclasses.is_dataclass(option):
                _check(option, value, source, field, above_zero)
    elif origin in (list, tuple) and isinstance(value, (list, tuple)):
        (item,) = typing.get_args(hint)[:1]
        for i, v in enumerate(value):
            _check(item, v, source, f"{field}[{i}]", above_zero)
    elif origin is dict and isinstance(value, Mapping):
        _, val_hint = typing.get_args(hint)
        for k, v in value.items():
            _check(val_hint, v, source, f"{field}.{k}", above_zero)
    elif dataclasses.is_dataclass(hint) and dataclasses.is_dataclass(value) and not isinstance(value, type):
        check_numbers(value, source=source, prefix=field + ".")


def check_numbers(obj: Any, *, source: str | None = None, prefix: str = "") -> None:
    """ConfigError naming the source, the field and the expected value for the first number of config dataclass
    ``obj`` (at any depth) that is not finite, is below zero, or is zero in a ``positive`` field."""
    hints = typing.get_type_hints(type(obj))
    for f in dataclasses.fields(obj):
        if f.init:
            _check(hints[f.name], getattr(obj, f.name), source, prefix + f.name, bool(f.metadata.get(POSITIVE)))


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
    obj = cls(**kwargs)
    check_numbers(obj, source=source, prefix=prefix)
    return obj


def to_mapping(obj: Any) -> Any:
    """Plain data (dicts, lists, scalars) for a config dataclass, for YAML or JSON."""
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {f.name: to_mapping(getattr(obj, f.name)) for f in dataclasses.fields(obj) if f.init}
    if isinstance(obj, (list, tuple)):
        return [to_mapping(v) for v in obj]
    if isinstance(obj, dict):
        return {k: to_mapping(v) for k, v in obj.items()}
    return obj
