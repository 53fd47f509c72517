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
PREPARE_LOG = "system_logs/prepare_log.txt"


def poll_interval(elapsed: float) -> float:
    """Poll often at first (short runs feel instant), then back off to 1 s."""
    return 0.05 if elapsed < 2 else 0.2 if elapsed < 30 else 1.0  # (a remote pull adds its own round trip)


def follow(store: RunStore, run_id: str, *, log_names: tuple[str, ...] = (DRIVER_LOG,),
           check: Callable[[RunRecord], RunRecord] | None = None,
           timeout: float | None = None) -> Iterator[tuple[RunRecord, RunStatus, bytes]]:
    """Yield (run, shown status, new log bytes) until the run is terminal (or ``timeout``).

    ``check`` brings the run up to date each time (a pull for a remote host, the lost-run policy for
    this host's runs: rundock.submitter.targets.check). New bytes of each log in ``log_names`` come in
    that order; only what is new is read each time, never a log from its start again.
    """
    started = time.monotonic()
    offsets = dict.fromkeys(log_names, 0)
    while True:
        run = store.get_run(run_id)
        if check is not None:
            run = check(run)
        data = b""
        for name in log_names:
            chunk = store.read_log(run_id, name, offsets[name])
            offsets[name] += len(chunk)
            data += chunk
        yield run, liveness.shown_status(run), data
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
