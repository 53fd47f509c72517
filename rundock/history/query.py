"""The runs-table query: which runs, in which order, one page at a time, with the latest value of chosen metrics.

``RunsStore.query_runs(RunQuery(...))`` answers one page of the runs table and how many runs match in all. The
meaning of every field is written here once, and ``query_runs_in_python`` is that meaning as plain Python over
``list_runs`` (the default every backend inherits: correct, but it reads every run). The SQL backends answer the
same query in the database, from a table that keeps the latest value of each (run, metric); the contract tests
hold them to the same answers.

- A metric's *latest value* is the value it was logged with last (logging order, not step order), when that is a
  number: a scalar int or float (not a bool), whose JSON text is under 40 characters (bigger integers are not
  compared). NaN is a latest value (``RunRow.latest`` holds it) that matches no threshold and sorts last.
- Sorting puts runs without a value for the sort key (no such tag, property or metric, a NaN latest value, a
  run not started yet for ``duration``) last, whichever the direction. Ties are broken by ``created_at``, then the
  run number, then the run id, in the sort's direction, so that pages never overlap.
- Text is compared by code point (``display_name``, ``experiment``, tag and property values, status names).
- ``duration`` is ``end_at - start_at``; for a run still going, ``now - start_at``.
"""

from __future__ import annotations

import dataclasses
import math
import time
from typing import Any, Callable

from rundock.history.records import RunRecord

SORT_COLUMNS = ("created_at", "run_number", "status", "duration", "display_name", "experiment")
SORT_PREFIXES = ("metric:", "tag:", "property:")
METRIC_OPS = ("<", "<=", ">", ">=", "==")
MAX_LIMIT = 1000  # the most rows one page may hold
MAX_NUMBER_TEXT = 40  # a number whose JSON text is this long or longer is not a latest value


@dataclasses.dataclass(frozen=True)
class RunQuery:
    """What the runs table asks for. Every filter narrows (they are ANDed); empty ones do not filter.

    ``tags``/``properties``: ``(key, None)`` = the run has the key; ``(key, value)`` = its value equals ``value``.
    ``metric_filters``: ``(metric name, op, value)`` with ``op`` in ``METRIC_OPS``, on the metric's latest value.
    ``text``: a substring of the run id or the display name, case-insensitive for ASCII letters.
    ``sort``: one of ``SORT_COLUMNS`` or ``metric:<name>``, ``tag:<key>``, ``property:<key>``.
    ``metrics``: the metrics whose latest values each row carries (the table's metric columns).
    ``archived``: None = archived or not; False (the default) = only runs not archived; True = only archived ones.
    """

    experiment: str | None = None
    statuses: tuple[str, ...] = ()
    tags: tuple[tuple[str, str | None], ...] = ()
    properties: tuple[tuple[str, str | None], ...] = ()
    metric_filters: tuple[tuple[str, str, float], ...] = ()
    text: str | None = None
    include_children: bool = False
    sort: str = "created_at"
    descending: bool = True
    limit: int = 50
    offset: int = 0
    metrics: tuple[str, ...] = ()
    archived: bool | None = False

    def __post_init__(self) -> None:
        check_query(self)


@dataclasses.dataclass(frozen=True)
class RunRow:
    """One row of the runs table: the run, and the latest value of each requested metric it has."""

    record: RunRecord
    latest: dict[str, float]


@dataclasses.dataclass(frozen=True)
class RunPage:
    """One page of rows, and how many runs match the query in all."""

    rows: list[RunRow]
    total: int


