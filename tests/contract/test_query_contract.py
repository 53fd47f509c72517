"""The runs-table query (``query_runs``, ``metric_names``) and ``metric_values``: the same answers on every backend.

Each test states the answer a user would see; ``query_runs_in_python`` (the meaning written as plain Python) is
the second opinion for every sort key, so that the SQL backends cannot drift from it.
"""

from __future__ import annotations

import math
import sqlite3
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

from rundock.history.backends import postgres_schema, sqlite_file
from rundock.history.backends.postgres import PostgresRunStore, migrate
from rundock.history.backends.sqlite import SqliteRunStore
from rundock.history.query import RunQuery, query_runs_in_python
from rundock.history.records import MetricRecord
from rundock.history.store import RunStore
from rundock.states import RunStatus
from tests import pg
from tests.contract.test_store_contract import BACKENDS

HOSTILE = "x'); DROP TABLE runs; -- %_\\\"<b>"


@pytest.fixture(params=sorted(BACKENDS))
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[RunStore]:
    backend = BACKENDS[request.param](tmp_path)
    yield backend
    backend.close()


def _scalars(store: RunStore, run_id: str, name: str, *values: object) -> None:
    store.log_metrics(run_id, [MetricRecord(name, "scalar", v, i, "", 1000.0 + i) for i, v in enumerate(values)])


def _history(store: RunStore) -> dict[str, str]:
    """Six runs in two experiments (and a child, an archived run); returns their ids by short name."""
    ids: dict[str, str] = {}
    spec = [  # name, experiment, created_at, display name, tags, properties, loss values, (start, end)
        ("a1", "exp-a", 100.0, "Alpha one", {"team": "red", "lr": "0.1"}, {"git": "abc"}, (3.0, 0.5), (10.0, 20.0)),
        ("a2", "exp-a", 200.0, "beta TWO", {"team": "blue"}, {}, (2.0, 0.25), (10.0, 40.0)),
        ("a3", "exp-a", 300.0, None, {"team": "red", HOSTILE: HOSTILE}, {"git": "def"}, (1.0, math.nan), (5.0, None)),
        ("a4", "exp-a", 400.0, "gamma", {}, {}, (), None),
        ("b1", "exp-b", 150.0, "Alpha b", {"team": "red"}, {}, (9.0, float("inf")), (0.0, 1.0)),
    ]
    for name, exp, created, display, tags, props, losses, times in spec:
        run = store.create_run(exp, display_name=display, tags=tags, properties=props, created_at=created).run_id
        ids[name] = run
        if losses:
            _scalars(store, run, "loss", *losses)
        if times is not None:
            for status in (RunStatus.STARTING, RunStatus.PREPARING, RunStatus.QUEUED):
                store.transition(run, status, at=times[0] - 1)
            store.transition(run, RunStatus.RUNNING, at=times[0])
            if times[1] is not None:
                store.transition(run, RunStatus.COMPLETED, at=times[1])
    _scalars(store, ids["a1"], "acc", 0.9)
    _scalars(store, ids["a2"], "acc", 0.7, "not a number")  # its latest value is no number
    store.log_metrics(ids["a4"], [MetricRecord("table", "table", {"x": [1, 2]})])
    child = store.create_run("exp-a", parent_id=ids["a1"], created_at=500.0).run_id
    _scalars(store, child, "loss", 0.01)
    ids["child"] = child
    gone = store.create_run("exp-a", created_at=600.0).run_id
    store.admin().set_archived([gone])
    ids["archived"] = gone
    return ids


def _names(store: RunStore, ids: dict[str, str], q: RunQuery) -> list[str]:
    by_id = {v: k for k, v in ids.items()}
    return [by_id[row.record.run_id] for row in store.query_runs(q).rows]


def test_filters_narrow_the_table(store: RunStore) -> None:
    ids = _history(store)
    assert _names(store, ids, RunQuery()) == ["a4", "a3", "a2", "b1", "a1"]  # newest first, no child, no archived
    assert _names(store, ids, RunQuery(experiment="exp-b")) == ["b1"]
    assert _names(store, ids, RunQuery(statuses=("Completed",))) == ["a2", "b1", "a1"]
    assert _names(store, ids, RunQuery(statuses=("NotStarted", "Running"))) == ["a4", "a3"]
    assert _names(store, ids, RunQuery(tags=(("team", "red"),))) == ["a3", "b1", "a1"]
    assert _names(store, ids, RunQuery(tags=(("team", "red"), ("lr", None)))) == ["a1"]
    assert _names(store, ids, RunQuery(properties=(("git", None),))) == ["a3", "a1"]
    assert _names(store, ids, RunQuery(properties=(("git", "def"),))) == ["a3"]
    assert _names(store, ids, RunQuery(text="ALPHA")) == ["b1", "a1"]
    assert _names(store, ids, RunQuery(text="two")) == ["a2"]
    assert _names(store, ids, RunQuery(text=ids["a3"][-8:].upper())) == ["a3"]  # part of the run id
    assert _names(store, ids, RunQuery(include_children=True))[:2] == ["child", "a4"]
    assert _names(store, ids, RunQuery(archived=None, include_children=True))[0] == "archived"
    assert _names(store, ids, RunQuery(archived=True)) == ["archived"]
    page = store.query_runs(RunQuery(experiment="exp-a", limit=2))
    assert page.total == 4 and len(page.rows) == 2


