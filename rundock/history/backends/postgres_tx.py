"""Transactions on a PostgreSQL run history, and when one is run again.

``Database.run(body)`` runs ``body(cursor)`` in one transaction on a connection of the pool
(``postgres_conn``): ``WRITE`` (READ COMMITTED; writers lock what they read), ``READ`` (several statements
that see one snapshot) or ``STATEMENT`` (one statement on its own, in autocommit: no BEGIN, no COMMIT).

When it is run again:

- PostgreSQL rolled it back to break a deadlock or a serialization conflict: up to ``CONFLICT_RETRIES``
  times, after a short random pause.
- Its connection broke (the server restarted, the network failed): once more on a new connection, which
  waits up to ``CONNECT_TIMEOUT_S`` for the server to come back. That is always safe when the failure came
  before COMMIT (the server rolled the transaction back). When it came during COMMIT nobody knows whether
  the transaction was made, so it is run again only when it is ``repeatable`` (running it twice does what
  running it once does: ``apply_journal`` skips what its mark says was applied, a log chunk or a tag is
  stored twice harmlessly); otherwise StoreUnavailableError says the outcome is unknown.

Every psycopg error leaves as a StoreError subclass (``postgres_conn.store_error``), except a value the
database cannot hold (a NUL character, a number out of range, a key too long for an index): that is a
ValueError, as SQLite's refusals are, so that the syncer sets the record aside instead of retrying it forever.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable, Iterable
from typing import Any, TypeVar

import psycopg
import psycopg.errors
from psycopg.pq import TransactionStatus
from psycopg.rows import TupleRow

from rundock.errors import StoreUnavailableError
from rundock.history.backends import postgres_schema
from rundock.history.backends.postgres_conn import (
    Connection,
    Pool,
    connect,
    connection_params,
    is_broken,
    is_conflict,
    redact,
    store_error,
)

T = TypeVar("T")
Cursor = psycopg.Cursor[TupleRow]

WRITE, READ, STATEMENT = "BEGIN", "BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY", ""
POOL_SIZE = 8
CONFLICT_RETRIES = 5
_REFUSED_VALUES = (psycopg.DataError, psycopg.errors.ProgramLimitExceeded)


class _Failed(Exception):
    """A psycopg error in one attempt of a transaction, with what the retry policy needs to know."""

    def __init__(self, error: psycopg.Error, broken: bool, committing: bool) -> None:
        super().__init__(str(error))
        self.error, self.broken, self.committing = error, broken, committing


class Database:
    """One PostgreSQL run history: its pool of connections and how transactions run on them.

    Opening connects once, so that a server that cannot be reached is a StoreError at once, and checks the
    schema (``postgres_schema.check_schema``: an empty one is created, an older or newer one refused).
    """

    def __init__(self, uri: str, pool_size: int = POOL_SIZE) -> None:
        self.where = redact(uri)
        self.pool = Pool(connection_params(uri), self.where, pool_size)
        try:
            conn = connect(self.pool.params)
        except psycopg.Error as exc:
            raise store_error(exc, self.where, "open") from exc
        try:
            postgres_schema.check_schema(conn, self.where)
        except BaseException as exc:
            conn.close()
            if isinstance(exc, psycopg.Error):
                raise store_error(exc, self.where, "open") from exc
            raise
        self.pool.add(conn)

    def run(self, body: Callable[[Cursor], T], *, begin: str = WRITE, repeatable: bool = True,
            doing: str = "write") -> T:
        """What ``body`` returns, run in one transaction that starts with ``begin`` (see the module's doc)."""
        conflicts, reconnected = 0, False
        while True:
            try:
                return self._attempt(body, begin, fresh=reconnected)
            except _Failed as failed:
                if is_conflict(failed.error) and conflicts < CONFLICT_RETRIES:
                    conflicts += 1
                    time.sleep(random.uniform(0, 0.02 * conflicts))
                    continue
                if failed.broken:
                    self.pool.discard_idle()  # broken the same way
                    if not reconnected and (repeatable or not failed.committing):
                        reconnected = True
                        continue
                    if not reconnected:
                        raise StoreUnavailableError(
                            f"the connection to the run history {self.where} broke while a change was being "
                            f"committed ({failed.error}); whether it was made is unknown") from failed.error
                if isinstance(failed.error, _REFUSED_VALUES):
                    raise ValueError(f"the run history {self.where} refused a value: {failed.error}") from None
                raise store_error(failed.error, self.where, doing) from failed.error

    def read(self, sql: str, args: Iterable[Any] = ()) -> list[TupleRow]:
        """The rows of one statement (its own transaction, in autocommit)."""
        values = tuple(args)
        return self.run(lambda cur: cur.execute(sql, values).fetchall(), begin=STATEMENT, doing="read")

    def close(self) -> None:
        self.pool.close()

    def _attempt(self, body: Callable[[Cursor], T], begin: str, fresh: bool) -> T:
        committing = False
        conn: Connection | None = None
        try:
            with self.pool.connection(fresh=fresh) as conn:
                try:
                    with conn.cursor() as cur:
                        if begin:
                            cur.execute(begin)
                        result = body(cur)
                        if begin:
                            committing = True
                            cur.execute("COMMIT")
                    return result
                except BaseException:
                    _rollback(conn)
                    raise
        except psycopg.Error as exc:
            raise _Failed(exc, conn is None or is_broken(conn, exc), committing) from exc


def _rollback(conn: Connection) -> None:
    """End the open transaction, if any; never raises, so the error that led here is the one reported."""
    if not conn.closed and conn.info.transaction_status != TransactionStatus.IDLE:
        try:
            conn.execute("ROLLBACK")
        except psycopg.Error:
            pass
