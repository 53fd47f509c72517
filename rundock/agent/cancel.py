"""Stopping a job: SIGTERM to the whole tree, a grace period, then SIGKILL.

The agent makes itself a child subreaper, so every process the job starts
(even one that called setsid or whose parent died) stays its descendant and
can be found and killed. Deadlines are monotonic; "already gone" is success.
Standard library only (Linux ``/proc``): the agent runs on hosts where nothing
but Python is installed.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import signal
import time

PR_SET_CHILD_SUBREAPER = 36


def become_subreaper() -> bool:
    """Make orphaned descendants re-parent to this process (Linux); return whether it worked."""
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        return int(libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)) == 0
    except (OSError, AttributeError):
        return False


def proc_state(pid: int | str) -> tuple[int, bool] | None:
    """(parent pid, is a zombie) of a process, from ``/proc``; None when it is gone."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as fh:
            stat = fh.read()
    except OSError:
        return None
    fields = stat[stat.rfind(b")") + 2:].split()
    return (int(fields[1]), fields[0] == b"Z") if len(fields) > 1 else None


def _processes() -> dict[int, tuple[int, bool]]:
    """pid -> (parent pid, is a zombie) of every process."""
    found = {}
    for entry in os.listdir("/proc"):
        state = proc_state(entry) if entry.isdigit() else None
        if state is not None:
            found[int(entry)] = state
    return found


def descendants(pid: int | None = None) -> list[int]:
    """Live descendants of ``pid`` (default: this process)."""
    root = os.getpid() if pid is None else pid
    children: dict[int, list[int]] = {}
    for child, (parent, zombie) in _processes().items():
        if not zombie:
            children.setdefault(parent, []).append(child)
    found, frontier = [], [root]
    while frontier:
        nxt = [c for p in frontier for c in children.get(p, [])]
        found.extend(nxt)
        frontier = nxt
    return found


def _reap(keep: int | None) -> None:
    """Collect our zombie children (a subreaper inherits orphans), except ``keep``, whose owner waits for it."""
    me = os.getpid()
    for pid, (parent, zombie) in _processes().items():
        if zombie and parent == me and pid != keep:
            try:
                os.waitpid(pid, os.WNOHANG)
            except ChildProcessError:
                pass


def _signal_all(pgid: int | None, pids: list[int], sig: int) -> None:
    if pgid:
        try:
            os.killpg(pgid, sig)
        except (ProcessLookupError, PermissionError):
            pass
    for pid in pids:
        try:
            os.kill(pid, sig)
        except (ProcessLookupError, PermissionError):
            pass


def _wait_gone(pids: list[int], timeout: float, keep: int | None) -> list[int]:
    deadline = time.monotonic() + timeout
    while True:
        _reap(keep)
        live = set(descendants())
        alive = [p for p in pids if p in live]
        if not alive or time.monotonic() >= deadline:
            return alive
        time.sleep(0.05)


def stop_tree(pgid: int | None, grace_seconds: float, keep: int | None = None) -> list[int]:
    """Stop the job's process group and every descendant of this agent.

    ``keep`` is a child whose exit status its owner collects itself (the job's
    main process, waited on by the executor). Returns pids that survived SIGKILL.
    """
    pids = descendants()
    if not pids:
        return []
    _signal_all(pgid, pids, signal.SIGTERM)
    alive = _wait_gone(pids, grace_seconds, keep)
    late = [p for p in descendants() if p not in pids]  # started during the grace period
    _signal_all(pgid, alive + late, signal.SIGKILL)
    return _wait_gone(alive + late, 5.0, keep)
