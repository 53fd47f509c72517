"""A real PostgreSQL for tests: each store lives in a schema of its own, dropped when the store closes.

The server is ``RUNDOCK_TEST_POSTGRES`` (default ``postgresql:///postgres``: the local socket, as the
current user, a superuser in CI; ``.ci/services.sh`` sets it up). Without one the tests skip, saying so;
under ``RUNDOCK_REQUIRE_POSTGRES=1`` (CI) they fail instead.
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from urllib.parse import quote

import psycopg
from psycopg.rows import TupleRow

from rundock.history.backends.postgres import PostgresRunStore
from tests.conftest import require_service

SERVER_URI = os.environ.get("RUNDOCK_TEST_POSTGRES", "postgresql:///postgres")


def admin_connection() -> psycopg.Connection[TupleRow]:
    """An autocommit connection to the test server; skips (or fails under CI) when none answers."""
    try:
        return psycopg.connect(SERVER_URI, autocommit=True, connect_timeout=5)
    except psycopg.Error as exc:
        require_service("POSTGRES", f"no PostgreSQL answers at {SERVER_URI} ({' '.join(str(exc).split())}); "
                                    f"run .ci/services.sh to start one, or set RUNDOCK_TEST_POSTGRES")
        raise  # not reached: require_service skips or fails


def schema_uri(schema: str) -> str:
    """The test server's URI with ``schema`` as the search path."""
    sep = "&" if "?" in SERVER_URI else "?"
    return f"{SERVER_URI}{sep}options={quote(f'-csearch_path={schema}', safe='')}"


@contextmanager
def fresh_schema() -> Iterator[str]:
    """A new empty schema; yields its URI and drops the schema (and everything in it) afterwards."""
    name = f"t_{secrets.token_hex(6)}"
    with admin_connection() as conn:
        conn.execute(f"CREATE SCHEMA {name}")
    try:
        yield schema_uri(name)
    finally:
        with admin_connection() as conn:
            conn.execute(f"DROP SCHEMA {name} CASCADE")


class ThrowawayStore(PostgresRunStore):
    """A PostgresRunStore in a new schema of its own; closing the store drops the schema."""

    def __init__(self) -> None:
        self.schema = f"t_{secrets.token_hex(6)}"
        with admin_connection() as conn:
            conn.execute(f"CREATE SCHEMA {self.schema}")
        try:
            super().__init__(schema_uri(self.schema))
        except BaseException:
            self._drop()
            raise

    def close(self) -> None:
        super().close()
        self._drop()

    def _drop(self) -> None:
        with admin_connection() as conn:
            conn.execute(f"DROP SCHEMA IF EXISTS {self.schema} CASCADE")


def throwaway_store(_tmp: Path) -> PostgresRunStore:
    """A store for the contract tests (``BACKENDS``)."""
    return ThrowawayStore()
