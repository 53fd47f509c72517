"""A run's metric summaries and a long metric's chart candidates (``rundock.history.metric_reads``) computed in
SQLite and PostgreSQL, so that neither the run page nor a chart reads every value of a metric.

Summaries: one statement groups the run's rows by name on the metrics index (count, first and last row) and
reads the last (and first) row of each; whether some value is a number is looked up only when the last one is not.

Buckets: the metric's rows from its first scalar row to its last are split by their order of writing (``ord``,
which grows with every row of every metric) into ranges of equal width, and each range gives its number of scalar
values, its lowest and highest finite value with the row holding each, its first and last finite row and, where
it has values that are no finite number, the first of them. PostgreSQL computes all of it in one grouped pass
(an extreme's row rides along as ``MIN(ARRAY[y, ord])``). SQLite would sort a million rows to group them, so it
runs correlated aggregates per range over the index instead: one pass for the count and the lowest value, one
for the highest (its ``MIN``/``MAX`` report the row they were found in, one aggregate at a time), index lookups
for the first and last rows; a range with gaps is looked at again on its own. Only the candidates' rows are then
read. Where the metric was logged without steps, a candidate's x is its position among the metric's values: the
values counted in the ranges before its own, plus those before it in its range (counted for the candidates
only). A metric logged alone has one row per ``ord`` and gets exactly the buckets of
``metric_reads.buckets_of``; one logged among others gets ranges of about equal size.

A value counts as a number here as it does for ``metric_points``: JSON text starting with a digit or a minus and
a digit. NaN, infinities and numbers too large for a double are no finite numbers: gaps (in PostgreSQL, which
refuses to cast past a double's range, so is any numeral of 40 characters or more, as for its ``metric_points``).
"""

from __future__ import annotations

import json
import math
from array import array
from collections.abc import Iterator, Sequence
from typing import Any, Callable, Tuple

from rundock.history.backends.sql_query import POSTGRES, SQLITE, Dialect
from rundock.history.metric_reads import MetricBuckets, MetricSummary

Read = Callable[[str, Tuple[Any, ...]], "Sequence[Sequence[Any]]"]  # a store's read: statement, arguments -> rows
Points = Callable[[], "Tuple[array[float], array[float]]"]

_CHUNK = 400  # candidates per statement (SQLite allows 999 parameters on old versions)
_SQLITE_NUMERIC = "({0}value >= '0' AND {0}value < ':' OR {0}value >= '-0' AND {0}value < '-:')"
_POSTGRES_NUMERIC = ("(ascii({0}value) BETWEEN 48 AND 57 OR ascii({0}value) = 45 AND "
                     "ascii(substr({0}value, 2)) BETWEEN 48 AND 57)")  # a digit, or a minus and a digit
# A stored value as a finite double, NULL when it is none.
_SQLITE_Y = f"NULLIF(NULLIF(CASE WHEN {_SQLITE_NUMERIC.format('')} THEN CAST(value AS REAL) END, 9e999), -9e999)"
_POSTGRES_Y = f"CASE WHEN length(value) < 40 AND {_POSTGRES_NUMERIC.format('')} THEN value::double precision END"
_SPECIAL = "('NaN', 'Infinity', '-Infinity')"


def _number_test(d: Dialect, alias: str) -> str:
    numeric = (_SQLITE_NUMERIC if d is SQLITE else _POSTGRES_NUMERIC).format(alias + ".")
    return f"({alias}.kind = 'scalar' AND ({numeric} OR {alias}.value IN {_SPECIAL}))"


def summaries(read: Read, d: Dialect, run_id: str) -> list[MetricSummary]:
    """``metric_summaries`` in one statement."""
    p = d.param
    rows = read(f"SELECT s.name, m.kind, m.value, s.n, CASE WHEN m.description <> '' THEN m.description "
                f"ELSE f.description END, CASE WHEN {_number_test(d, 'm')} THEN 1 WHEN EXISTS (SELECT 1 FROM "
                f"metrics e WHERE e.run_id = {p} AND e.name = s.name AND {_number_test(d, 'e')}) THEN 1 ELSE 0 END "
                f"FROM (SELECT name, COUNT(*) AS n, MIN(ord) AS first, MAX(ord) AS last FROM metrics "
                f"WHERE run_id = {p} GROUP BY name) s "
                f"JOIN metrics m ON m.run_id = {p} AND m.name = s.name AND m.ord = s.last "
                f"JOIN metrics f ON f.run_id = {p} AND f.name = s.name AND f.ord = s.first ORDER BY s.first",
                (run_id,) * 4)
    return [MetricSummary(name, kind, int(n), json.loads(value), description or "", bool(numeric))
            for name, kind, value, n, description, numeric in rows]


