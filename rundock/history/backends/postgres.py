"""The team run history: a PostgreSQL database (``postgresql://user@host/db``), through psycopg 3.

It behaves exactly like the SQLite backend; what differs is how writers that run at the same time are kept
apart. SQLite lets one writer in at a time; here each thread gets its own connection from a small pool and
transactions run side by side, so writers of different runs never wait for each other:

- ``postgres_conn``: connections (with timeouts: nothing hangs), the pool, what errors mean;
- ``postgres_tx``: one transaction per public method, and when one is run again (a deadlock, a server
  restart);
- ``postgres_writes``: the statements that write a run, and the order they lock rows in;
- ``postgres_schema``: tables and versions; ``postgres_admin``: archive, delete, prune, blob references.

Opening a store connects once (a StoreError at once when the server cannot be reached) and checks the
schema: an empty one is created, as the SQLite backend creates a new file; an older or a newer one is
refused. ``migrate(uri)`` is what ``rundock server init`` and ``rundock server upgrade`` run. A URI may set
any libpq parameter, e.g. ``postgresql://rundock@db/rundock?options=-csearch_path%3Druns&sslmode=require``.
"""

from __future__ import annotations

import json
import time
from array import array
from collections.abc import Iterable, Iterator, Mapping
from typing import Any

import psycopg

from rundock.errors import StoreError
from rundock.history.backends import postgres_schema, postgres_writes, sql_metrics, sql_query
from rundock.history.backends.postgres_admin import PostgresAdmin
from rundock.history.backends.postgres_conn import connect, connection_params, redact, store_error
from rundock.history.backends.postgres_tx import POOL_SIZE, READ, STATEMENT, Cursor, Database
from rundock.history.backends.postgres_writes import missing
from rundock.history.backends.sql_common import MODEL_COLUMNS, RUN_COLUMNS, model_record, run_record
from rundock.history.backends.sql_query import number_of
from rundock.history.metric_reads import MetricBuckets, MetricSummary
from rundock.history.query import RunPage, RunQuery
from rundock.history.records import (
    FileRecord,
    JournalPlan,
    MetricRecord,
    ModelRecord,
    RunRecord,
    StatusChange,
    join_log_chunks,
)
from rundock.history.store import RunStore, new_run_id, register_backend
from rundock.states import RunStatus

VALUES_CHUNK = 50_000  # metric values read at a time by ``metric_values``
# A stored scalar as a number for ``metric_points`` (the latest-value table's rule); NULL when it is none.
_NUMBER = postgres_schema.LATEST_VALUE.replace("m.", "")
_LOCK_MODEL, _LOCK_ENVIRONMENT = 1, 2  # advisory lock classes: the next version of a model, of an environment


def migrate(uri: str) -> tuple[int, int]:
    """Create or upgrade the schema of the run history at ``uri``; return its versions (before, after)."""
    where = redact(uri)
    try:
        conn = connect(connection_params(uri))
    except psycopg.Error as exc:
        raise store_error(exc, where, "open") from exc
    try:
        return postgres_schema.migrate(conn, where)
    except psycopg.Error as exc:
        raise store_error(exc, where, "upgrade") from exc
    finally:
        conn.close()