def test_metric_thresholds_compare_the_latest_value(store: RunStore) -> None:
    ids = _history(store)
    assert _names(store, ids, RunQuery(metric_filters=(("loss", "<", 1.0),))) == ["a2", "a1"]
    assert _names(store, ids, RunQuery(metric_filters=(("loss", "<=", 0.5),))) == ["a2", "a1"]
    assert _names(store, ids, RunQuery(metric_filters=(("loss", ">", 0.25),))) == ["b1", "a1"]  # NaN matches nothing
    assert _names(store, ids, RunQuery(metric_filters=(("loss", ">=", 0.25),))) == ["a2", "b1", "a1"]
    assert _names(store, ids, RunQuery(metric_filters=(("loss", "==", 0.5),))) == ["a1"]
    both = RunQuery(metric_filters=(("loss", "<", 1.0), ("acc", ">", 0.8)))
    assert _names(store, ids, both) == ["a1"]
    assert _names(store, ids, RunQuery(metric_filters=(("acc", ">", 0.0),))) == ["a1"]  # a2's latest is text
    assert _names(store, ids, RunQuery(metric_filters=(("nothing", "<", 1e9),))) == []


def test_rows_carry_the_latest_values_asked_for(store: RunStore) -> None:
    ids = _history(store)
    rows = {r.record.run_id: r.latest for r in store.query_runs(RunQuery(metrics=("loss", "acc", "table"))).rows}
    assert rows[ids["a1"]] == {"loss": 0.5, "acc": 0.9}
    assert rows[ids["a2"]] == {"loss": 0.25}
    assert set(rows[ids["a3"]]) == {"loss"} and math.isnan(rows[ids["a3"]]["loss"])
    assert rows[ids["a4"]] == {}
    assert rows[ids["b1"]] == {"loss": float("inf")}
    record = next(r.record for r in store.query_runs(RunQuery()).rows if r.record.run_id == ids["a1"])
    assert record.tags == {"team": "red", "lr": "0.1"} and record.properties == {"git": "abc"}
    _scalars(store, ids["a1"], "loss", 7.0)  # a newer value becomes the latest
    assert store.query_runs(RunQuery(text="Alpha one", metrics=("loss",))).rows[0].latest == {"loss": 7.0}


@pytest.mark.parametrize("descending", [True, False])
def test_every_sort_key_agrees_with_the_plain_python_answer(store: RunStore, descending: bool) -> None:
    _history(store)
    for sort in ("created_at", "run_number", "status", "duration", "display_name", "experiment", "metric:loss",
                 "metric:acc", "tag:team", "tag:lr", "property:git", f"tag:{HOSTILE}", "metric:none"):
        q = RunQuery(sort=sort, descending=descending, metrics=("loss",))
        got, want = store.query_runs(q), query_runs_in_python(store, q)
        assert [r.record.run_id for r in got.rows] == [r.record.run_id for r in want.rows], sort
        assert got.total == want.total == 5


def test_sorting_by_a_metric_puts_runs_without_a_number_last(store: RunStore) -> None:
    ids = _history(store)
    assert _names(store, ids, RunQuery(sort="metric:loss", descending=True)) == ["b1", "a1", "a2", "a4", "a3"]
    assert _names(store, ids, RunQuery(sort="metric:loss", descending=False)) == ["a2", "a1", "b1", "a3", "a4"]
    assert _names(store, ids, RunQuery(sort="duration", descending=False)) == ["b1", "a1", "a2", "a3", "a4"]
    assert _names(store, ids, RunQuery(sort="display_name", descending=False)) == ["b1", "a1", "a2", "a4", "a3"]
    assert _names(store, ids, RunQuery(sort="tag:team", descending=False)) == ["a2", "a1", "b1", "a3", "a4"]


def test_pages_cover_every_match_once(store: RunStore) -> None:
    ids = _history(store)
    for _ in range(7):
        _scalars(store, store.create_run("exp-a", created_at=300.0).run_id, "loss", 0.5)  # ties on both keys
    seen: list[str] = []
    for offset in range(0, 20, 3):
        page = store.query_runs(RunQuery(sort="metric:loss", limit=3, offset=offset))
        assert page.total == 12
        seen.extend(r.record.run_id for r in page.rows)
    assert len(seen) == len(set(seen)) == 12
    assert ids["a3"] == seen[-1]  # NaN last
    assert store.query_runs(RunQuery(offset=100)).rows == []


