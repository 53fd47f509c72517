"""Fault 1: the agent is SIGKILLed in each state it owns; a reader must end the run Failed "agent lost",
keep every value the job logged, leave no process of the run alive, and keep a queued run from
starting while the lost run's processes still live."""

from __future__ import annotations

import signal
import sys

import pytest

from rundock import Environment
from rundock.states import RunStatus
from tests.faults.invariants import check_all, run_checks
from tests.faults.probe_job import SLOW_PREPARE_INTERPRETER
from tests.faults.scenario import (
    Lab,
    assert_agent_lost,
    drive_to_end,
    find_agent,
    history_text,
    signal_agent,
    wait_for,
    wait_status,
)


def _broken(results: dict[str, str | None]) -> list[str]:
    return [m for m in results.values() if m]


@pytest.mark.parametrize("reader", ["get_status", "list", "cli"])
def test_agent_killed_while_running(lab: Lab, monkeypatch: pytest.MonkeyPatch, reader: str) -> None:
    monkeypatch.setenv("RUNDOCK_MAX_CONCURRENT_RUNS", "1")
    ws = lab.workspace()
    watch = lab.watch(ws)
    cfg_a = {"values": 250, "interval": 0.02, "setsid_child": True, "outputs": {"early.bin": 3000}}
    a = lab.submit(ws, cfg_a)
    cfg_b = {"values": 5, "check_absent": a.id}
    b = lab.submit(ws, cfg_b)
    ctx_a = lab.context(ws, a.id, cfg_a, watch=watch, fault=f"agent SIGKILLed while Running, reader {reader}")
    ctx_b = lab.context(ws, b.id, cfg_b, fault=f"queued behind run {a.id}, whose agent was killed")
    wait_status(ws, a.id, RunStatus.RUNNING)
    wait_for(lambda: len(ctx_a.probe_lines(a.id, "values")) >= 15 and ctx_a.probe_lines(a.id, "children"), 20,
             "the job to log 15 values and start its setsid grandchild")
    wait_status(ws, b.id, RunStatus.QUEUED)
    ctx_a.values_at_fault = [int(v) for v in ctx_a.probe_lines(a.id, "values")]
    signal_agent(ctx_a.run_dir, signal.SIGKILL)
    drive_to_end(ws, a.id, reader, timeout=25)
    assert_agent_lost(ws, a.id)
    results_a = run_checks(ws, a.id, ctx_a)
    assert drive_to_end(ws, b.id, "get_status", timeout=30) == RunStatus.COMPLETED, history_text(ws, b.id)
    problems = _broken(results_a) + _broken(run_checks(ws, b.id, ctx_b))
    seen = ctx_b.probe_lines(b.id, "other_run_processes")
    if seen != ["0"]:
        problems.append(f"queued run {b.id} started while {seen} processes of the lost run {a.id} were still alive "
                        f"(max_concurrent_runs=1: its slot was free before the lost run was reaped)")
    assert not problems, "\n".join(problems)


def test_agent_killed_while_preparing(lab: Lab) -> None:
    ws = lab.workspace()
    slow = lab.tmp / "python-slow"
    slow.write_text(SLOW_PREPARE_INTERPRETER.format(seconds=4, python=sys.executable))
    slow.chmod(0o755)
    env = Environment("slow-prepare")
    env.python.user_managed_dependencies = True
    env.python.interpreter_path = str(slow)
    watch = lab.watch(ws)
    cfg = {"values": 5}
    run = lab.submit(ws, cfg, environment=env)
    ctx = lab.context(ws, run.id, cfg, watch=watch, fault="agent SIGKILLed while Preparing")
    wait_status(ws, run.id, RunStatus.PREPARING)
    wait_for(lambda: find_agent(ctx.run_dir), 10, "the agent process")
    signal_agent(ctx.run_dir, signal.SIGKILL)
    drive_to_end(ws, run.id, "get_status", timeout=20)
    assert_agent_lost(ws, run.id)
    check_all(ws, run.id, ctx)


def test_agent_killed_while_queued(lab: Lab, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RUNDOCK_MAX_CONCURRENT_RUNS", "1")
    ws = lab.workspace()
    watch = lab.watch(ws)
    release = lab.probe / "release-a"
    cfg_a = {"values": 3, "wait_file": str(release)}
    cfg_b = {"values": 3}
    a = lab.submit(ws, cfg_a)
    b = lab.submit(ws, cfg_b)
    ctx_a = lab.context(ws, a.id, cfg_a, fault="a run queued behind it lost its agent")
    ctx_b = lab.context(ws, b.id, cfg_b, watch=watch, fault="agent SIGKILLed while Queued")
    wait_status(ws, a.id, RunStatus.RUNNING)
    wait_status(ws, b.id, RunStatus.QUEUED)
    wait_for(lambda: find_agent(ctx_b.run_dir), 10, "the queued run's agent")
    signal_agent(ctx_b.run_dir, signal.SIGKILL)
    drive_to_end(ws, b.id, "get_status", timeout=20)
    assert_agent_lost(ws, b.id)
    problems = _broken(run_checks(ws, b.id, ctx_b))
    release.write_text("go")
    status_a = drive_to_end(ws, a.id, "get_status", timeout=20)
    if status_a != RunStatus.COMPLETED:
        problems.append(f"run {a.id} ended {status_a.value}: {history_text(ws, a.id)}")
    problems += _broken(run_checks(ws, a.id, ctx_a))
    assert not problems, "\n".join(problems)


def test_agent_killed_while_finalizing(lab: Lab) -> None:
    ws = lab.workspace()
    watch = lab.watch(ws)
    # A child left in the job's process group that ignores SIGTERM keeps the agent in Finalizing for
    # min(cancel_grace_seconds, 2) s: the window in which the agent is killed.
    cfg = {"values": 20, "group_child": True, "outputs": {"model.bin": 4000}}
    run = lab.submit(ws, cfg, cancel_grace_seconds=5)
    ctx = lab.context(ws, run.id, cfg, watch=watch, fault="agent SIGKILLed while Finalizing")
    wait_status(ws, run.id, RunStatus.FINALIZING, timeout=30)
    ctx.values_at_fault = [int(v) for v in ctx.probe_lines(run.id, "values")]
    signal_agent(ctx.run_dir, signal.SIGKILL)
    drive_to_end(ws, run.id, "get_status", timeout=20)
    assert_agent_lost(ws, run.id)
    check_all(ws, run.id, ctx)

