"""The PostgreSQL run history's tables and versions.

The schema version lives in the ``rundock_schema_version`` table, one row per step applied (with when).
``MIGRATIONS`` is the ordered list of steps: step ``i`` (counting from 1) brings a schema from version
``i - 1`` to ``i``, so the code's version is ``len(MIGRATIONS)``. A schema without that table is empty
(version 0). The tables live in the first schema of the connection's ``search_path`` (``public`` unless
the URI says otherwise, e.g. ``?options=-csearch_path%3Drundock``).

``migrate`` runs the missing steps in ONE transaction (PostgreSQL's DDL is transactional, so a failed
upgrade leaves the previous version intact) under an advisory lock, reading the version again once it
holds the lock, so that servers starting at the same time migrate once. It is what ``rundock server init``
and ``rundock server upgrade`` run; opening a store migrates only an empty schema (``check_schema``), the
way the SQLite backend creates a new file. A schema older than the code is refused with a StoreVersionError
that tells the admin to run ``rundock server upgrade`` (an upgrade is the admin's decision: it may take
locks for long on a big history, and every server on the old version has to stop); a newer one is
refused too: this code would not know what the newer rundock expects of it.

Types mirror the SQLite schema: times are unix seconds (``DOUBLE PRECISION``), JSON documents are text,
integers are 64 bits. ``metrics.ord`` and ``status_history.ord`` number rows in the order they were
written (a sequence without cache, so one run's rows stay in order whichever connection writes them).
"""

from __future__ import annotations

import time
from typing import Tuple

from psycopg import Connection
from psycopg.rows import TupleRow

from rundock.errors import StoreError, StoreVersionError

Migration = Tuple[str, ...]  # statements run in order inside the migrating transaction; Python 3.8 syntax

_VERSION_1: Migration = (
    "CREATE TABLE experiments (name TEXT PRIMARY KEY, last_number BIGINT NOT NULL)",
    """CREATE TABLE runs (
    run_id TEXT PRIMARY KEY, experiment TEXT NOT NULL, number BIGINT NOT NULL, status TEXT NOT NULL,
    created_at DOUBLE PRECISION NOT NULL, parent_id TEXT, run_type TEXT NOT NULL, display_name TEXT,
    description TEXT, target TEXT NOT NULL, run_definition TEXT NOT NULL, snapshot_id TEXT, submitted_by TEXT,
    run_dir TEXT, start_at DOUBLE PRECISION, end_at DOUBLE PRECISION, status_detail TEXT NOT NULL DEFAULT '',
    error TEXT, last_heartbeat DOUBLE PRECISION, heartbeat_interval DOUBLE PRECISION,
    archived BOOLEAN NOT NULL DEFAULT FALSE)""",
    "CREATE INDEX runs_by_experiment ON runs (experiment, number)",
    "CREATE INDEX runs_by_parent ON runs (parent_id)",
    "CREATE INDEX runs_by_status ON runs (status)",
    "CREATE INDEX runs_by_snapshot ON runs (snapshot_id)",
    """CREATE TABLE status_history (
    ord BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY, run_id TEXT NOT NULL, status TEXT NOT NULL,
    at DOUBLE PRECISION NOT NULL, detail TEXT NOT NULL)""",
    "CREATE INDEX status_history_by_run ON status_history (run_id, ord)",
    "CREATE TABLE tags (run_id TEXT NOT NULL, key TEXT NOT NULL, value TEXT, PRIMARY KEY (run_id, key))",
    "CREATE TABLE properties (run_id TEXT NOT NULL, key TEXT NOT NULL, value TEXT NOT NULL, PRIMARY KEY (run_id, key))",
    # No primary key: rows are found by run (and name) through metrics_by_run; one index less to update per value.
    """CREATE TABLE metrics (
    ord BIGINT GENERATED ALWAYS AS IDENTITY, run_id TEXT NOT NULL, name TEXT NOT NULL,
    kind TEXT NOT NULL, value TEXT, step BIGINT, description TEXT NOT NULL, at DOUBLE PRECISION NOT NULL)""",
    "CREATE INDEX metrics_by_run ON metrics (run_id, name, ord)",
    """CREATE TABLE files (
    run_id TEXT NOT NULL, name TEXT NOT NULL, digest TEXT NOT NULL, size BIGINT NOT NULL,
    at DOUBLE PRECISION NOT NULL, PRIMARY KEY (run_id, name))""",
    """CREATE TABLE log_chunks (
    run_id TEXT NOT NULL, name TEXT NOT NULL, pos BIGINT NOT NULL, data BYTEA NOT NULL,
    PRIMARY KEY (run_id, name, pos))""",
    """CREATE TABLE journal_marks (
    run_id TEXT NOT NULL, attempt BIGINT NOT NULL, source TEXT NOT NULL, seq BIGINT NOT NULL,
    PRIMARY KEY (run_id, attempt, source))""",
    """CREATE TABLE models (
    name TEXT NOT NULL, version BIGINT NOT NULL, run_id TEXT, path TEXT NOT NULL, files TEXT NOT NULL,
    created_at DOUBLE PRECISION NOT NULL, tags TEXT NOT NULL, properties TEXT NOT NULL, framework TEXT,
    framework_version TEXT, description TEXT, PRIMARY KEY (name, version))""",
    """CREATE TABLE environments (
    name TEXT NOT NULL, version BIGINT NOT NULL, definition TEXT NOT NULL, created_at DOUBLE PRECISION NOT NULL,
    PRIMARY KEY (name, version))""",
    """CREATE TABLE snapshots (
    snapshot_id TEXT PRIMARY KEY, manifest TEXT NOT NULL, created_at DOUBLE PRECISION NOT NULL)""",
)

