"""Figures 21-23: a run with a 1,000,000-point metric in the web UI, timed as a user waits for it: the chart's data
(one HTTP request), the same chart drawn in Chromium, and the run's page.

Each is the first drawing (the server's cache of downsampled series emptied before each request), on
``rundock ui``'s app on a real server on loopback, signed in (``bench.ui_http``), over SQLite. The baselines are
the way the UI worked before the store computed chart candidates and metric summaries, measured in the same run
on the same history without HTTP: every point read into arrays and LTTB over all of them (21), and every record
of the run read and turned into chart specs (23). The machine may be shared: each note gives the load average
(1 minute) before and after the figure. The same chart data over PostgreSQL is timed too when the test server
answers (``tests.pg``), after the ``VACUUM ANALYZE`` that autovacuum runs after a large insert (the first read
of a million freshly written rows otherwise pays for setting their hint bits), and given in the note of 21.
"""

from __future__ import annotations

import json
import os
import random
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bench import ui_http
from bench.common import Figure, log, p50
from rundock.history.backends.sqlite import SqliteRunStore
from rundock.history.records import MetricRecord
from rundock.history.store import RunStore
from rundock.ui import render, series

POINTS = 1_000_000
MAX_POINTS = 2000


def _load() -> str:
    return f"{os.getloadavg()[0]:.2f}"


def _times(action: Callable[[], object], repeats: int) -> list[float]:
    out = []
    for _ in range(repeats):
        began = time.perf_counter()
        action()
        out.append(time.perf_counter() - began)
    return out


def _fill(store: RunStore) -> str:
    """A finished run with a 1,000,000-point ``loss`` (a random walk, steps 0..999,999), a table and a value."""
    run = store.create_run("series", created_at=1.7e9).run_id
    rnd = random.Random(21)
    began, y = time.perf_counter(), 0.0
    for start in range(0, POINTS, 100_000):
        batch = []
        for i in range(start, start + 100_000):
            y += rnd.uniform(-1, 1)
            batch.append(MetricRecord("loss", "scalar", y, i, "", 1.7e9 + i))
        store.log_metrics(run, batch)
    store.log_metrics(run, [MetricRecord("per_class", "table", {"class": ["a", "b"], "f1": [0.5, 0.25]}),
                            MetricRecord("final_score", "scalar", 0.5)])
    log(f"{POINTS:,} values stored in {time.perf_counter() - began:.1f} s")
    return run


def _previous_series(store: RunStore, run: str, name: str) -> dict[str, Any]:
    """The chart data as it was computed before: every point read, LTTB over all of them."""
    xs, ys = store.metric_points(run, name)
    chosen = series.lttb_indices(xs, ys, MAX_POINTS)
    return {"name": name, "x": [xs[i] for i in chosen], "y": [ys[i] for i in chosen], "total_points": len(ys),
            "downsampled": len(ys) > MAX_POINTS}


def _previous_page(store: RunStore, run: str) -> str:
    """The run page's chart specs as they were computed before: every record of the run read."""
    return json.dumps(render.chart_specs(store.get_metric_records(run),
                                         lambda name: _previous_series(store, run, name)))


def _served(store: RunStore, root: Path, run: str) -> dict[str, Any]:
    """The times of the chart data, the run page and the Chromium drawing over ``store``."""
    path = f"/ui/api/runs/{run}/series?name=loss"
    out: dict[str, Any] = {"load_before": _load()}
    with ui_http.serve(store, root) as (base, session):
        answer = ui_http.get(session, base + path).json()
        if len(answer["x"]) != MAX_POINTS or answer["total_points"] != POINTS:
            raise RuntimeError(f"the series endpoint sent {len(answer['x'])} of {answer['total_points']} points")

        def first(url: str) -> Callable[[], None]:
            def action() -> None:
                series.clear_cache()
                ui_http.get(session, url)
            return action

        out["series"] = _times(first(base + path), 7)
        out["cached"] = _times(lambda: ui_http.get(session, base + path), 7)
        page = ui_http.get(session, f"{base}/ui/runs/{run}").text
        if '"total_points":1000000' not in page or "per_class" not in page:
            raise RuntimeError("the run page does not show the long metric's chart and the table")
        out["page"] = _times(first(f"{base}/ui/runs/{run}"), 7)
        drawn: list[float] = []
        for _ in range(5):  # first drawings, a browser each
            series.clear_cache()
            drawn += ui_http.draw_times(base, session, "/ui/experiments", path, 1)
        out["drawn"] = drawn
        out["again"] = ui_http.draw_times(base, session, "/ui/experiments", path, 5) if drawn else []
    out["load_after"] = _load()
    return out


