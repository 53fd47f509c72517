"""Bringing a remote run's history up to date: pull into the local mirror, ship it, judge the host's view.

Sync is pull-based (see ``rundock.submitter.targets.mirror``): the new bytes of the remote run directory's
journals and logs (and the blobs they name) are appended to a local mirror of the run directory, and the
same ``Syncer`` as local runs ships the mirror to the history, so records apply exactly once however often
a pull is repeated or interrupted. A cancel waiting in the mirror goes to the host with the first pull,
before the host reads the run. When the host's view says the run's agent is gone, the lost-run policy
follows (the same as for this host's runs, see ``rundock.history.liveness``): ship, kill what is left,
ship again, then end.

Readers do not call this directly: they go through ``rundock.submitter.targets.check`` (rate limited and
shared per process, see ``rundock.submitter.targets.live``).
"""

from __future__ import annotations

import json
import tempfile
import threading
import time
from typing import IO, TYPE_CHECKING, Any, cast

from rundock.errors import RundockError, StoreError
from rundock.history import liveness
from rundock.history.sync import Syncer
from rundock.states import RunStatus
from rundock.submitter.ssh import SshError
from rundock.submitter.targets import mirror as mirrors
from rundock.submitter.targets.live import Attempt

if TYPE_CHECKING:
    from rundock.submitter.targets.remote import RemoteTarget

MAX_PULLS = 16  # per sync; each brings at most 64 MiB of journals and logs (see rundock.agent.pull)
_SYNCERS: dict[tuple[str, str], Syncer] = {}  # kept per run so each pull reads only what is new
_LOCK = threading.Lock()


class RemoteSyncError(RundockError):
    """What a pull brought could not all be applied; the message names the host, the run and each problem."""


def sync(target: RemoteTarget, run_id: str, attempt: Attempt | None = None) -> None:
    """Pull what is new in the run's remote directory into the history (exactly once); see the module docstring.

    Raises RemoteSyncError (naming the host and the run) when something pulled could not be applied, after
    applying everything else and judging the run: a bad pull never wedges a run. A transient SshError (the
    host cannot be reached now) goes through as it is; a pending cancel then stays in the mirror.
    """
    attempt = attempt or Attempt(time.monotonic)
    mirror = target.mirror_dir(run_id)
    run = target.workspace.store.get_run(run_id)
    with mirrors.locked(mirror):
        try:
            if run.status.is_terminal:  # ended here (abandoned): only its cancel is left to deliver
                if mirrors.cancel_pending(mirror):
                    target._remote("cancel", run_id, heard=attempt.hear)
                    mirrors.cancel_delivered(mirror)
                return
            state, problems, shipped = _ship(target, run_id, mirror, attempt)
            ending = _ending(target, run_id, state, shipped)
            if ending is not None and not json.loads(target._remote("reap", run_id, heard=attempt.hear)
                                                     ).get("agent_alive"):
                problems += _ship(target, run_id, mirror, attempt)[1]  # what the job wrote until it was killed
                with attempt.working_locally():
                    _end(target, run_id, *ending)
        except RemoteSyncError:
            raise
        except RundockError as exc:
            if isinstance(exc, StoreError) or (isinstance(exc, SshError) and exc.transient):
                raise  # the history cannot be written, or the host cannot be reached: its own error says why
            raise RemoteSyncError(f"run {run_id}: syncing from {target.where} failed: {exc}") from exc
    if problems:
        raise RemoteSyncError(f"run {run_id} on {target.where}: part of what was pulled could not be applied (the "
                              "rest was, and the next pull tries again): " + "; ".join(problems))


def _ship(target: RemoteTarget, run_id: str, mirror: str, attempt: Attempt) -> tuple[dict[str, Any], list[str], bool]:
    """Pull into the mirror (again while the host has more) and ship it: (host's state, problems, shipped)."""
    problems: list[str] = []
    reset = False
    for _ in range(MAX_PULLS):  # a large backlog comes in several pulls
        pulled = _pull(target, run_id, mirror, attempt)
        problems += pulled.problems
        reset = reset or pulled.reset
        if not pulled.state.get("more"):
            break
    key = (target.workspace.path, run_id)
    ws = target.workspace
    with _LOCK:
        syncer = None if reset else _SYNCERS.get(key)  # a file started over: so does the reader
        if syncer is None:
            syncer = _SYNCERS[key] = Syncer(mirror, run_id, ws.store, ws.artifacts)
    try:
        with attempt.working_locally():
            syncer.sync_once()
    except StoreError:
        raise
    except Exception as exc:  # anything else: the next pull reads the mirror again from its start
        with _LOCK:
            _SYNCERS.pop(key, None)
        problems.append(f"shipping its records failed: {type(exc).__name__}: {exc}")
        return pulled.state, problems, False
    return pulled.state, problems, True


