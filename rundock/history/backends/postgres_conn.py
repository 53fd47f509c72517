"""Connections to a PostgreSQL run history: how one is made, a small pool of them, and what their errors mean.

Nothing may hang: a connection attempt gives up after ``CONNECT_TIMEOUT_S``, a statement after
``STATEMENT_TIMEOUT`` (unless the URI, the role or the database sets a timeout of its own), and TCP
keepalives notice a server that went away without closing the connection. A URI may set any libpq
parameter (``?connect_timeout=3``, ``?options=-csearch_path%3Druns``); what it sets wins over these defaults.

``Pool`` keeps up to ``size`` connections, one per thread at a time, so that writers of different runs
work in parallel; a thread that finds them all busy waits for one. A connection whose transaction did not
end cleanly is closed, never handed out again. When a connection turns out broken (the server restarted),
``discard_idle`` drops the others too: they are broken the same way.

``store_error`` turns a psycopg error into the StoreError subclass that says what it means for the caller:
StoreUnavailableError for what may pass (the server is down or restarting, out of connections or disk, a
statement timed out), StoreError for the rest. Messages name the URI without its password.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Iterator
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit

import psycopg
import psycopg.errors
from psycopg.conninfo import conninfo_to_dict
from psycopg.pq import TransactionStatus
from psycopg.rows import TupleRow

from rundock.errors import ConfigError, StoreError, StoreUnavailableError

Connection = psycopg.Connection[TupleRow]

CONNECT_TIMEOUT_S = 10
STATEMENT_TIMEOUT = "60s"
POOL_WAIT_S = 60.0  # how long a thread waits for a free connection before giving up
_DEFAULTS: dict[str, Any] = {
    "connect_timeout": CONNECT_TIMEOUT_S, "application_name": "rundock", "keepalives": 1, "keepalives_idle": 10,
    "keepalives_interval": 5, "keepalives_count": 3, "tcp_user_timeout": 30_000,
}
# SQLSTATE classes of failures that may pass: connection exceptions, insufficient resources (disk, memory,
# connections), operator intervention (shutdown, restart, query canceled by a timeout), system errors (I/O).
_TRANSIENT_CLASSES = ("08", "53", "57", "58")
_BROKEN_STATES = ("08", "57P01", "57P02", "57P03")  # connection exceptions, admin/crash shutdown, starting up


def redact(uri: str) -> str:
    """``uri`` without its password (in the user part or as a ``password=`` parameter), for messages."""
    parts = urlsplit(uri)
    userinfo, at, host = parts.netloc.rpartition("@")
    if at and ":" in userinfo:
        uri = uri.replace(f"//{parts.netloc}", f"//{userinfo.split(':', 1)[0]}@{host}", 1)
    if "password" in parts.query:
        kept = urlencode([(k, v) for k, v in parse_qsl(parts.query, keep_blank_values=True) if k != "password"])
        uri = uri.split("?", 1)[0] + (f"?{kept}" if kept else "")
    return uri


def connection_params(uri: str) -> dict[str, Any]:
    """The libpq parameters of ``uri`` with rundock's defaults for what it leaves unset; ConfigError if invalid."""
    try:
        params: dict[str, Any] = conninfo_to_dict(uri)
    except psycopg.ProgrammingError as exc:
        raise ConfigError(f"invalid PostgreSQL run history URI {redact(uri)!r}: {exc}", field="history") from None
    for key, value in _DEFAULTS.items():
        params.setdefault(key, value)
    return params


def connect(params: dict[str, Any], wait_s: float = 0.0) -> Connection:
    """A new autocommit connection; while the server refuses (down, starting up) try again for ``wait_s``.

    Raises the last psycopg error when no connection could be made.
    """
    deadline = time.monotonic() + wait_s
    while True:
        try:
            conn = psycopg.connect(autocommit=True, **params)
            break
        except psycopg.OperationalError:
            if time.monotonic() >= deadline:
                raise
            time.sleep(0.25)
    try:
        (timeout,) = conn.execute("SELECT current_setting('statement_timeout')").fetchone() or ("0",)
        if timeout == "0":  # nobody chose one: never wait forever on a lock or a runaway statement
            conn.execute(f"SET statement_timeout = '{STATEMENT_TIMEOUT}'")
    except BaseException:
        conn.close()
        raise
    return conn


