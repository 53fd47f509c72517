"""The runs-table query (``rundock.history.query``) as SQL, for the SQLite and PostgreSQL backends.

Filtering, sorting, counting and paging happen in the database: a page of the table reads the rows it shows (and
the tags, properties and latest values of those rows), whatever the size of the history. Latest values come from
``latest_metrics``, one row per (run, metric), kept up to date as metrics are written (see each backend's schema
module). Every value from the query (keys, metric names, text) is a bound parameter, never SQL text; the only
text spliced in is chosen here (column names, comparison operators from ``METRIC_OPS``).

A page sorted by a column with an index (creation time, number) is read in index order and stops after its
last row, so its total is a second, separate count. Any other sort has to visit and sort every match anyway, so
the page's statement counts them in the same pass (``COUNT(*) OVER ()``): the filters run once, not twice.

Both databases give the answers ``query_runs_in_python`` gives: runs without a value for the sort key sort last
in either direction; ties go by creation time, number and run id; text compares by code point (PostgreSQL
orders with ``COLLATE "C"``, which is code point order in UTF-8); text search folds ASCII letters only.
"""

from __future__ import annotations

import dataclasses
import math
from array import array
from collections.abc import Iterable, Sequence
from typing import Any

from rundock.history.backends.sql_common import RUN_COLUMNS
from rundock.history.query import RunPage, RunQuery, RunRow, ascii_lower
from rundock.history.records import RunRecord
from rundock.states import RunStatus

RUN_COLUMNS_R = ", ".join(f"r.{c.strip()}" for c in RUN_COLUMNS.split(","))
_OPS = {"<": "<", "<=": "<=", ">": ">", ">=": ">=", "==": "="}
_COLUMNS = {"created_at": "r.created_at", "run_number": "r.number", "status": "r.status",
            "display_name": "r.display_name", "experiment": "r.experiment"}
_TEXT_SORTS = ("status", "display_name", "experiment")
_INDEXED_SORTS = ("created_at", "run_number")  # an index gives their order: a page of them can stop early
_UPPER, _LOWER = "ABCDEFGHIJKLMNOPQRSTUVWXYZ", "abcdefghijklmnopqrstuvwxyz"


@dataclasses.dataclass(frozen=True)
class Dialect:
    """What differs between the two databases' SQL."""

    param: str  # the placeholder
    text_order: str  # appended to a text sort key
    lower: str  # ``{}`` with its ASCII letters folded
    contains: str  # ``{0}`` holds ``{1}``
    archived: tuple[Any, Any]  # how ``archived`` False and True are bound


SQLITE = Dialect("?", "", "lower({})", "instr({0}, {1}) > 0", (0, 1))
POSTGRES = Dialect("%s", ' COLLATE "C"', f"translate({{}}, '{_UPPER}', '{_LOWER}')", "strpos({0}, {1}) > 0",
                   (False, True))


@dataclasses.dataclass
class Statements:
    """The statements of one query: the page of runs (``RUN_COLUMNS``) and the count of all matches. When
    ``counted``, each row of the page ends with that count too, and ``count`` is needed only for a page that
    comes back empty (past the last match)."""

    page: str
    page_args: list[Any]
    count: str
    count_args: list[Any]
    counted: bool


def statements(q: RunQuery, d: Dialect, now: float) -> Statements:
    """The SQL of ``q`` in dialect ``d`` (``now``: the end of a running run's duration)."""
    where, args = _where(q, d)
    p = d.param
    join, join_args, key = "", [], ""
    if q.sort.startswith("metric:"):
        join, key = f" LEFT JOIN latest_metrics s ON s.run_id = r.run_id AND s.name = {p}", "s.value"
        join_args = [q.sort[len("metric:"):]]
    elif q.sort.startswith("tag:"):
        join, key = f" LEFT JOIN tags s ON s.run_id = r.run_id AND s.key = {p}", "s.value" + d.text_order
        join_args = [q.sort[len("tag:"):]]
    elif q.sort.startswith("property:"):
        join, key = f" LEFT JOIN properties s ON s.run_id = r.run_id AND s.key = {p}", "s.value" + d.text_order
        join_args = [q.sort[len("property:"):]]
    elif q.sort == "duration":
        key = f"(CASE WHEN r.start_at IS NULL THEN NULL ELSE COALESCE(r.end_at, {p}) - r.start_at END)"
    else:
        key = _COLUMNS[q.sort] + (d.text_order if q.sort in _TEXT_SORTS else "")
    order_args: list[Any] = [now, now] if q.sort == "duration" else []
    direction = "DESC" if q.descending else "ASC"
    bare = key.replace(d.text_order, "") if d.text_order else key
    order = (f"({bare} IS NULL), {key} {direction}, r.created_at {direction}, r.number {direction}, "
             f"r.run_id{d.text_order} {direction}")
    conditions = f" WHERE {' AND '.join(where)}" if where else ""
    counted = q.sort not in _INDEXED_SORTS
    total = ", COUNT(*) OVER ()" if counted else ""
    page = f"SELECT {RUN_COLUMNS_R}{total} FROM runs r{join}{conditions} ORDER BY {order} LIMIT {p} OFFSET {p}"
    return Statements(page, [*join_args, *args, *order_args, q.limit, q.offset],
                      f"SELECT COUNT(*) FROM runs r{conditions}", list(args), counted)


