"""The RunStore contract: every backend must pass these tests unchanged.

A new backend adds itself to ``BACKENDS`` (a factory taking a temporary folder).
"""

from __future__ import annotations

import multiprocessing
import re
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from rundock.errors import RunNotFoundError, StoreError
from rundock.history.backends.sqlite import SqliteRunStore
from rundock.history.records import MetricRecord
from rundock.history.store import RunStore, open_store
from rundock.states import RunStatus
from rundock.submitter.snapshot import manifest_id
from tests import http_backends, pg

BACKENDS: dict[str, Callable[[Path], RunStore]] = {
    "sqlite": lambda tmp: open_store(f"sqlite:///{tmp / 'history.db'}"),
    "memory": lambda tmp: open_store("memory://"),
    "postgresql": pg.throwaway_store,
    "http": http_backends.http_over_sqlite,
    "http-postgresql": http_backends.http_over_postgres,
}


@pytest.fixture(params=sorted(BACKENDS))
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[RunStore]:
    backend = BACKENDS[request.param](tmp_path)
    yield backend
    backend.close()


def _metric(seq: int, name: str = "loss", value: float = 0.0) -> dict[str, object]:
    return {"seq": seq, "t": 1.0, "type": "metric", "name": name, "kind": "scalar", "value": value}


def test_run_ids_and_numbers(store: RunStore) -> None:
    a1, a2, b1 = store.create_run("exp-a"), store.create_run("exp-a"), store.create_run("exp-b")
    assert re.fullmatch(r"exp-a_\d{10}_[0-9a-f]{8}", a1.run_id)
    assert (a1.number, a2.number, b1.number) == (1, 2, 1)
    assert a1.status == RunStatus.NOT_STARTED
    with pytest.raises(RunNotFoundError):
        store.get_run("nope")


def test_transitions_go_through_the_table_and_record_times(store: RunStore) -> None:
    run = store.create_run("e").run_id
    for status in (RunStatus.STARTING, RunStatus.PREPARING, RunStatus.QUEUED, RunStatus.RUNNING):
        assert store.transition(run, status, detail=f"now {status}", at=100.0 + len(status))
    assert not store.transition(run, RunStatus.QUEUED)  # never backwards
    assert store.transition(run, RunStatus.FAILED, detail="boom", error={"code": "UserError", "message": "x"})
    assert not store.transition(run, RunStatus.RUNNING)  # terminal is sticky
    assert not store.transition(run, RunStatus.COMPLETED)
    record = store.get_run(run)
    assert record.status == RunStatus.FAILED and record.error == {"code": "UserError", "message": "x"}
    assert record.start_at == 100.0 + len("Running") and record.end_at is not None
    history = store.status_history(run)
    assert [h.status for h in history] == [RunStatus.NOT_STARTED, RunStatus.STARTING, RunStatus.PREPARING,
                                           RunStatus.QUEUED, RunStatus.RUNNING, RunStatus.FAILED]
    assert history[2].detail == "now Preparing"


def test_journal_records_apply_once(store: RunStore) -> None:
    run = store.create_run("e").run_id
    batch = [_metric(1, value=1.0), _metric(2, value=2.0), {"seq": 3, "t": 2.0, "type": "tags",
                                                            "values": {"k": "v"}}]
    assert store.apply_journal(run, 0, "job-1", batch) == 3
    assert store.apply_journal(run, 0, "job-1", batch) == 3  # a replay changes nothing
    assert store.apply_journal(run, 0, "job-1", [*batch[1:], _metric(4, value=4.0)]) == 4  # overlap
    assert store.apply_journal(run, 0, "job-2", [_metric(1, value=9.0)]) == 1  # another source
    assert store.apply_journal(run, 1, "job-1", [_metric(1, value=5.0)]) == 1  # another attempt
    assert [m.value for m in store.get_metric_records(run, "loss")] == [1.0, 2.0, 4.0, 9.0, 5.0]
    assert store.get_run(run).tags == {"k": "v"}
    assert store.journal_mark(run, 0, "job-1") == 4


def test_journal_states_and_heartbeats(store: RunStore) -> None:
    run = store.create_run("e").run_id
    store.apply_journal(run, 0, "agent", [
        {"seq": 1, "t": 10.0, "type": "state", "status": "Preparing", "detail": "p"},
        {"seq": 2, "t": 11.0, "type": "heartbeat", "interval": 2.0},
        {"seq": 3, "t": 12.0, "type": "state", "status": "Running", "detail": "r"},
        {"seq": 4, "t": 13.0, "type": "state", "status": "Queued", "detail": "late"},
    ])
    record = store.get_run(run)
    assert record.status == RunStatus.RUNNING and record.last_heartbeat == 11.0
    assert record.heartbeat_interval == 2.0


