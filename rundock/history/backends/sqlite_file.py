"""The SQLite history file: its tables and versions, which file is open, and what its errors mean.

The schema version lives in ``PRAGMA user_version``. ``MIGRATIONS`` is the
ordered list of steps: step ``i`` (counting from 1) brings a file from version
``i - 1`` to ``i``, so the code's version is ``len(MIGRATIONS)``. A history
written before versions were stamped (``user_version`` 0 but a ``runs`` table)
is version 1.

Opening a current file takes no lock a writer holds: the version is checked
with a plain read, which WAL lets through while another process is in the
middle of a long write transaction. Only a new file or an older one is
migrated, in one ``BEGIN IMMEDIATE`` transaction that reads the version again
first, so that processes opening the file at the same time migrate it once. A
file newer than the code is refused: this code would not know what the newer
rundock expects of it.

Every ``sqlite3.Error`` that leaves the backend goes through ``store_error``,
which tells the failures worth retrying (locked, full, read-only:
StoreUnavailableError) from a damaged file (StoreDamagedError).

``file_identity`` is how a store notices that its file was deleted or replaced
under it (it would otherwise go on writing to an unlinked inode nobody reads).
"""

from __future__ import annotations

import os
import sqlite3
from typing import Tuple

from rundock.errors import StoreDamagedError, StoreError, StoreUnavailableError, StoreVersionError

Migration = Tuple[str, ...]  # statements run in order inside the migrating transaction; Python 3.8 syntax

_VERSION_1: Migration = (
    "CREATE TABLE IF NOT EXISTS experiments (name TEXT PRIMARY KEY, last_number INTEGER NOT NULL)",
    """CREATE TABLE IF NOT EXISTS runs (
    run_id TEXT PRIMARY KEY, experiment TEXT NOT NULL, number INTEGER NOT NULL, status TEXT NOT NULL,
    created_at REAL NOT NULL, parent_id TEXT, run_type TEXT NOT NULL, display_name TEXT, description TEXT,
    target TEXT NOT NULL, run_definition TEXT NOT NULL, snapshot_id TEXT, submitted_by TEXT, run_dir TEXT,
    start_at REAL, end_at REAL, status_detail TEXT NOT NULL DEFAULT '', error TEXT,
    last_heartbeat REAL, heartbeat_interval REAL)""",
    "CREATE INDEX IF NOT EXISTS runs_by_experiment ON runs (experiment, number)",
    "CREATE INDEX IF NOT EXISTS runs_by_parent ON runs (parent_id)",
    "CREATE INDEX IF NOT EXISTS runs_by_status ON runs (status)",
    """CREATE TABLE IF NOT EXISTS status_history (
    ord INTEGER PRIMARY KEY AUTOINCREMENT, run_id TEXT NOT NULL, status TEXT NOT NULL, at REAL NOT NULL,
    detail TEXT NOT NULL)""",
    "CREATE INDEX IF NOT EXISTS status_history_by_run ON status_history (run_id)",
    "CREATE TABLE IF NOT EXISTS tags (run_id TEXT NOT NULL, key TEXT NOT NULL, value TEXT, PRIMARY KEY (run_id, key))",
    """CREATE TABLE IF NOT EXISTS properties (
    run_id TEXT NOT NULL, key TEXT NOT NULL, value TEXT NOT NULL, PRIMARY KEY (run_id, key))""",
    """CREATE TABLE IF NOT EXISTS metrics (
    ord INTEGER PRIMARY KEY, run_id TEXT NOT NULL, name TEXT NOT NULL, kind TEXT NOT NULL, value TEXT,
    step INTEGER, description TEXT NOT NULL, at REAL NOT NULL)""",
    "CREATE INDEX IF NOT EXISTS metrics_by_run ON metrics (run_id, name)",
    """CREATE TABLE IF NOT EXISTS files (
    run_id TEXT NOT NULL, name TEXT NOT NULL, digest TEXT NOT NULL, size INTEGER NOT NULL, at REAL NOT NULL,
    PRIMARY KEY (run_id, name))""",
    """CREATE TABLE IF NOT EXISTS log_chunks (
    run_id TEXT NOT NULL, name TEXT NOT NULL, pos INTEGER NOT NULL, data BLOB NOT NULL,
    PRIMARY KEY (run_id, name, pos))""",
    """CREATE TABLE IF NOT EXISTS journal_marks (
    run_id TEXT NOT NULL, attempt INTEGER NOT NULL, source TEXT NOT NULL, seq INTEGER NOT NULL,
    PRIMARY KEY (run_id, attempt, source))""",
    """CREATE TABLE IF NOT EXISTS models (
    name TEXT NOT NULL, version INTEGER NOT NULL, run_id TEXT, path TEXT NOT NULL, files TEXT NOT NULL,
    created_at REAL NOT NULL, tags TEXT NOT NULL, properties TEXT NOT NULL, framework TEXT, framework_version TEXT,
    description TEXT, PRIMARY KEY (name, version))""",
    """CREATE TABLE IF NOT EXISTS environments (
    name TEXT NOT NULL, version INTEGER NOT NULL, definition TEXT NOT NULL, created_at REAL NOT NULL,
    PRIMARY KEY (name, version))""",
    "CREATE TABLE IF NOT EXISTS snapshots (snapshot_id TEXT PRIMARY KEY, manifest TEXT NOT NULL, "
    "created_at REAL NOT NULL)",
)

