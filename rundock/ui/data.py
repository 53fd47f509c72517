"""The runs-table query and metric series, behind one function each.

``query_runs`` hands the table's query to the store's ``query_runs`` (fast SQL in the SQLite and PostgreSQL
backends, ``rundock.history.query``); an agent token, which reads only the runs of its pools, is answered by
the same query's plain-Python meaning over its pools' runs. Series come from ``rundock.ui.series`` (LTTB).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Any

from rundock.history import query as history_query
from rundock.history.records import RunRecord
from rundock.history.store import RunStore
from rundock.ui import series

TableQuery = history_query.RunQuery  # the runs table asks exactly what the store's query answers


class _PoolsView:
    """The part of a store ``query_runs_in_python`` reads, narrowed to runs whose target is one of ``pools``."""

    def __init__(self, store: RunStore, pools: tuple[str, ...]) -> None:
        self.store = store
        self.pools = pools

    def list_runs(self, **filters: Any) -> list[RunRecord]:
        return [r for r in self.store.list_runs(**filters) if r.target in self.pools]

    def get_metric_records(self, run_id: str) -> Iterable[Any]:
        return self.store.get_metric_records(run_id)


def query_runs(store: RunStore, q: TableQuery, pools: tuple[str, ...] | None = None
               ) -> tuple[list[tuple[RunRecord, dict[str, float]]], int]:
    """(rows of (run, latest value of each of ``q.metrics``), total matching) for one page of the table.
    ``pools``: only runs whose target is one of them (an agent token)."""
    page = store.query_runs(q) if pools is None else history_query.query_runs_in_python(_PoolsView(store, pools), q)
    return [(row.record, dict(row.latest)) for row in page.rows], int(page.total)


def metric_names(store: RunStore, experiment: str | None, pools: tuple[str, ...] | None = None) -> list[str]:
    """Names of the metrics with a number as latest value in ``experiment`` (every one: None), for the columns;
    ``pools``: of the runs whose target is one of them only (an agent token sees no other run's names)."""
    if pools is not None:
        return history_query.metric_names_in_python(_PoolsView(store, pools), experiment)
    return list(store.metric_names(experiment))


def metric_series(store: RunStore, run_id: str, name: str, *, max_points: int = 2000, x: str = "step"
                  ) -> dict[str, Any]:
    """``{"name", "x", "y", "total_points", "downsampled"}`` for a scalar metric, downsampled with LTTB."""
    return series.metric_series(store, run_id, name, max_points=max_points, x=x)


def metric_csv(store: RunStore, run_id: str, name: str) -> Iterator[str]:
    """Every logged value of a metric as CSV lines, streamed."""
    return series.metric_csv(store, run_id, name)
