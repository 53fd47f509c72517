"""``rundock doctor``, ``rundock backup`` and a damaged history, through the real command line.

Runs are made the way agents make them (a run directory with ``job.json`` and journals, synced by
``Syncer``), then the history file is damaged on purpose and the CLI is run in a real process.
"""

from __future__ import annotations

import glob
import os
import random
import sqlite3
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import pytest

from rundock.agent.job import MODE_STORE, JobSpec
from rundock.context import rundir
from rundock.context.journal import JournalWriter
from rundock.history.backends.sqlite import SqliteRunStore
from rundock.history.backends.sqlite_file import SCHEMA_VERSION
from rundock.history.records import MetricRecord
from rundock.history.store import RunStore
from rundock.history.sync import Syncer
from rundock.submitter.workspace import Workspace


def rundock(cwd: Path, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "rundock", *args], cwd=cwd, capture_output=True, text=True,
                          timeout=timeout)


def _history(ws: Workspace) -> Path:
    return Path(ws.path) / "history.db"


def _journaled_run(ws: Workspace, experiment: str, metrics: int, child: bool = False) -> str:
    """A finished run as an agent leaves it: run directory, job.json, journals, synced to the history."""
    record = ws.store.create_run(experiment, target="local")
    run_id = record.run_id
    run_dir = os.path.join(ws.local_root, "runs", run_id)
    os.makedirs(run_dir)
    ws.store.update_run(run_id, run_dir=run_dir)
    JobSpec(run_id=run_id, experiment=experiment, mode=MODE_STORE, store_uri=ws.history_uri,
            artifacts_root=ws.artifacts.root,
            snapshot_id="", script="train.py", interpreter=sys.executable,
            submitted_at=record.created_at).save(run_dir)
    agent, job = JournalWriter(run_dir, rundir.AGENT_SOURCE), JournalWriter(run_dir, rundir.job_source(4242))
    agent.append("state", status="Preparing", detail="preparing")
    agent.append("state", status="Running", detail="running")
    for i in range(metrics):
        job.append("metric", name="loss", kind="scalar", value=1.0 / (i + 1), step=i)
    job.append("tags", values={"lr": "0.1"})
    if child:
        child_id = f"{run_id}_child"
        job.append("child", run=child_id, parent=run_id, name="fold", tags={"fold": "1"})
        job.append("metric", run=child_id, name="acc", kind="scalar", value=0.9)
        job.append("state", run=child_id, status="Completed", detail="child run completed")
    agent.append("state", status="Completed", detail="done")
    agent.close()
    job.close()
    syncer = Syncer(run_dir, run_id, ws.store, ws.artifacts)
    syncer.sync_once()
    syncer.sync_once()
    return run_id


def _state(store: RunStore, run_ids: list[str]) -> dict[str, Any]:
    """What a user sees of these runs (numbers aside: recreated runs get new ones)."""
    out: dict[str, Any] = {}
    for run_id in run_ids:
        run = store.get_run(run_id)
        out[run_id] = (run.experiment, run.status, run.parent_id, run.tags, round(run.created_at, 3),
                       [(m.name, m.value, m.step) for m in store.get_metric_records(run_id)])
    return out


def _one_clear_line(result: subprocess.CompletedProcess[str], *needles: str) -> None:
    assert result.returncode == 2, result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    assert "Traceback" not in result.stderr
    for needle in needles:
        assert needle in lines[0]