def split_page(st: Statements, rows: Sequence[Sequence[Any]]) -> tuple[Sequence[Sequence[Any]], int | None]:
    """The rows of ``st.page`` as ``RUN_COLUMNS`` rows, and the total when the page carried it (None: run
    ``st.count``)."""
    if not st.counted or not rows:
        return rows, None
    return [row[:-1] for row in rows], int(rows[0][-1])


def _where(q: RunQuery, d: Dialect) -> tuple[list[str], list[Any]]:
    p = d.param
    where: list[str] = []
    args: list[Any] = []
    if q.experiment is not None:
        where.append(f"r.experiment = {p}")
        args.append(q.experiment)
    if q.statuses:
        wanted = sorted({RunStatus(s).value for s in q.statuses})
        where.append(f"r.status IN ({', '.join([p] * len(wanted))})")
        args.extend(wanted)
    if not q.include_children:
        where.append("r.parent_id IS NULL")
    if q.archived is not None:
        where.append("r.archived = " + p)
        args.append(d.archived[bool(q.archived)])
    for table, pairs in (("tags", q.tags), ("properties", q.properties)):
        for key, value in pairs:
            same = "" if value is None else f" AND f.value = {p}"
            where.append(f"EXISTS (SELECT 1 FROM {table} f WHERE f.run_id = r.run_id AND f.key = {p}{same})")
            args.extend([key] if value is None else [key, value])
    for name, op, bound in q.metric_filters:
        where.append(f"EXISTS (SELECT 1 FROM latest_metrics f WHERE f.run_id = r.run_id AND f.name = {p} "
                     f"AND f.value {_OPS[op]} {p})")
        args.extend([name, float(bound)])
    if q.text:
        needle = ascii_lower(q.text)
        where.append("(" + d.contains.format(d.lower.format("r.run_id"), p) + " OR " +
                     d.contains.format(d.lower.format("COALESCE(r.display_name, '')"), p) + ")")
        args.extend([needle, needle])
    return where, args


def latest_statement(d: Dialect, run_ids: Sequence[str], names: Sequence[str]) -> tuple[str, list[Any]]:
    """The latest values of ``names`` of the runs: rows (run_id, name, value, nan)."""
    p = d.param
    return (f"SELECT run_id, name, value, nan FROM latest_metrics WHERE run_id IN ({', '.join([p] * len(run_ids))}) "
            f"AND name IN ({', '.join([p] * len(names))})", [*run_ids, *names])


def page_of(runs: list[RunRecord], latest_rows: Iterable[Sequence[Any]], total: int) -> RunPage:
    """The page: the runs in order, each with its latest values (NaN where ``nan`` says so)."""
    latest: dict[str, dict[str, float]] = {r.run_id: {} for r in runs}
    for run_id, name, value, nan in latest_rows:
        if value is not None:
            latest[run_id][name] = float(value)
        elif nan:
            latest[run_id][name] = math.nan
    return RunPage([RunRow(r, latest[r.run_id]) for r in runs], int(total))


def metric_names_statement(d: Dialect, experiment: str | None) -> tuple[str, list[Any]]:
    """The names of the metrics with a latest number (in the experiment's runs), sorted: rows (name,).

    The distinct names are walked through the ``(name, value)`` index, one step per name (a recursive query,
    not a scan of every row); each name is then checked by one search that stops at its first run with a
    number (in the experiment), so the cost follows the number of names, not of runs. (The check is a scalar
    subquery, not EXISTS: PostgreSQL would turn an EXISTS into a join over every row.)"""
    p = d.param
    numeric = "(l.value IS NOT NULL OR l.nan)" if d is POSTGRES else "(l.value IS NOT NULL OR l.nan = 1)"
    scope, args = ("JOIN runs r ON r.run_id = l.run_id ", [experiment]) if experiment is not None else ("", [])
    where = f" AND r.experiment = {p}" if experiment is not None else ""
    return ("WITH RECURSIVE n(name) AS (SELECT MIN(name) FROM latest_metrics UNION ALL SELECT (SELECT MIN(l.name) "
            "FROM latest_metrics l WHERE l.name > n.name) FROM n WHERE n.name IS NOT NULL) "
            f"SELECT n.name FROM n WHERE n.name IS NOT NULL AND (SELECT 1 FROM latest_metrics l {scope}"
            f"WHERE l.name = n.name{where} AND {numeric} LIMIT 1) IS NOT NULL ORDER BY n.name{d.text_order}", args)


def add_points(xs: array[float], ys: array[float], rows: Sequence[Sequence[Any]]) -> None:
    """Append a chunk of rows ``(ord, x, y)`` of ``metric_points`` to its arrays: ``x`` a number or None (the
    value's position), ``y`` a float or the stored text of a value SQL did not turn into one. A chunk of plain
    numbers goes into the arrays in C; only a chunk with something else is looked at value by value."""
    if not rows:
        return
    _ords, col_x, col_y = zip(*rows)
    try:
        xs.extend(array("d", col_x))
    except TypeError:
        start = len(xs)
        xs.extend(array("d", (float(start + i if v is None else v) for i, v in enumerate(col_x))))
    try:
        ys.extend(array("d", col_y))
    except TypeError:
        ys.extend(array("d", (_point(v) for v in col_y)))


def _point(value: Any) -> float:
    number = number_of(value) if isinstance(value, str) else value
    return math.nan if number is None else float(number)


def number_of(text: str) -> float | None:
    """A stored scalar value (JSON text) as a number, or None (``scalar_number`` of the value it holds)."""
    try:
        value = float(text)
    except ValueError:
        return None
    if math.isinf(value) and text not in ("Infinity", "-Infinity"):
        return None  # an integer too big for a float
    return value
