"""Stopping a job: SIGTERM to the whole tree, a grace period, then SIGKILL.

The agent makes itself a child subreaper, so every process the job starts
(even one that called setsid or whose parent died) stays its descendant and
can be found and killed. Deadlines are monotonic; "already gone" is success.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import signal

import psutil

PR_SET_CHILD_SUBREAPER = 36


def become_subreaper() -> bool:
    """Make orphaned descendants re-parent to this process (Linux); return whether it worked."""
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        return int(libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)) == 0
    except (OSError, AttributeError):
        return False


def _descendants() -> list[psutil.Process]:
    try:
        return psutil.Process(os.getpid()).children(recursive=True)
    except psutil.Error:
        return []


def _signal_all(pgid: int | None, procs: list[psutil.Process], sig: int) -> None:
    if pgid is not None:
        try:
            os.killpg(pgid, sig)
        except (ProcessLookupError, PermissionError):
            pass
    for proc in procs:
        try:
            proc.send_signal(sig)
        except psutil.Error:
            pass


def stop_tree(pgid: int | None, grace_seconds: float) -> list[int]:
    """Stop the job's process group and every descendant of this agent.

    Returns the pids that survived SIGKILL (expected: none).
    """
    procs = _descendants()
    if not procs and pgid is None:
        return []
    _signal_all(pgid, procs, signal.SIGTERM)
    _, alive = psutil.wait_procs(procs, timeout=grace_seconds)
    late = [p for p in _descendants() if p not in procs]  # started during the grace period
    _signal_all(pgid, alive + late, signal.SIGKILL)
    _, still = psutil.wait_procs(alive + late, timeout=5.0)
    return [p.pid for p in still]