class _Bucket:
    """One range of rows: ``a``..``b`` (ords), its counts, its first and last finite rows and the ords of its
    candidates (those, the extremes, and where a gap starts)."""

    def __init__(self, a: int, b: int, n: int, finite: int, ends: tuple[Any, Any], others: Sequence[Any]) -> None:
        self.a, self.b, self.n, self.finite = a, b, n, finite
        self.first, self.last = (None if e is None else int(e) for e in ends)
        self.ords = sorted({int(abs(o)) for o in (*ends, *others) if o is not None})

    def position(self, o: int) -> int | None:
        """Where row ``o`` stands among the range's scalar values, when that is known without counting: the
        first and last finite rows of a range without gaps are its first and last values."""
        if self.finite == self.n:
            return 0 if o == self.first else self.n - 1 if o == self.last else None
        return None


def buckets(read: Read, d: Dialect, run_id: str, name: str, x: str, count: int, points: Points) -> MetricBuckets:
    """``metric_buckets``: ``points`` reads every point (``metric_points``), for a metric no longer than
    ``count``."""
    if count < 1:
        raise ValueError(f"a metric is split into at least 1 bucket, not {count}")
    p = d.param
    end = f"(SELECT ord FROM metrics WHERE run_id = {p} AND name = {p} AND kind = 'scalar' ORDER BY ord {{}} LIMIT 1)"
    ((lo, hi),) = read(f"SELECT {end.format('ASC')}, {end.format('DESC')}", (run_id, name) * 2)
    if lo is None or hi is None:
        return MetricBuckets(0, array("d"), array("d"))
    span = int(hi) - int(lo) + 1
    if span <= count:  # no more rows than buckets
        return _whole(points)
    ranges = (_sqlite_ranges if d is SQLITE else _postgres_ranges)(read, run_id, name, int(lo), span, count)
    if sum(r.n for r in ranges) <= count:
        return _whole(points)
    return _candidates(read, d, run_id, name, x, ranges)


def _whole(points: Points) -> MetricBuckets:
    xs, ys = points()
    return MetricBuckets(len(ys), xs, array("d", (y if math.isfinite(y) else math.nan for y in ys)))


def _sqlite_ranges(read: Read, run_id: str, name: str, lo: int, span: int, count: int) -> list[_Bucket]:
    rows_of = "FROM metrics WHERE run_id = ?1 AND name = ?2 AND kind = 'scalar' AND ord BETWEEN r.a AND r.b"
    pick = f"(SELECT ord, {_SQLITE_Y} AS y {rows_of})"
    end = f"(SELECT ord {rows_of} AND {_SQLITE_Y} IS NOT NULL ORDER BY ord {{}} LIMIT 1)"
    # A value that is no finite number counts as -inf for the lowest: then the range has a gap, and is looked at
    # again on its own (rarely: most metrics have none), so that no value is converted twice in the first pass.
    rows = read(
        "WITH RECURSIVE r(i, a, b) AS (SELECT 0, ?3, ?3 + ?4 / ?5 - 1 UNION ALL SELECT i + 1, ?3 + ?4 * (i + 1) / ?5,"
        " ?3 + ?4 * (i + 2) / ?5 - 1 FROM r WHERE i + 1 < ?5) "
        f"SELECT a, b, (SELECT COUNT(*) || ' ' || COALESCE(CASE WHEN COUNT(*) = 0 THEN '' WHEN MIN(COALESCE(y, "
        f"-9e999)) > -9e999 THEN ord ELSE 'gap' END, '') FROM {pick}), "
        f"(SELECT CASE WHEN MAX(y) IS NOT NULL THEN ord END FROM {pick}), "
        f"{end.format('ASC')}, {end.format('DESC')} FROM r", (run_id, name, lo, span, count))
    ranges = []
    for a, b, packed, top, first, last in rows:
        n, low = (packed or "0 ").split(" ")
        if low != "gap":
            ranges.append(_Bucket(a, b, int(n), int(n), (first, last), [float(low) if low else None, top]))
            continue
        within = "FROM metrics WHERE run_id = ? AND name = ? AND kind = 'scalar' AND ord BETWEEN ? AND ?"
        ((finite, low_ord),) = read(f"SELECT COUNT(y), CASE WHEN MIN(y) IS NOT NULL THEN ord END FROM "
                                    f"(SELECT ord, {_SQLITE_Y} AS y {within})", (run_id, name, a, b))
        gap = read(f"SELECT ord {within} AND {_SQLITE_Y} IS NULL ORDER BY ord LIMIT 1", (run_id, name, a, b))
        ranges.append(_Bucket(a, b, int(n), int(finite), (first, last), [low_ord, top, *(g[0] for g in gap)]))
    return ranges