def _postgres(root: Path) -> str:
    """The note on the same chart data over PostgreSQL ('' without a test server)."""
    try:
        from tests import pg
    except ImportError:
        return ""
    import psycopg

    from rundock.history.backends.postgres import PostgresRunStore

    with pg.fresh_schema() as uri, PostgresRunStore(uri) as store:
        run = _fill(store)
        with psycopg.connect(uri, autocommit=True) as conn:  # what autovacuum does after a large insert
            conn.execute("VACUUM ANALYZE metrics")
        path = f"/ui/api/runs/{run}/series?name=loss"
        with ui_http.serve(store, root) as (base, session):
            def first() -> None:
                series.clear_cache()
                ui_http.get(session, base + path)

            ours = _times(first, 5)
        baseline = _times(lambda: _previous_series(store, run, "loss"), 3)
    log(f"PostgreSQL: chart data p50 {p50(ours):.2f} s, previous way {p50(baseline):.2f} s")
    return (f" Over PostgreSQL (the team server's history) the same request took {p50(ours):.2f} s p50 "
            f"(previous way: {p50(baseline):.2f} s).")


def long_series(root: Path) -> list[Figure]:
    with SqliteRunStore(str(root / "ui-series.db")) as store:
        run = _fill(store)
        got = _served(store, root, run)
        base_series = _times(lambda: json.dumps(_previous_series(store, run, "loss")), 3)
        base_page = _times(lambda: _previous_page(store, run), 3)
    pg_note = _postgres(root)
    load = f"load average {got['load_before']} before, {got['load_after']} after (2 cores)"
    figures = [
        Figure(21, f"a {POINTS:,}-point metric's chart data: `GET /ui/api/runs/…/series` (candidates in SQL, "
                   f"MinMaxLTTB to {MAX_POINTS:,} points, JSON; SQLite)", "s", got["series"], "p50 <= 1 s",
               p50(got["series"]) <= 1.0, "the previous way: every point read into arrays, LTTB over all of them, "
               "JSON (no HTTP)", base_series,
               f"the whole request on loopback, signed in, the first time the chart is drawn (cache emptied); "
               f"drawn again it took {p50(got['cached']) * 1000:.0f} ms (the downsampled series is kept while no "
               "value is logged). The store splits the metric into 2,000 ranges and one SQL pass per extreme "
               "hands back each range's first, last, lowest and highest points (under 8,000 candidates); LTTB "
               f"picks 2,000 of those, so spikes survive. {load}.{pg_note}"),
        Figure(23, f"the run page of a run with a {POINTS:,}-point metric, a table and a value: `GET /ui/runs/…` "
                   "(HTML with the chart's data; SQLite)", "s", got["page"], "p50 <= 1 s", p50(got["page"]) <= 1.0,
               "the previous way: every record of the run read and turned into chart specs (no HTTP)", base_page,
               "the whole request on loopback, signed in, series cache emptied before each. The page reads one "
               "summary per metric (kind, count, last value: one statement on the metrics index) and the records "
               "of the metrics other than scalars only; the long metric's chart data comes downsampled from the "
               f"store as in figure 21. {load}."),
    ]
    if got["drawn"]:
        figures.append(Figure(22, f"the same {POINTS:,}-point metric drawn in Chromium: request, JSON, uPlot's first "
                                  f"draw of the {MAX_POINTS:,} points", "s", got["drawn"], "p50 <= 1 s",
                              p50(got["drawn"]) <= 1.0,
                              note=f"`performance.now()` from the `fetch` of the series to uPlot's `draw` hook, in "
                                   "headless Chromium (no GPU) on the same machine as the server, the first time "
                                   "the chart is drawn (server cache emptied); drawn again: p50 "
                                   f"{p50(got['again']):.2f} s. {load}."))
    return figures
