"""One agent per run, and liveness signals no wall-clock step can fool (standard library only).

- ``agent.lock``: the run's agent holds an exclusive ``flock`` on it for its
  whole life. The kernel drops the lock when the agent exits or dies, so a
  reader on the same host knows for certain whether the agent is alive; a
  second agent for the same run (a late warm-daemon child, a retried start)
  cannot take it and exits without running anything.
- ``heartbeat.json``: the agent's last beat as (sequence, host monotonic
  time, boot id, interval). ``CLOCK_MONOTONIC`` is one clock for every
  process of a host (until it reboots) and never jumps, so a reader on the
  same host measures silence on its own monotonic clock; the submitter writes
  sequence 0 when it creates the run directory, so a run whose agent never
  started is measured the same way.
"""

from __future__ import annotations

import fcntl
import json
import os
import time
from typing import Any

from rundock.context import rundir

LOCK_WAIT_SECONDS = 2.0  # a reader's probe holds the lock for microseconds; a second agent holds it for the run
HEARTBEAT_FILE = "heartbeat.json"


_BOOT_ID: list[str] = []


def boot_id() -> str:
    """This boot of the host (read once per process: it cannot change while the process lives)."""
    if not _BOOT_ID:
        try:
            with open("/proc/sys/kernel/random/boot_id", encoding="ascii") as fh:
                _BOOT_ID.append(fh.read().strip())
        except OSError:
            _BOOT_ID.append("")
    return _BOOT_ID[0]


class AgentLock:
    """The run directory's agent lock, held by this process until ``release`` (or its death)."""

    def __init__(self, run_dir: str) -> None:
        self.path = os.path.join(run_dir, rundir.AGENT_LOCK)
        self.fd = -1

    def acquire(self, wait: float = LOCK_WAIT_SECONDS) -> bool:
        """Take the lock; False if another process keeps it for ``wait`` seconds."""
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | getattr(os, "O_CLOEXEC", 0), 0o600)
        deadline = time.monotonic() + wait
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    os.close(fd)
                    return False
                time.sleep(0.02)
        try:
            os.ftruncate(fd, 0)
            os.write(fd, str(os.getpid()).encode())
        except OSError:
            os.close(fd)  # never keep a lock nobody will release (it would make the run look alive)
            raise
        self.fd = fd
        return True

    def release(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


def agent_alive(run_dir: str) -> bool:
    """Whether a process holds the run's agent lock (only meaningful on the run's own host)."""
    try:
        fd = os.open(os.path.join(run_dir, rundir.AGENT_LOCK), os.O_RDONLY | getattr(os, "O_CLOEXEC", 0))
    except FileNotFoundError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        return False
    except BlockingIOError:
        return True
    finally:
        os.close(fd)  # closing drops the probe's shared lock at once


def agent_started(run_dir: str) -> bool:
    """Whether an agent ever took this run (it writes its journal right after taking the lock)."""
    return os.path.exists(os.path.join(run_dir, rundir.AGENT_JOURNAL_DIR, rundir.AGENT_SOURCE + ".jsonl"))


def write_heartbeat(run_dir: str, seq: int, interval: float) -> None:
    """Record a beat (``seq`` 0: the run directory was just created, no agent has beaten yet)."""
    path = os.path.join(run_dir, HEARTBEAT_FILE)
    tmp = f"{path}.{os.getpid()}.tmp"
    data = json.dumps({"seq": seq, "monotonic": time.monotonic(), "boot_id": boot_id(), "interval": interval,
                       "pid": os.getpid()})
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.write(fd, data.encode())
    finally:
        os.close(fd)
    os.replace(tmp, path)


def read_heartbeat(run_dir: str) -> dict[str, Any] | None:
    try:
        with open(os.path.join(run_dir, HEARTBEAT_FILE), encoding="utf-8") as fh:
            data = json.load(fh)
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def silent_for(run_dir: str, now: float | None = None, beat: dict[str, Any] | None = None) -> float | None:
    """Seconds on this host's monotonic clock since the last beat (or since the run directory was made);
    None when unknown (no heartbeat file). After a reboot of the host the silence is infinite. ``beat``:
    the heartbeat file's content when the caller has just read it."""
    beat = read_heartbeat(run_dir) if beat is None else beat
    if beat is None:
        return None
    if beat.get("boot_id") != boot_id():
        return float("inf")
    try:
        return (time.monotonic() if now is None else now) - float(beat["monotonic"])
    except (KeyError, TypeError, ValueError):
        return None
