"""Fault 9: the agent of a container job is SIGKILLed; a reader must end the run Failed "agent lost",
the container must be removed, and every value the job logged must be in the history once."""

from __future__ import annotations

import signal

from rundock.states import RunStatus
from tests.faults.invariants import check_all
from tests.faults.scenario import Lab, assert_agent_lost, drive_to_end, signal_agent, wait_for, wait_status


def test_agent_killed_while_its_container_runs(lab: Lab, docker_base_image: str) -> None:
    ws = lab.workspace()
    watch = lab.watch(ws)
    cfg = {"values": 150, "interval": 0.02, "setsid_child": True, "outputs": {"early.bin": 2000}}
    run = lab.submit(ws, cfg, environment=lab.docker_env(docker_base_image), docker=True)
    ctx = lab.context(ws, run.id, cfg, docker=True, watch=watch, fault="agent SIGKILLed while its container runs")
    wait_status(ws, run.id, RunStatus.RUNNING, timeout=90)
    wait_for(lambda: len(ctx.probe_lines(run.id, "values")) >= 10, 30, "10 values from the container")
    ctx.values_at_fault = [int(v) for v in ctx.probe_lines(run.id, "values")]
    signal_agent(ctx.run_dir, signal.SIGKILL)
    drive_to_end(ws, run.id, "get_status", timeout=25)
    assert_agent_lost(ws, run.id)
    check_all(ws, run.id, ctx)
