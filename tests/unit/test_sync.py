"""The syncer: nothing lost when a pass fails, hostile records quarantined one by one, never the batch."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest

from rundock.context.journal import JournalWriter
from rundock.errors import StoreError
from rundock.history.artifacts import ArtifactStore
from rundock.history.backends.sqlite import SqliteRunStore
from rundock.history.sync import REJECTED_LOG, Syncer
from rundock.states import RunStatus


class FlakyStore(SqliteRunStore):
    """A real SQLite history whose next ``fail`` applies raise, as a locked or full history does."""

    fail = 0

    def apply_journal(self, run_id: str, attempt: int, source: str, records: list[dict[str, Any]]) -> int:
        if self.fail:
            self.fail -= 1
            raise StoreError("run history is unavailable: database is locked")
        return super().apply_journal(run_id, attempt, source, records)


@pytest.fixture
def setup(tmp_path: Path) -> tuple[FlakyStore, Syncer, str, str]:
    store = FlakyStore(str(tmp_path / "history.db"))
    run_id = store.create_run("e").run_id
    store.transition(run_id, RunStatus.RUNNING)
    run_dir = str(tmp_path / "run")
    os.makedirs(run_dir)
    return store, Syncer(run_dir, run_id, store, ArtifactStore(str(tmp_path / "artifacts"))), run_id, run_dir


def test_a_failed_pass_loses_nothing(setup: tuple[FlakyStore, Syncer, str, str]) -> None:
    store, syncer, run_id, run_dir = setup
    job = JournalWriter(run_dir, "job-1")
    for i in range(200):
        job.append("metric", name="v", kind="scalar", value=i)
    store.fail = 1
    with pytest.raises(StoreError):
        syncer.sync_once()
    for i in range(200, 400):
        job.append("metric", name="v", kind="scalar", value=i)
    syncer.sync_once()
    syncer.sync_once()
    assert [m.value for m in store.get_metric_records(run_id)] == list(range(400))


def test_a_job_cannot_end_or_beat_for_its_own_run(setup: tuple[FlakyStore, Syncer, str, str]) -> None:
    store, syncer, run_id, run_dir = setup
    job = JournalWriter(run_dir, "job-1")
    job.append("metric", name="v", kind="scalar", value=1)
    job.append("state", status="Completed", detail="forged")
    job.append("heartbeat", interval=1.0)
    job.append("metric", name="v", kind="scalar", value=2)
    syncer.sync_once()
    assert store.get_run(run_id).status == RunStatus.RUNNING
    assert [m.value for m in store.get_metric_records(run_id)] == [1, 2]
    rejected = store.read_log(run_id, REJECTED_LOG).decode()
    assert "only the run's agent changes the run's state" in rejected and "heartbeat" in rejected


def test_a_job_file_record_reaches_only_its_uploads(setup: tuple[FlakyStore, Syncer, str, str],
                                                    tmp_path: Path) -> None:
    store, syncer, run_id, run_dir = setup
    secret = tmp_path / "secret.txt"
    secret.write_text("TOP-SECRET-MARKER")
    os.makedirs(os.path.join(run_dir, "uploads"))
    os.symlink(secret, os.path.join(run_dir, "uploads", "link"))
    Path(run_dir, "uploads", "ok").write_text("fine")
    job = JournalWriter(run_dir, "job-1")
    job.append("file", name="outputs/a", path=str(secret))
    job.append("file", name="outputs/b", path="uploads/../../secret.txt")
    job.append("file", name="outputs/c", path="uploads/link")
    job.append("file", name="../../evil", path="uploads/ok")
    job.append("file", name="outputs/d", digest="0" * 64, size=3)
    job.append("file", name="outputs/ok", path="uploads/ok")
    syncer.sync_once()
    assert list(store.list_files(run_id)) == ["outputs/ok"]
    blobs = [p for p in (tmp_path / "artifacts").rglob("*") if p.is_file()]
    assert not any(b"TOP-SECRET-MARKER" in p.read_bytes() for p in blobs)
    assert store.read_log(run_id, REJECTED_LOG).decode().count("\n") == 5


def test_child_runs_a_job_may_create_and_those_it_may_not(setup: tuple[FlakyStore, Syncer, str, str]) -> None:
    store, syncer, run_id, run_dir = setup
    other = store.create_run("e").run_id
    job = JournalWriter(run_dir, "job-1")
    job.append("child", run=f"{run_id}_c1", parent=run_id, name="c1", tags={})
    job.append("metric", run=f"{run_id}_c1", name="x", kind="scalar", value=1)
    job.append("state", run=f"{run_id}_c1", status="Completed", detail="child run completed")
    job.append("child", run="../../etc", parent=run_id, name="bad", tags={})
    job.append("child", run=other, parent=run_id, name="adopted", tags={})
    job.append("state", run=other, status="Canceled", detail="not mine")
    syncer.sync_once()
    assert store.get_run(f"{run_id}_c1").status == RunStatus.COMPLETED
    assert store.get_run(other).status == RunStatus.NOT_STARTED and store.get_run(other).parent_id is None
    assert [r.run_id for r in store.list_runs(parent_id=run_id)] == [f"{run_id}_c1"]


def test_garbage_lines_are_quarantined_and_the_rest_applied(setup: tuple[FlakyStore, Syncer, str, str]) -> None:
    store, syncer, run_id, run_dir = setup
    job = JournalWriter(run_dir, "job-1")
    job.append("metric", name="v", kind="scalar", value=1)
    with open(job.path, "ab") as fh:
        fh.write(b"garbage\n" + json.dumps({"type": "metric", "name": "v", "value": 5}).encode() + b"\n")
    job.append("metric", name="v", kind="scalar", value=2)
    job.append("metric", name="r\udce9sultat", kind="scalar", value=3)
    syncer.sync_once()
    assert [m.value for m in store.get_metric_records(run_id)] == [1, 2]
    assert store.read_log(run_id, REJECTED_LOG).decode().count("\n") == 3
