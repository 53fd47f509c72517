"""The server's tables (tokens, secrets) in the PostgreSQL database of the run history.

Same statements as the SQLite backend (``state``), with psycopg's ``%s`` placeholders; connections come from
the PostgreSQL history's own pool and error mapping (``postgres_conn``), so a database that is down gives a
StoreUnavailableError naming the URI without its password, never a hang. ``migrate`` runs under an advisory
lock so that servers starting together create the tables once.
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import psycopg

from rundock.errors import StoreVersionError
from rundock.history.backends.postgres_conn import Connection, Pool, connection_params, redact, store_error
from rundock.server.state import MIGRATIONS, SCHEMA_VERSION, VERSION_TABLE, ServerState

_POOL_SIZE = 8  # long-polling agents each take one for a moment every half second
_LOCK_KEY = 0x72646B5356  # the advisory lock of the server tables' migrations


def _pg(sql: str) -> str:
    return sql.replace("%", "%%").replace("?", "%s")


class _Tx:
    def __init__(self, conn: Connection) -> None:
        self.conn = conn

    def execute(self, sql: str, args: Sequence[Any] = ()) -> int:
        return self.conn.execute(_pg(sql), tuple(args)).rowcount

    def query(self, sql: str, args: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        return [tuple(r) for r in self.conn.execute(_pg(sql), tuple(args)).fetchall()]


class PostgresServerState(ServerState):
    """The ``rundock_server_*`` tables of one PostgreSQL database."""

    dialect = "postgresql"

    def __init__(self, uri: str) -> None:
        self.where = redact(uri)
        self._pool = Pool(connection_params(uri), self.where, _POOL_SIZE)

    @contextmanager
    def _connection(self, doing: str) -> Iterator[Connection]:
        try:
            with self._pool.connection() as conn:
                yield conn
        except psycopg.Error as exc:
            if isinstance(exc, psycopg.OperationalError):
                self._pool.discard_idle()
            raise store_error(exc, self.where, doing) from exc

    def _query(self, sql: str, args: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        with self._connection("read") as conn:
            return [tuple(r) for r in conn.execute(_pg(sql), tuple(args)).fetchall()]

    @contextmanager
    def _transaction(self) -> Iterator[_Tx]:
        with self._connection("write") as conn:
            try:
                with conn.transaction():
                    yield _Tx(conn)
            except psycopg.errors.UniqueViolation as exc:
                raise ValueError(str(exc).strip()) from exc

    def version(self) -> int:
        rows = self._query(f"SELECT to_regclass('{VERSION_TABLE}') IS NOT NULL")
        if not rows[0][0]:
            return 0
        return int(self._query(f"SELECT COALESCE(MAX(version), 0) FROM {VERSION_TABLE}")[0][0])

    def migrate(self) -> tuple[int, int]:
        with self._transaction() as tx:
            tx.execute("SELECT pg_advisory_xact_lock(?)", (_LOCK_KEY,))
            tx.execute(f"CREATE TABLE IF NOT EXISTS {VERSION_TABLE} (version INTEGER PRIMARY KEY, "
                       "applied_at DOUBLE PRECISION)")
            row = tx.conn.execute(f"SELECT COALESCE(MAX(version), 0) FROM {VERSION_TABLE}").fetchone()
            before = int(row[0]) if row else 0
            if before > SCHEMA_VERSION:
                raise StoreVersionError(f"the team server's tables in {self.where} are newer than this rundock's")
            for version in range(before + 1, SCHEMA_VERSION + 1):
                for statement in MIGRATIONS[version - 1]:
                    tx.execute(statement)
                tx.execute(f"INSERT INTO {VERSION_TABLE} VALUES (?, ?)", (version, time.time()))
        return before, SCHEMA_VERSION

    def close(self) -> None:
        self._pool.close()