_VERSION_2: Migration = (  # `rundock archive`: archived runs are left out of listings unless asked for
    "ALTER TABLE runs ADD COLUMN archived INTEGER NOT NULL DEFAULT 0",
)

# The latest value of each (run, metric), for the runs table (``rundock.history.query``): ``value`` is the number
# that value counts as (NULL when it is none, or NaN: SQLite keeps no NaN), ``nan`` says it was NaN. The store's
# write of a batch of metrics updates it (``LATEST_FROM_METRICS``, once per name); deleting a run deletes its rows.
LATEST_VALUE = ("CASE WHEN m.kind = 'scalar' AND length(m.value) < 40 AND (m.value GLOB '[0-9]*' OR m.value GLOB "
                "'-[0-9]*') THEN CAST(m.value AS REAL) WHEN m.kind = 'scalar' AND m.value = 'Infinity' THEN 9e999 "
                "WHEN m.kind = 'scalar' AND m.value = '-Infinity' THEN -9e999 END")
LATEST_NAN = "(m.kind = 'scalar' AND m.value = 'NaN')"
LATEST_FROM_METRICS = (  # the latest row of one (run, metric): arguments run_id, name
    f"INSERT INTO latest_metrics (run_id, name, ord, value, nan) SELECT m.run_id, m.name, m.ord, {LATEST_VALUE}, "
    f"{LATEST_NAN} FROM metrics m WHERE m.run_id = ? AND m.name = ? ORDER BY m.ord DESC LIMIT 1 "
    "ON CONFLICT (run_id, name) DO UPDATE SET ord = excluded.ord, value = excluded.value, nan = excluded.nan")
REFILL_LATEST: Migration = (  # every latest value again, from the metrics table
    "DELETE FROM latest_metrics",
    f"INSERT INTO latest_metrics (run_id, name, ord, value, nan) SELECT m.run_id, m.name, m.ord, {LATEST_VALUE}, "
    f"{LATEST_NAN} FROM metrics m WHERE m.ord IN (SELECT MAX(ord) FROM metrics GROUP BY run_id, name)",
)

_VERSION_3: Migration = (  # the runs table's query: latest values, and indexes for its sort orders
    """CREATE TABLE IF NOT EXISTS latest_metrics (
    run_id TEXT NOT NULL, name TEXT NOT NULL, ord INTEGER NOT NULL, value REAL, nan INTEGER NOT NULL,
    PRIMARY KEY (run_id, name))""",
    "CREATE INDEX IF NOT EXISTS latest_metrics_by_name ON latest_metrics (name, value)",
    """CREATE TRIGGER IF NOT EXISTS runs_delete_latest_metrics AFTER DELETE ON runs FOR EACH ROW BEGIN
    DELETE FROM latest_metrics WHERE run_id = old.run_id; END""",
    "CREATE INDEX IF NOT EXISTS runs_by_created_at ON runs (created_at, number)",
    *REFILL_LATEST,
)

MIGRATIONS: tuple[Migration, ...] = (_VERSION_1, _VERSION_2, _VERSION_3)
SCHEMA_VERSION = len(MIGRATIONS)

