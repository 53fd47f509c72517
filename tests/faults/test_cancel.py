"""Fault 10: cancel a running job that ignores SIGTERM and left a setsid grandchild and a child in its
group: the run ends Canceled, nothing of it survives, and its outputs are stored."""

from __future__ import annotations

from rundock.states import RunStatus
from tests.faults.invariants import check_all
from tests.faults.scenario import Lab, drive_to_end, history_text, wait_for, wait_status


def test_cancel_of_a_stubborn_job(lab: Lab) -> None:
    ws = lab.workspace()
    watch = lab.watch(ws)
    cfg = {"values": 10, "ignore_term": True, "setsid_child": True, "group_child": True, "sleep": 60,
           "outputs": {"before-cancel.bin": 3000}}
    run = lab.submit(ws, cfg, cancel_grace_seconds=1)
    ctx = lab.context(ws, run.id, cfg, watch=watch, fault="canceled while Running (ignores SIGTERM)")
    wait_status(ws, run.id, RunStatus.RUNNING)
    wait_for(lambda: ctx.probe_lines(run.id, "done") and len(ctx.probe_lines(run.id, "children")) == 2, 20,
             "the job to start both children and log its values")
    run.cancel()
    status = drive_to_end(ws, run.id, timeout=30)
    assert status == RunStatus.CANCELED, f"ended {status.value}: {history_text(ws, run.id)}"
    assert "outputs/before-cancel.bin" in run.get_file_names(), run.get_file_names()
    check_all(ws, run.id, ctx)
