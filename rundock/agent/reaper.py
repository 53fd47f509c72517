"""Kill every process of a run, wherever it went (standard library only, Linux ``/proc``).

A job's processes are found by what they carry, not by where they hang in
the process tree: the agent gives each job ``RUNDOCK_RUN_ID`` in its
environment and an open descriptor of the run directory's ``members`` file;
a process that called ``setsid``, lost its parent or replaced its environment
with ``execve`` still carries one of them (a process must both clear its
environment and close every inherited descriptor to escape, and then it no
longer holds the run's slot either). Only processes of this user are examined
(others' are unreadable anyway). The run's container, if any, is removed by
its label.
"""

from __future__ import annotations

import os
import signal
import time

from rundock.agent.cancel import proc_state
from rundock.context import rundir

ENV_RUN_ID = "RUNDOCK_RUN_ID"


def run_processes(run_id: str, run_dir: str | None = None) -> list[int]:
    """Live processes that belong to ``run_id`` by their environment or by holding the run directory's
    ``members`` file open (zombies excluded)."""
    marker = f"{ENV_RUN_ID}={run_id}".encode()
    members = os.path.realpath(os.path.join(run_dir, rundir.MEMBERS_FILE)) if run_dir else None
    me = os.getpid()
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == me:
            continue
        if not (_carries(entry, marker) or (members is not None and _holds(entry, members))):
            continue
        state = proc_state(entry)
        if state is not None and not state[1]:
            found.append(int(entry))
    return found


def _carries(pid: str, marker: bytes) -> bool:
    try:
        with open(f"/proc/{pid}/environ", "rb") as fh:
            return marker in fh.read().split(b"\0")
    except OSError:
        return False


def _holds(pid: str, path: str) -> bool:
    try:
        fds = os.listdir(f"/proc/{pid}/fd")
    except OSError:
        return False
    for fd in fds:
        try:
            if os.readlink(f"/proc/{pid}/fd/{fd}") == path:
                return True
        except OSError:
            continue
    return False


def kill_run_processes(run_id: str, run_dir: str | None = None, timeout: float = 10.0) -> list[int]:
    """SIGKILL every process of the run until none is left (they may fork while dying); return survivors."""
    deadline = time.monotonic() + timeout
    while True:
        pids = run_processes(run_id, run_dir)
        if not pids or time.monotonic() >= deadline:
            return pids
        for pid in pids:
            try:
                os.kill(pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
        time.sleep(0.02)


def remove_run_containers(run_id: str) -> int:
    """Remove the run's containers (labelled with its id) where docker-py and an engine are here."""
    try:
        import docker
        import docker.errors
    except ImportError:
        return 0
    try:
        client = docker.from_env(timeout=30)
        containers = client.containers.list(all=True, filters={"label": f"rundock.run_id={run_id}"})
        for container in containers:
            try:
                container.remove(force=True)
            except docker.errors.NotFound:
                pass
        return len(containers)
    except docker.errors.DockerException:
        return 0  # no engine here: a run on this host never had a container


def reap(run_id: str, run_dir: str | None = None, containers: bool = True) -> list[int]:
    """Every process (and, with ``containers``, every container) of the run gone; return pids that would
    not die. Pass ``containers=False`` when the run never had one: asking the engine costs a connection."""
    if containers:
        remove_run_containers(run_id)
    return kill_run_processes(run_id, run_dir)