class PostgresRunStore(RunStore):
    """RunStore in a PostgreSQL database; safe across threads (a pool of ``pool_size`` connections) and
    processes."""

    def __init__(self, uri: str, *, pool_size: int = POOL_SIZE) -> None:
        self.uri = uri
        self.db = Database(uri, pool_size)
        self.where = self.db.where

    @classmethod
    def from_uri(cls, uri: str) -> PostgresRunStore:
        return cls(uri)

    # -- runs ------------------------------------------------------------------------------
    def create_run(self, experiment: str, *, run_id: str | None = None, parent_id: str | None = None,
                   run_type: str = "rundock.scriptrun", display_name: str | None = None,
                   description: str | None = None, target: str = "local",
                   run_definition: dict[str, Any] | None = None, snapshot_id: str | None = None,
                   submitted_by: str | None = None, run_dir: str | None = None,
                   tags: Mapping[str, str | None] | None = None,
                   properties: Mapping[str, str] | None = None, created_at: float | None = None) -> RunRecord:
        now = time.time() if created_at is None else created_at
        new_id = run_id or new_run_id(experiment, now)

        def body(cur: Cursor) -> None:
            if parent_id is not None:  # housekeeping that locks the parent's family waits for this child
                cur.execute("SELECT 1 FROM runs WHERE run_id = %s FOR KEY SHARE", (parent_id,))
            postgres_writes.insert_run(cur, new_id, experiment, now, parent_id=parent_id, run_type=run_type,
                                       display_name=display_name, description=description, target=target,
                                       run_definition=run_definition, snapshot_id=snapshot_id,
                                       submitted_by=submitted_by, run_dir=run_dir, tags=tags, properties=properties)

        self.db.run(body, repeatable=False)
        return self.get_run(new_id)

    def get_run(self, run_id: str) -> RunRecord:
        sql = f"SELECT {RUN_COLUMNS} FROM runs WHERE run_id = %s"
        runs = self.db.run(lambda cur: _hydrate(cur, sql, [run_id]), begin=READ, doing="read")
        if not runs:
            raise missing(run_id, self.where)
        return runs[0]

    def list_runs(self, *, experiment: str | None = None, statuses: Iterable[str] | None = None,
                  parent_id: str | None = None, run_type: str | None = None, target: str | None = None,
                  include_children: bool = True) -> list[RunRecord]:
        where: list[str] = []
        args: list[Any] = []
        for column, value in (("experiment", experiment), ("parent_id", parent_id), ("run_type", run_type),
                              ("target", target)):
            if value is not None:
                where.append(f"{column} = %s")
                args.append(value)
        if statuses is not None:
            where.append("status = ANY(%s)")
            args.append([RunStatus(s).value for s in statuses])
        if not include_children and parent_id is None:
            where.append("parent_id IS NULL")
        sql = f"SELECT {RUN_COLUMNS} FROM runs"
        if where:
            sql += " WHERE " + " AND ".join(where)
        sql += " ORDER BY created_at DESC, number DESC"
        return self.db.run(lambda cur: _hydrate(cur, sql, args), begin=READ, doing="read")

    def update_run(self, run_id: str, *, display_name: str | None = None, description: str | None = None,
                   run_dir: str | None = None, snapshot_id: str | None = None) -> None:
        changes = {k: v for k, v in (("display_name", display_name), ("description", description),
                                     ("run_dir", run_dir), ("snapshot_id", snapshot_id)) if v is not None}
        if not changes:
            return
        sets = ", ".join(f"{k} = %s" for k in changes)

        def body(cur: Cursor) -> None:
            if cur.execute(f"UPDATE runs SET {sets} WHERE run_id = %s", (*changes.values(), run_id)).rowcount == 0:
                raise missing(run_id, self.where)

        self.db.run(body)

    def transition(self, run_id: str, status: RunStatus | str, *, detail: str = "",
                   error: dict[str, Any] | None = None, at: float | None = None) -> bool:
        target, when = RunStatus(status), at or time.time()
        return self.db.run(lambda cur: postgres_writes.transition(cur, run_id, target, detail, error, when,
                                                                  self.where), repeatable=False)

    def status_history(self, run_id: str) -> list[StatusChange]:
        return [StatusChange(RunStatus(s), at, d) for s, at, d in self.db.read(
            "SELECT status, at, detail FROM status_history WHERE run_id = %s ORDER BY ord", (run_id,))]

    # -- run data --------------------------------------------------------------------------
    def journal_mark(self, run_id: str, attempt: int, source: str) -> int:
        rows = self.db.read("SELECT seq FROM journal_marks WHERE run_id = %s AND attempt = %s AND source = %s",
                            (run_id, attempt, source))
        return int(rows[0][0]) if rows else 0

    def apply_journal(self, run_id: str, attempt: int, source: str, records: list[dict[str, Any]]) -> int:
        return self.db.run(lambda cur: postgres_writes.apply_journal(cur, run_id, attempt, source, records,
                                                                     self.where))

    def apply_plan(self, run_id: str, plan: JournalPlan) -> None:
        def body(cur: Cursor) -> None:
            if cur.execute("SELECT 1 FROM runs WHERE run_id = %s", (run_id,)).fetchone() is None:
                raise missing(run_id, self.where)
            postgres_writes.execute_plan(cur, run_id, plan, self.where)

        self.db.run(body, repeatable=not plan.metrics and not plan.states)  # metrics would be logged twice

    def get_metric_records(self, run_id: str, name: str | None = None) -> list[MetricRecord]:
        sql = "SELECT name, kind, value, step, description, at FROM metrics WHERE run_id = %s"
        args: list[Any] = [run_id]
        if name is not None:
            sql += " AND name = %s"
            args.append(name)
        rows = self.db.read(sql + " ORDER BY ord", args)
        return [MetricRecord(n, k, json.loads(v), s, d, at) for n, k, v, s, d, at in rows]

    def metric_values(self, run_id: str, name: str) -> Iterator[tuple[int | None, float, float | None]]:
        sql = ("SELECT ord, step, at, value FROM metrics WHERE run_id = %s AND name = %s AND ord > %s "
               "AND kind = 'scalar' ORDER BY ord LIMIT %s")  # each chunk in a statement of its own
        for rows in sql_metrics.by_position(self.db.read, sql, run_id, name, VALUES_CHUNK):
            yield from ((step, at, number_of(value)) for _ord, step, at, value in rows)

    def metric_points(self, run_id: str, name: str, x: str = "step") -> tuple[array[float], array[float]]:
        column = "at" if x == "time" else "step"
        xs, ys = array("d"), array("d")
        sql = (f"SELECT ord, {column}, {_NUMBER} FROM metrics WHERE run_id = %s AND name = %s AND ord > %s "
               "AND kind = 'scalar' ORDER BY ord LIMIT %s")
        for rows in sql_metrics.by_position(self.db.read, sql, run_id, name, VALUES_CHUNK):
            sql_query.add_points(xs, ys, rows)
        return xs, ys

    def metric_summaries(self, run_id: str) -> list[MetricSummary]:
        return sql_metrics.summaries(self.db.read, sql_metrics.POSTGRES, run_id)

    def metric_buckets(self, run_id: str, name: str, x: str = "step", buckets: int = 2000) -> MetricBuckets:
        return sql_metrics.buckets(self.db.read, sql_metrics.POSTGRES, run_id, name, x, buckets,
                                   lambda: self.metric_points(run_id, name, x))

    def metric_version(self, run_id: str, name: str) -> int | None:
        rows = self.db.read("SELECT ord FROM latest_metrics WHERE run_id = %s AND name = %s", (run_id, name))
        return int(rows[0][0]) if rows else None

    def query_runs(self, q: RunQuery) -> RunPage:
        st = sql_query.statements(q, sql_query.POSTGRES, time.time())

        def body(cur: Cursor) -> RunPage:
            rows, total = sql_query.split_page(st, cur.execute(st.page, tuple(st.page_args)).fetchall())
            if total is None:
                row = cur.execute(st.count, st.count_args).fetchone()
                total = int(row[0]) if row else 0
            runs = _with_tags(cur, [run_record(r) for r in rows])
            latest: list[Any] = []
            if runs and q.metrics:
                latest = cur.execute(*sql_query.latest_statement(sql_query.POSTGRES, [r.run_id for r in runs],
                                                                 q.metrics)).fetchall()
            return sql_query.page_of(runs, latest, total)

        return self.db.run(body, begin=READ, doing="read")

    def metric_names(self, experiment: str | None = None) -> list[str]:
        return [r[0] for r in self.db.read(*sql_query.metric_names_statement(sql_query.POSTGRES, experiment))]

    def remove_tags(self, run_id: str, keys: Iterable[str]) -> None:
        wanted = sorted(set(keys))
        if wanted:
            self.db.run(lambda cur: cur.execute("DELETE FROM tags WHERE run_id = %s AND key = ANY(%s)",
                                                (run_id, wanted)))

    def list_files(self, run_id: str) -> dict[str, FileRecord]:
        return {n: FileRecord(n, d, s, at) for n, d, s, at in self.db.read(
            "SELECT name, digest, size, at FROM files WHERE run_id = %s ORDER BY name", (run_id,))}

    def append_log(self, run_id: str, name: str, offset: int, data: bytes) -> None:
        if data:  # a log only grows: a longer chunk at the same offset (shipped again after a restart) holds the other
            self.db.run(lambda cur: cur.execute(
                "INSERT INTO log_chunks VALUES (%s, %s, %s, %s) ON CONFLICT (run_id, name, pos) DO UPDATE SET "
                "data = excluded.data WHERE length(excluded.data) > length(log_chunks.data)",
                (run_id, name, offset, bytes(data))), begin=STATEMENT)

    def read_log(self, run_id: str, name: str, offset: int = 0) -> bytes:
        rows = self.db.read("SELECT pos, data FROM log_chunks WHERE run_id = %s AND name = %s "
                            "AND pos + length(data) > %s ORDER BY pos", (run_id, name, offset))
        return join_log_chunks(((int(pos), bytes(data)) for pos, data in rows), offset)

    def log_names(self, run_id: str) -> list[str]:
        return [r[0] for r in self.db.read("SELECT DISTINCT name FROM log_chunks WHERE run_id = %s ORDER BY name",
                                           (run_id,))]

    # -- models ----------------------------------------------------------------------------
    def register_model(self, name: str, *, run_id: str | None, path: str, files: list[dict[str, Any]],
                       tags: Mapping[str, str | None] | None = None, properties: Mapping[str, str] | None = None,
                       framework: str | None = None, framework_version: str | None = None,
                       description: str | None = None, created_at: float | None = None) -> ModelRecord:
        def body(cur: Cursor) -> int:
            version = _next_version(cur, "models", _LOCK_MODEL, name)
            cur.execute(f"INSERT INTO models ({MODEL_COLUMNS}) VALUES ({', '.join(['%s'] * 11)})", (
                name, version, run_id, path, json.dumps(files), time.time() if created_at is None else created_at,
                json.dumps(dict(tags or {})),
                json.dumps({k: str(v) for k, v in (properties or {}).items()}), framework, framework_version,
                description))
            return version

        return self.get_model(name, self.db.run(body, repeatable=False))

    def get_model(self, name: str, version: int | None = None) -> ModelRecord:
        sql = f"SELECT {MODEL_COLUMNS} FROM models WHERE name = %s"
        args: list[Any] = [name]
        if version is not None:
            sql += " AND version = %s"
            args.append(version)
        rows = self.db.read(sql + " ORDER BY version DESC LIMIT 1", args)
        if not rows:
            which = f"version {version} of model {name!r}" if version is not None else f"model {name!r}"
            raise KeyError(f"no {which} in the model registry {self.where}")
        return model_record(rows[0])

    def list_models(self, name: str | None = None) -> list[ModelRecord]:
        sql = f"SELECT {MODEL_COLUMNS} FROM models"
        rows = self.db.read(sql + " WHERE name = %s ORDER BY version DESC", (name,)) if name is not None else \
            self.db.read(sql + " ORDER BY created_at DESC, version DESC")
        return [model_record(r) for r in rows]

    # -- environments ----------------------------------------------------------------------
    def register_environment(self, name: str, definition: dict[str, Any]) -> int:
        def body(cur: Cursor) -> int:
            version = _next_version(cur, "environments", _LOCK_ENVIRONMENT, name)
            cur.execute("INSERT INTO environments VALUES (%s, %s, %s, %s)",
                        (name, version, json.dumps(definition), time.time()))
            return version

        return self.db.run(body, repeatable=False)

    def get_environment(self, name: str, version: int | None = None) -> tuple[int, dict[str, Any]]:
        sql = "SELECT version, definition FROM environments WHERE name = %s"
        args: list[Any] = [name]
        if version is not None:
            sql += " AND version = %s"
            args.append(version)
        rows = self.db.read(sql + " ORDER BY version DESC LIMIT 1", args)
        if not rows:
            which = f"version {version} of environment {name!r}" if version else f"environment {name!r}"
            raise KeyError(f"no {which} is registered in {self.where}; register it with env.register(ws)")
        return int(rows[0][0]), dict(json.loads(rows[0][1]))

    def environment_names(self) -> list[str]:
        return [r[0] for r in self.db.read("SELECT DISTINCT name FROM environments ORDER BY name")]

    # -- snapshots -------------------------------------------------------------------------
    def put_snapshot(self, snapshot_id: str, manifest: list[dict[str, Any]]) -> bool:
        def body(cur: Cursor) -> bool:
            now = time.time()
            cur.execute("INSERT INTO snapshots VALUES (%s, %s, %s) ON CONFLICT DO NOTHING",
                        (snapshot_id, json.dumps(manifest), now))
            added = cur.rowcount > 0
            if not added:  # stored again: young again (see StoreAdmin.prune_snapshots)
                cur.execute("UPDATE snapshots SET created_at = %s WHERE snapshot_id = %s", (now, snapshot_id))
            return added

        return self.db.run(body)

    def get_snapshot(self, snapshot_id: str) -> list[dict[str, Any]]:
        rows = self.db.read("SELECT manifest FROM snapshots WHERE snapshot_id = %s", (snapshot_id,))
        if not rows:
            raise StoreError(f"no snapshot {snapshot_id!r} in the run history {self.where}")
        return list(json.loads(rows[0][0]))

    def admin(self) -> PostgresAdmin:
        return PostgresAdmin(self.db)

    def close(self) -> None:
        self.db.close()