def check_query(q: RunQuery) -> None:
    """ValueError naming the field when a query cannot be answered (every backend checks the same way)."""
    if q.sort not in SORT_COLUMNS and not any(q.sort.startswith(p) and len(q.sort) > len(p) for p in SORT_PREFIXES):
        raise ValueError(f"cannot sort runs by {q.sort!r}; sort by one of {', '.join(SORT_COLUMNS)}, "
                         f"or metric:<name>, tag:<key>, property:<key>")
    for name, op, value in q.metric_filters:
        if op not in METRIC_OPS:
            raise ValueError(f"metric filter on {name!r}: unknown comparison {op!r}; use one of {' '.join(METRIC_OPS)}")
        if not isinstance(value, (int, float)) or isinstance(value, bool) or math.isnan(value):
            raise ValueError(f"metric filter on {name!r}: compare with a number, not {value!r}")
    if not 1 <= q.limit <= MAX_LIMIT:
        raise ValueError(f"a page holds 1 to {MAX_LIMIT} runs, not {q.limit}")
    if q.offset < 0:
        raise ValueError(f"a page starts at run 0 or later, not {q.offset}")


def latest_number(kind: str, value: Any) -> float | None:
    """The number a logged value counts as for the runs table (NaN included), or None (see the module doc)."""
    if kind != "scalar" or type(value) not in (int, float):
        return None
    if type(value) is int and len(str(value)) >= MAX_NUMBER_TEXT:
        return None
    return float(value)


def scalar_number(value: Any) -> float | None:
    """A scalar metric value as a float (NaN and infinities included), or None when it is not a number."""
    if type(value) is float:
        return value
    if type(value) is int:
        try:
            return float(value)
        except OverflowError:
            return None
    return None


def compare(value: float, op: str, bound: float) -> bool:
    """``value <op> bound``; NaN matches nothing."""
    if op == "<":
        return value < bound
    if op == "<=":
        return value <= bound
    if op == ">":
        return value > bound
    if op == ">=":
        return value >= bound
    return value == bound


def ascii_lower(text: str) -> str:
    """``text`` with ASCII letters in lower case only (what SQLite's LIKE folds)."""
    return text.translate(_ASCII_LOWER)


_ASCII_LOWER = str.maketrans("ABCDEFGHIJKLMNOPQRSTUVWXYZ", "abcdefghijklmnopqrstuvwxyz")


def query_runs_in_python(store: Any, q: RunQuery, now: float | None = None) -> RunPage:
    """The answer to ``q`` computed in Python over ``store.list_runs`` and ``store.get_metric_records``."""
    now = time.time() if now is None else now
    runs: list[RunRecord] = store.list_runs(experiment=q.experiment, statuses=q.statuses or None,
                                            include_children=q.include_children)
    runs = [r for r in runs if _matches(r, q)]
    wanted = {name for name, _op, _v in q.metric_filters} | set(q.metrics)
    if q.sort.startswith("metric:"):
        wanted.add(q.sort[len("metric:"):])
    latest = {r.run_id: latest_values(store, r.run_id, wanted) for r in runs} if wanted else {}
    runs = [r for r in runs if all(compare(latest[r.run_id].get(n, math.nan), op, v) for n, op, v in q.metric_filters)]
    key = _sort_key(q.sort, latest, now)
    present = [r for r in runs if key(r) is not None]
    absent = [r for r in runs if key(r) is None]
    present.sort(key=lambda r: (key(r), r.created_at, r.number, r.run_id), reverse=q.descending)
    absent.sort(key=lambda r: (r.created_at, r.number, r.run_id), reverse=q.descending)
    page = (present + absent)[q.offset:q.offset + q.limit]
    rows = [RunRow(r, {n: v for n, v in latest.get(r.run_id, {}).items() if n in q.metrics}) for r in page]
    return RunPage(rows, len(runs))


def latest_values(store: Any, run_id: str, names: set[str]) -> dict[str, float]:
    """The latest value of each metric in ``names`` that the run has one for."""
    last: dict[str, Any] = {}
    for m in store.get_metric_records(run_id):
        if m.name in names:
            last[m.name] = m
    numbers = {name: latest_number(m.kind, m.value) for name, m in last.items()}
    return {name: v for name, v in numbers.items() if v is not None}


def metric_names_in_python(store: Any, experiment: str | None) -> list[str]:
    """The names of the metrics with a latest value in the experiment's runs (every run's when None)."""
    names: set[str] = set()
    for run in store.list_runs(experiment=experiment):
        last: dict[str, Any] = {}
        for m in store.get_metric_records(run.run_id):
            last[m.name] = m
        names.update(n for n, m in last.items() if latest_number(m.kind, m.value) is not None)
    return sorted(names)