# The latest value of each (run, metric), for the runs table (``rundock.history.query``): ``value`` is the number
# that value counts as (NULL when it is none, or NaN, which PostgreSQL would compare and sort above every number),
# ``nan`` says it was NaN. A write of a batch of metrics updates it (``LATEST_FROM_METRICS``, once per name, after
# the COPY: the newer row wins, whichever transaction commits first); deleting a run deletes its rows.
LATEST_VALUE = ("CASE WHEN m.kind = 'scalar' AND length(m.value) < 40 AND m.value ~ '^-?[0-9]' THEN "
                "m.value::double precision WHEN m.kind = 'scalar' AND m.value IN ('Infinity', '-Infinity') "
                "THEN m.value::double precision END")
LATEST_NAN = "(m.kind = 'scalar' AND m.value = 'NaN')"
_LATEST_UPSERT = ("ON CONFLICT (run_id, name) DO UPDATE SET ord = excluded.ord, value = excluded.value, "
                  "nan = excluded.nan WHERE excluded.ord > latest_metrics.ord")
LATEST_FROM_METRICS = (  # the latest rows of one run's metrics: arguments run_id, names (a list, sorted)
    f"INSERT INTO latest_metrics (run_id, name, ord, value, nan) SELECT DISTINCT ON (m.name) m.run_id, m.name, "
    f"m.ord, {LATEST_VALUE}, {LATEST_NAN} FROM metrics m WHERE m.run_id = %s AND m.name = ANY(%s) "
    f"ORDER BY m.name, m.ord DESC {_LATEST_UPSERT}")

