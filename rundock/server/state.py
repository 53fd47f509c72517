"""The server's own tables: API tokens, team secrets and agent pools, kept in the same database as the run history.

``ServerState`` is the interface; ``open_state(store_uri)`` picks its backend by the history's URI scheme:

- an SQLite history ``sqlite:///…/history.db`` gets a file beside it, ``…/history.db.server.db`` (SQLite has
  one writer per file: the server's tables in their own file never hold up the history's writers);
- a PostgreSQL history gets tables in the same database (``state_postgres``).

Tables are prefixed ``rundock_server_`` and versioned in their own ``rundock_server_version`` table, apart from
the history's schema version. ``migrate`` (run by ``rundock server init`` and ``upgrade``) creates or upgrades
them; opening them never does, so a server pointed at the wrong database says so rather than starting empty.

Tokens are stored as SHA-256 hashes only. Secret values arrive here already encrypted (``crypto``).
Every method is one transaction.
"""

from __future__ import annotations

import abc
import dataclasses
import json
import os
import secrets
import sqlite3
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager
from typing import Any

from rundock.errors import ConfigError, StoreUnavailableError, StoreVersionError

ROLES = ("admin", "user", "agent")

# Statements shared by both backends, written with ``?`` placeholders (the PostgreSQL backend swaps them).
MIGRATIONS: tuple[tuple[str, ...], ...] = ((
    """CREATE TABLE rundock_server_meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)""",
    """CREATE TABLE rundock_server_tokens (
    token_id TEXT PRIMARY KEY, token_hash TEXT NOT NULL UNIQUE, name TEXT NOT NULL, role TEXT NOT NULL,
    pools TEXT NOT NULL, created_at DOUBLE PRECISION NOT NULL, expires_at DOUBLE PRECISION,
    revoked_at DOUBLE PRECISION)""",
    """CREATE TABLE rundock_server_secrets (
    name TEXT PRIMARY KEY, value BYTEA NOT NULL, owner TEXT NOT NULL, updated_at DOUBLE PRECISION NOT NULL)""",
), (  # agent pools: the queue, the agents, their attempts (``pools_state`` explains them)
    """CREATE TABLE rundock_server_queue (
    run_id TEXT PRIMARY KEY, pool TEXT NOT NULL, priority INTEGER NOT NULL, seq BIGINT NOT NULL,
    submitted_by TEXT, requirements TEXT NOT NULL, enqueued_at DOUBLE PRECISION NOT NULL, state TEXT NOT NULL)""",
    """CREATE INDEX rundock_server_queue_waiting ON rundock_server_queue (pool, state, priority, seq)""",
    """CREATE TABLE rundock_server_agents (
    agent_id TEXT PRIMARY KEY, name TEXT NOT NULL, token_name TEXT NOT NULL, pool TEXT NOT NULL,
    labels TEXT NOT NULL, gpus TEXT NOT NULL, cpus INTEGER, memory_mb BIGINT, slots INTEGER NOT NULL,
    registered_at DOUBLE PRECISION NOT NULL, last_seen DOUBLE PRECISION NOT NULL, version TEXT)""",
    """CREATE TABLE rundock_server_attempts (
    run_id TEXT NOT NULL, number INTEGER NOT NULL, agent_id TEXT NOT NULL, gpus TEXT NOT NULL,
    lease_expires DOUBLE PRECISION NOT NULL, state TEXT NOT NULL, started_at DOUBLE PRECISION NOT NULL,
    renewed_at DOUBLE PRECISION NOT NULL, silent_since DOUBLE PRECISION, PRIMARY KEY (run_id, number))""",
    """CREATE INDEX rundock_server_attempts_live ON rundock_server_attempts (state, agent_id)""",
), (  # multi-node runs (``pools_gang``): one attempt row per node, and each agent's reachable address
    """ALTER TABLE rundock_server_agents ADD COLUMN address TEXT""",
    """CREATE TABLE rundock_server_attempts_nodes (
    run_id TEXT NOT NULL, number INTEGER NOT NULL, agent_id TEXT NOT NULL, gpus TEXT NOT NULL,
    lease_expires DOUBLE PRECISION NOT NULL, state TEXT NOT NULL, started_at DOUBLE PRECISION NOT NULL,
    renewed_at DOUBLE PRECISION NOT NULL, silent_since DOUBLE PRECISION, node INTEGER NOT NULL DEFAULT 0,
    nodes INTEGER NOT NULL DEFAULT 1, outcome TEXT, PRIMARY KEY (run_id, number, node))""",
    """INSERT INTO rundock_server_attempts_nodes (run_id, number, agent_id, gpus, lease_expires, state, started_at,
    renewed_at, silent_since) SELECT run_id, number, agent_id, gpus, lease_expires, state, started_at, renewed_at,
    silent_since FROM rundock_server_attempts""",
    """DROP TABLE rundock_server_attempts""",
    """ALTER TABLE rundock_server_attempts_nodes RENAME TO rundock_server_attempts""",
    """CREATE INDEX rundock_server_attempts_live ON rundock_server_attempts (state, agent_id)""",
))
SCHEMA_VERSION = len(MIGRATIONS)
VERSION_TABLE = "rundock_server_version"
_TOKEN_COLUMNS = "token_id, name, role, pools, created_at, expires_at, revoked_at"


