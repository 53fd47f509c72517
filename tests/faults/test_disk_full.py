"""Fault 6: the artifact store is full. A 10 MB output cannot be stored on a 4 MB tmpfs; the run must
end Failed and say so (naming the file), never Completed with the file missing."""

from __future__ import annotations

import json
import os

from rundock.states import RunStatus
from tests.faults.invariants import check_all
from tests.faults.scenario import Lab, drive_to_end, history_text


def test_outputs_that_cannot_be_stored_fail_the_run(lab: Lab) -> None:
    ws = lab.workspace()
    lab.mount_tmpfs(os.path.join(ws.path, "artifacts"), "4m")
    watch = lab.watch(ws)
    cfg = {"values": 5, "outputs": {"model.bin": 10 * 1024 * 1024}}
    run = lab.submit(ws, cfg)
    ctx = lab.context(ws, run.id, cfg, watch=watch, fault="artifact store on a full 4 MB tmpfs")
    status = drive_to_end(ws, run.id, timeout=40)
    rec = ws.store.get_run(run.id)
    text = f"{rec.status_detail} {json.dumps(rec.error or {})}"
    assert status == RunStatus.FAILED, f"a run whose 10 MB output could not be stored ended {status.value} " \
                                       f"(stored files: {sorted(ws.store.list_files(run.id))}); " \
                                       f"history: {history_text(ws, run.id)}"
    assert "No space left" in text or "outputs could not be stored" in text, \
        f"the run failed without saying the outputs could not be stored: {text[:500]}"
    check_all(ws, run.id, ctx)
