"""Figures 19-21: the web UI's data on a large history: a page of the runs table, a long metric drawn.

The 100,000 runs go in through each database's fastest path (one transaction of ``executemany`` in SQLite,
``COPY`` in PostgreSQL), then the latest-value table is filled the way an upgrade fills it. A page is timed as
the UI's server spends it: ``query_runs`` and the JSON of its rows. The baseline is what a UI without the
query would do: ``list_runs`` and the filtering and sorting in Python (sorting by creation time: reading each
run's metrics as well would take minutes).
"""

from __future__ import annotations

import json
import random
import secrets
import time
from collections.abc import Callable
from pathlib import Path

from bench.common import Figure, log, p50
from rundock.history import wire
from rundock.history.backends import postgres_schema, sqlite_file
from rundock.history.backends.sqlite import SqliteRunStore
from rundock.history.query import RunPage, RunQuery
from rundock.history.records import MetricRecord
from rundock.history.store import RunStore
from rundock.ui.series import metric_series

RUNS = 100_000
POINTS = 1_000_000
REPEATS = 20
QUERY = RunQuery(experiment="big", statuses=("Completed",), tags=(("team", "red"),),
                 metric_filters=(("acc", ">", 0.5),), sort="metric:loss", descending=False, metrics=("loss", "acc"))
TEAMS = ("red", "blue", "green")
STATUSES = ("Completed", "Completed", "Completed", "Failed", "Canceled")


def _rows(n: int) -> tuple[list[tuple[object, ...]], list[tuple[str, str, str]], list[tuple[str, str, str]]]:
    rnd = random.Random(19)
    runs: list[tuple[object, ...]] = []
    tags: list[tuple[str, str, str]] = []
    metrics: list[tuple[str, str, str]] = []
    for i in range(n):
        run_id = f"big_{i:08d}_{secrets.token_hex(4)}"
        status = STATUSES[i % len(STATUSES)]
        runs.append((run_id, "big", i + 1, status, 1.7e9 + i, None, "rundock.scriptrun", f"trial {i}", None, "local",
                     "{}", None, "bench", None, 1.7e9 + i + 1, 1.7e9 + i + 60 + rnd.random() * 600, "", None, None,
                     None, 0))
        tags.append((run_id, "team", TEAMS[i % 3]))
        metrics.append((run_id, "loss", repr(rnd.random())))
        metrics.append((run_id, "acc", repr(rnd.random())))
    return runs, tags, metrics


def _fill_sqlite(store: SqliteRunStore) -> None:
    runs, tags, metrics = _rows(RUNS)
    with store._write() as db:
        db.executemany(f"INSERT INTO runs VALUES ({', '.join('?' * 21)})", runs)
        db.executemany("INSERT INTO tags VALUES (?, ?, ?)", tags)
        db.executemany("INSERT INTO metrics (run_id, name, kind, value, step, description, at) "
                       "VALUES (?, ?, 'scalar', ?, NULL, '', 0)", metrics)
        for statement in sqlite_file.REFILL_LATEST:
            db.execute(statement)
    store._read("ANALYZE")


def _fill_postgres(uri: str) -> None:
    import psycopg

    runs, tags, metrics = _rows(RUNS)
    with psycopg.connect(uri) as conn:
        with conn.cursor() as cur:
            with cur.copy("COPY runs FROM STDIN") as copy:
                for row in runs:
                    copy.write_row(row[:-1] + (False,))
            with cur.copy("COPY tags FROM STDIN") as copy:
                for row in tags:
                    copy.write_row(row)
            with cur.copy("COPY metrics (run_id, name, kind, value, step, description, at) FROM STDIN") as copy:
                for run_id, name, value in metrics:
                    copy.write_row((run_id, name, "scalar", value, None, "", 0.0))
            cur.execute(postgres_schema._VERSION_2[-1])  # the upgrade's fill of the latest values
        conn.commit()
        conn.execute("ANALYZE")


def _serialize(page: RunPage) -> str:
    return json.dumps({"rows": [{"run": wire.run_to_json(r.record), "latest": r.latest} for r in page.rows],
                       "total": page.total})


def _naive(store: RunStore) -> str:
    runs = [r for r in store.list_runs(experiment="big", statuses=["Completed"], include_children=False)
            if r.tags.get("team") == "red" and not r.archived]
    runs.sort(key=lambda r: r.created_at, reverse=True)
    return json.dumps({"rows": [wire.run_to_json(r) for r in runs[:50]], "total": len(runs)})


def _times(action: Callable[[], object], repeats: int) -> list[float]:
    out = []
    for _ in range(repeats):
        began = time.perf_counter()
        action()
        out.append(time.perf_counter() - began)
    return out


def _table_figure(number: int, name: str, store: RunStore) -> Figure:
    page = store.query_runs(QUERY)
    log(f"{name}: {page.total} matching runs")
    ours = _times(lambda: _serialize(store.query_runs(QUERY)), REPEATS)
    baseline = _times(lambda: _naive(store), 3)
    return Figure(number, f"runs table page, {RUNS:,} runs in {name}: filter (status, tag, metric threshold) + sort "
                          "by a metric's latest value + page of 50, with the total", "ms", ours,
                  "p50 <= 300 ms server time", p50(ours) <= 0.3,
                  "`list_runs` + filtering and sorting in Python (by creation time only)", baseline,
                  "query_runs and the JSON of its page; SQLite and PostgreSQL count, filter, sort and page in SQL "
                  "from a table of each run's latest metric values.")


def runs_table(root: Path) -> list[Figure]:
    figures = []
    store = SqliteRunStore(str(root / "ui-table.db"))
    try:
        began = time.perf_counter()
        _fill_sqlite(store)
        log(f"SQLite: {RUNS:,} runs stored in {time.perf_counter() - began:.1f} s")
        figures.append(_table_figure(19, "SQLite", store))
    finally:
        store.close()
    try:
        from tests import pg
    except ImportError:
        return figures
    with pg.fresh_schema() as uri:
        from rundock.history.backends.postgres import PostgresRunStore

        with PostgresRunStore(uri) as pg_store:
            began = time.perf_counter()
            _fill_postgres(uri)
            log(f"PostgreSQL: {RUNS:,} runs stored in {time.perf_counter() - began:.1f} s")
            figures.append(_table_figure(20, "PostgreSQL", pg_store))
    return figures


def long_series(root: Path) -> Figure:
    with SqliteRunStore(str(root / "ui-series.db")) as store:
        run = store.create_run("series", created_at=1.7e9).run_id
        rnd = random.Random(21)
        began, y = time.perf_counter(), 0.0
        for start in range(0, POINTS, 100_000):
            batch = []
            for i in range(start, start + 100_000):
                y += rnd.uniform(-1, 1)
                batch.append(MetricRecord("loss", "scalar", y, i, "", 1.7e9 + i))
            store.log_metrics(run, batch)
        log(f"{POINTS:,} values stored in {time.perf_counter() - began:.1f} s")
        ours = _times(lambda: json.dumps(metric_series(store, run, "loss", max_points=2000)), 5)
        baseline = _times(lambda: json.dumps({"x": [s for s, _t, _v in store.metric_values(run, "loss")],
                                              "y": [v for _s, _t, v in store.metric_values(run, "loss")]}), 3)
    return Figure(21, f"a {POINTS:,}-point metric drawn: read, LTTB to 2,000 points, JSON (SQLite)", "s", ours,
                  "p50 <= 1 s", p50(ours) <= 1.0,
                  "every point read and sent as JSON", baseline,
                  "metric_values reads the metric in chunks into arrays of doubles; LTTB's inner loop runs in C.")
