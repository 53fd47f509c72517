"""Run slots on one host: at most N runs execute at once, the rest stay Queued.

A slot is an exclusive ``flock`` on ``slot-<i>.lock``; the kernel releases it
when its agent exits or dies, so a crashed agent never holds a slot. Waiting
runs hold a ticket named by their submission time, created by the submitter
and locked by the agent from its start; only the oldest live ticket may take a
free slot, so runs start in submission order.
"""

from __future__ import annotations

import fcntl
import os
import time

from rundock.agent.runlock import agent_started
from rundock.context import rundir

# A ticket nobody has locked yet may belong to an agent that is still starting.
STARTUP_GRACE_SECONDS = 30.0


class Slot:
    """A taken slot; ``previous`` is the run that held it last (its agent may have died with work left)."""

    def __init__(self, fd: int, index: int, previous: str = "") -> None:
        self.fd = fd
        self.index = index
        self.previous = previous

    def release(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)  # closing the descriptor drops the lock
            self.fd = -1


def try_acquire(slots_dir: str, count: int, run_id: str = "") -> Slot | None:
    """Take a free slot for ``run_id``, or None when all ``count`` are in use. The slot file names its
    holder, so the next holder can see whose work may be left (a container outlives its dead agent)."""
    os.makedirs(slots_dir, exist_ok=True)
    for index in range(max(1, count)):
        fd = os.open(os.path.join(slots_dir, f"slot-{index}.lock"), os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            continue
        previous = os.pread(fd, 300, 0).decode("utf-8", "replace").strip()
        os.ftruncate(fd, 0)
        os.pwrite(fd, run_id.encode(), 0)
        return Slot(fd, index, previous)
    return None


def ticket_name(submitted_at: float, run_id: str) -> str:
    return f"{submitted_at:020.6f}-{run_id}"


def issue_ticket(slots_dir: str, submitted_at: float, run_id: str) -> None:
    """Queue a run at submit time (its agent locks the ticket when it starts)."""
    directory = os.path.join(slots_dir, "queue")
    os.makedirs(directory, exist_ok=True)
    with open(os.path.join(directory, ticket_name(submitted_at, run_id)), "a", encoding="utf-8"):
        pass


def _may_still_start(queue_dir: str, ticket: str) -> bool:
    """Whether the unlocked ticket's run may still get an agent: its job file is there and no agent has
    taken it yet (an agent that took it and let the ticket go has ended or died)."""
    run_id = ticket.split("-", 1)[1] if "-" in ticket else ""
    run_dir = os.path.join(os.path.dirname(os.path.dirname(queue_dir)), "runs", run_id)
    return os.path.exists(os.path.join(run_dir, rundir.JOB_FILE)) and not agent_started(run_dir)


class Ticket:
    """A run's place in the queue of ``slots_dir``, locked by its agent."""

    def __init__(self, slots_dir: str, submitted_at: float, run_id: str) -> None:
        self.directory = os.path.join(slots_dir, "queue")
        os.makedirs(self.directory, exist_ok=True)
        self.name = ticket_name(submitted_at, run_id)
        self.path = os.path.join(self.directory, self.name)
        self.fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        fcntl.flock(self.fd, fcntl.LOCK_EX)

    def is_first(self) -> bool:
        """Whether no live ticket is older than this one (dead owners' tickets are removed)."""
        for name in sorted(os.listdir(self.directory)):
            if name >= self.name:
                return True
            path = os.path.join(self.directory, name)
            try:
                fd = os.open(path, os.O_RDWR)
            except FileNotFoundError:
                continue
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                age = time.time() - os.fstat(fd).st_mtime
            except BlockingIOError:
                return False  # an older run is waiting
            finally:
                os.close(fd)
            if age < STARTUP_GRACE_SECONDS and _may_still_start(self.directory, name):
                return False  # an older run whose agent is still starting
            try:
                os.unlink(path)  # its agent is gone
            except FileNotFoundError:
                pass
        return True

    def release(self) -> None:
        if self.fd >= 0:
            try:
                os.unlink(self.path)
            except FileNotFoundError:
                pass
            os.close(self.fd)
            self.fd = -1
