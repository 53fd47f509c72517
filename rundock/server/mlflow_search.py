"""MLflow's run search (``runs/search``): the filter strings and ``order_by`` clauses clients send, over rundock runs.

A filter is comparisons joined by ``AND`` (no ``OR``), each ``<entity>.<name> <comparator> <constant>``:

- ``metrics.<name>`` (the run's latest value) with ``= != < <= > >=`` and a number;
- ``params.<name>`` and ``tags.<name>`` with ``= != LIKE ILIKE IN NOT IN`` and quoted strings;
- ``attributes.<name>`` (the prefix may be left out): ``status``, ``run_name``, ``run_id``, ``user_id`` with the
  string comparators, ``start_time`` and ``end_time`` (ms since the epoch) with the numeric ones.

Entity aliases are MLflow's (``metric``, ``param``/``parameter(s)``, ``tag``, ``attr``/``run``); a name with
special characters is quoted with double quotes or backticks (``metrics."val loss"``); strings take single or
double quotes. A run that lacks the metric, param or tag compared never matches. ``order_by`` takes the same
identifiers with ``ASC`` (default) or ``DESC``; runs without the value come last either way; ties end with the
start time (newest first), then the run id. Anything else is an INVALID_PARAMETER_VALUE error that says what is
supported. Pages are plain offsets in an opaque ``page_token``.
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import json
import math
import re
from collections.abc import Callable, Mapping, Sequence
from typing import Any, TypeVar, Union

from rundock.history.records import MetricRecord, RunRecord
from rundock.server.mlflow_map import invalid, millis, mlflow_status

DEFAULT_MAX_RESULTS = 1000
MAX_RESULTS = 50000

T = TypeVar("T")
Value = Union[str, float, tuple[str, ...], None]
LatestMetrics = Callable[[str], Mapping[str, MetricRecord]]
ValueOf = Callable[[T, "Identifier"], Union[str, float, None]]

_ENTITIES = {"metric": "metric", "metrics": "metric", "param": "param", "params": "param", "parameter": "param",
             "parameters": "param", "tag": "tag", "tags": "tag", "attribute": "attribute", "attributes": "attribute",
             "attr": "attribute", "run": "attribute"}


@dataclasses.dataclass(frozen=True)
class Attributes:
    """The attributes a search may name: compared as strings, or as numbers."""

    strings: tuple[str, ...]
    numbers: tuple[str, ...]


RUN_ATTRIBUTES = Attributes(("status", "run_name", "run_id", "user_id"), ("start_time", "end_time"))
EXPERIMENT_ATTRIBUTES = Attributes(("name",), ("creation_time", "last_update_time"))
_NUMBER_OPS = ("=", "!=", "<", "<=", ">", ">=")
_STRING_OPS = ("=", "!=", "LIKE", "ILIKE", "IN", "NOT IN")
_SUPPORTED = ("supported: metrics.<name> with = != < <= > >= and a number; params.<name>, tags.<name>, "
              "attributes.status/run_name/run_id/user_id with = != LIKE ILIKE IN NOT IN and quoted strings; "
              "attributes.start_time/end_time with numbers; comparisons joined by AND")

_TOKEN = re.compile(r"""\s*(?:
    (?P<str>'(?:[^'\\]|\\.)*'|"(?:[^"\\]|\\.)*")
  | (?P<tick>`[^`]*`)
  | (?P<op><=|>=|!=|<>|=|<|>)
  | (?P<punct>[(),])
  | (?P<num>[+-]?(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?(?![\w.]))
  | (?P<word>[A-Za-z_][\w.\-]*)
)""", re.VERBOSE)


@dataclasses.dataclass(frozen=True)
class Token:
    kind: str
    text: str


def _tokens(source: str) -> list[Token]:
    out: list[Token] = []
    pos, end = 0, len(source.rstrip())
    while pos < end:
        match = _TOKEN.match(source, pos)
        if match is None or match.end() == pos:
            raise invalid(f"cannot read the search filter at {source[pos:pos + 20]!r} (position {pos}); {_SUPPORTED}")
        kind = match.lastgroup or ""
        out.append(Token(kind, match.group(kind)))
        pos = match.end()
    return out


def _unquote(token: Token) -> str:
    body = token.text[1:-1]
    return body if token.kind == "tick" else re.sub(r"\\(.)", r"\1", body)


@dataclasses.dataclass(frozen=True)
class Identifier:
    entity: str  # metric, param, tag or attribute
    name: str

    def __str__(self) -> str:
        return f"{self.entity}s.{self.name}" if self.entity != "attribute" else f"attributes.{self.name}"


@dataclasses.dataclass(frozen=True)
class Comparison:
    ident: Identifier
    op: str
    value: Value


class _Reader:
    """Reads tokens left to right."""

    def __init__(self, tokens: list[Token], source: str, attributes: Attributes) -> None:
        self.tokens, self.pos, self.source, self.attributes = tokens, 0, source, attributes

    def peek(self) -> Token | None:
        return self.tokens[self.pos] if self.pos < len(self.tokens) else None

    def take(self, what: str) -> Token:
        token = self.peek()
        if token is None:
            raise invalid(f"the search filter {self.source!r} ends where {what} was expected; {_SUPPORTED}")
        self.pos += 1
        return token

    def word(self, *words: str) -> bool:
        token = self.peek()
        if token is not None and token.kind == "word" and token.text.upper() in words:
            self.pos += 1
            return True
        return False


def _identifier(reader: _Reader) -> Identifier:
    token = reader.take("an identifier such as metrics.accuracy")
    if token.kind in ("str", "tick"):
        return _check_identifier(Identifier("attribute", _unquote(token)), reader.attributes)
    if token.kind != "word":
        raise invalid(f"expected an identifier such as metrics.accuracy, found {token.text!r}; {_SUPPORTED}")
    if "." not in token.text:
        return _check_identifier(Identifier("attribute", token.text), reader.attributes)
    prefix, _, name = token.text.partition(".")
    entity = _ENTITIES.get(prefix.lower())
    if entity is None:
        raise invalid(f"{token.text!r}: unknown entity {prefix!r}; {_SUPPORTED}")
    if not name:  # metrics."val loss"
        quoted = reader.take("a quoted name after " + token.text)
        if quoted.kind not in ("str", "tick"):
            raise invalid(f"expected a quoted name after {token.text!r}, found {quoted.text!r}")
        name = _unquote(quoted)
    return _check_identifier(Identifier(entity, name), reader.attributes)


def _check_identifier(ident: Identifier, attributes: Attributes) -> Identifier:
    if ident.entity == "attribute" and ident.name not in attributes.strings + attributes.numbers:
        known = ", ".join(attributes.strings + attributes.numbers)
        raise invalid(f"unknown attribute {ident.name!r}: the attributes here are {known}")
    if not ident.name:
        raise invalid(f"{ident.entity} names cannot be empty")
    return ident


def _numeric(ident: Identifier, attributes: Attributes) -> bool:
    return ident.entity == "metric" or (ident.entity == "attribute" and ident.name in attributes.numbers)


def _comparison(reader: _Reader) -> Comparison:
    ident = _identifier(reader)
    token = reader.take(f"a comparator after {ident}")
    if token.kind == "op":
        op = "!=" if token.text == "<>" else token.text
    elif token.kind == "word" and token.text.upper() in ("LIKE", "ILIKE", "IN"):
        op = token.text.upper()
    elif token.kind == "word" and token.text.upper() == "NOT" and reader.word("IN"):
        op = "NOT IN"
    else:
        raise invalid(f"expected a comparator after {ident}, found {token.text!r}; {_SUPPORTED}")
    allowed = _NUMBER_OPS if _numeric(ident, reader.attributes) else _STRING_OPS
    if op not in allowed:
        raise invalid(f"{ident} cannot be compared with {op}; it takes {' '.join(allowed)}")
    return Comparison(ident, op, _constant(reader, ident, op))


def _constant(reader: _Reader, ident: Identifier, op: str) -> Value:
    if op in ("IN", "NOT IN"):
        opened = reader.take("'(' after IN")
        if opened.text != "(":
            raise invalid(f"{ident} {op} takes a list of quoted strings in parentheses, e.g. ('a', 'b')")
        items: list[str] = []
        while True:
            item = reader.take("a quoted string")
            if item.kind != "str":
                raise invalid(f"{ident} {op} takes quoted strings, found {item.text!r}")
            items.append(_unquote(item))
            closing = reader.take("',' or ')'")
            if closing.text == ")":
                return tuple(items)
            if closing.text != ",":
                raise invalid(f"expected ',' or ')' in the list after {ident} {op}, found {closing.text!r}")
    token = reader.take(f"a value after {ident} {op}")
    if _numeric(ident, reader.attributes):
        if token.kind != "num":
            raise invalid(f"{ident} compares with a number, e.g. {ident} > 0.5; found {token.text!r}")
        return float(token.text)
    if token.kind != "str":
        raise invalid(f"{ident} compares with a quoted string, e.g. {ident} = '0.1'; found {token.text!r}")
    return _unquote(token)


def parse_filter(source: str | None, attributes: Attributes = RUN_ATTRIBUTES) -> list[Comparison]:
    """The comparisons of an MLflow search filter (empty: every run)."""
    if not source or not source.strip():
        return []
    reader = _Reader(_tokens(source), source, attributes)
    found = [_comparison(reader)]
    while reader.peek() is not None:
        if not reader.word("AND"):
            token = reader.take("AND")
            what = "OR is not supported" if token.text.upper() == "OR" else f"found {token.text!r}"
            raise invalid(f"comparisons in a search filter are joined by AND: {what}; {_SUPPORTED}")
        found.append(_comparison(reader))
    return found


@dataclasses.dataclass(frozen=True)
class Order:
    ident: Identifier
    descending: bool


def parse_order_by(clauses: Sequence[str] | None, attributes: Attributes = RUN_ATTRIBUTES) -> list[Order]:
    orders = []
    for clause in clauses or ():
        if not isinstance(clause, str):
            raise invalid(f"order_by takes strings such as 'metrics.accuracy DESC', not {clause!r}")
        reader = _Reader(_tokens(clause), clause, attributes)
        ident = _identifier(reader)
        descending = reader.word("DESC")
        if not descending:
            reader.word("ASC")
        if reader.peek() is not None:
            raise invalid(f"order_by clause {clause!r}: expected '<identifier> [ASC|DESC]'")
        orders.append(Order(ident, descending))
    return orders


# -- evaluation ---------------------------------------------------------------------------------------------------
def _attribute(run: RunRecord, name: str) -> str | float | None:
    if name == "status":
        return mlflow_status(run.status)
    if name == "run_name":
        return run.display_name or run.run_id
    if name == "run_id":
        return run.run_id
    if name == "user_id":
        return run.submitted_by or ""
    if name == "start_time":
        return float(millis(run.start_at or run.created_at))
    return None if run.end_at is None else float(millis(run.end_at))


def _value(run: RunRecord, ident: Identifier, metrics: LatestMetrics) -> str | float | None:
    if ident.entity == "metric":
        record = metrics(run.run_id).get(ident.name)
        return None if record is None else float(record.value)
    if ident.entity == "param":
        return run.properties.get(ident.name)
    if ident.entity == "tag":
        if ident.name not in run.tags:
            return None
        return run.tags[ident.name] or ""
    return _attribute(run, ident.name)


def _like(pattern: str, flags: int = 0) -> re.Pattern[str]:
    parts = (".*" if c == "%" else "." if c == "_" else re.escape(c) for c in pattern)
    return re.compile("".join(parts), flags | re.DOTALL)


def holds(have: str | float, op: str, want: Value) -> bool:
    if op in ("IN", "NOT IN"):
        assert isinstance(want, tuple)
        return (have in want) == (op == "IN")
    if op == "LIKE":
        return _like(str(want)).fullmatch(str(have)) is not None
    if op == "ILIKE":
        return _like(str(want), re.IGNORECASE).fullmatch(str(have)) is not None
    if op == "=":
        return have == want
    if op == "!=":
        return have != want
    assert isinstance(have, float) and isinstance(want, float)
    if math.isnan(have):
        return False
    return {"<": have < want, "<=": have <= want, ">": have > want, ">=": have >= want}[op]


def matches(run: RunRecord, comparisons: Sequence[Comparison], metrics: LatestMetrics) -> bool:
    return satisfies(run, comparisons, lambda item, ident: _value(item, ident, metrics))


def satisfies(item: T, comparisons: Sequence[Comparison], value: ValueOf[T]) -> bool:
    """Whether ``item`` passes every comparison (a value that is missing passes none)."""
    for comparison in comparisons:
        have = value(item, comparison.ident)
        if have is None or not holds(have, comparison.op, comparison.value):
            return False
    return True


def _sort_key(value: str | float) -> Any:
    if isinstance(value, float) and math.isnan(value):
        return (1, 0.0)  # NaN after every number
    return (0, value)


def order_runs(runs: Sequence[RunRecord], orders: Sequence[Order], metrics: LatestMetrics) -> list[RunRecord]:
    """Sort by each order in turn (the first one matters most), missing values last; ties: newest, then id."""
    newest = Order(Identifier("attribute", "start_time"), True)
    return ordered(runs, [*orders, newest], lambda run, ident: _value(run, ident, metrics), lambda run: run.run_id)


def ordered(items: Sequence[T], orders: Sequence[Order], value: ValueOf[T], name: Callable[[T], str]) -> list[T]:
    """``items`` sorted by each order in turn (the first matters most), those without a value last, ties by name."""
    result = sorted(items, key=name)
    for order in reversed(orders):  # stable sorts, the least significant first
        values = [(item, value(item, order.ident)) for item in result]
        present = [(item, have) for item, have in values if have is not None]
        present.sort(key=lambda pair: _sort_key(pair[1]), reverse=order.descending)
        result = [item for item, _ in present] + [item for item, have in values if have is None]
    return result


# -- pages ---------------------------------------------------------------------------------------------------------
def max_results(value: Any) -> int:
    if value is None or value == "":
        return DEFAULT_MAX_RESULTS
    try:
        count = int(value)
    except (TypeError, ValueError):
        raise invalid(f"max_results must be an integer, not {value!r}") from None
    if not 1 <= count <= MAX_RESULTS:
        raise invalid(f"max_results must be between 1 and {MAX_RESULTS}, not {count}")
    return count


def page_offset(token: Any) -> int:
    if not token:
        return 0
    try:
        data = json.loads(base64.urlsafe_b64decode(str(token).encode("ascii")))
        offset = data["offset"]
        if isinstance(offset, int) and offset >= 0:
            return offset
    except (ValueError, KeyError, TypeError, binascii.Error, UnicodeEncodeError):
        pass
    raise invalid(f"page_token {token!r} is not a token this server gave")


def page_token(offset: int) -> str:
    return base64.urlsafe_b64encode(json.dumps({"offset": offset}).encode("ascii")).decode("ascii")


def page(items: Sequence[Any], token: Any, limit: int) -> tuple[list[Any], str | None]:
    """One page of ``items`` and the token of the next one (None on the last page)."""
    start = page_offset(token)
    chosen = list(items[start:start + limit])
    return chosen, page_token(start + limit) if start + limit < len(items) else None

