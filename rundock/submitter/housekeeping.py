"""Deleting and archiving runs, and freeing unreferenced blobs (``rundock delete``, ``archive``, ``gc``).

Runs are chosen by id, or every run of an experiment; a run brings all its descendants along.

Live runs: ``delete_runs`` and ``archive_runs`` refuse a run that has not ended, or whose descendant has
not, naming it, and change nothing. Whether a run has ended is judged as every reader judges it (a run
whose agent is lost ends Failed first; a remote run is pulled). ``delete_runs(force=True)``
(``rundock delete --force``) cancels the live ones first (their agents stop every process and store
their outputs, as for ``rundock cancel``), waits until they have ended, then deletes.

``delete_runs`` removes the runs from the history (status history, tags, properties, metrics, file
records, logs, journal marks) and their run directories in the workspace: a local run's directory,
once its agent has let go of it (it holds the directory's lock until its last write), and the mirror of a
remote run. It leaves the run directories on remote hosts (``Run.clean()`` before deleting removes them),
the model versions registered from the runs (their files stay with them) and the stored blobs:
``collect_garbage`` (``rundock gc``) frees the blobs nothing refers to any more.
"""

from __future__ import annotations

import os
import shutil
import time
from collections.abc import Iterable

from rundock.agent.runlock import AgentLock
from rundock.errors import RundockError
from rundock.history import gc, maintenance
from rundock.history.records import RunRecord
from rundock.submitter.run import Run
from rundock.submitter.workspace import Workspace

CANCEL_WAIT_SECONDS = 120.0  # how long delete --force waits for canceled runs to end
AGENT_WAIT_SECONDS = 30.0  # how long an ended run's agent may take to let go of its directory


def select_runs(workspace: Workspace, run_ids: Iterable[str] = (), experiment: str | None = None) -> list[str]:
    """The ids asked for: ``run_ids`` (each must exist), and every run of ``experiment``; ValueError if neither."""
    ids = list(dict.fromkeys(run_ids))
    if not ids and experiment is None:
        raise ValueError("name the runs (run ids) or an experiment")
    for run_id in ids:
        workspace.store.get_run(run_id)  # RunNotFoundError names the history
    if experiment is not None:
        ids += [r.run_id for r in workspace.store.list_runs(experiment=experiment) if r.run_id not in ids]
    return ids


def live_runs(workspace: Workspace, run_ids: Iterable[str]) -> list[RunRecord]:
    """The runs among ``run_ids`` and their descendants that have not ended, judged as every reader judges."""
    from rundock.submitter.targets import check

    return [r for r in (check(workspace, r) for r in workspace.store.family(run_ids)) if not r.status.is_terminal]


def _refuse_live(live: list[RunRecord], doing: str, hint: str) -> None:
    if live:
        named = ", ".join(f"{r.run_id} ({r.status.value})" for r in live[:5]) + (" ..." if len(live) > 5 else "")
        raise RundockError(f"cannot {doing} runs that have not ended: {named}; {hint}")


def archive_runs(workspace: Workspace, run_ids: Iterable[str] = (), *, experiment: str | None = None,
                 archived: bool = True) -> list[str]:
    """Archive (``archived=False``: restore) the runs chosen and their descendants; return their ids.

    Archived runs are left out of ``rundock runs`` and ``Run.list`` unless asked for (``--archived``,
    ``include_archived=True``). Refuses (RundockError, nothing changed) when one of them has not ended.
    """
    ids = select_runs(workspace, run_ids, experiment)
    if archived:
        _refuse_live(live_runs(workspace, ids), "archive", "cancel them or wait for them to end")
    return workspace.store.admin().set_archived(ids, archived) if ids else []


def delete_runs(workspace: Workspace, run_ids: Iterable[str] = (), *, experiment: str | None = None,
                force: bool = False, cancel_wait: float = CANCEL_WAIT_SECONDS) -> list[str]:
    """Delete the runs chosen and their descendants (see the module docstring); return the ids deleted.

    A run that has not ended is refused (RundockError, nothing deleted) unless ``force``: then it is canceled
    and waited for (at most ``cancel_wait`` seconds; past that, RundockError and nothing deleted).
    """
    ids = select_runs(workspace, run_ids, experiment)
    if not ids:
        return []
    live = live_runs(workspace, ids)
    if live and force:
        live = _cancel_and_wait(workspace, live, cancel_wait)
        _refuse_live(live, "delete", f"they were canceled but are still live after {cancel_wait:g} s")
    _refuse_live(live, "delete", "cancel them first, or use --force (force=True) to cancel them and delete")
    doomed = {r.run_id for r in workspace.store.family(ids)}
    _remove_run_dirs(workspace, doomed)
    return workspace.store.admin().delete_runs(ids)


def _cancel_and_wait(workspace: Workspace, live: list[RunRecord], wait: float) -> list[RunRecord]:
    """Cancel ``live``; return those still live after ``wait`` seconds."""
    from rundock.submitter.targets import check

    for record in live:
        Run.get(workspace, record.run_id).cancel()
    deadline = time.monotonic() + wait
    while True:
        live = [r for r in (check(workspace, workspace.store.get_run(r.run_id)) for r in live)
                if not r.status.is_terminal]
        if not live or time.monotonic() >= deadline:
            return live
        time.sleep(0.2)


def _remove_run_dirs(workspace: Workspace, run_ids: set[str]) -> None:
    """Remove the workspace's run directories (local runs, mirrors of remote ones) of ``run_ids``, each once
    its agent (if any) has let go of it; RundockError, nothing removed, when one does not."""
    dirs = [d for d in maintenance.run_dirs(workspace.path) if os.path.basename(d) in run_ids]
    locks = []
    try:
        for run_dir in dirs:
            lock = AgentLock(run_dir)
            if not lock.acquire(wait=AGENT_WAIT_SECONDS):
                raise RundockError(f"the agent of run {os.path.basename(run_dir)} still holds {run_dir} "
                                   f"{AGENT_WAIT_SECONDS:g} s after the run ended; nothing was deleted, try again")
            locks.append(lock)
        for run_dir in dirs:
            shutil.rmtree(run_dir)
    finally:
        for lock in locks:
            lock.release()


def collect_garbage(workspace: Workspace, *, grace_seconds: float = gc.DEFAULT_GRACE_SECONDS,
                    dry_run: bool = False) -> gc.GcReport:
    """Free the workspace's stored blobs that nothing refers to (rundock.history.gc: what is kept and why the
    grace period makes it safe while runs are live); with ``dry_run`` only say what would be freed."""
    return gc.collect(workspace.store, workspace.artifacts, grace_seconds=grace_seconds, dry_run=dry_run,
                      run_dirs=maintenance.run_dirs(workspace.path))
