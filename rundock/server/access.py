"""Who may read and write which run, snapshot and blob (the contract's (R) and (W) rules).

- Read (R): admins and users read every run; an agent reads the runs of its pools (``run.target``).
- Write (W): admins write every run; a user writes the runs it submitted; an agent writes the runs of its pools.
  A child run created by its job records no submitter of its own: it belongs to whoever submitted the
  nearest ancestor that does.
- An agent reads a snapshot only when a run of its pools uses it, and a blob only when it is a file of such a
  run or in the snapshot of one, or when the agent uploaded the blob's bytes itself; it names in its runs'
  files only blobs it may read (``BlobAccess``). Finding that out means reading the runs of the agent's pools,
  so the answer for its live runs is kept for ``LIVE_SECONDS``; a blob of a finished run costs a look at all
  of them.
- An agent never moves a run to another snapshot (it would read that snapshot then).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterable
from typing import Any

from rundock.errors import StoreError, StoreUnavailableError
from rundock.history.records import RunRecord
from rundock.history.store import RunStore
from rundock.server.auth import Principal
from rundock.server.errors import ApiError
from rundock.server.uploads import Uploads
from rundock.states import RunStatus

LIVE_SECONDS = 5.0
_MAX_ANCESTORS = 64
_LIVE = [s.value for s in RunStatus if not s.is_terminal]


def may_read(principal: Principal, run: RunRecord) -> bool:
    return principal.role in ("admin", "user") or run.target in principal.pools


def check_read(principal: Principal, run: RunRecord) -> RunRecord:
    if not may_read(principal, run):
        raise ApiError(403, f"{principal.describe()} may not read run {run.run_id}: its target {run.target!r} is "
                            "not one of the token's pools")
    return run


def owner(store: RunStore, run: RunRecord) -> str | None:
    """Who submitted the run, or for a child its job created, the nearest ancestor that records a submitter."""
    current = run
    for _ in range(_MAX_ANCESTORS):
        if current.submitted_by is not None or current.parent_id is None:
            return current.submitted_by
        current = store.get_run(current.parent_id)
    return None


def check_write(store: RunStore, principal: Principal, run: RunRecord) -> RunRecord:
    if principal.is_admin:
        return run
    if principal.role == "agent":
        if run.target in principal.pools:
            return run
        raise ApiError(403, f"{principal.describe()} may not change run {run.run_id}: its target {run.target!r} "
                            "is not one of the token's pools")
    submitter = owner(store, run)
    if submitter != principal.name:
        raise ApiError(403, f"{principal.describe()} may not change run {run.run_id}: it was submitted by "
                            f"{submitter!r}, and users change only their own runs")
    return run


def readable_run(store: RunStore, principal: Principal, run_id: str) -> RunRecord:
    """The run if the principal may read it (RunNotFoundError, 403 otherwise)."""
    return check_read(principal, store.get_run(run_id))


def writable_run(store: RunStore, principal: Principal, run_id: str) -> RunRecord:
    """The run if the principal may change it (RunNotFoundError, 403 otherwise)."""
    return check_write(store, principal, store.get_run(run_id))


def _pool_runs(store: RunStore, pools: Iterable[str], live_only: bool) -> list[RunRecord]:
    return [run for pool in pools for run in store.list_runs(target=pool, statuses=_LIVE if live_only else None)]


def check_snapshot(store: RunStore, principal: Principal, snapshot_id: str) -> None:
    if principal.role != "agent":
        return
    if not any(run.snapshot_id == snapshot_id for run in _pool_runs(store, principal.pools, live_only=False)):
        raise ApiError(403, f"{principal.describe()} may not read snapshot {snapshot_id}: no run of its pools "
                            "uses it")


class BlobAccess:
    """Which blobs each agent token may read (admins and users read every blob).

    An agent reads a blob that a file or the snapshot of a run of its pools names, or one whose bytes it sent
    itself (``Uploads.held``). What an agent may name in its runs' files is held to the same rule (the run-data
    routes ask ``readable`` first), so every blob a pool's runs name was put there by a user or an admin, or sent
    by an agent that had its bytes: knowing a digest (every agent sees some in ``GET /models``) opens nothing.
    """

    def __init__(self, store: RunStore, uploads: Uploads) -> None:
        self.store = store
        self.uploads = uploads
        self._live: dict[str, tuple[frozenset[str], float]] = {}  # token id -> digests of its live runs, when
        self._granted: dict[tuple[str, str], float] = {}  # (token id, digest) found in a finished run, when
        self._lock = threading.Lock()

    def check(self, principal: Principal, digest: str) -> None:
        """Return if ``principal`` may read blob ``digest``; 403 otherwise."""
        if digest not in self.readable(principal, [digest]):
            raise ApiError(403, f"{principal.describe()} may not read blob {digest}: it is neither a file nor in the "
                                "snapshot of a run of its pools, and this token did not upload it")

    def readable(self, principal: Principal, digests: Iterable[str]) -> set[str]:
        """Those of ``digests`` (well-formed digests) that ``principal`` may read; the runs of an agent's pools
        are looked through at most once per call."""
        wanted = list(dict.fromkeys(digests))
        if principal.role != "agent":
            return set(wanted)
        now = time.monotonic()
        live = self._live.get(principal.token_id)
        if live is None or now - live[1] > LIVE_SECONDS:
            live = (self._digests(_pool_runs(self.store, principal.pools, live_only=True)), now)
            with self._lock:
                self._live[principal.token_id] = live
        found: set[str] = set()
        rest: list[str] = []
        for digest in wanted:
            granted = self._granted.get((principal.token_id, digest))
            if digest in live[0] or (granted is not None and now - granted < 3600) or \
                    self.uploads.held(principal.token_id, digest):
                found.add(digest)
            else:
                rest.append(digest)
        if rest:
            every = self._digests(_pool_runs(self.store, principal.pools, live_only=False))
            with self._lock:
                if len(self._granted) > 100_000:
                    self._granted.clear()
                for digest in rest:
                    if digest in every:
                        self._granted[(principal.token_id, digest)] = now
                        found.add(digest)
        return found

    def _digests(self, runs: list[RunRecord]) -> frozenset[str]:
        found: set[str] = set()
        snapshots = {run.snapshot_id for run in runs if run.snapshot_id}
        for run in runs:
            found.update(record.digest for record in self.store.list_files(run.run_id).values())
        for snapshot_id in snapshots:
            found.update(str(entry.get("digest")) for entry in snapshot_or_none(self.store, snapshot_id) or ())
        return frozenset(found)


def snapshot_or_none(store: RunStore, snapshot_id: str) -> list[dict[str, Any]] | None:
    """A snapshot's manifest, or None when the history has no such snapshot.

    Backends report a missing snapshot as a plain StoreError (SQLite) or a KeyError; a history that cannot be
    read now (StoreUnavailableError) is not "missing" and goes on up.
    """
    try:
        return store.get_snapshot(snapshot_id)
    except StoreUnavailableError:
        raise
    except StoreError as exc:
        if type(exc) is StoreError and "no snapshot" in str(exc):
            return None
        raise
    except KeyError:
        return None
