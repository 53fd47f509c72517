"""MLflow's run search over rundock runs: the filter strings clients send, ordering and pages."""

from __future__ import annotations

import math

import pytest

from rundock.history.records import MetricRecord, RunRecord
from rundock.server.mlflow_map import MlflowError
from rundock.server.mlflow_search import matches, order_runs, page, parse_filter, parse_order_by
from rundock.states import RunStatus


def _run(run_id: str, *, status: RunStatus = RunStatus.COMPLETED, start: float = 100.0, name: str | None = None,
         params: dict[str, str] | None = None, tags: dict[str, str | None] | None = None) -> RunRecord:
    return RunRecord(run_id=run_id, experiment="exp", number=1, status=status, created_at=start, start_at=start,
                     display_name=name, properties=params or {}, tags=tags or {}, submitted_by="alice")


METRICS = {
    "a": {"acc": MetricRecord("acc", "scalar", 0.9, 3, "", 1.0), "loss": MetricRecord("loss", "scalar", 0.2, 3)},
    "b": {"acc": MetricRecord("acc", "scalar", 0.4, 3, "", 1.0)},
    "c": {"acc": MetricRecord("acc", "scalar", math.nan, 3, "", 1.0)},
}
RUNS = [
    _run("a", params={"lr": "0.1", "model": "LogisticRegression"}, tags={"team": "vision", "mlflow.user": "al"},
         start=300.0, name="first"),
    _run("b", params={"lr": "0.01"}, tags={"team": "nlp"}, status=RunStatus.FAILED, start=200.0),
    _run("c", params={"lr": "0.1"}, status=RunStatus.RUNNING, start=100.0, tags={"flag": None}),
    _run("d", start=50.0),
]


def _latest(run_id: str) -> dict[str, MetricRecord]:
    return METRICS.get(run_id, {})


def _found(source: str) -> list[str]:
    comparisons = parse_filter(source)
    return [r.run_id for r in RUNS if matches(r, comparisons, _latest)]


@pytest.mark.parametrize(("source", "expected"), [
    ("", ["a", "b", "c", "d"]),
    ("metrics.acc > 0.5", ["a"]),
    ("metrics.acc <= 0.4", ["b"]),
    ("metric.acc != 0.9", ["b", "c"]),
    ("params.lr = '0.1'", ["a", "c"]),
    ('params.model = "LogisticRegression" and params.lr = "0.1" and metrics.loss <= 0.05', []),
    ("params.lr = '0.1' AND metrics.acc > 0.5", ["a"]),
    ("tags.team = 'vision'", ["a"]),
    ("tags.team != 'vision'", ["b"]),
    ("tags.mlflow.user = 'al'", ["a"]),
    ("tags.flag = ''", ["c"]),
    ("tags.team LIKE 'v%'", ["a"]),
    ("tags.team LIKE 'V%'", []),
    ("tags.team ILIKE 'V%'", ["a"]),
    ("attributes.status = 'FINISHED'", ["a", "d"]),
    ("status IN ('FAILED', 'RUNNING')", ["b", "c"]),
    ("attributes.status NOT IN ('FINISHED')", ["b", "c"]),
    ("attributes.run_name = 'first'", ["a"]),
    ("attributes.run_id = 'd'", ["d"]),
    ("attributes.start_time >= 200000", ["a", "b"]),
    ("params.`lr` = '0.01'", ["b"]),
    ('params."lr" = \'0.01\'', ["b"]),
])
def test_filters_select_the_runs_mlflow_would(source: str, expected: list[str]) -> None:
    assert _found(source) == expected


@pytest.mark.parametrize(("source", "says"), [
    ("metrics.acc > 0.5 OR metrics.acc < 0.1", "OR is not supported"),
    ("params.lr = 0.1", "quoted string"),
    ("metrics.acc > 'high'", "number"),
    ("metrics.acc LIKE '%'", "cannot be compared with LIKE"),
    ("datasets.name = 'x'", "unknown entity 'datasets'"),
    ("attributes.colour = 'red'", "unknown attribute 'colour'"),
    ("metrics.acc >", "ends where"),
    ("metrics.acc ~ 3", "cannot read the search filter"),
    ("status IN 'FINISHED'", "list of quoted strings"),
])
def test_unsupported_filters_are_clear_errors(source: str, says: str) -> None:
    with pytest.raises(MlflowError) as caught:
        parse_filter(source)
    assert caught.value.code == "INVALID_PARAMETER_VALUE"
    assert says in caught.value.message


def test_order_by_metric_puts_missing_values_last_in_both_directions() -> None:
    ascending = order_runs(RUNS, parse_order_by(["metrics.acc ASC"]), _latest)
    descending = order_runs(RUNS, parse_order_by(["metrics.acc DESC"]), _latest)
    assert [r.run_id for r in ascending] == ["b", "a", "c", "d"]  # NaN after numbers, then the run without acc
    assert [r.run_id for r in descending] == ["c", "a", "b", "d"]


def test_default_order_is_newest_first_and_params_order_as_text() -> None:
    assert [r.run_id for r in order_runs(RUNS, [], _latest)] == ["a", "b", "c", "d"]
    by_lr = order_runs(RUNS, parse_order_by(["params.lr", "attributes.start_time ASC"]), _latest)
    assert [r.run_id for r in by_lr] == ["b", "c", "a", "d"]  # '0.01' < '0.1'; ties: older first; d has no lr
    with pytest.raises(MlflowError, match="ASC|DESC"):
        parse_order_by(["metrics.acc sideways"])


def test_pages_cover_every_item_once_and_a_forged_token_is_refused() -> None:
    items = list(range(7))
    seen, token = [], None
    while True:
        chunk, token = page(items, token, 3)
        seen += chunk
        if token is None:
            break
    assert seen == items
    with pytest.raises(MlflowError, match="page_token"):
        page(items, "not-a-token", 3)