def test_hostile_keys_and_values_are_data(store: RunStore) -> None:
    ids = _history(store)
    assert _names(store, ids, RunQuery(tags=((HOSTILE, HOSTILE),))) == ["a3"]
    assert _names(store, ids, RunQuery(tags=((HOSTILE, "x"),))) == []
    assert _names(store, ids, RunQuery(properties=((HOSTILE, None),))) == []
    assert _names(store, ids, RunQuery(text="%")) == []  # no wildcard
    assert _names(store, ids, RunQuery(text="_")) == ["a4", "a3", "a2", "b1", "a1"]  # run ids hold "_"
    assert _names(store, ids, RunQuery(experiment=HOSTILE)) == []
    assert store.query_runs(RunQuery(sort=f"metric:{HOSTILE}", metrics=(HOSTILE,))).total == 5
    assert store.query_runs(RunQuery(metric_filters=((HOSTILE, "<", 1.0),))).total == 0
    assert len(store.list_runs()) == 7  # nothing was dropped


def test_bad_queries_say_what_is_wrong() -> None:
    with pytest.raises(ValueError, match="sort runs by 'size'"):
        RunQuery(sort="size")
    with pytest.raises(ValueError, match="unknown comparison '!='"):
        RunQuery(metric_filters=(("loss", "!=", 1.0),))
    with pytest.raises(ValueError, match="1 to 1000"):
        RunQuery(limit=0)


def test_metric_names_are_those_with_a_number(store: RunStore) -> None:
    ids = _history(store)
    assert store.metric_names() == ["acc", "loss"]
    assert store.metric_names("exp-b") == ["loss"]
    assert store.metric_names("nope") == []
    store.admin().delete_runs([ids["a1"], ids["a2"]])
    assert store.metric_names("exp-a") == ["loss"]  # acc went with its runs
    assert store.query_runs(RunQuery(metric_filters=(("loss", "<", 1.0),), include_children=True)).total == 0


def test_metric_values_come_in_logging_order(store: RunStore) -> None:
    run = store.create_run("e").run_id
    store.log_metrics(run, [MetricRecord("m", "scalar", v, i, "", 10.0 + i) for i, v in
                            enumerate([1, 2.5, math.nan, float("-inf"), "text", True, 10 ** 400])])
    store.log_metrics(run, [MetricRecord("m", "list", [1, 2]), MetricRecord("other", "scalar", 5.0)])
    values = list(store.metric_values(run, "m"))
    assert [(s, t) for s, t, _v in values] == [(i, 10.0 + i) for i in range(7)]
    numbers = [v for _s, _t, v in values]
    assert numbers[:2] == [1.0, 2.5] and math.isnan(numbers[2]) and numbers[3] == float("-inf")  # type: ignore[arg-type]
    assert numbers[4:] == [None, None, None]
    assert list(store.metric_values(run, "missing")) == []


def test_an_older_sqlite_history_gets_its_latest_values_when_opened(tmp_path: Path) -> None:
    path = str(tmp_path / "old.db")
    db = sqlite3.connect(path, isolation_level=None)
    sqlite_file.ensure_schema(db, path, sqlite_file.MIGRATIONS[:2])  # the history before the runs-table query
    db.execute("INSERT INTO runs (run_id, experiment, number, status, created_at, run_type, target, run_definition) "
               "VALUES ('old', 'e', 1, 'Completed', 1.0, 'rundock.scriptrun', 'local', '{}')")
    db.executemany("INSERT INTO metrics (run_id, name, kind, value, step, description, at) VALUES "
                   "('old', ?, 'scalar', ?, NULL, '', 1.0)", [("loss", "2.5"), ("loss", "0.5"), ("note", '"x"')])
    db.close()
    with SqliteRunStore(path) as store:
        page = store.query_runs(RunQuery(sort="metric:loss", metrics=("loss", "note")))
        assert [(r.record.run_id, r.latest) for r in page.rows] == [("old", {"loss": 0.5})]
        assert store.metric_names() == ["loss"]


def test_an_upgraded_postgresql_history_gets_its_latest_values() -> None:
    with pg.fresh_schema() as uri:
        with psycopg.connect(uri, autocommit=True) as conn:
            postgres_schema.migrate(conn, "test", postgres_schema.MIGRATIONS[:1])
            conn.execute("INSERT INTO runs (run_id, experiment, number, status, created_at, run_type, target, "
                         "run_definition) VALUES ('old', 'e', 1, 'Completed', 1.0, 'rundock.scriptrun', 'local', '{}')")
            conn.execute("INSERT INTO metrics (run_id, name, kind, value, step, description, at) VALUES "
                         "('old', 'loss', 'scalar', '2.5', NULL, '', 1.0), "
                         "('old', 'loss', 'scalar', 'NaN', NULL, '', 2.0)")
        assert migrate(uri) == (1, postgres_schema.SCHEMA_VERSION)  # `rundock server upgrade`
        with PostgresRunStore(uri) as store:
            latest = store.query_runs(RunQuery(metrics=("loss",))).rows[0].latest
            assert set(latest) == {"loss"} and math.isnan(latest["loss"])
