"""What the UI's routes work with, whichever app serves them: ``UiBackend`` on ``app.state.ui``."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

from fastapi import Request

from rundock.history.artifacts import ArtifactStore
from rundock.history.records import RunRecord
from rundock.history.store import RunStore
from rundock.server.access import check_read, check_write
from rundock.server.auth import Principal


def _as_is(run: RunRecord) -> RunRecord:
    return run


@dataclasses.dataclass
class UiBackend:
    """The history the UI shows and how to bring a live run up to date.

    ``refresh``: the run as it is now (``rundock ui``: the lost-run policy and pulls of remote hosts, as
    ``rundock logs -f`` does; the team server: as stored, its sweeper judges liveness). ``pools``: the team
    server's pools view for a principal (None: no pools page). ``queue``: where a pool run stands in its pool's
    queue and why it waits (the answer of ``GET /api/v1/runs/{id}/queue``; None: never queued in a pool).
    """

    store: RunStore
    artifacts: ArtifactStore
    title: str
    refresh: Callable[[RunRecord], RunRecord] = _as_is
    pools: Callable[[Principal], list[dict[str, Any]]] | None = None
    queue: Callable[[RunRecord], dict[str, Any] | None] | None = None

    def readable(self, principal: Principal, run_id: str) -> RunRecord:
        """The run if ``principal`` may read it (RunNotFoundError; 403 otherwise)."""
        return check_read(principal, self.store.get_run(run_id))

    def writable(self, principal: Principal, run_id: str) -> RunRecord:
        """The run if ``principal`` may change it (RunNotFoundError; 403 otherwise)."""
        return check_write(self.store, principal, self.store.get_run(run_id))


def ui_backend(request: Request) -> UiBackend:
    """The app's UI backend (a dependency)."""
    found: UiBackend = request.app.state.ui
    return found
