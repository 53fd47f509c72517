"""Faults 7 and 8: a submitter that dies right after creating a run, and eight cold submits at once."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time

from rundock.states import RunStatus
from tests.conftest import REPO
from tests.faults.invariants import FaultContext, check_all, check_i1
from tests.faults.scenario import LOST_AFTER_S, Lab, daemons_of, drive_to_end, history_text, wait_for


def test_a_run_whose_submitter_died_before_starting_an_agent_fails(lab: Lab) -> None:
    ws = lab.workspace()
    rec = ws.store.create_run("faults", run_type="rundock.scriptrun", target="local")  # ...and the submitter dies
    started = time.monotonic()
    status = drive_to_end(ws, rec.run_id, "get_status", timeout=LOST_AFTER_S + 8)
    took = time.monotonic() - started
    after = ws.store.get_run(rec.run_id)
    assert status == RunStatus.FAILED and after.error and after.error.get("message"), \
        f"a run left NotStarted by a dead submitter ended {status.value} with error {after.error}"
    assert took <= LOST_AFTER_S + 3, f"it took {took:.1f} s to end it (lost-after {LOST_AFTER_S:g} s)"
    check_i1(ws, rec.run_id, FaultContext(run_dir="/nonexistent", probe=str(lab.probe), fault="submitter died"))


SUBMIT = """
import os, sys, time
sys.path.insert(0, {repo!r})
from rundock import Experiment, RunConfiguration, ScriptRunConfig, Workspace
ws = Workspace({ws!r})
config = RunConfiguration(arguments=[{cfg!r}])
print("ready", flush=True)
while not os.path.exists({go!r}):
    time.sleep(0.005)
run = Experiment(ws, "cold").submit(ScriptRunConfig({src!r}, "job.py", run_config=config))
print(run.id, flush=True)
"""


def test_concurrent_cold_submits_start_one_daemon_and_run_each_job_once(lab: Lab) -> None:
    ws = lab.workspace("cold")
    watch = lab.watch(ws)
    assert daemons_of(ws) == []
    go = lab.probe / "go"
    cfg = {"values": 5, "probe": str(lab.probe), "canary": str(lab.secret)}
    code = SUBMIT.format(repo=str(REPO), ws=ws.path, cfg=json.dumps(cfg), go=str(go), src=str(lab.src))
    procs = [subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True) for _ in range(8)]
    for proc in procs:
        assert proc.stdout is not None and proc.stdout.readline().strip() == "ready"
    seen: list[int] = []
    stop = threading.Event()

    def sample() -> None:
        while not stop.is_set():
            seen.append(len(daemons_of(ws)))
            time.sleep(0.05)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    go.write_text("go")
    run_ids = []
    try:
        for proc in procs:
            out, err = proc.communicate(timeout=120)
            assert proc.returncode == 0, f"a submit failed: {err[-1500:]}"
            run_ids.append(out.strip())
        problems = []
        for run_id in run_ids:
            status = drive_to_end(ws, run_id, "get_status", timeout=60)
            if status != RunStatus.COMPLETED:
                problems.append(f"run {run_id} ended {status.value}: {history_text(ws, run_id)}")
        wait_for(lambda: len(seen) > 5, 5, "daemon samples")
    finally:
        stop.set()
        sampler.join()
    final = daemons_of(ws)
    if max(seen, default=0) != 1 or len(final) != 1:
        problems.append(f"8 cold submits at once: up to {max(seen, default=0)} agent daemons ran at the same time "
                        f"for workspace {ws.path} ({len(final)} still alive at the end: {final}); expected exactly one")
    for run_id in run_ids:
        ctx = lab.context(ws, run_id, cfg, watch=watch, fault="one of 8 concurrent cold submits")
        try:
            check_all(ws, run_id, ctx)
        except AssertionError as exc:
            problems.append(str(exc))
    assert not problems, "\n".join(problems)
