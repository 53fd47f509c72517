"""A container outlives its killed agent and holds no slot lock: the next run to take the slot must end
the lost run (ship, remove the container, end it) before it starts, with no reader involved."""

from __future__ import annotations

import signal

import pytest

from rundock.states import RunStatus
from tests.faults.invariants import run_checks
from tests.faults.scenario import (
    Lab,
    assert_agent_lost,
    drive_to_end,
    history_text,
    signal_agent,
    wait_for,
    wait_status,
)


def test_the_next_run_ends_a_lost_container_run_before_it_starts(lab: Lab, docker_base_image: str,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RUNDOCK_MAX_CONCURRENT_RUNS", "1")
    ws = lab.workspace()
    cfg_a = {"values": 150, "interval": 0.02}
    a = lab.submit(ws, cfg_a, environment=lab.docker_env(docker_base_image), docker=True)
    ctx_a = lab.context(ws, a.id, cfg_a, docker=True, fault="agent SIGKILLed while its container runs")
    wait_status(ws, a.id, RunStatus.RUNNING, timeout=90)
    wait_for(lambda: len(ctx_a.probe_lines(a.id, "values")) >= 10, 30, "10 values from the container")
    cfg_b = {"values": 5, "check_absent": a.id}
    b = lab.submit(ws, cfg_b)
    ctx_b = lab.context(ws, b.id, cfg_b, fault=f"queued behind container run {a.id}, whose agent was killed")
    wait_status(ws, b.id, RunStatus.QUEUED)
    ctx_a.values_at_fault = [int(v) for v in ctx_a.probe_lines(a.id, "values")]
    signal_agent(ctx_a.run_dir, signal.SIGKILL)
    # only run b is followed: its agent finds the slot's last holder lost and ends it first
    assert drive_to_end(ws, b.id, "get_status", timeout=60) == RunStatus.COMPLETED, history_text(ws, b.id)
    assert ws.store.get_run(a.id).status == RunStatus.FAILED, history_text(ws, a.id)
    assert_agent_lost(ws, a.id)
    problems = [m for m in (*run_checks(ws, a.id, ctx_a).values(), *run_checks(ws, b.id, ctx_b).values()) if m]
    if ctx_b.probe_lines(b.id, "other_run_processes") != ["0"]:
        problems.append(f"run {b.id} started while processes of the lost container run {a.id} were alive")
    assert not problems, "\n".join(problems)