# -- statements shared by several transactions -------------------------------------------
def _hydrate(cur: Cursor, sql: str, args: Iterable[Any]) -> list[RunRecord]:
    """The runs ``sql`` selects (``RUN_COLUMNS``), with their tags and properties."""
    return _with_tags(cur, [run_record(row) for row in cur.execute(sql, tuple(args)).fetchall()])


def _with_tags(cur: Cursor, runs: list[RunRecord]) -> list[RunRecord]:
    """``runs`` with their tags and properties read."""
    if runs:
        by_id = {r.run_id: r for r in runs}
        ids = list(by_id)
        for run_id, key, value in cur.execute("SELECT run_id, key, value FROM tags WHERE run_id = ANY(%s)", (ids,)):
            by_id[run_id].tags[key] = value
        for run_id, key, value in cur.execute("SELECT run_id, key, value FROM properties WHERE run_id = ANY(%s)",
                                              (ids,)):
            by_id[run_id].properties[key] = value
    return runs


def _next_version(cur: Cursor, table: str, lock_class: int, name: str) -> int:
    """The next version of ``name`` in ``table``, locked for this transaction (two writers never take the same)."""
    cur.execute("SELECT pg_advisory_xact_lock(%s, hashtext(%s))", (lock_class, name))
    row = cur.execute(f"SELECT COALESCE(MAX(version), 0) FROM {table} WHERE name = %s", (name,)).fetchone()
    return int(row[0] if row else 0) + 1


register_backend("postgresql", PostgresRunStore.from_uri)
register_backend("postgres", PostgresRunStore.from_uri)
