"""Following a run from the submitter: poll its status, stream its driver log.

``stream`` is what a person following a run sees: the job's own output (the driver log) as it
grows, and the agent's progress as one short line per status change (``[rundock] Preparing:
materializing snapshot ...``). The agent's notes (the snapshot it materialized, the interpreter, the
azureml shim, an environment's build) stay in ``system_logs/prepare_log.txt`` unless asked for.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Iterator
from typing import TextIO

from rundock.history import liveness
from rundock.history.records import RunRecord, StatusChange
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


# A status change up to Running is shown before the output read in the same poll; the later ones after it.
_BEFORE_OUTPUT = frozenset({RunStatus.NOT_STARTED, RunStatus.STARTING, RunStatus.PROVISIONING, RunStatus.PREPARING,
                            RunStatus.QUEUED, RunStatus.RUNNING})
STDERR_TAIL = "; last lines of stderr:\n"


def status_line(change: StatusChange) -> str:
    return f"[rundock] {change.status.value}: {change.detail}\n" if change.detail else \
        f"[rundock] {change.status.value}\n"


def stream(store: RunStore, run_id: str, out: TextIO = sys.stdout, *,
           check: Callable[[RunRecord], RunRecord] | None = None, prepare_log: bool = False,
           timeout: float | None = None) -> RunRecord:
    """Write the run's driver log to ``out`` as it grows, with a ``[rundock] Status: detail`` line for
    each status change (and for NotResponding while the agent is silent); return the run as it ended
    (or as it is at ``timeout``). ``prepare_log`` also streams the agent's notes and environment builds."""
    logs = (PREPARE_LOG, DRIVER_LOG) if prepare_log else (DRIVER_LOG,)
    shown = 0
    at_line_start = True
    silent = False
    record = store.get_run(run_id)

    def write(text: str) -> None:
        nonlocal at_line_start
        if text:
            out.write(text)
            at_line_start = text.endswith("\n")

    def status(text: str) -> None:
        write(("" if at_line_start else "\n") + text)

    for record, now_shown, data in follow(store, run_id, log_names=logs, check=check, timeout=timeout):
        changes = store.status_history(run_id)
        new, shown = [c for c in changes[shown:] if c.status != RunStatus.NOT_STARTED], len(changes)
        for change in (c for c in new if c.status in _BEFORE_OUTPUT):
            status(status_line(change))
        write(data.decode("utf-8", errors="replace"))
        for change in (c for c in new if c.status not in _BEFORE_OUTPUT and not c.status.is_terminal):
            status(status_line(change))
        if (now_shown == RunStatus.NOT_RESPONDING) != silent:
            silent = not silent
            status("[rundock] NotResponding: no heartbeat from the agent for longer than its lease\n" if silent
                   else f"[rundock] {record.status.value}: the agent is responding again\n")
        out.flush()
    return record


def error_headline(error: dict[str, object] | None) -> str:
    """A run's error message without the stderr tail that the agent appends (shown with the output)."""
    message = str((error or {}).get("message", ""))
    return message.split(STDERR_TAIL, 1)[0]


def print_summary(run: RunRecord, out: TextIO = sys.stdout, *, output_shown: bool = False) -> None:
    """The end of a followed run: its id, status, duration and error. With ``output_shown`` (the driver
    log was streamed above), the error leaves out the stderr tail that is already on the screen."""
    out.write("\nExecution Summary\n=================\n")
    out.write(f"RunId: {run.run_id}\nStatus: {run.status.value}\n")
    if run.start_at and run.end_at:
        out.write(f"Duration: {run.end_at - run.start_at:.1f} s\n")
    if run.error:
        message = str(run.error.get("message", ""))
        if output_shown and STDERR_TAIL in message:
            message = error_headline(run.error) + " (its stderr is above)"
        out.write(f"Error ({run.error.get('code', 'Error')}): {message}\n")
    out.write("\n")
    out.flush()