def test_tags_properties_and_filters(store: RunStore) -> None:
    a, b = store.create_run("e", tags={"team": "x"}).run_id, store.create_run("e").run_id
    store.set_tags(b, {"team": "y", "flag": None})
    store.add_properties(b, {"data": "v1"})
    store.add_properties(b, {"data": "v1"})  # same value: fine
    with pytest.raises(ValueError, match="immutable"):
        store.add_properties(b, {"data": "v2"})
    assert [r.run_id for r in store.find_runs(tags="team")] == [b, a]
    assert [r.run_id for r in store.find_runs(tags={"team": "x"})] == [a]
    assert [r.run_id for r in store.find_runs(tags="flag")] == [b]
    assert [r.run_id for r in store.find_runs(properties={"data": "v1"})] == [b]
    store.remove_tags(b, ["flag"])
    assert store.get_run(b).tags == {"team": "y"}
    store.transition(a, RunStatus.RUNNING)
    assert [r.run_id for r in store.find_runs(status="Running")] == [a]


def test_children_are_listed_by_parent(store: RunStore) -> None:
    parent = store.create_run("e").run_id
    child = store.create_run("e", parent_id=parent).run_id
    assert [r.run_id for r in store.list_runs(parent_id=parent)] == [child]
    assert [r.run_id for r in store.list_runs(experiment="e", include_children=False)] == [parent]


def test_files_keep_the_latest_version(store: RunStore) -> None:
    run = store.create_run("e").run_id
    store.add_file(run, "outputs/m.pkl", "a" * 64, 1)
    store.add_file(run, "outputs/m.pkl", "b" * 64, 2)
    files = store.list_files(run)
    assert list(files) == ["outputs/m.pkl"] and files["outputs/m.pkl"].digest == "b" * 64


def test_live_logs_are_read_from_an_offset(store: RunStore) -> None:
    run = store.create_run("e").run_id
    store.append_log(run, "driver", 0, b"hello ")
    store.append_log(run, "driver", 6, b"world\n")
    store.append_log(run, "driver", 6, b"world\n")  # shipped twice
    store.append_log(run, "driver", 20, b"after a gap")
    assert store.read_log(run, "driver") == b"hello world\n"
    assert store.read_log(run, "driver", 3) == b"lo world\n"
    assert store.read_log(run, "driver", 12) == b""
    assert store.log_names(run) == ["driver"]
    store.append_log(run, "driver", 0, b"hello world\nmore\n")  # shipped again from the start, longer
    store.append_log(run, "driver", 0, b"hello")  # and shorter: the longer one stays
    assert store.read_log(run, "driver") == b"hello world\nmore\n"
    assert store.read_log(run, "driver", 12) == b"more\n"


def test_snapshots(store: RunStore) -> None:
    manifest = [{"path": "train.py", "digest": "c" * 64, "size": 3, "mode": 420}]
    s1 = manifest_id(manifest)  # a snapshot's id is its manifest's (the team server takes no other)
    assert store.put_snapshot(s1, manifest) is True
    assert store.put_snapshot(s1, manifest) is False
    assert store.get_snapshot(s1) == manifest


def test_environment_registry(store: RunStore) -> None:
    assert store.register_environment("train", {"python": {"pip_packages": ["a"]}}) == 1
    assert store.register_environment("train", {"python": {"pip_packages": ["a", "b"]}}) == 2
    store.register_environment("serve", {})
    assert store.get_environment("train") == (2, {"python": {"pip_packages": ["a", "b"]}})
    assert store.get_environment("train", 1)[1] == {"python": {"pip_packages": ["a"]}}
    assert store.environment_names() == ["serve", "train"]
    with pytest.raises(KeyError, match="no environment 'nope'"):
        store.get_environment("nope")


def test_model_registry(store: RunStore) -> None:
    run = store.create_run("e").run_id
    files = [{"name": "outputs/m.pkl", "digest": "d" * 64, "size": 1}]
    first = store.register_model("m", run_id=run, path="outputs/m.pkl", files=files, tags={"t": "1"})
    second = store.register_model("m", run_id=run, path="outputs/m.pkl", files=files, properties={"p": "x"})
    assert (first.version, second.version) == (1, 2)
    assert store.get_model("m").version == 2 and store.get_model("m", 1).tags == {"t": "1"}
    assert [m.version for m in store.find_models("m", tags="t")] == [1]
    assert [m.version for m in store.find_models(properties={"p": "x"})] == [2]
    with pytest.raises(KeyError):
        store.get_model("m", 7)


