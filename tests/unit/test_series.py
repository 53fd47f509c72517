"""LTTB downsampling and metric series: properties a chart reader relies on."""

from __future__ import annotations

import math
import random

import pytest

from rundock.history.records import MetricRecord
from rundock.history.store import open_store
from rundock.ui.series import lttb, metric_csv, metric_series


def _walk(n: int, seed: int = 1) -> tuple[list[float], list[float]]:
    rnd = random.Random(seed)
    ys, y = [], 0.0
    for _ in range(n):
        y += rnd.uniform(-1, 1)
        ys.append(y)
    return [float(i) for i in range(n)], ys


@pytest.mark.parametrize(("n", "threshold"), [(10, 3), (1000, 100), (1001, 37), (5000, 2000), (50, 49)])
def test_lttb_keeps_threshold_points_first_last_and_order(n: int, threshold: int) -> None:
    xs, ys = _walk(n)
    ox, oy = lttb(xs, ys, threshold)
    assert len(ox) == len(oy) == threshold
    assert (ox[0], oy[0]) == (xs[0], ys[0]) and (ox[-1], oy[-1]) == (xs[-1], ys[-1])
    assert all(a < b for a, b in zip(ox, ox[1:], strict=False))  # strictly increasing: no point twice
    assert all(ys[int(x)] == y for x, y in zip(ox, oy, strict=True))  # real points, not made-up ones


def test_lttb_keeps_a_spike_and_a_dip() -> None:
    n = 100_000
    xs = [float(i) for i in range(n)]
    ys = [math.sin(i / 5000) for i in range(n)]
    ys[31_337], ys[77_777] = 50.0, -40.0
    ox, oy = lttb(xs, ys, 500)
    assert 50.0 in oy and -40.0 in oy
    assert max(oy) == 50.0 and min(oy) == -40.0


def test_lttb_leaves_short_series_alone() -> None:
    assert lttb([1.0, 2.0, 3.0], [3.0, 1.0, 2.0], 10) == ([1.0, 2.0, 3.0], [3.0, 1.0, 2.0])
    with pytest.raises(ValueError, match="3 x values but 2 y values"):
        lttb([1.0, 2.0, 3.0], [1.0, 2.0], 2)


def test_metric_series_downsamples_and_marks_gaps() -> None:
    store = open_store("memory://")
    run = store.create_run("e").run_id
    values: list[object] = [float(i % 97) for i in range(10_000)]
    values[500:510] = [math.nan] * 10  # one gap
    values[9000] = float("inf")  # another
    values[4242] = 1e6  # a spike
    store.log_metrics(run, [MetricRecord("loss", "scalar", v, i * 2, "", 100.0 + i) for i, v in enumerate(values)])
    store.log_metrics(run, [MetricRecord("loss", "list", [1, 2])])  # not drawn
    series = metric_series(store, run, "loss", max_points=300)
    assert series["name"] == "loss" and series["total_points"] == 10_000 and series["downsampled"]
    assert len(series["x"]) == len(series["y"]) == 300
    assert series["x"][0] == 0.0 and series["x"][-1] == 19_998.0  # steps
    assert all(a < b for a, b in zip(series["x"], series["x"][1:], strict=False))
    assert [x for x, y in zip(series["x"], series["y"], strict=True) if y is None] == [1000.0, 18_000.0]
    assert 1e6 in series["y"]
    over_time = metric_series(store, run, "loss", max_points=300, x="time")
    assert over_time["x"][0] == 100.0 and over_time["x"][-1] == 100.0 + 9_999


def test_a_short_series_comes_whole_with_nulls() -> None:
    store = open_store("memory://")
    run = store.create_run("e").run_id
    store.log_metrics(run, [MetricRecord("acc", "scalar", v) for v in (0.5, math.nan, "text", 0.75)])
    series = metric_series(store, run, "acc")
    assert series == {"name": "acc", "x": [0.0, 1.0, 3.0], "y": [0.5, None, 0.75], "total_points": 4,
                      "downsampled": False}
    assert metric_series(store, run, "none")["total_points"] == 0
    with pytest.raises(ValueError, match="'step' or 'time'"):
        metric_series(store, run, "acc", x="wall")


def test_metric_csv_has_every_value() -> None:
    store = open_store("memory://")
    run = store.create_run("e").run_id
    store.log_metrics(run, [MetricRecord("m", "scalar", v, s, "", 5.0) for v, s in ((1.5, 1), (math.nan, 2))])
    store.log_metrics(run, [MetricRecord("m", "scalar", float(i), i + 3, "", 6.0) for i in range(25_000)])
    text = "".join(metric_csv(store, run, "m"))
    lines = text.splitlines()
    assert lines[:3] == ["step,time,value", "1,5.0,1.5", "2,5.0,nan"]
    assert len(lines) == 25_003 and lines[-1] == "25002,6.0,24999.0"