class _Heard:
    """A pull's spool that tells the attempt whenever the host sends something."""

    def __init__(self, out: IO[bytes], attempt: Attempt) -> None:
        self.out, self.attempt = out, attempt

    def write(self, data: bytes) -> int:
        self.attempt.hear()
        return self.out.write(data)

    def seek(self, offset: int, whence: int = 0) -> int:
        return self.out.seek(offset, whence)

    def truncate(self, size: int | None = None) -> int:
        return self.out.truncate(size)


def _pull(target: RemoteTarget, run_id: str, mirror: str, attempt: Attempt) -> mirrors.Pulled:
    cancel = mirrors.cancel_pending(mirror)
    request = {"offsets": mirrors.offsets(mirror), "cancel": cancel}
    with tempfile.TemporaryFile(dir=mirror) as spool:
        target._remote("pull", run_id, stdin=json.dumps(request).encode(), sink=cast(IO[bytes], _Heard(spool, attempt)),
                       heard=attempt.hear)
        if cancel:  # the host has it (it takes it before answering)
            mirrors.cancel_delivered(mirror)
        spool.seek(0)
        try:
            with attempt.working_locally():
                return mirrors.apply_pull(spool, mirror, target.workspace)
        except (OSError, ValueError, EOFError) as exc:
            raise RundockError(f"its answer could not be read: {type(exc).__name__}: {exc}") from None


def _ending(target: RemoteTarget, run_id: str, state: dict[str, Any], shipped: bool
            ) -> tuple[RunStatus, str, dict[str, Any] | None] | None:
    """How the run ends when the host's view says its agent is gone (None while it is not, or it has ended)."""
    store = target.workspace.store
    record = store.get_run(run_id)
    if record.status.is_terminal:
        store.end_open_children(run_id, record.status)
        return None
    if state.get("agent_alive") or state.get("more"):  # alive, or not all it recorded is here yet
        return None
    ended = state.get("agent_state") or {}
    limit = liveness.lost_after_seconds()
    silent = state.get("silent")
    if not shipped and ended.get("status") in {s.value for s in RunStatus if s.is_terminal}:
        # the agent recorded its end, and this pass could not ship it: end the run as the host saw it
        return RunStatus(ended["status"]), f"{ended.get('detail') or ''} (as recorded on the host)", \
            ended.get("error") if isinstance(ended.get("error"), dict) else None
    lost = {"code": "AgentLost"}
    if state.get("agent_started"):
        lost["message"] = (f"agent lost: the run's agent on target {target.name} is gone (it was killed, crashed, "
                           "or its host restarted)")
    elif (state.get("exists") and isinstance(silent, (int, float)) and silent > limit) or \
            (not state.get("exists") and time.time() - record.created_at > limit):
        lost["message"] = f"agent lost: no agent took the run on target {target.name} within {limit:.0f} s"
    else:
        return None
    return RunStatus.FAILED, "agent lost", lost


def _end(target: RemoteTarget, run_id: str, status: RunStatus, detail: str, error: dict[str, Any] | None) -> None:
    store = target.workspace.store
    store.transition(run_id, status, detail=detail, error=error)  # no change if it ended meanwhile
    final = store.get_run(run_id).status
    if final.is_terminal:
        store.end_open_children(run_id, final)


def abandon(target: RemoteTarget, run_id: str) -> None:
    """End a live run now, Canceled "abandoned: host unreachable"; its cancel waits in the mirror for the host."""
    store = target.workspace.store
    if store.get_run(run_id).status.is_terminal:
        return
    mirrors.request_cancel(target.mirror_dir(run_id))  # first: the job is stopped whenever the host answers again
    store.transition(run_id, RunStatus.CANCEL_REQUESTED, detail="cancel requested (abandoning the run)")
    _end(target, run_id, RunStatus.CANCELED, "abandoned: host unreachable", {
        "code": "Abandoned", "message": f"abandoned: host unreachable ({target.where}); the run's job is stopped "
                                        "when the host answers again (at the next read of the run)"})