@dataclasses.dataclass(frozen=True)
class TokenRecord:
    """A token as stored, without its secret."""

    token_id: str
    name: str
    role: str
    pools: tuple[str, ...]
    created_at: float
    expires_at: float | None
    revoked_at: float | None

    def to_json(self) -> dict[str, Any]:
        return {"id": self.token_id, "name": self.name, "role": self.role, "pools": list(self.pools),
                "created_at": self.created_at, "expires_at": self.expires_at, "revoked_at": self.revoked_at}


@dataclasses.dataclass(frozen=True)
class StoredSecret:
    name: str
    value: bytes  # encrypted
    owner: str
    updated_at: float


def _token(row: Sequence[Any]) -> TokenRecord:
    token_id, name, role, pools, created_at, expires_at, revoked_at = row
    return TokenRecord(token_id, name, role, tuple(json.loads(pools)), created_at, expires_at, revoked_at)


class ServerState(abc.ABC):
    """Tokens and secrets, over ``_query``/``_execute`` that each backend provides."""

    where: str  # what messages call this database
    dialect: str  # "sqlite" or "postgresql": the few statements that differ (row locks) ask

    # -- the backend's primitives ---------------------------------------------------------------------
    @abc.abstractmethod
    def _query(self, sql: str, args: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        """Rows of one read statement (``?`` placeholders)."""

    @abc.abstractmethod
    @contextmanager
    def _transaction(self) -> Iterator[Any]:
        """One write transaction; yields an object with ``execute(sql, args)`` returning a row count."""
        yield None

    @abc.abstractmethod
    def version(self) -> int:
        """The version of the server's tables here (0: none yet)."""

    @abc.abstractmethod
    def migrate(self) -> tuple[int, int]:
        """Create or upgrade the server's tables; return the versions (before, after)."""

    @abc.abstractmethod
    def close(self) -> None:
        """Release connections."""

    # -- built on them ------------------------------------------------------------------------------------
    def query(self, sql: str, args: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        """Rows of one read statement (``?`` placeholders), for the modules that keep other tables here."""
        return self._query(sql, args)

    def transaction(self) -> AbstractContextManager[Any]:
        """One write transaction, for the modules that keep other tables here (``pools_state``): the object it
        yields has ``execute(sql, args)`` (a row count) and ``query(sql, args)`` (rows)."""
        return self._transaction()

    def check(self) -> None:
        """Raise a clear error unless the tables are there at this code's version."""
        version = self.version()
        if version == 0:
            raise StoreVersionError(f"the team server's tables are missing in {self.where}: run "
                                    f"`rundock server init --store URI --artifacts DIR` first")
        if version < SCHEMA_VERSION:
            raise StoreVersionError(f"the team server's tables in {self.where} are at version {version}, older "
                                    f"than this rundock's ({SCHEMA_VERSION}): run `rundock server upgrade`")
        if version > SCHEMA_VERSION:
            raise StoreVersionError(f"the team server's tables in {self.where} are at version {version}, newer "
                                    f"than this rundock's ({SCHEMA_VERSION}): upgrade rundock")

    def ping(self) -> None:
        """Raise a StoreError unless the database answers."""
        self._query("SELECT 1")

    def history_id(self) -> str:
        """A random id given to this history when the server's tables were made; clients tell servers apart by it."""
        rows = self._query("SELECT value FROM rundock_server_meta WHERE key = ?", ("history_id",))
        if rows:
            return str(rows[0][0])
        candidate = secrets.token_hex(8)
        with self._transaction() as tx:
            tx.execute("INSERT INTO rundock_server_meta (key, value) VALUES (?, ?) ON CONFLICT (key) DO NOTHING",
                       ("history_id", candidate))
        return str(self._query("SELECT value FROM rundock_server_meta WHERE key = ?", ("history_id",))[0][0])

    # -- tokens ---------------------------------------------------------------------------------------------
    def add_token(self, token_hash: str, name: str, role: str, pools: Sequence[str],
                  expires_at: float | None) -> TokenRecord:
        if role not in ROLES:
            raise ValueError(f"role {role!r} is not one of {', '.join(ROLES)}")
        record = TokenRecord(f"tok_{secrets.token_hex(6)}", name, role, tuple(pools), time.time(), expires_at, None)
        with self._transaction() as tx:
            tx.execute(f"INSERT INTO rundock_server_tokens (token_hash, {_TOKEN_COLUMNS}) "
                       "VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                       (token_hash, record.token_id, name, role, json.dumps(list(pools)), record.created_at,
                        expires_at, None))
        return record

    def token_by_hash(self, token_hash: str) -> TokenRecord | None:
        rows = self._query(f"SELECT {_TOKEN_COLUMNS} FROM rundock_server_tokens WHERE token_hash = ?", (token_hash,))
        return _token(rows[0]) if rows else None

    def token_by_id(self, token_id: str) -> TokenRecord | None:
        rows = self._query(f"SELECT {_TOKEN_COLUMNS} FROM rundock_server_tokens WHERE token_id = ?", (token_id,))
        return _token(rows[0]) if rows else None

    def list_tokens(self) -> list[TokenRecord]:
        return [_token(r) for r in self._query(f"SELECT {_TOKEN_COLUMNS} FROM rundock_server_tokens "
                                               "ORDER BY created_at, token_id")]

    def revoke_token(self, token_id: str) -> bool:
        """Revoke a token now; False if there is no such token (revoking twice keeps the first time)."""
        with self._transaction() as tx:
            changed = tx.execute("UPDATE rundock_server_tokens SET revoked_at = COALESCE(revoked_at, ?) "
                                 "WHERE token_id = ?", (time.time(), token_id))
        return bool(changed)

    # -- secrets -----------------------------------------------------------------------------------------------
    def put_secret(self, name: str, value: bytes, owner: str) -> None:
        with self._transaction() as tx:
            tx.execute("INSERT INTO rundock_server_secrets (name, value, owner, updated_at) VALUES (?, ?, ?, ?) "
                       "ON CONFLICT (name) DO UPDATE SET value = excluded.value, owner = excluded.owner, "
                       "updated_at = excluded.updated_at", (name, value, owner, time.time()))

    def get_secret(self, name: str) -> StoredSecret | None:
        rows = self._query("SELECT name, value, owner, updated_at FROM rundock_server_secrets WHERE name = ?", (name,))
        return StoredSecret(rows[0][0], bytes(rows[0][1]), rows[0][2], rows[0][3]) if rows else None

    def list_secrets(self) -> list[StoredSecret]:
        """Every secret, names in order (values still encrypted)."""
        return [StoredSecret(n, b"", o, at) for n, o, at in self._query(
            "SELECT name, owner, updated_at FROM rundock_server_secrets ORDER BY name")]

    def delete_secret(self, name: str) -> bool:
        with self._transaction() as tx:
            return bool(tx.execute("DELETE FROM rundock_server_secrets WHERE name = ?", (name,)))


class _SqliteTx:
    def __init__(self, db: sqlite3.Connection) -> None:
        self.db = db

    def execute(self, sql: str, args: Sequence[Any] = ()) -> int:
        return self.db.execute(sql, tuple(args)).rowcount

    def query(self, sql: str, args: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        return [tuple(r) for r in self.db.execute(sql, tuple(args))]


class SqliteServerState(ServerState):
    """The server's tables in an SQLite file of their own beside the history's."""

    dialect = "sqlite"

    def __init__(self, path: str) -> None:
        self.path = self.where = os.path.abspath(path)
        self._lock = threading.Lock()
        try:
            self._db = sqlite3.connect(self.path, timeout=30, isolation_level=None, check_same_thread=False)
            self._db.execute("PRAGMA journal_mode = WAL")
        except sqlite3.Error as exc:
            raise StoreUnavailableError(f"cannot open the server's tables {self.path}: {exc}") from exc
        os.chmod(self.path, 0o600)  # token hashes and encrypted secrets: the server's eyes only

    def _query(self, sql: str, args: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        with self._lock:
            try:
                return [tuple(r) for r in self._db.execute(sql, tuple(args))]
            except sqlite3.Error as exc:
                raise StoreUnavailableError(f"cannot read the server's tables {self.path}: {exc}") from exc

    @contextmanager
    def _transaction(self) -> Iterator[_SqliteTx]:
        with self._lock:
            try:
                self._db.execute("BEGIN IMMEDIATE")
            except sqlite3.Error as exc:
                raise StoreUnavailableError(f"cannot write the server's tables {self.path}: {exc}") from exc
            try:
                yield _SqliteTx(self._db)
                self._db.execute("COMMIT")
            except BaseException as exc:
                if self._db.in_transaction:
                    self._db.execute("ROLLBACK")
                if isinstance(exc, sqlite3.IntegrityError):
                    raise ValueError(str(exc)) from exc
                if isinstance(exc, sqlite3.Error):
                    raise StoreUnavailableError(f"cannot write the server's tables {self.path}: {exc}") from exc
                raise

    def version(self) -> int:
        if not self._query("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?", (VERSION_TABLE,)):
            return 0
        return int(self._query(f"SELECT COALESCE(MAX(version), 0) FROM {VERSION_TABLE}")[0][0])

    def migrate(self) -> tuple[int, int]:
        with self._transaction() as tx:
            tx.execute(f"CREATE TABLE IF NOT EXISTS {VERSION_TABLE} (version INTEGER PRIMARY KEY, applied_at REAL)")
            before = int(self._db.execute(f"SELECT COALESCE(MAX(version), 0) FROM {VERSION_TABLE}").fetchone()[0])
            if before > SCHEMA_VERSION:
                raise StoreVersionError(f"the team server's tables in {self.where} are newer than this rundock's")
            for version in range(before + 1, SCHEMA_VERSION + 1):
                for statement in MIGRATIONS[version - 1]:
                    tx.execute(statement.replace("DOUBLE PRECISION", "REAL").replace("BYTEA", "BLOB"))
                tx.execute(f"INSERT INTO {VERSION_TABLE} VALUES (?, ?)", (version, time.time()))
        return before, SCHEMA_VERSION

    def close(self) -> None:
        with self._lock:
            self._db.close()


def state_path(history_file: str) -> str:
    """Where the server's tables of an SQLite history live."""
    return history_file + ".server.db"


def open_state(store_uri: str) -> ServerState:
    """The server's tables for the history at ``store_uri`` (not checked: call ``check()`` or ``migrate()``)."""
    scheme = store_uri.split(":", 1)[0]
    if scheme == "sqlite":
        from rundock.history.backends.sqlite_file import history_path

        return SqliteServerState(state_path(os.path.abspath(history_path(store_uri))))
    if scheme in ("postgresql", "postgres"):
        from rundock.server.state_postgres import PostgresServerState

        return PostgresServerState(store_uri)
    raise ConfigError(f"the team server keeps its history in SQLite (sqlite:///PATH) or PostgreSQL "
                      f"(postgresql://…), not {scheme}://", field="store")

