"""Fault 5: another process holds the run history's write lock for longer than the busy timeout
while the job logs 400 values; once it lets go, the run must end Completed with all 400, once each.

This test holds the lock for the store's busy timeout plus 5 s: today ``BUSY_TIMEOUT_S`` in
rundock/history/backends/sqlite.py is 60 s, so it is the slowest test of the suite (~70 s); it
shortens by itself when the timeout does.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time

from rundock.history.backends import sqlite as sqlite_backend
from rundock.states import RunStatus
from tests.faults.invariants import check_all
from tests.faults.scenario import Lab, drive_to_end, history_text, status_of, wait_for, wait_status

HOLDER = """
import sqlite3, sys, time
db = sqlite3.connect(sys.argv[1], isolation_level=None, timeout=30)
db.execute("BEGIN IMMEDIATE")
print("locked", flush=True)
time.sleep(float(sys.argv[2]))
db.execute("COMMIT")
print("released", flush=True)
"""


def _busy_timeout() -> float:
    for name in ("busy_timeout_seconds", "busy_timeout_s"):
        getter = getattr(sqlite_backend, name, None)
        if callable(getter):
            return float(getter())
    return float(getattr(sqlite_backend, "BUSY_TIMEOUT_S", 60.0))


def test_a_locked_history_delays_but_loses_nothing(lab: Lab) -> None:
    ws = lab.workspace()
    watch = lab.watch(ws)
    go = lab.probe / "go"
    cfg = {"values": 400, "wait_file": str(go)}
    run = lab.submit(ws, cfg)
    ctx = lab.context(ws, run.id, cfg, watch=watch, fault="history.db write-locked past the busy timeout")
    wait_status(ws, run.id, RunStatus.RUNNING)
    hold = _busy_timeout() + 5.0
    db = os.path.join(ws.path, "history.db")
    holder = subprocess.Popen([sys.executable, "-c", HOLDER, db, str(hold)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "locked"
        locked_at = time.monotonic()
        go.write_text("go")  # the job logs its 400 values while nobody can write the history
        wait_for(lambda: ctx.probe_lines(run.id, "done"), 30, "the job to log 400 values")
        assert holder.wait(timeout=hold + 30) == 0
    finally:
        if holder.poll() is None:
            holder.kill()
            holder.wait()
    released_after = time.monotonic() - locked_at
    # A passive look first: the agent itself must finish the run once the history is writable again.
    deadline = time.monotonic() + 20
    while not status_of(ws, run.id).is_terminal and time.monotonic() < deadline:
        time.sleep(0.1)
    passive = status_of(ws, run.id)
    status = drive_to_end(ws, run.id, "get_status", timeout=20)
    rec = ws.store.get_run(run.id)
    assert status == RunStatus.COMPLETED, \
        f"after the history was locked {released_after:.0f} s (busy timeout {_busy_timeout():g} s) the run ended " \
        f"{status.value} ({rec.status_detail!r}, {rec.error}); 20 s after the release it was {passive.value}; " \
        f"history: {history_text(ws, run.id)}; agent log: {_agent_log(ctx.run_dir)}"
    check_all(ws, run.id, ctx)


def _agent_log(run_dir: str) -> str:
    try:
        with open(os.path.join(run_dir, "system_logs", "agent_log.txt"), encoding="utf-8", errors="replace") as fh:
            return fh.read()[-800:]
    except OSError as exc:
        return f"(none: {exc})"
