"""A long metric's chart candidates (``metric_buckets``) and a run's metric summaries (``metric_summaries``): the
SQL backends compute them in the database, and give what the plain-Python meaning (``rundock.history.
metric_reads``, over every value) gives; a spike's extremes, the ends and the gaps survive."""

from __future__ import annotations

import math
from collections.abc import Iterator
from pathlib import Path

import pytest

from rundock.history.metric_reads import buckets_of, summaries_of
from rundock.history.records import MetricRecord
from rundock.history.store import RunStore
from rundock.ui import series
from tests.contract.test_store_contract import BACKENDS


@pytest.fixture(params=sorted(BACKENDS))
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[RunStore]:
    backend = BACKENDS[request.param](tmp_path)
    yield backend
    backend.close()


def _wave(i: int) -> float:
    return math.sin(i / 50.0)


def _points(store: RunStore, run: str, name: str, x: str = "step") -> list[tuple[float, float]]:
    xs, ys = store.metric_points(run, name, x)
    return list(zip(xs, ys, strict=True))


def _same(a: list[float], b: list[float]) -> bool:
    return len(a) == len(b) and all(p == q or (math.isnan(p) and math.isnan(q)) for p, q in zip(a, b, strict=True))


def test_buckets_keep_the_ends_and_a_spikes_extremes_and_agree_with_every_value(store: RunStore) -> None:
    run = store.create_run("e").run_id
    values = [_wave(i) for i in range(10_000)]
    values[3333], values[7777] = 1000.0, -1000.0  # a spike up and one down, one value each
    store.log_metrics(run, [MetricRecord("loss", "scalar", v, None, "", 100.0 + i) for i, v in enumerate(values)])
    found = store.metric_buckets(run, "loss", buckets=100)
    assert found.total == 10_000
    assert 100 < len(found.xs) <= 400 and len(found.xs) == len(found.ys)  # at most 4 per bucket
    pairs = list(zip(found.xs, found.ys, strict=True))
    assert pairs[0] == (0.0, values[0]) and pairs[-1] == (9999.0, values[-1])  # no step: x is the position
    assert (3333.0, 1000.0) in pairs and (7777.0, -1000.0) in pairs
    assert list(found.xs) == sorted(found.xs)  # in logging order
    expected = buckets_of(*store.metric_points(run, "loss"), 100)  # the plain-Python meaning
    assert list(found.xs) == list(expected.xs) and list(found.ys) == list(expected.ys)
    by_time = store.metric_buckets(run, "loss", "time", buckets=100)
    assert (100.0 + 3333, 1000.0) in zip(by_time.xs, by_time.ys, strict=True) and by_time.xs[-1] == 100.0 + 9999


def test_buckets_of_a_metric_logged_among_others_are_its_own_points(store: RunStore) -> None:
    run = store.create_run("e").run_id
    batch = []
    for i in range(6000):  # two metrics in turn, as a training loop logs them; steps only on one
        batch.append(MetricRecord("loss", "scalar", 5000.0 if i == 4321 else _wave(i), None, "", float(i)))
        batch.append(MetricRecord("acc", "scalar", i / 6000, i, "", float(i)))
        if i % 7 == 0:  # and a third now and then: most of its ranges hold none of it
            batch.append(MetricRecord("lr", "scalar", -1.0 if i == 2800 else 0.1, None, "", float(i)))
    store.log_metrics(run, batch)
    for name, spike, total in (("loss", (4321.0, 5000.0), 6000), ("acc", (5999.0, 5999 / 6000), 6000),
                               ("lr", (400.0, -1.0), 858)):
        found = store.metric_buckets(run, name, buckets=50)
        every = set(_points(store, run, name))
        pairs = list(zip(found.xs, found.ys, strict=True))
        assert found.total == total and len(pairs) <= 200
        assert set(pairs) <= every  # each candidate is one of the metric's points, at its own x
        assert pairs[0] == (0.0, _points(store, run, name)[0][1]) and spike in pairs
        assert pairs[-1][0] == total - 1


