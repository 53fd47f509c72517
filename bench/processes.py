"""Figures 10-11: cancel kills every process in time; an idle agent costs little."""

from __future__ import annotations

import json
import time
from pathlib import Path

import psutil

from bench.common import Figure, log, p50, source, submit, workspace

STUBBORN = """
import os, signal, subprocess, sys, time
signal.signal(signal.SIGTERM, signal.SIG_IGN)
child = "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); time.sleep(600)"
subprocess.Popen([sys.executable, "-c", child])
subprocess.Popen([sys.executable, "-c", child], start_new_session=True)
print("ready", flush=True)
time.sleep(600)
"""
GRACE = 2.0


def _run_processes(run_id: str) -> list[int]:
    found = []
    for proc in psutil.process_iter():
        try:
            if proc.environ().get("RUNDOCK_RUN_ID") == run_id and proc.status() != psutil.STATUS_ZOMBIE:
                found.append(proc.pid)
        except psutil.Error:
            continue
    return found


def cancel(root: Path) -> Figure:
    ws = workspace(root, "cancel")
    times, survivors = [], 0
    for _ in range(3):
        run = submit(ws, source(root, "stubborn", STUBBORN), cancel_grace_seconds=GRACE)
        while b"ready" not in ws.store.read_log(run.id, "system_logs/driver_log.txt"):
            time.sleep(0.01)
        while len(_run_processes(run.id)) < 3:
            time.sleep(0.01)
        began = time.perf_counter()
        run.cancel()
        while _run_processes(run.id) and time.perf_counter() - began < 30:
            time.sleep(0.01)
        times.append(time.perf_counter() - began)
        survivors += len(_run_processes(run.id))
        run.wait_for_completion()
    log(f"10: all processes gone {p50(times):.2f} s after cancel (grace {GRACE} s), {survivors} survivors")
    return Figure(10, f"cancel → every process of the run gone (ignores SIGTERM, 2 grandchildren, grace {GRACE:g} s)",
                  "s", times, "<= grace + 1 s; 0 survivors", max(times) <= GRACE + 1 and survivors == 0,
                  note=f"{survivors} surviving processes over all repetitions.")


def idle_agent(root: Path) -> Figure:
    ws = workspace(root, "idle")
    run = submit(ws, source(root, "sleeper", "import time\nprint('up', flush=True)\ntime.sleep(40)\n"))
    while run.get_status() != "Running":
        time.sleep(0.05)
    time.sleep(2)
    info = json.loads((Path(run._record.run_dir or "") / "processes.json").read_text())
    agent = psutil.Process(info["agent_pid"])
    before, began = agent.cpu_times(), time.perf_counter()
    time.sleep(15)
    after, seconds = agent.cpu_times(), time.perf_counter() - began
    cpu = 100 * ((after.user - before.user) + (after.system - before.system)) / seconds
    rss = agent.memory_info().rss / 2**20
    run.cancel()
    run.wait_for_completion()
    log(f"11: idle agent {cpu:.2f}% of a core, {rss:.0f} MB RSS")
    return Figure(11, "idle agent (its job sleeping; 15 s window)", "% CPU", [cpu], "< 1 % of one core, < 60 MB RSS",
                  cpu < 1 and rss < 60, note=f"RSS {rss:.0f} MB. The agent polls the job every 100 ms, beats every "
                                             "2 s and syncs its journal every 250 ms.")