# SQLite's primary result codes (``sqlite3.Error.sqlite_errorcode`` from Python 3.11; the message before that).
_UNAVAILABLE_CODES = {5, 6, 7, 8, 10, 13, 14, 15}  # BUSY LOCKED NOMEM READONLY IOERR FULL CANTOPEN PROTOCOL
_DAMAGED_CODES = {11, 26}  # CORRUPT NOTADB
_UNAVAILABLE_WORDS = ("locked", "busy", "full", "readonly", "read-only", "i/o error", "unable to open", "out of memory")
_DAMAGED_WORDS = ("malformed", "not a database", "corrupt")


def file_version(db: sqlite3.Connection) -> int:
    """The schema version of the file open as ``db`` (0: an empty file)."""
    return _version(db)[0]


def _version(db: sqlite3.Connection) -> tuple[int, bool]:
    """The file's schema version and whether the file says so itself."""
    (stamped,) = db.execute("PRAGMA user_version").fetchone()
    if stamped == 0 and db.execute("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'runs'").fetchone():
        return 1, False  # made before versions were stamped
    return int(stamped), True


def ensure_schema(db: sqlite3.Connection, path: str, migrations: tuple[Migration, ...] = MIGRATIONS) -> int:
    """Bring the file open as ``db`` (autocommit) to ``len(migrations)``; return that version.

    Raises StoreVersionError for a file newer than the code and lets
    ``sqlite3.Error`` through (the caller names the file with ``store_error``).
    """
    current = len(migrations)
    version, stamped = _version(db)
    if version > current:
        raise _newer(path, version, current)
    if db.execute("PRAGMA journal_mode").fetchone()[0] != "wal":
        db.execute("PRAGMA journal_mode = WAL")  # once in a file's life: a new file, a restored backup
    if version == current and stamped:
        return current
    db.execute("BEGIN IMMEDIATE")
    try:
        version = file_version(db)  # another process may have migrated it while this one waited
        if version > current:
            raise _newer(path, version, current)
        for migration in migrations[version:]:
            for statement in migration:
                db.execute(statement)
        db.execute(f"PRAGMA user_version = {current}")
        db.execute("COMMIT")
    except BaseException:
        rollback(db)
        raise
    return current


def _newer(path: str, version: int, current: int) -> StoreVersionError:
    return StoreVersionError(f"the run history {path} has schema version {version}, newer than this rundock's "
                             f"({current}): it was written by a newer rundock; upgrade rundock to use it")


def rollback(db: sqlite3.Connection) -> None:
    """End the open transaction, if any; never raises, so the error that led here is the one reported.

    SQLite has already rolled back by itself after some errors (a full disk),
    when a ROLLBACK would fail with "no transaction is active".
    """
    if db.in_transaction:
        try:
            db.execute("ROLLBACK")
        except sqlite3.Error:
            pass


def store_error(exc: sqlite3.Error, path: str, doing: str) -> StoreError:
    """The StoreError subclass that says what ``exc`` means for the history at ``path``."""
    code = getattr(exc, "sqlite_errorcode", None)
    primary = code & 0xFF if isinstance(code, int) else None
    text = str(exc).lower()
    if primary in _DAMAGED_CODES or (primary is None and any(w in text for w in _DAMAGED_WORDS)):
        return StoreDamagedError(f"the run history {path} is damaged ({exc}); run `rundock doctor` to check it "
                                 f"and `rundock doctor --repair` to rebuild it")
    if primary in _UNAVAILABLE_CODES or (primary is None and any(w in text for w in _UNAVAILABLE_WORDS)):
        return StoreUnavailableError(f"cannot {doing} the run history {path} now: {exc}")
    return StoreError(f"cannot {doing} the run history {path}: {exc}")


def history_path(uri: str) -> str:
    """The file of a ``sqlite:///path`` (or ``sqlite:path``) URI."""
    return uri[len("sqlite:///"):] if uri.startswith("sqlite:///") else uri.split(":", 1)[1]


def file_identity(path: str) -> tuple[int, int] | None:
    """Which file ``path`` names now, as (device, inode); None when there is none."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return None
    return st.st_dev, st.st_ino