def _damage_pages(path: Path, table: str) -> None:
    """Overwrite the middle third of ``table``'s leaf pages (the file must be checkpointed: no WAL)."""
    db = sqlite3.connect(path)
    try:
        pages = [p for (p,) in db.execute("SELECT pageno FROM dbstat WHERE name = ? AND pagetype = 'leaf' "
                                          "ORDER BY pageno", (table,))]
        (size,) = db.execute("PRAGMA page_size").fetchone()
    except sqlite3.OperationalError as exc:
        pytest.skip(f"this SQLite has no dbstat table to find {table}'s pages: {exc}")
    finally:
        db.close()
    assert len(pages) >= 6 and not os.path.exists(f"{path}-wal")
    with open(path, "r+b") as fh:
        for page in pages[len(pages) // 3: 2 * len(pages) // 3]:
            fh.seek((page - 1) * size)
            fh.write(b"\xff" * size)  # no valid b-tree page starts with 0xff


def test_a_garbage_history_is_one_clear_line_then_doctor_rebuilds_it(workspace: Workspace) -> None:
    project = Path(workspace.path).parent
    runs = [_journaled_run(workspace, "train", 50, child=True), _journaled_run(workspace, "eval", 20)]
    runs.append(f"{runs[0]}_child")
    before = _state(workspace.store, runs)
    workspace.close()
    garbage = random.Random(3).randbytes(64 * 1024)
    _history(workspace).write_bytes(garbage)
    for suffix in ("-wal", "-shm"):
        Path(f"{_history(workspace)}{suffix}").unlink(missing_ok=True)

    _one_clear_line(rundock(project, "runs"), str(_history(workspace)), "rundock doctor")
    _one_clear_line(rundock(project, "show", runs[0]), str(_history(workspace)), "rundock doctor")
    checked = rundock(project, "doctor")
    assert checked.returncode == 1 and "damaged" in checked.stdout and "--repair" in checked.stdout

    repaired = rundock(project, "doctor", "--repair")
    assert repaired.returncode == 0, repaired.stdout + repaired.stderr
    assert "Rebuilt" in repaired.stdout and ": ok" in repaired.stdout
    assert "2 recreated from job.json" in repaired.stdout
    (kept,) = glob.glob(f"{_history(workspace)}.damaged-*")
    assert Path(kept).read_bytes() == garbage
    assert _state(workspace.store, runs) == before
    assert rundock(project, "doctor").returncode == 0
    assert runs[0] in rundock(project, "runs").stdout


@pytest.mark.parametrize("damaged", ["metrics", "log_chunks"])
def test_doctor_salvages_what_is_readable_and_replays_without_duplicates(workspace: Workspace,
                                                                          damaged: str) -> None:
    project = Path(workspace.path).parent
    store = workspace.store
    run = _journaled_run(workspace, "train", 4000)
    client_metric = MetricRecord("note", "scalar", 7, None, "", 1.0)
    store.log_metrics(run, [client_metric])  # from outside the job: in no journal
    sdk = store.create_run("notebook", target="sdk")  # no run directory at all: only the history has it
    store.set_tags(sdk.run_id, {"owner": "me"})
    store.log_metrics(sdk.run_id, [MetricRecord("acc", "scalar", 0.5, None, "", 1.0)])
    for offset in range(0, 600 * 1000, 1000):
        store.append_log(sdk.run_id, "driver.txt", offset, b"x" * 1000)
    journal_metrics = [m for m in _state(store, [run])[run][5] if m[0] == "loss"]
    workspace.close()  # the last connection checkpoints: the damage lands in the file itself
    _damage_pages(_history(workspace), damaged)

    if damaged == "metrics":
        _one_clear_line(rundock(project, "metrics", run), str(_history(workspace)), "rundock doctor")
    checked = rundock(project, "doctor")
    assert checked.returncode == 1 and "damaged" in checked.stdout
    repaired = rundock(project, "doctor", "--repair")
    assert repaired.returncode == 0, repaired.stdout + repaired.stderr
    assert f"read in part or not at all: {damaged}" in repaired.stdout

    store = workspace.store
    metrics = [(m.name, m.value, m.step) for m in store.get_metric_records(run)]
    assert [m for m in metrics if m[0] == "loss"] == journal_metrics  # each once, in order
    # Marks and metrics read in full are kept together; read in part, the journal is replayed from the start.
    assert metrics.count(("note", 7, None)) == (1 if damaged == "log_chunks" else 0)
    assert store.get_run(run).status.value == "Completed"
    assert store.get_run(sdk.run_id).tags == {"owner": "me"}
    assert [m.value for m in store.get_metric_records(sdk.run_id)] == [0.5]
    assert rundock(project, "doctor").returncode == 0


def test_a_history_from_a_newer_rundock_is_refused_by_name(workspace: Workspace) -> None:
    project = Path(workspace.path).parent
    workspace.store.create_run("e")
    workspace.close()
    db = sqlite3.connect(_history(workspace))
    db.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    db.close()
    _one_clear_line(rundock(project, "runs"), str(_history(workspace)), "upgrade rundock")
    checked = rundock(project, "doctor")
    assert checked.returncode == 1 and "newer rundock" in checked.stdout
    assert rundock(project, "doctor", "--repair").returncode == 1  # never "repaired" into an older schema


def test_backup_while_an_agent_writes_is_consistent(workspace: Workspace, tmp_path: Path) -> None:
    project = Path(workspace.path).parent
    run_id = workspace.store.create_run("e").run_id
    workspace.close()
    batch, written, stop = 100, [0], threading.Event()

    def write() -> None:  # an agent's syncer: a transaction of `batch` values at a time
        store = SqliteRunStore(str(_history(workspace)))
        try:
            while not stop.is_set():
                first = written[0] + 1
                store.apply_journal(run_id, 0, "job", [
                    {"seq": s, "t": 1.0, "type": "metric", "name": "loss", "kind": "scalar", "value": s}
                    for s in range(first, first + batch)])
                written[0] += batch
        finally:
            store.close()

    writer = threading.Thread(target=write)
    writer.start()
    try:
        while written[0] < 20 * batch:
            stop.wait(0.01)
        at_start = written[0]
        result = rundock(project, "backup", str(tmp_path / "copy.db"))
        at_end = written[0]
    finally:
        stop.set()
        writer.join(timeout=30)
    assert result.returncode == 0, result.stderr
    assert f"{tmp_path / 'copy.db'}" in result.stdout and "bytes" in result.stdout
    assert at_end > at_start  # the agent went on writing while the copy was taken
    copy = sqlite3.connect(tmp_path / "copy.db")
    try:
        assert copy.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
        assert copy.execute("PRAGMA journal_mode").fetchone() == ("delete",)  # one self-contained file
        (count,) = copy.execute("SELECT COUNT(*) FROM metrics").fetchone()
        (mark,) = copy.execute("SELECT seq FROM journal_marks").fetchone()
    finally:
        copy.close()
    assert count == mark and count % batch == 0 and count >= at_start  # whole transactions only
    assert not os.path.exists(tmp_path / "copy.db-wal")
