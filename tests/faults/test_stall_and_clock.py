"""Faults 2 and 3: an agent that stalls past its lease but comes back, and a reader whose wall clock
is far ahead of the agent's. Neither may end a healthy run."""

from __future__ import annotations

import os
import signal
import time

import pytest

from rundock import Run
from rundock.states import RunStatus
from tests.faults.invariants import check_all
from tests.faults.scenario import Lab, drive_to_end, history_text, signal_agent, status_of, wait_for, wait_status


def test_agent_stopped_past_its_lease_then_continued_completes(lab: Lab, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RUNDOCK_AGENT_LOST_AFTER_SECONDS", "6")  # the stall (1.5 s) is past the lease, not this
    ws = lab.workspace()
    watch = lab.watch(ws)
    cfg = {"values": 80, "interval": 0.03, "outputs": {"model.bin": 2000}}
    run = lab.submit(ws, cfg)
    ctx = lab.context(ws, run.id, cfg, watch=watch, fault="agent SIGSTOPped 1.5 s (lease 0.6 s), then SIGCONT")
    wait_status(ws, run.id, RunStatus.RUNNING)
    wait_for(lambda: len(ctx.probe_lines(run.id, "values")) >= 5, 10, "5 values")
    ctx.values_at_fault = [int(v) for v in ctx.probe_lines(run.id, "values")]
    pids = signal_agent(ctx.run_dir, signal.SIGSTOP)
    seen = []
    try:
        stop_until = time.monotonic() + 1.5
        while time.monotonic() < stop_until:
            seen.append(Run.get(ws, run.id).get_status())
            time.sleep(0.05)
    finally:
        for pid in pids:
            os.kill(pid, signal.SIGCONT)
    assert "NotResponding" in seen, f"a reader never saw NotResponding while the agent was stopped 1.5 s " \
                                    f"(heartbeat 0.2 s): it saw {sorted(set(seen))}"
    status = drive_to_end(ws, run.id, "get_status", timeout=30)
    assert status == RunStatus.COMPLETED, f"the stalled run ended {status.value}: {history_text(ws, run.id)}; " \
                                          f"error {ws.store.get_run(run.id).error}"
    check_all(ws, run.id, ctx)


def test_a_reader_whose_clock_is_ahead_does_not_end_a_healthy_run(lab: Lab, monkeypatch: pytest.MonkeyPatch) -> None:
    ws = lab.workspace()
    watch = lab.watch(ws)
    cfg = {"values": 40, "interval": 0.04}
    run = lab.submit(ws, cfg)
    ctx = lab.context(ws, run.id, cfg, watch=watch, fault="the reader's wall clock is 120 s ahead")
    wait_status(ws, run.id, RunStatus.RUNNING)
    real = time.time
    with monkeypatch.context() as patch:  # this process only: the agent and the job keep the real clock
        patch.setattr(time, "time", lambda: real() + 120.0)
        deadline = time.monotonic() + 30
        while not status_of(ws, run.id).is_terminal and time.monotonic() < deadline:
            Run.get(ws, run.id).get_status()
            time.sleep(0.05)
    rec = ws.store.get_run(run.id)
    assert rec.status == RunStatus.COMPLETED, f"a reader 120 s ahead ended a healthy run {rec.status.value} " \
                                              f"({rec.status_detail!r}, {rec.error}): {history_text(ws, run.id)}"
    assert ctx.probe_lines(run.id, "done") == ["1"], f"the job was stopped before it finished: it logged " \
                                                     f"{len(ctx.probe_lines(run.id, 'values'))} of 40 values"
    check_all(ws, run.id, ctx)
