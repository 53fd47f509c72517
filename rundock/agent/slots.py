"""Run slots on one host: at most N runs execute at once, the rest stay Queued.

A slot is an exclusive ``flock`` on ``slot-<i>.lock``; the kernel releases it
when its agent exits or dies, so a crashed agent never holds a slot.
"""

from __future__ import annotations

import fcntl
import os


class Slot:
    def __init__(self, fd: int, index: int) -> None:
        self.fd = fd
        self.index = index

    def release(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)  # closing the descriptor drops the lock
            self.fd = -1


def try_acquire(slots_dir: str, count: int) -> Slot | None:
    """Take a free slot, or None when all ``count`` are in use."""
    os.makedirs(slots_dir, exist_ok=True)
    for index in range(max(1, count)):
        fd = os.open(os.path.join(slots_dir, f"slot-{index}.lock"), os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            continue
        return Slot(fd, index)
    return None
