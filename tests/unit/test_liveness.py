"""The lost-run policy: decided by the agent lock and this host's monotonic clock, never by wall clocks."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

from rundock.agent import runlock
from rundock.context import rundir
from rundock.history.artifacts import ArtifactStore
from rundock.history.backends.sqlite import SqliteRunStore
from rundock.history.liveness import Liveness, shown_status
from rundock.states import RunStatus


def _setup(tmp_path: Path) -> tuple[SqliteRunStore, Liveness, str, str]:
    store = SqliteRunStore(str(tmp_path / "history.db"))
    run_id = store.create_run("e").run_id
    run_dir = str(tmp_path / "runs" / run_id)
    os.makedirs(run_dir)
    store.update_run(run_id, run_dir=run_dir)
    store.transition(run_id, RunStatus.STARTING)
    return store, Liveness(store, ArtifactStore(str(tmp_path / "artifacts")), lost_after=60.0), run_id, run_dir


def _start_agent(run_dir: str) -> runlock.AgentLock:
    lock = runlock.AgentLock(run_dir)
    assert lock.acquire()
    os.makedirs(os.path.join(run_dir, rundir.AGENT_JOURNAL_DIR), exist_ok=True)
    Path(run_dir, rundir.AGENT_JOURNAL_DIR, "agent.jsonl").write_text("")
    return lock


def test_a_reader_whose_wall_clock_is_far_ahead_keeps_a_live_run(tmp_path: Path) -> None:
    store, policy, run_id, run_dir = _setup(tmp_path)
    lock = _start_agent(run_dir)
    policy.wall = lambda: time.time() + 120  # a reader whose clock runs two minutes ahead
    policy.clock = lambda: time.monotonic() + 10_000
    assert policy.sweep() == []
    assert store.get_run(run_id).status == RunStatus.STARTING
    lock.release()


def test_a_run_whose_agent_died_is_lost_at_once_whatever_the_clocks(tmp_path: Path) -> None:
    store, policy, run_id, run_dir = _setup(tmp_path)
    _start_agent(run_dir).release()  # the agent took the run, then died: the kernel dropped its lock
    policy.wall = lambda: time.time() - 3600  # a reader whose clock stepped back an hour
    assert policy.sweep() == [run_id]
    record = store.get_run(run_id)
    assert record.status == RunStatus.FAILED and record.error and record.error["code"] == "AgentLost"


def test_a_run_no_agent_took_is_lost_after_the_limit_on_the_monotonic_clock(tmp_path: Path) -> None:
    store, policy, run_id, run_dir = _setup(tmp_path)
    runlock.write_heartbeat(run_dir, 0, 2.0)  # what the submitter writes when it makes the run directory
    assert policy.sweep() == []
    policy.wall = lambda: time.time() + 3600  # the wall clock plays no part
    assert policy.sweep() == []
    policy.clock = lambda: time.monotonic() + 61
    assert policy.sweep() == [run_id]


def test_a_run_whose_submitter_died_before_its_run_directory_is_lost_after_the_limit(tmp_path: Path) -> None:
    store = SqliteRunStore(str(tmp_path / "history.db"))
    policy = Liveness(store, ArtifactStore(str(tmp_path / "artifacts")), lost_after=60.0)
    run_id = store.create_run("e").run_id  # NotStarted, never handed to an agent
    assert policy.sweep() == []
    policy.wall = lambda: time.time() + 61
    assert policy.sweep() == [run_id]
    assert "never handed to an agent" in (store.get_run(run_id).error or {})["message"]


def test_a_paused_agent_shows_not_responding_by_the_monotonic_clock(tmp_path: Path) -> None:
    store, policy, run_id, run_dir = _setup(tmp_path)
    lock = _start_agent(run_dir)
    store.transition(run_id, RunStatus.RUNNING)
    runlock.write_heartbeat(run_dir, 5, 2.0)
    run = store.get_run(run_id)
    run.target = "local"
    assert shown_status(run) == RunStatus.RUNNING
    assert shown_status(run, clock=lambda: time.monotonic() + 7) == RunStatus.NOT_RESPONDING
    assert policy.sweep() == []  # silent, but its agent is alive: never lost for that
    lock.release()


def test_the_agent_lock_is_seen_from_another_process(tmp_path: Path) -> None:
    run_dir = str(tmp_path)
    holder = subprocess.Popen([sys.executable, "-c", (
        "import sys, time; from rundock.agent.runlock import AgentLock; "
        f"assert AgentLock({run_dir!r}).acquire(); print('held', flush=True); time.sleep(30)")],
        stdout=subprocess.PIPE)
    try:
        assert holder.stdout is not None and holder.stdout.readline() == b"held\n"
        assert runlock.agent_alive(run_dir)
        assert not runlock.AgentLock(run_dir).acquire(wait=0.1)  # a second agent runs nothing
    finally:
        holder.kill()
        holder.wait()
    assert not runlock.agent_alive(run_dir)
