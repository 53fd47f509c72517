"""HTTP stores for the contract tests: a real ``rundock server`` process per store, over SQLite or PostgreSQL.

The contract tests read whole-history answers (every run, every snapshot, run numbers), so each store gets a
history of its own, and so a server of its own; closing the store stops the server (and drops the
PostgreSQL schema). The store's token is an admin token (the contract covers the housekeeping routes) named
``alice``: a server records the token's name as a run's ``submitted_by``, and the contract's runs are alice's.
"""

from __future__ import annotations

import contextlib
from pathlib import Path

from rundock.history.backends.http import HttpRunStore
from tests.server_fixtures import ServerHandle, running_server


class ServedStore(HttpRunStore):
    """An HTTP store with the server it talks to; ``close`` stops that server."""

    def __init__(self, server: ServerHandle, cache: Path, cleanup: contextlib.ExitStack) -> None:
        super().__init__(server.url, artifacts_root=str(cache), token=server.make_token("alice", "admin"))
        self.server = server
        self._cleanup = cleanup

    def close(self) -> None:
        try:
            super().close()
        finally:
            self._cleanup.close()


def http_over_sqlite(tmp: Path) -> HttpRunStore:
    cleanup = contextlib.ExitStack()
    server = cleanup.enter_context(running_server(tmp))
    return ServedStore(server, tmp / "client-cache", cleanup)


def http_over_postgres(tmp: Path) -> HttpRunStore:
    from tests import pg

    cleanup = contextlib.ExitStack()
    try:
        uri = cleanup.enter_context(pg.fresh_schema())
        server = cleanup.enter_context(running_server(tmp, uri))
    except BaseException:
        cleanup.close()
        raise
    return ServedStore(server, tmp / "client-cache", cleanup)
