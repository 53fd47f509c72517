"""A metric's values as chart arrays (``metric_points``) and the version that keys cached charts
(``metric_version``): the same answers on every backend, and a chart that follows new values."""

from __future__ import annotations

import math
from collections.abc import Iterator
from pathlib import Path

import pytest

from rundock.history.records import MetricRecord
from rundock.history.store import RunStore
from rundock.ui import series
from tests.contract.test_store_contract import BACKENDS


@pytest.fixture(params=sorted(BACKENDS))
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[RunStore]:
    backend = BACKENDS[request.param](tmp_path)
    yield backend
    backend.close()


def test_points_are_the_values_as_doubles_with_nan_where_there_is_no_number(store: RunStore) -> None:
    run = store.create_run("e").run_id
    values = [1, 2.5, math.nan, float("-inf"), "text", True, 10 ** 400, None, -3]
    steps = [0, 1, 2, None, 4, 5, None, 7, 8]
    store.log_metrics(run, [MetricRecord("m", "scalar", v, s, "", 10.0 + i)
                            for i, (v, s) in enumerate(zip(values, steps, strict=True))])
    store.log_metrics(run, [MetricRecord("m", "list", [1, 2]), MetricRecord("other", "scalar", 5.0)])
    xs, ys = store.metric_points(run, "m")
    assert list(xs) == [0.0, 1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0]  # no step: the value's position
    assert ys[:2].tolist() == [1.0, 2.5] and math.isnan(ys[2]) and ys[3] == float("-inf") and ys[8] == -3.0
    assert all(math.isnan(v) for v in ys[4:8])  # a string, a bool, an integer too big, null: no number
    times, _ = store.metric_points(run, "m", x="time")
    assert list(times) == [10.0 + i for i in range(9)]
    assert [len(a) for a in store.metric_points(run, "missing")] == [0, 0]


def test_many_points_come_in_logging_order_across_chunks(store: RunStore) -> None:
    run = store.create_run("e").run_id
    store.log_metrics(run, [MetricRecord("loss", "scalar", i * 0.5, None, "", float(i)) for i in range(120_000)])
    xs, ys = store.metric_points(run, "loss")
    assert len(xs) == len(ys) == 120_000
    assert xs[-1] == 119_999.0 and ys[-1] == 119_999 * 0.5 and ys[60_001] == 60_001 * 0.5


def test_a_cached_chart_follows_new_values(store: RunStore) -> None:
    run = store.create_run("e").run_id
    store.log_metrics(run, [MetricRecord("loss", "scalar", float(i), i, "", float(i)) for i in range(50)])
    first = series.metric_series(store, run, "loss", max_points=10)
    assert first["total_points"] == 50 and first["downsampled"]
    assert series.metric_series(store, run, "loss", max_points=10) == first
    store.log_metrics(run, [MetricRecord("loss", "scalar", 1000.0, 50, "", 50.0)])
    after = series.metric_series(store, run, "loss", max_points=10)
    assert after["total_points"] == 51 and after["y"][-1] == 1000.0
    assert series.metric_series(store, run, "loss", max_points=100)["x"] == [float(i) for i in range(51)]