def test_client_metrics_batch(store: RunStore) -> None:
    run = store.create_run("e").run_id
    store.log_metrics(run, [MetricRecord("m", "scalar", i) for i in range(1000)])
    assert [m.value for m in store.get_metric_records(run)] == list(range(1000))


# -- housekeeping (StoreAdmin): archive, delete, snapshot pruning, blob references --------------------------
def _family(store: RunStore) -> tuple[str, str, str, str]:
    """A parent, its child, the child's child, and an unrelated run."""
    parent = store.create_run("e").run_id
    child = store.create_run("e", parent_id=parent).run_id
    grandchild = store.create_run("e", parent_id=child).run_id
    return parent, child, grandchild, store.create_run("e").run_id


def test_family_is_the_runs_and_their_descendants(store: RunStore) -> None:
    parent, child, grandchild, other = _family(store)
    assert [r.run_id for r in store.family([parent])] == [parent, child, grandchild]
    assert [r.run_id for r in store.family([child, parent])] == [child, parent, grandchild]
    with pytest.raises(RunNotFoundError):
        store.family(["nope"])


def test_archived_runs_are_left_out_only_when_asked(store: RunStore) -> None:
    parent, child, grandchild, other = _family(store)
    assert store.admin().set_archived([parent]) == [parent, child, grandchild]
    assert store.get_run(grandchild).archived and not store.get_run(other).archived
    assert [r.run_id for r in store.find_runs(archived=False)] == [other]
    assert {r.run_id for r in store.find_runs(archived=True)} == {parent, child, grandchild}
    assert len(store.find_runs()) == len(store.list_runs()) == 4  # archived runs are still runs
    with pytest.raises(RunNotFoundError):
        store.admin().set_archived([other, "nope"])
    assert not store.get_run(other).archived  # nothing changed
    store.admin().set_archived([child], archived=False)
    assert [r.run_id for r in store.find_runs(archived=True)] == [parent]


def test_delete_removes_the_runs_their_descendants_and_all_they_recorded(store: RunStore) -> None:
    parent, child, grandchild, other = _family(store)
    for run in (grandchild, other):
        store.apply_journal(run, 0, "agent", [_metric(1), {"seq": 2, "t": 1.0, "type": "tags", "values": {"k": "v"}},
                                              {"seq": 3, "t": 1.0, "type": "file", "name": "outputs/a",
                                               "digest": "a" * 64, "size": 1}])
        store.add_properties(run, {"p": "1"})
        store.append_log(run, "system_logs/driver_log.txt", 0, b"hello")
        store.transition(run, RunStatus.RUNNING)
    with pytest.raises(RunNotFoundError):
        store.admin().delete_runs([parent, "nope"])
    assert store.get_run(parent)  # nothing deleted
    assert store.admin().delete_runs([parent]) == [parent, child, grandchild]
    for run in (parent, child, grandchild):
        with pytest.raises(RunNotFoundError):
            store.get_run(run)
    assert store.status_history(grandchild) == [] and store.get_metric_records(grandchild) == []
    assert store.list_files(grandchild) == {} and store.read_log(grandchild, "system_logs/driver_log.txt") == b""
    assert store.journal_mark(grandchild, 0, "agent") == 0 and store.log_names(grandchild) == []
    assert [r.run_id for r in store.list_runs()] == [other]  # the other run keeps everything
    kept = store.get_run(other)
    assert kept.tags == {"k": "v"} and kept.properties == {"p": "1"} and len(store.get_metric_records(other)) == 1
    assert store.read_log(other, "system_logs/driver_log.txt") == b"hello" and list(store.list_files(other))
    assert store.create_run("e").number == 5  # numbers are never given again


def test_unused_snapshots_are_pruned_once_old(store: RunStore) -> None:
    manifest = [{"path": "a.py", "digest": "a" * 64, "size": 1, "mode": 420}]
    used_manifest = [{**manifest[0], "path": "b.py"}]
    unused, used = manifest_id(manifest), manifest_id(used_manifest)
    store.put_snapshot(unused, manifest)
    store.put_snapshot(used, used_manifest)
    store.create_run("e", snapshot_id=used)
    stored = store.admin().list_snapshots()
    assert set(stored) == {unused, used}
    assert store.admin().prune_snapshots(stored[unused]) == []  # not before it was stored
    later = max(stored.values()) + 1
    assert store.admin().prune_snapshots(later, dry_run=True) == [unused]
    assert set(store.admin().list_snapshots()) == {unused, used}
    time.sleep(0.01)
    store.put_snapshot(unused, manifest)  # stored again (a submit on its way): young again
    assert store.admin().list_snapshots()[unused] > stored[unused]
    assert store.admin().prune_snapshots(stored[unused] + 0.005) == []
    assert store.admin().prune_snapshots(time.time() + 1) == [unused]
    assert set(store.admin().list_snapshots()) == {used}
    assert store.get_snapshot(used) == used_manifest


