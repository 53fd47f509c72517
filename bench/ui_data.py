"""Figures 19-20: the web UI on a large history, timed as a user waits for it: a page of the runs table (the chart
of a long metric and its run's page are in ``bench.ui_series``).

The 100,000 runs go in through each database's fastest path (one transaction of ``executemany`` in SQLite,
``COPY`` in PostgreSQL), then the latest-value table is filled the way an upgrade fills it. Each figure is one
HTTP request to ``rundock ui``'s app on a real server on loopback, signed in (``bench.ui_http``): the runs page
(HTML). The baseline is what a UI without the query would do: ``list_runs`` and the filtering and sorting in
Python (sorting by creation time: reading each run's metrics as well would take minutes).
"""

from __future__ import annotations

import json
import random
import secrets
import time
from collections.abc import Callable
from pathlib import Path
from urllib.parse import urlencode

from bench import ui_http
from bench.common import Figure, log, p50
from rundock.history import wire
from rundock.history.backends import postgres_schema, sqlite_file
from rundock.history.backends.sqlite import SqliteRunStore
from rundock.history.query import RunQuery
from rundock.history.store import RunStore

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


TABLE_URL = "/ui/runs?" + urlencode([("experiment", "big"), ("status", "Completed"), ("tag", "team=red"),
                                       ("metric", "acc>0.5"), ("sort", "metric:loss"), ("desc", "0"),
                                       ("col", "metric:loss"), ("col", "metric:acc"), ("per", "50")])


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


def _table_figure(number: int, name: str, store: RunStore, root: Path) -> Figure:
    expected = store.query_runs(QUERY).total
    with ui_http.serve(store, root) as (base, session):
        shown = ui_http.get(session, base + TABLE_URL).text
        if f"{expected} runs" not in shown:
            raise RuntimeError(f"the runs page does not show the {expected} matching runs")
        log(f"{name}: {expected} matching runs")
        ours = _times(lambda: ui_http.get(session, base + TABLE_URL), REPEATS)
        deep = _times(lambda: ui_http.get(session, base + TABLE_URL + "&page=150"), 5)
        log(f"{name}: page 150 of the same table: p50 {p50(deep) * 1000:.0f} ms")
    baseline = _times(lambda: _naive(store), 3)
    return Figure(number, f"runs table page, {RUNS:,} runs in {name}: `GET /ui/runs` filtered (status, tag, metric "
                          "threshold), sorted by a metric's latest value, a page of 50 with the total, as HTML",
                  "ms", ours, "p50 <= 300 ms server time", p50(ours) <= 0.3,
                  "`list_runs` + filtering and sorting in Python (by creation time only, no HTTP)", baseline,
                  f"the time of the whole request on loopback, on `rundock ui`'s app (uvicorn, signed-in session); "
                  f"the 150th page of the same table took {p50(deep) * 1000:.0f} ms. The filters, sort, count "
                  "and page run in SQL (one statement for a sort without an index, which counts as it goes) over "
                  "a table of each run's latest metric values; the column chooser's metric names are found one "
                  "index step per name.")


def runs_table(root: Path) -> list[Figure]:
    figures = []
    store = SqliteRunStore(str(root / "ui-table.db"))
    try:
        began = time.perf_counter()
        _fill_sqlite(store)
        log(f"SQLite: {RUNS:,} runs stored in {time.perf_counter() - began:.1f} s")
        figures.append(_table_figure(19, "SQLite", store, root))
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
            figures.append(_table_figure(20, "PostgreSQL", pg_store, root))
    return figures