def store_error(exc: psycopg.Error, where: str, doing: str) -> StoreError:
    """The StoreError subclass that says what ``exc`` means for the run history at ``where``."""
    state = exc.sqlstate or ""
    text = str(exc).strip()
    if isinstance(exc, psycopg.errors.QueryCanceled):
        return StoreUnavailableError(f"cannot {doing} the run history {where} now: a statement ran past its "
                                     f"timeout ({text})")
    if (isinstance(exc, psycopg.OperationalError) and not state) or state[:2] in _TRANSIENT_CLASSES:
        return StoreUnavailableError(f"cannot {doing} the run history {where} now: {text}")
    return StoreError(f"cannot {doing} the run history {where}: {text}")


def is_conflict(exc: psycopg.Error) -> bool:
    """Whether the server rolled the transaction back to break a deadlock or a serialization conflict, so
    that running it again is safe and will likely succeed."""
    return isinstance(exc, (psycopg.errors.DeadlockDetected, psycopg.errors.SerializationFailure))


def is_broken(conn: Connection, exc: psycopg.Error) -> bool:
    """Whether ``exc`` means that ``conn`` can no longer be used: the server closed it (shut down, restarted,
    crashed) or the network failed. A statement that timed out or a full disk leave the connection usable."""
    return conn.closed or conn.broken or (exc.sqlstate or "").startswith(_BROKEN_STATES)


class Pool:
    """Up to ``size`` connections to one database, each used by one thread at a time."""

    def __init__(self, params: dict[str, Any], where: str, size: int) -> None:
        self.params = params
        self.where = where
        self.size = size
        self._free = threading.BoundedSemaphore(size)
        self._lock = threading.Lock()
        self._idle: list[Connection] = []
        self._closed = False

    def add(self, conn: Connection) -> None:
        """Keep ``conn`` (made by the caller) for later use."""
        self._give_back(conn)

    @contextlib.contextmanager
    def connection(self, *, fresh: bool = False) -> Iterator[Connection]:
        """A connection for this thread: an idle one, or a new one. ``fresh``: always a new one, waiting up to
        ``CONNECT_TIMEOUT_S`` for a server that is restarting."""
        if self._closed:
            raise StoreError(f"the run history {self.where} was closed; open it again")
        if not self._free.acquire(timeout=POOL_WAIT_S):
            raise StoreUnavailableError(f"all {self.size} connections to the run history {self.where} stayed busy "
                                        f"for {POOL_WAIT_S:.0f} s")
        conn: Connection | None = None
        try:
            conn = None if fresh else self._take_idle()
            if conn is None:
                conn = connect(self.params, wait_s=CONNECT_TIMEOUT_S if fresh else 0.0)
            yield conn
        finally:
            if conn is not None:
                self._give_back(conn)
            self._free.release()

    def discard_idle(self) -> None:
        """Close every idle connection (they are all broken when one is found broken by a restart)."""
        with self._lock:
            idle, self._idle = self._idle, []
        for conn in idle:
            conn.close()

    def close(self) -> None:
        """Close the idle connections now and the busy ones when they are given back."""
        self._closed = True
        self.discard_idle()

    def _take_idle(self) -> Connection | None:
        with self._lock:
            return self._idle.pop() if self._idle else None

    def _give_back(self, conn: Connection) -> None:
        clean = not conn.closed and not conn.broken and conn.info.transaction_status == TransactionStatus.IDLE
        with self._lock:
            if clean and not self._closed:
                self._idle.append(conn)
                return
        conn.close()
