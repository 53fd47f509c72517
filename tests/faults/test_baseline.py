"""The control: with no fault every invariant holds (if this fails, the suite itself is broken)."""

from __future__ import annotations

from tests.faults.invariants import check_all
from tests.faults.scenario import Lab, drive_to_end


def test_a_healthy_run_keeps_every_promise(lab: Lab) -> None:
    ws = lab.workspace()
    watch = lab.watch(ws)
    cfg = {"values": 30, "outputs": {"model.bin": 5000, "nested/a.txt": 10}, "setsid_child": False}
    run = lab.submit(ws, cfg)
    ctx = lab.context(ws, run.id, cfg, watch=watch)
    assert drive_to_end(ws, run.id).value == "Completed", ws.store.get_run(run.id).error
    check_all(ws, run.id, ctx)
