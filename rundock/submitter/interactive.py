"""Interactive runs (``Experiment.start_logging()``): a notebook logs like a job does.

A notebook logs per batch, so ``run.log()`` must cost what it costs in a job:
each value is one record appended to a journal file with a single write
(durable on disk when ``log()`` returns), and a shipper process beside the
notebook (``rundock.history.shipper``) ships the journal to the history in
batches, exactly once per (run, source, sequence number), as a job's agent
does. ``flush()``, ``complete()``, ``fail()`` and every read of the run's
metrics wait until everything logged so far is in the history. Tags,
properties, files and states go to the history directly (they are rare and
must be visible at once).

The journal lives in ``<workspace>/local/interactive/<run id>/``. If the
process dies before a batch was shipped, the values are still in that journal,
and ``rundock.submitter.targets.check`` ships them the next time the run is
read.
"""

from __future__ import annotations

import atexit
import os
import subprocess
import sys
import threading
import time
import weakref
from typing import TYPE_CHECKING, Any

import rundock
from rundock.agent.runlock import AgentLock, agent_alive
from rundock.context import rundir
from rundock.context.journal import JournalWriter, ScalarFormatter, last_seq
from rundock.history.sync import Syncer
from rundock.submitter.run import Run

if TYPE_CHECKING:
    from rundock.history.records import RunRecord
    from rundock.submitter.experiment import Experiment
    from rundock.submitter.workspace import Workspace

INTERACTIVE_DIR = "interactive"
INTERACTIVE_TYPE = "rundock.interactive"
_OPEN: weakref.WeakSet[InteractiveRun] = weakref.WeakSet()
_OPEN_LOCK = threading.Lock()


def run_dir_of(workspace_local_root: str, run_id: str) -> str:
    return os.path.join(workspace_local_root, INTERACTIVE_DIR, run_id)


class InteractiveRun(Run):
    """A run of this process with no job: logged values go through a journal and a shipper process."""

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
        self._syncer = Syncer(self.run_dir, run_id, ws.store, ws.artifacts)  # flush()'s fallback
        self._shipper = _start_shipper(self.run_dir, run_id, ws.history_uri, ws.artifacts.root)
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
        target = self._writer.seq
        source = rundir.job_source(self._pid)
        deadline = time.monotonic() + timeout_seconds
        pause = 0.001
        while self._shipper is not None and self._shipper.poll() is None:
            if self._store.journal_mark(self.id, 0, source) >= target:
                return
            if time.monotonic() > deadline:
                raise TimeoutError(f"run {self.id}: values logged were not all in the history after "
                                   f"{timeout_seconds} s (they are kept in {self.run_dir})")
            time.sleep(pause)
            pause = min(pause * 2, 0.02)
        self._syncer.sync_once()  # no shipper (it could not start, or it died): ship from here
        self._shipper = None

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
        self.flush()  # every value is in the history when it returns (through the shipper or from here)
        if self._shipper is not None:
            self._shipper.terminate()
            self._shipper.wait()
            self._shipper = None
        self._lock.release()
        with _OPEN_LOCK:
            _OPEN.discard(self)


def _start_shipper(run_dir: str, run_id: str, store_uri: str, artifacts_root: str) -> subprocess.Popen[bytes] | None:
    """The process that ships this run's journal (None where it cannot start: flush ships in-process)."""
    package_parent = os.path.dirname(os.path.dirname(os.path.abspath(rundock.__file__)))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in (package_parent, os.environ.get("PYTHONPATH"))
                                                        if p)}
    try:
        with open(os.path.join(run_dir, "shipper_log.txt"), "ab") as log:  # never the notebook's own pipes
            return subprocess.Popen([sys.executable, "-m", "rundock.history.shipper", run_dir, run_id, store_uri,
                                     artifacts_root, str(os.getpid())], env=env, stdin=subprocess.DEVNULL,
                                    stdout=log, stderr=log, start_new_session=True)
    except OSError:
        return None


def ship_orphaned(workspace: Workspace, run: RunRecord) -> RunRecord:
    """An interactive run whose process ended without shipping everything: ship its journal now."""
    if run.run_type != INTERACTIVE_TYPE or not run.run_dir or not os.path.isdir(run.run_dir) \
            or agent_alive(run.run_dir) or not _behind(workspace, run):
        return run
    Syncer(run.run_dir, run.run_id, workspace.store, workspace.artifacts).sync_once()
    return workspace.store.get_run(run.run_id)


def _behind(workspace: Workspace, run: RunRecord) -> bool:
    """Whether a journal of the run holds records the history lacks (each file's tail against its mark)."""
    folder = os.path.join(run.run_dir or "", rundir.JOURNAL_DIR)
    for name in os.listdir(folder) if os.path.isdir(folder) else []:
        source = name[: -len(".jsonl")]
        if name.endswith(".jsonl") and last_seq(os.path.join(folder, name)) > \
                workspace.store.journal_mark(run.run_id, 0, source):
            return True
    return False


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