def test_referenced_digests_are_snapshots_run_files_and_models(store: RunStore) -> None:
    first = [{"path": "a.py", "digest": "1" * 64, "size": 1, "mode": 420}]
    second = [{"path": "b.py", "digest": "2" * 64, "size": 1, "mode": 420}]
    s1, s2 = manifest_id(first), manifest_id(second)
    store.put_snapshot(s1, first)
    store.put_snapshot(s2, second)
    run = store.create_run("e", snapshot_id=s1).run_id
    store.add_file(run, "outputs/a", "3" * 64, 1)
    archived = store.create_run("e").run_id
    store.add_file(archived, "outputs/b", "4" * 64, 1)
    store.admin().set_archived([archived])
    store.register_model("m", run_id=None, path="m", files=[{"name": "m", "digest": "5" * 64, "size": 1}])
    assert store.admin().referenced_digests() == {c * 64 for c in "12345"}
    assert store.admin().referenced_digests(skip_snapshots=[s2]) == {c * 64 for c in "1345"}
    store.admin().delete_runs([run, archived])
    assert store.admin().referenced_digests() == {c * 64 for c in "125"}  # snapshots stay until pruned


def _writer(path: str, run_id: str, worker: int, count: int) -> None:
    store = SqliteRunStore(path)
    for i in range(count):
        store.apply_journal(run_id, 0, f"job-{worker}", [_metric(i + 1, value=float(i))])
        store.set_tags(run_id, {f"w{worker}": str(i)})
    store.close()


