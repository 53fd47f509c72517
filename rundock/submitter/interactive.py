"""Interactive runs (``Experiment.start_logging()``): a notebook logs like a job does.

A notebook logs per batch, so ``run.log()`` must cost what it costs in a job:
each value is one record appended to a journal file with a single write
(durable on disk when ``log()`` returns), and a syncer thread of this process
ships the journal to the history in batches, exactly once per (run, source,
sequence number), as an agent's syncer does. ``flush()``, ``complete()``,
``fail()`` and every read of the run's metrics wait until everything logged
so far is in the history. Tags, properties, files and states go to the history
directly (they are rare and must be visible at once).

The journal lives in ``<workspace>/local/interactive/<run id>/``. If the
process dies before a batch was shipped, the values are still in that journal,
and ``rundock.submitter.targets.check`` ships them the next time the run is
read.
"""

from __future__ import annotations

import atexit
import os
import threading
import weakref
from typing import TYPE_CHECKING, Any

from rundock.agent.runlock import AgentLock, agent_alive
from rundock.context import rundir
from rundock.context.journal import JournalWriter, ScalarFormatter
from rundock.history.sync import Syncer
from rundock.submitter.run import Run

if TYPE_CHECKING:
    from rundock.history.records import RunRecord
    from rundock.submitter.experiment import Experiment
    from rundock.submitter.workspace import Workspace

INTERACTIVE_DIR = "interactive"
INTERACTIVE_TYPE = "rundock.interactive"
SYNC_PERIOD = 0.25
_OPEN: weakref.WeakSet[InteractiveRun] = weakref.WeakSet()
_OPEN_LOCK = threading.Lock()


def run_dir_of(workspace_local_root: str, run_id: str) -> str:
    return os.path.join(workspace_local_root, INTERACTIVE_DIR, run_id)


class InteractiveRun(Run):
    """A run of this process with no job: logged values go through a journal and a background syncer."""

    def __init__(self, experiment: Experiment, run_id: str, outputs: str | None = None, **kwargs: Any) -> None:
        super().__init__(experiment, run_id, outputs=outputs, **kwargs)
        ws = experiment.workspace
        self.run_dir = run_dir_of(ws.local_root, run_id)
        os.makedirs(self.run_dir, mode=0o700, exist_ok=True)
        self._lock = AgentLock(self.run_dir)  # held while this process may still log: see targets.check
        self._lock.acquire(wait=0)
        if self._record.run_dir != self.run_dir:
            ws.store.update_run(run_id, run_dir=self.run_dir)
        self._pid = os.getpid()
        self._writer = JournalWriter(self.run_dir, rundir.job_source(self._pid))
        self._syncer = Syncer(self.run_dir, run_id, ws.store, ws.artifacts)
        self._syncer.start(SYNC_PERIOD)
        self._scalars = ScalarFormatter()
        self._known_steps: dict[str, bool] = {}
        with _OPEN_LOCK:
            _OPEN.add(self)

    # -- recording ------------------------------------------------------------------------------
    def _log_scalar(self, name: str, value: Any) -> bool:
        if self._pid != os.getpid():
            return False
        self._writer.append_raw("metric", self._scalars.body(name, value))
        return True

    def _emit(self, record_type: str, /, **fields: Any) -> None:
        if record_type == "metric" and self._pid == os.getpid():
            self._writer.append("metric", **fields)
        else:  # tags, properties, files, states: rare, and visible at once
            self.flush()
            super()._emit(record_type, **fields)

    def _check_step(self, name: str, has_step: bool) -> None:
        known = self._known_steps.get(name)
        if known is None:  # the first value of this name from this process: what the history holds decides
            super()._check_step(name, has_step)
            self._known_steps[name] = has_step
        elif known != has_step:
            raise ValueError(f"metric {name!r}: give 'step' for every value of a metric or for none")

    # -- durability -------------------------------------------------------------------------------
    def flush(self, timeout_seconds: int = 300) -> None:
        """Wait until every value logged so far is in the history."""
        self._syncer.sync_once()

    def get_metrics(self, name: str | None = None, recursive: bool = False, run_type: str | None = None,
                    populate: bool = False) -> dict[str, Any]:
        self.flush()
        return super().get_metrics(name, recursive, run_type, populate)

    def complete(self, _set_status: bool = True) -> None:
        self._close()
        super().complete(_set_status)

    def fail(self, error_details: Any = None, error_code: str | None = None, _set_status: bool = True) -> None:
        self._close()
        super().fail(error_details, error_code, _set_status)

    def cancel(self) -> None:
        self._close()
        super().cancel()

    def _close(self) -> None:
        """Ship everything and stop the syncer thread (the run can still be read and tagged afterwards)."""
        self._syncer.stop()
        self._lock.release()
        with _OPEN_LOCK:
            _OPEN.discard(self)


def ship_orphaned(workspace: Workspace, run: RunRecord) -> RunRecord:
    """An interactive run whose process ended without shipping everything: ship its journal now."""
    if run.run_type != INTERACTIVE_TYPE or not run.run_dir or not os.path.isdir(run.run_dir) \
            or agent_alive(run.run_dir):
        return run
    Syncer(run.run_dir, run.run_id, workspace.store, workspace.artifacts).sync_once()
    return workspace.store.get_run(run.run_id)


@atexit.register
def _ship_open_runs() -> None:
    """A notebook that exits without completing its run still ships what it logged."""
    with _OPEN_LOCK:
        runs = list(_OPEN)
    for run in runs:
        try:
            run.flush()
        except Exception:  # noqa: S110 - the journal keeps it; the next read of the run ships it
            pass