def _matches(run: RunRecord, q: RunQuery) -> bool:
    if q.archived is not None and run.archived != q.archived:
        return False
    for key, value in q.tags:
        if key not in run.tags or (value is not None and run.tags[key] != value):
            return False
    for key, value in q.properties:
        if key not in run.properties or (value is not None and run.properties[key] != value):
            return False
    if q.text:
        needle = ascii_lower(q.text)
        if needle not in ascii_lower(run.run_id) and needle not in ascii_lower(run.display_name or ""):
            return False
    return True


def _sort_key(sort: str, latest: dict[str, dict[str, float]], now: float) -> Callable[[RunRecord], Any]:
    if sort.startswith("metric:"):
        name = sort[len("metric:"):]

        def by_metric(r: RunRecord) -> float | None:
            value = latest[r.run_id].get(name)
            return None if value is None or math.isnan(value) else value
        return by_metric
    if sort.startswith("tag:"):
        key = sort[len("tag:"):]
        return lambda r: r.tags.get(key)
    if sort.startswith("property:"):
        key = sort[len("property:"):]
        return lambda r: r.properties.get(key)
    if sort == "duration":
        return lambda r: None if r.start_at is None else (r.end_at if r.end_at is not None else now) - r.start_at
    column = {"run_number": "number", "status": "status"}.get(sort, sort)
    if column == "status":
        return lambda r: r.status.value
    return lambda r: getattr(r, column)


def query_to_json(q: RunQuery) -> dict[str, Any]:
    """``q`` as a JSON object (the body of ``POST /api/v1/runs/query``)."""
    out = dataclasses.asdict(q)
    for name in ("statuses", "tags", "properties", "metric_filters", "metrics"):
        out[name] = [list(v) if isinstance(v, tuple) else v for v in out[name]]
    return out


def query_from_json(data: Any) -> RunQuery:
    """The query a JSON object asks for; ValueError naming the field that is wrong."""
    if not isinstance(data, dict):
        raise ValueError("a runs query is a JSON object")
    unknown = set(data) - {f.name for f in dataclasses.fields(RunQuery)}
    if unknown:
        raise ValueError(f"unknown field(s) in a runs query: {', '.join(sorted(unknown))}")
    fields: dict[str, Any] = {}
    for name, value in data.items():
        if name in ("statuses", "metrics"):
            fields[name] = tuple(_typed(v, str, name) for v in _list(value, name))
        elif name in ("tags", "properties"):
            fields[name] = tuple((_typed(k, str, name), None if v is None else _typed(v, str, name))
                                 for k, v in (_pair(p, 2, name) for p in _list(value, name)))
        elif name == "metric_filters":
            fields[name] = tuple((_typed(n, str, name), _typed(op, str, name), float(_typed(v, (int, float), name)))
                                 for n, op, v in (_pair(p, 3, name) for p in _list(value, name)))
        elif name in ("include_children", "descending"):
            fields[name] = _typed(value, bool, name)
        elif name in ("limit", "offset"):
            fields[name] = _typed(value, int, name)
        elif name == "archived":
            fields[name] = None if value is None else _typed(value, bool, name)
        else:
            fields[name] = None if value is None and name != "sort" else _typed(value, str, name)
    return RunQuery(**fields)


def _list(value: Any, name: str) -> list[Any]:
    if not isinstance(value, list):
        raise ValueError(f"field {name!r} of a runs query must be a list")
    return value


def _pair(value: Any, size: int, name: str) -> list[Any]:
    if not isinstance(value, list) or len(value) != size:
        raise ValueError(f"field {name!r} of a runs query holds lists of {size} items")
    return value


def _typed(value: Any, kind: Any, name: str) -> Any:
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise ValueError(f"field {name!r} of a runs query: {value!r} is not of the expected type")
    return value