def test_several_processes_write_at_once_without_lock_errors(tmp_path: Path) -> None:
    path = str(tmp_path / "history.db")
    store = SqliteRunStore(path)
    run = store.create_run("e").run_id
    ctx = multiprocessing.get_context("spawn")
    procs = [ctx.Process(target=_writer, args=(path, run, w, 150)) for w in range(4)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(120)
    assert [p.exitcode for p in procs] == [0, 0, 0, 0]  # a "database is locked" error would exit 1
    assert len(store.get_metric_records(run)) == 600
    assert store.get_run(run).tags == {f"w{w}": "149" for w in range(4)}


# -- what crosses a process or network boundary must come back exactly ------------------------------------------
def test_metric_values_of_every_kind_come_back_exactly(store: RunStore) -> None:
    run = store.create_run("e").run_id
    values: list[tuple[str, str, object]] = [
        ("loss", "scalar", float("nan")), ("loss", "scalar", float("inf")), ("loss", "scalar", -float("inf")),
        ("loss", "scalar", 2**53 + 1), ("loss", "scalar", 0.1), ("loss", "scalar", True),
        ("acc ü 精度", "scalar", -0.0), ("hist", "list", [1, 2.5, None]), ("row", "row", {"a": 1, "b": "x"}),
        ("table", "table", {"col": [1, 2], "other": ["a", "b"]}), ("note", "scalar", "text value"),
    ]
    store.log_metrics(run, [MetricRecord(name, kind, value, step=i, description="d", at=1.5 + i)
                            for i, (name, kind, value) in enumerate(values)])
    got = store.get_metric_records(run)
    assert [(m.name, m.kind, m.step, m.description, m.at) for m in got] == \
        [(name, kind, i, "d", 1.5 + i) for i, (name, kind, _) in enumerate(values)]
    nan, inf, minus_inf, big, tenth, flag = (m.value for m in got[:6])
    assert nan != nan and inf == float("inf") and minus_inf == -float("inf")
    assert big == 2**53 + 1 and type(big) is int and tenth == 0.1 and flag is True
    assert [m.value for m in got[7:]] == [v for _, _, v in values[7:]]
    assert [m.value for m in store.get_metric_records(run, "acc ü 精度")] == [-0.0]


def test_unknown_runs_are_reported_and_change_nothing(store: RunStore) -> None:
    for call in (lambda: store.get_run("nope"), lambda: store.transition("nope", RunStatus.RUNNING),
                 lambda: store.update_run("nope", description="x"),
                 lambda: store.log_metrics("nope", [MetricRecord("m", "scalar", 1)]),
                 lambda: store.apply_journal("nope", 0, "job-1", [_metric(1)])):
        with pytest.raises(RunNotFoundError):
            call()
    assert store.journal_mark("nope", 0, "job-1") == 0
    assert store.list_runs() == []
    with pytest.raises(StoreError):
        store.get_snapshot("no-such-snapshot")


def test_a_run_id_is_taken_once(store: RunStore) -> None:
    store.create_run("e", run_id="e_1_00000000")
    with pytest.raises(StoreError, match="already exists"):
        store.create_run("e", run_id="e_1_00000000")
    assert len(store.list_runs()) == 1


def test_run_attributes_come_back_as_given(store: RunStore) -> None:
    definition = {"script": "train.py", "arguments": ["--lr", 0.1, None], "nested": {"a": [1, {"b": "ü"}]}}
    run = store.create_run("exp with spaces", display_name="名前", description="line1\nline2", target="gpu-box",
                           run_definition=definition, snapshot_id="snap", submitted_by="alice", run_dir="/x/y",
                           tags={"k": "v", "empty": "", "none": None, "<b>": "&amp;"},
                           properties={"p": "1"}, run_type="azureml.scriptrun")
    got = store.get_run(run.run_id)
    assert (got.experiment, got.display_name, got.description, got.target, got.snapshot_id, got.submitted_by,
            got.run_dir, got.run_type) == ("exp with spaces", "名前", "line1\nline2", "gpu-box", "snap", "alice",
                                           "/x/y", "azureml.scriptrun")
    assert got.run_definition == definition
    assert got.tags == {"k": "v", "empty": "", "none": None, "<b>": "&amp;"} and got.properties == {"p": "1"}
    store.update_run(run.run_id, display_name="new", run_dir="/z")
    got = store.get_run(run.run_id)
    assert (got.display_name, got.description, got.run_dir) == ("new", "line1\nline2", "/z")
    store.transition(run.run_id, RunStatus.FAILED, detail="boom", error={"code": "X", "details": [{"a": 1}]})
    assert store.get_run(run.run_id).error == {"code": "X", "details": [{"a": 1}]}


def test_children_created_by_a_job_inherit_experiment_and_target(store: RunStore) -> None:
    parent = store.create_run("e", target="gpu-box").run_id
    child = f"{parent}_child_1"
    mark = store.apply_journal(child, 0, "job-1", [
        {"seq": 1, "t": 5.0, "type": "child", "parent": parent, "name": "fold 1", "tags": {"fold": "1"}},
        _metric(2, value=0.5)])
    assert mark == 2
    record = store.get_run(child)
    assert (record.parent_id, record.experiment, record.target, record.run_type, record.display_name) == \
        (parent, "e", "gpu-box", "rundock.childrun", "fold 1")
    assert record.status == RunStatus.RUNNING and record.tags == {"fold": "1"}
    assert [m.value for m in store.get_metric_records(child)] == [0.5]
    store.end_open_children(parent, RunStatus.CANCELED)
    assert store.get_run(child).status == RunStatus.CANCELED


def test_list_filters(store: RunStore) -> None:
    a = store.create_run("e", target="t1").run_id
    b = store.create_run("e", target="t2", run_type="rundock.sweep").run_id
    c = store.create_run("f", target="t1").run_id
    store.transition(b, RunStatus.RUNNING)
    assert [r.run_id for r in store.list_runs(target="t1")] == [c, a]
    assert [r.run_id for r in store.list_runs(run_type="rundock.sweep")] == [b]
    assert [r.run_id for r in store.list_runs(experiment="e", statuses=["Running", "NotStarted"])] == [b, a]
    assert store.list_runs(statuses=[]) == []
    assert [r.run_id for r in store.list_runs(statuses=["NotStarted"])] == [c, a]


def test_many_values_in_one_journal_batch(store: RunStore) -> None:
    run = store.create_run("e").run_id
    batch = [_metric(i, value=float(i)) for i in range(1, 20_001)]
    assert store.apply_journal(run, 0, "job-1", batch) == 20_000
    values = [m.value for m in store.get_metric_records(run, "loss")]
    assert values == [float(i) for i in range(1, 20_001)]


def test_runs_and_models_moved_from_another_history_keep_their_times(store: RunStore) -> None:
    run = store.create_run("e", run_id="e_1000_0000abcd", created_at=1000.25)
    assert run.created_at == 1000.25 and store.status_history(run.run_id)[0].at == 1000.25
    newer = store.create_run("e")
    assert [r.run_id for r in store.list_runs()] == [newer.run_id, run.run_id]  # listed by creation time
    model = store.register_model("m", run_id=run.run_id, path="outputs", files=[], created_at=2000.5)
    assert model.created_at == 2000.5 and store.get_model("m").created_at == 2000.5