def test_gaps_start_where_values_stop_being_numbers(store: RunStore) -> None:
    run = store.create_run("e").run_id
    values: list[object] = [float(i % 7) for i in range(2000)]
    for i in range(500, 540):
        values[i] = math.nan  # a bucket's worth and more of NaN
    values[1200], values[1500], values[1700] = float("inf"), "text", 10 ** 400
    store.log_metrics(run, [MetricRecord("m", "scalar", v, i, "", float(i)) for i, v in enumerate(values)])
    store.log_metrics(run, [MetricRecord("m", "list", [1, 2])])  # not a scalar: not a point
    found = store.metric_buckets(run, "m", buckets=100)
    gaps = [x for x, y in zip(found.xs, found.ys, strict=True) if math.isnan(y)]
    assert found.total == 2000
    assert 500.0 in gaps and 520.0 in gaps and {1200.0, 1500.0, 1700.0} <= set(gaps)
    assert all(math.isfinite(y) for x, y in zip(found.xs, found.ys, strict=True) if x not in gaps)
    expected = buckets_of(*store.metric_points(run, "m"), 100)
    assert list(found.xs) == list(expected.xs) and _same(list(found.ys), list(expected.ys))
    store.log_metrics(run, [MetricRecord("n", "scalar", v, None, "", float(i)) for i, v in enumerate(values)])
    unstepped = store.metric_buckets(run, "n", buckets=100)  # x: positions, counted where a range has gaps
    assert list(unstepped.xs) == list(expected.xs) and _same(list(unstepped.ys), list(expected.ys))
    drawn = series.compute_series(store, run, "m", max_points=100)
    assert drawn["downsampled"] and drawn["total_points"] == 2000
    assert None in drawn["y"] and drawn["x"][drawn["y"].index(None)] == 500.0  # the gap drawn where it starts


def test_a_metric_no_longer_than_the_buckets_comes_back_whole(store: RunStore) -> None:
    run = store.create_run("e").run_id
    store.log_metrics(run, [MetricRecord("m", "scalar", v, s, "", 1.0)
                            for v, s in ((1.0, 5), (math.nan, 6), (3.0, None), (float("-inf"), 8), (2.0, 9))])
    store.log_metrics(run, [MetricRecord("other", "scalar", float(i)) for i in range(50)])
    found = store.metric_buckets(run, "m", buckets=5)
    assert found.total == 5 and list(found.xs) == [5.0, 6.0, 2.0, 8.0, 9.0]
    assert _same(list(found.ys), [1.0, math.nan, 3.0, math.nan, 2.0])
    assert store.metric_buckets(run, "missing").total == 0
    with pytest.raises(ValueError):
        store.metric_buckets(run, "m", buckets=0)


def test_summaries_say_what_each_metric_is_without_its_values(store: RunStore) -> None:
    run = store.create_run("e").run_id
    store.log_metrics(run, [MetricRecord("loss", "scalar", 1.0 / (i + 1), i, "the loss" if i == 0 else "", float(i))
                            for i in range(300)])
    store.log_metrics(run, [MetricRecord("note", "scalar", "text"), MetricRecord("note", "scalar", "more"),
                            MetricRecord("lr", "scalar", 0.1, None, "learning rate"),
                            MetricRecord("mixed", "scalar", 1.5), MetricRecord("mixed", "scalar", "n/a"),
                            MetricRecord("flag", "scalar", True), MetricRecord("flag", "scalar", False),
                            MetricRecord("nan", "scalar", math.nan),
                            MetricRecord("per_class", "table", {"class": ["a"], "f1": [0.5]}),
                            MetricRecord("per_class", "row", {"class": "b", "f1": 0.25}),
                            MetricRecord("loss", "scalar", 0.001, 300, "", 300.0)])
    found = {s.name: s for s in store.metric_summaries(run)}
    assert list(found) == ["loss", "note", "lr", "mixed", "flag", "nan", "per_class"]  # first logged first
    assert (found["loss"].kind, found["loss"].count, found["loss"].last) == ("scalar", 301, 0.001)
    assert found["loss"].description == "the loss" and found["lr"].description == "learning rate"
    assert [found[n].numeric for n in ("loss", "note", "lr", "mixed", "flag", "nan")] == [
        True, False, True, True, False, True]
    assert (found["per_class"].kind, found["per_class"].count) == ("row", 2)
    assert math.isnan(found["nan"].last) and found["note"].last == "more"
    plain = summaries_of(store.get_metric_records(run))
    assert [(s.name, s.kind, s.count, s.description, s.numeric) for s in plain] == [
        (s.name, s.kind, s.count, s.description, s.numeric) for s in found.values()]
    assert store.metric_summaries(store.create_run("e").run_id) == []