def _postgres_ranges(read: Read, run_id: str, name: str, lo: int, span: int, count: int) -> list[_Bucket]:
    rows = read(
        "SELECT i, COUNT(*), COUNT(y), (MIN(ARRAY[y, o]) FILTER (WHERE y IS NOT NULL))[2], "
        "(MAX(ARRAY[y, -o]) FILTER (WHERE y IS NOT NULL))[2], MIN(o) FILTER (WHERE y IS NOT NULL), "
        "MAX(o) FILTER (WHERE y IS NOT NULL), MIN(o) FILTER (WHERE y IS NULL) "
        f"FROM (SELECT ord::double precision AS o, {_POSTGRES_Y} AS y, ((ord - %s::bigint + 1) * %s::bigint - 1) "
        "/ %s::bigint AS i FROM metrics WHERE run_id = %s AND name = %s AND kind = 'scalar' AND ord BETWEEN %s AND %s "
        "OFFSET 0) p GROUP BY i ORDER BY i",  # OFFSET 0: y is computed once per row, not once per aggregate
        (lo, count, span, run_id, name, lo, lo + span - 1))
    return [_Bucket(lo + span * int(i) // count, lo + span * (int(i) + 1) // count - 1, int(n), int(finite),
                    (first, last), [low, top, gap])
            for i, n, finite, low, top, first, last, gap in rows]


def _candidates(read: Read, d: Dialect, run_id: str, name: str, x: str, ranges: list[_Bucket]) -> MetricBuckets:
    """The candidates' rows read, their x found (a position where no step was logged), in logging order."""
    wanted = [o for r in ranges for o in r.ords]
    rows: dict[int, Sequence[Any]] = {}
    for start in range(0, len(wanted), _CHUNK):
        chunk = wanted[start:start + _CHUNK]
        if d is SQLITE:
            sql = (f"SELECT ord, step, at, {_SQLITE_Y} FROM metrics WHERE run_id = ? AND name = ? AND ord IN "
                   f"({', '.join('?' * len(chunk))})")
            rows.update((int(r[0]), r) for r in read(sql, (run_id, name, *chunk)))
        else:
            rows.update((int(r[0]), r) for r in read(f"SELECT ord, step, at, {_POSTGRES_Y} FROM metrics WHERE "
                                                     "run_id = %s AND name = %s AND ord = ANY(%s)",
                                                     (run_id, name, chunk)))
    for bucket in ranges:  # a row gone since the pass (its run deleted meanwhile) is left out
        bucket.ords = [o for o in bucket.ords if o in rows]
    unstepped = [(o, r) for r in ranges for o in r.ords
                 if x != "time" and rows[o][1] is None and r.position(o) is None]
    counted = _positions(read, d, run_id, name, unstepped) if unstepped else {}
    xs, ys = array("d"), array("d")
    position = 0
    for bucket in ranges:
        for o in bucket.ords:
            _ord, step, at, y = rows[o]
            at_x = at if x == "time" else step
            if at_x is None:  # no step: its position among the metric's values
                known = bucket.position(o)
                at_x = position + (counted[o] if known is None else known)
            xs.append(float(at_x))
            ys.append(math.nan if y is None else float(y))
        position += bucket.n
    return MetricBuckets(position, xs, ys)


def _positions(read: Read, d: Dialect, run_id: str, name: str, rows: list[tuple[int, _Bucket]]) -> dict[int, int]:
    """For each (ord, its range): where that row stands among the range's scalar values, counted from the nearer
    end of the range."""
    out: dict[int, int] = {}
    count = ("(SELECT COUNT(*) FROM metrics WHERE run_id = {0} AND name = {0} AND kind = 'scalar' AND ord >= c.lo "
             "AND ord <= c.hi)")
    spans = [(o, r.a, o - 1) if o - r.a <= r.b - o else (o, o + 1, r.b) for o, r in rows]
    for start in range(0, len(spans), _CHUNK):
        chunk = spans[start:start + _CHUNK]
        if d is SQLITE:
            values = ", ".join(["(?, ?, ?)"] * len(chunk))
            found = read(f"WITH c(o, lo, hi) AS (VALUES {values}) SELECT c.o, {count.format('?')} FROM c",
                         (*(v for span in chunk for v in span), run_id, name))
        else:
            found = read(f"SELECT c.o, {count.format('%s')} FROM unnest(%s::bigint[], %s::bigint[], %s::bigint[]) "
                         "AS c(o, lo, hi)", (run_id, name, *([span[i] for span in chunk] for i in range(3))))
        out.update((int(o), int(n)) for o, n in found)
    for o, r in rows:  # counted after the row: its position is what is left before it
        if o - r.a > r.b - o:
            out[o] = r.n - 1 - out[o]
    return out


__all__ = ["POSTGRES", "SQLITE", "buckets", "summaries"]


def by_position(read: Read, sql: str, run_id: str, name: str, chunk: int) -> Iterator[list[Any]]:
    """The rows of ``sql`` for one metric, ``chunk`` at a time in order of writing: its first column is the row's
    ``ord`` and its last two parameters are ``ord >`` and ``LIMIT`` (each chunk a statement of its own, so a
    lock or a snapshot is never held across a long read)."""
    last = 0
    while True:
        rows = list(read(sql, (run_id, name, last, chunk)))
        yield rows
        if len(rows) < chunk:
            return
        last = rows[-1][0]