_VERSION_2: Migration = (  # the runs table's query: latest values, and indexes for its sort orders
    """CREATE TABLE latest_metrics (
    run_id TEXT NOT NULL, name TEXT NOT NULL, ord BIGINT NOT NULL, value DOUBLE PRECISION, nan BOOLEAN NOT NULL,
    PRIMARY KEY (run_id, name))""",
    "CREATE INDEX latest_metrics_by_name ON latest_metrics (name, value)",
    """CREATE FUNCTION rundock_delete_latest_metrics() RETURNS trigger LANGUAGE plpgsql AS $$
    BEGIN DELETE FROM latest_metrics WHERE run_id = OLD.run_id; RETURN NULL; END $$""",
    """CREATE TRIGGER runs_delete_latest_metrics AFTER DELETE ON runs FOR EACH ROW
    EXECUTE PROCEDURE rundock_delete_latest_metrics()""",
    "CREATE INDEX runs_by_created_at ON runs (created_at, number)",
    f"INSERT INTO latest_metrics (run_id, name, ord, value, nan) SELECT DISTINCT ON (m.run_id, m.name) m.run_id, "
    f"m.name, m.ord, {LATEST_VALUE}, {LATEST_NAN} FROM metrics m ORDER BY m.run_id, m.name, m.ord DESC",
)

MIGRATIONS: tuple[Migration, ...] = (_VERSION_1, _VERSION_2)
SCHEMA_VERSION = len(MIGRATIONS)

_VERSION_TABLE = "rundock_schema_version"
_LOCK_CLASS = 0x72646B  # the advisory lock of migrations: this class, and the schema's name hashed


def schema_version(conn: Connection[TupleRow]) -> int:
    """The version of the schema ``conn`` sees (0: empty)."""
    row = conn.execute(f"SELECT to_regclass('{_VERSION_TABLE}') IS NOT NULL").fetchone()
    if not row or not row[0]:
        return 0
    row = conn.execute(f"SELECT COALESCE(MAX(version), 0) FROM {_VERSION_TABLE}").fetchone()
    return int(row[0]) if row else 0


def check_schema(conn: Connection[TupleRow], where: str, migrations: tuple[Migration, ...] = MIGRATIONS) -> int:
    """Make sure the schema ``conn`` (autocommit) sees is the code's: create it when empty; raise
    StoreVersionError when it is older or newer. Returns the version."""
    current = len(migrations)
    version = schema_version(conn)
    if version == 0:
        return migrate(conn, where, migrations)[1]
    if version > current:
        raise _newer(where, version, current)
    if version < current:
        raise StoreVersionError(f"the run history {where} has schema version {version}, older than this "
                                f"rundock's ({current}); run `rundock server upgrade` to bring it up to date "
                                f"(stop the servers that use it first)")
    return version


def migrate(conn: Connection[TupleRow], where: str, migrations: tuple[Migration, ...] = MIGRATIONS) -> tuple[int, int]:
    """Bring the schema ``conn`` (autocommit) sees to ``len(migrations)`` in one transaction; return the versions
    (before, after). A schema newer than the code raises StoreVersionError and is left as it is."""
    current = len(migrations)
    with conn.transaction():
        row = conn.execute("SELECT current_schema()").fetchone()
        if not row or row[0] is None:
            raise StoreError(f"the run history {where} has no schema to create its tables in: the search_path "
                             f"names none that exists; create it (CREATE SCHEMA ...) or fix the URI's options")
        conn.execute("SELECT pg_advisory_xact_lock(%s, hashtext(%s))", (_LOCK_CLASS, row[0]))
        before = schema_version(conn)  # another server may have migrated it while this one waited
        if before > current:
            raise _newer(where, before, current)
        if before == 0:
            conn.execute(f"CREATE TABLE IF NOT EXISTS {_VERSION_TABLE} ("
                         "version INTEGER PRIMARY KEY, applied_at DOUBLE PRECISION NOT NULL)")
        for version in range(before + 1, current + 1):
            for statement in migrations[version - 1]:
                conn.execute(statement)
            conn.execute(f"INSERT INTO {_VERSION_TABLE} (version, applied_at) VALUES (%s, %s)",
                         (version, time.time()))
    return before, current


def _newer(where: str, version: int, current: int) -> StoreVersionError:
    return StoreVersionError(f"the run history {where} has schema version {version}, newer than this rundock's "
                             f"({current}): it was written by a newer rundock; upgrade rundock to use it")
