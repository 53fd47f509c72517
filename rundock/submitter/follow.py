"""Following a run from the submitter: poll its status, stream its driver log."""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Iterator
from typing import TextIO

from rundock.history import liveness
from rundock.history.records import RunRecord
from rundock.history.store import RunStore
from rundock.states import RunStatus

DRIVER_LOG = "system_logs/driver_log.txt"


def poll_interval(elapsed: float) -> float:
    """Poll often at first (short runs feel instant), then back off to 1 s."""
    return 0.05 if elapsed < 2 else 0.2 if elapsed < 30 else 1.0


def follow(store: RunStore, run_id: str, *, log_name: str = DRIVER_LOG, offset: int = 0,
           on_lost: Callable[[RunRecord], None] | None = None,
           timeout: float | None = None) -> Iterator[tuple[RunRecord, RunStatus, bytes]]:
    """Yield (run, shown status, new log bytes) until the run is terminal (or ``timeout``).

    Reads only what is new each time: the driver log is never re-read from the start.
    """
    started = time.monotonic()
    while True:
        store.sweep_lost(on_lost=on_lost)
        run = store.get_run(run_id)
        data = store.read_log(run_id, log_name, offset)
        offset += len(data)
        yield run, liveness.effective_status(run, time.time()), data
        if run.status.is_terminal:
            return
        elapsed = time.monotonic() - started
        if timeout is not None and elapsed > timeout:
            return
        time.sleep(poll_interval(elapsed))


def print_summary(run: RunRecord, out: TextIO = sys.stdout) -> None:
    out.write("\nExecution Summary\n=================\n")
    out.write(f"RunId: {run.run_id}\nStatus: {run.status.value}\n")
    if run.start_at and run.end_at:
        out.write(f"Duration: {run.end_at - run.start_at:.1f} s\n")
    if run.error:
        out.write(f"Error ({run.error.get('code', 'Error')}): {run.error.get('message', '')}\n")
    out.write("\n")
    out.flush()
