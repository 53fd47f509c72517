"""The SQLite backend's reads of metrics: a metric's values in chunks (never all as records at once), its
chart candidates and the run's summaries computed in SQL (``sql_metrics``), and its version for caches."""

from __future__ import annotations

import abc
import json
import sqlite3
from array import array
from collections.abc import Iterable, Iterator
from typing import Any

from rundock.history.backends import sql_metrics, sql_query
from rundock.history.backends.sql_query import number_of
from rundock.history.metric_reads import MetricBuckets, MetricSummary
from rundock.history.records import MetricRecord

VALUES_CHUNK = 20_000  # metric values read at a time by ``metric_values``
# A plain number is turned into a float by SQLite, faster than by Python; the rest is parsed by ``number_of``.
_NUMBER = ("CASE WHEN length(value) < 40 AND (value GLOB '[0-9]*' OR value GLOB '-[0-9]*') THEN CAST(value AS REAL) "
           "ELSE value END")


class SqliteMetricReads(abc.ABC):
    """The metric reads of ``SqliteRunStore``, over its ``_read``."""

    @abc.abstractmethod
    def _read(self, sql: str, args: Iterable[Any] = ()) -> list[sqlite3.Row]:
        """The rows of one statement."""

    def get_metric_records(self, run_id: str, name: str | None = None) -> list[MetricRecord]:
        sql = "SELECT name, kind, value, step, description, at FROM metrics WHERE run_id = ?"
        args: list[Any] = [run_id]
        if name is not None:
            sql += " AND name = ?"
            args.append(name)
        return [MetricRecord(n, k, json.loads(v), s, d, at) for n, k, v, s, d, at in self._read(sql + " ORDER BY ord",
                                                                                               args)]

    def metric_values(self, run_id: str, name: str) -> Iterator[tuple[int | None, float, float | None]]:
        sql = (f"SELECT ord, step, at, {_NUMBER} FROM metrics WHERE run_id = ? AND name = ? AND ord > ? "
               "AND kind = 'scalar' ORDER BY ord LIMIT ?")  # the lock let go between chunks
        for rows in sql_metrics.by_position(self._read, sql, run_id, name, VALUES_CHUNK):
            yield from ((step, at, value if type(value) is float else number_of(value))
                        for _ord, step, at, value in rows)

    def metric_points(self, run_id: str, name: str, x: str = "step") -> tuple[array[float], array[float]]:
        column = "at" if x == "time" else "step"
        xs, ys = array("d"), array("d")
        sql = (f"SELECT ord, {column}, {_NUMBER} FROM metrics WHERE run_id = ? AND name = ? AND ord > ? "
               "AND kind = 'scalar' ORDER BY ord LIMIT ?")
        for rows in sql_metrics.by_position(self._read, sql, run_id, name, VALUES_CHUNK):
            sql_query.add_points(xs, ys, rows)
        return xs, ys

    def metric_version(self, run_id: str, name: str) -> int | None:
        # From the metrics themselves (the index's last entry), not latest_metrics: a writer from before the
        # table existed (an agent started before an upgrade) still moves the version on.
        rows = self._read("SELECT MAX(ord) FROM metrics WHERE run_id = ? AND name = ?", (run_id, name))
        return int(rows[0][0]) if rows and rows[0][0] is not None else None

    def metric_summaries(self, run_id: str) -> list[MetricSummary]:
        return sql_metrics.summaries(self._read, sql_metrics.SQLITE, run_id)

    def metric_buckets(self, run_id: str, name: str, x: str = "step", buckets: int = 2000) -> MetricBuckets:
        return sql_metrics.buckets(self._read, sql_metrics.SQLITE, run_id, name, x, buckets,
                                   lambda: self.metric_points(run_id, name, x))
