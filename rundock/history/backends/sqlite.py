"""The embedded run history: one SQLite file in WAL mode.

Every write runs in ``BEGIN IMMEDIATE`` so that a writer takes the write lock
before it reads: with WAL, a deferred transaction that upgrades from read to
write can fail at once with "database is locked" whatever the busy timeout;
an immediate one waits its turn. Several processes (agents, jobs' syncers,
the CLI) write to the same file at once; readers never wait for them.

Every failure leaves as a StoreError subclass (see ``sqlite_file``): a failed
write is rolled back and the error SQLite gave is the one raised, never a
failed ROLLBACK's. Before each write transaction the store checks that its
path still names the file it opened (StoreReplacedError otherwise).
"""

from __future__ import annotations

import contextlib
import json
import os
import sqlite3
import threading
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import Any

from rundock.context.names import artifact_name
from rundock.errors import RunNotFoundError, StoreError, StoreReplacedError
from rundock.history.backends import sql_query
from rundock.history.backends.sql_common import MODEL_COLUMNS, RUN_COLUMNS, model_record, run_record
from rundock.history.backends.sqlite_admin import SqliteAdmin
from rundock.history.backends.sqlite_file import (
    LATEST_FROM_METRICS,
    ensure_schema,
    file_identity,
    history_path,
    rollback,
    store_error,
)
from rundock.history.backends.sqlite_metrics import SqliteMetricReads
from rundock.history.query import RunPage, RunQuery
from rundock.history.records import (
    FileRecord,
    JournalPlan,
    ModelRecord,
    RunRecord,
    StatusChange,
    join_log_chunks,
    plan_journal,
    value_json,
)
from rundock.history.store import RunStore, new_run_id, register_backend
from rundock.states import RunStatus, can_transition

BUSY_TIMEOUT_S = 60.0


class SqliteRunStore(SqliteMetricReads, RunStore):
    """RunStore in one SQLite file; safe across threads and processes."""

    def __init__(self, path: str) -> None:
        self.path = os.path.abspath(path)
        os.makedirs(os.path.dirname(self.path), exist_ok=True)
        self._lock = threading.RLock()
        try:
            self._db = sqlite3.connect(self.path, timeout=BUSY_TIMEOUT_S, isolation_level=None,
                                       check_same_thread=False)
        except sqlite3.Error as exc:
            raise store_error(exc, self.path, "open") from exc
        try:
            self._db.execute(f"PRAGMA busy_timeout = {int(BUSY_TIMEOUT_S * 1000)}")
            self._db.execute("PRAGMA synchronous = NORMAL")
            self._ensure_schema()
            self._identity = file_identity(self.path)
        except BaseException as exc:
            self._db.close()
            if isinstance(exc, sqlite3.Error):
                raise store_error(exc, self.path, "open") from exc
            raise

    def _ensure_schema(self) -> None:
        """``ensure_schema``, waiting (up to the busy timeout) while other processes create the same new file: a
        brand-new file's switch to WAL can answer "locked" at once, without SQLite's busy handler."""
        deadline = time.monotonic() + BUSY_TIMEOUT_S
        pause = 0.01
        while True:
            try:
                ensure_schema(self._db, self.path)
                return
            except sqlite3.OperationalError as exc:
                if ("locked" not in str(exc) and "busy" not in str(exc)) or time.monotonic() > deadline:
                    raise
                rollback(self._db)
                time.sleep(pause)
                pause = min(pause * 2, 0.2)

    @classmethod
    def from_uri(cls, uri: str) -> SqliteRunStore:
        return cls(history_path(uri))

    # -- transactions --------------------------------------------------------------
    @contextlib.contextmanager
    def _write(self) -> Iterator[sqlite3.Connection]:
        """One ``BEGIN IMMEDIATE`` transaction; any failure rolls back and raises a StoreError subclass."""
        with self._lock:
            if file_identity(self.path) != self._identity:  # one stat per transaction: about 2 microseconds
                raise StoreReplacedError(f"the run history {self.path} was deleted or replaced while this process "
                                         f"had it open")
            rollback(self._db)  # left open only if an earlier ROLLBACK failed
            try:
                self._db.execute("BEGIN IMMEDIATE")
            except sqlite3.Error as exc:
                raise store_error(exc, self.path, "write") from exc
            try:
                yield self._db
                self._db.execute("COMMIT")  # a full disk may surface here
            except sqlite3.Error as exc:
                rollback(self._db)
                raise store_error(exc, self.path, "write") from exc
            except BaseException:
                rollback(self._db)
                raise

    def _read(self, sql: str, args: Iterable[Any] = ()) -> list[sqlite3.Row]:
        with self._lock:
            try:
                return list(self._db.execute(sql, tuple(args)))
            except sqlite3.Error as exc:
                raise store_error(exc, self.path, "read") from exc

    # -- runs ------------------------------------------------------------------------
    def create_run(self, experiment: str, *, run_id: str | None = None, parent_id: str | None = None,
                   run_type: str = "rundock.scriptrun", display_name: str | None = None,
                   description: str | None = None, target: str = "local",
                   run_definition: dict[str, Any] | None = None, snapshot_id: str | None = None,
                   submitted_by: str | None = None, run_dir: str | None = None,
                   tags: Mapping[str, str | None] | None = None,
                   properties: Mapping[str, str] | None = None, created_at: float | None = None) -> RunRecord:
        now = time.time() if created_at is None else created_at
        run_id = run_id or new_run_id(experiment, now)
        with self._write() as db:
            self._insert_run(db, run_id, experiment, now, parent_id=parent_id, run_type=run_type,
                             display_name=display_name, description=description, target=target,
                             run_definition=run_definition, snapshot_id=snapshot_id, submitted_by=submitted_by,
                             run_dir=run_dir, tags=tags, properties=properties)
        return self.get_run(run_id)

    @staticmethod
    def _insert_run(db: sqlite3.Connection, run_id: str, experiment: str, now: float, *, parent_id: str | None,
                    run_type: str, display_name: str | None, description: str | None, target: str,
                    run_definition: dict[str, Any] | None, snapshot_id: str | None, submitted_by: str | None,
                    run_dir: str | None, tags: Mapping[str, str | None] | None,
                    properties: Mapping[str, str] | None) -> None:
        db.execute("INSERT INTO experiments (name, last_number) VALUES (?, 1) "
                   "ON CONFLICT (name) DO UPDATE SET last_number = last_number + 1", (experiment,))
        (number,) = db.execute("SELECT last_number FROM experiments WHERE name = ?", (experiment,)).fetchone()
        try:
            db.execute(f"INSERT INTO runs ({RUN_COLUMNS}) VALUES ({', '.join('?' * 21)})", (
                run_id, experiment, number, RunStatus.NOT_STARTED.value, now, parent_id, run_type,
                display_name, description, target, json.dumps(run_definition or {}), snapshot_id,
                submitted_by, run_dir, None, None, "", None, None, None, 0))
        except sqlite3.IntegrityError as exc:
            raise StoreError(f"a run with id {run_id!r} already exists") from exc
        db.execute("INSERT INTO status_history (run_id, status, at, detail) VALUES (?, ?, ?, ?)",
                   (run_id, RunStatus.NOT_STARTED.value, now, "run created"))
        db.executemany("INSERT INTO tags VALUES (?, ?, ?)", [(run_id, k, v) for k, v in (tags or {}).items()])
        db.executemany("INSERT INTO properties VALUES (?, ?, ?)",
                       [(run_id, k, str(v)) for k, v in (properties or {}).items()])

    def get_run(self, run_id: str) -> RunRecord:
        rows = self._read(f"SELECT {RUN_COLUMNS} FROM runs WHERE run_id = ?", (run_id,))
        if not rows:
            raise RunNotFoundError(f"no run {run_id!r} in the run history {self.path}")
        return self._hydrate(rows)[0]

    def list_runs(self, *, experiment: str | None = None, statuses: Iterable[str] | None = None,
                  parent_id: str | None = None, run_type: str | None = None, target: str | None = None,
                  include_children: bool = True) -> list[RunRecord]:
        where, args = [], []
        for column, value in (("experiment", experiment), ("parent_id", parent_id), ("run_type", run_type),
                              ("target", target)):
            if value is not None:
                where.append(f"{column} = ?")
                args.append(value)
        if statuses is not None:
            wanted = [RunStatus(s).value for s in statuses]
            where.append(f"status IN ({', '.join('?' * len(wanted))})" if wanted else "0")
            args.extend(wanted)
        if not include_children and parent_id is None:
            where.append("parent_id IS NULL")
        sql = f"SELECT {RUN_COLUMNS} FROM runs"
        if where:
            sql += " WHERE " + " AND ".join(where)
        return self._hydrate(self._read(sql + " ORDER BY created_at DESC, number DESC", args))

    def _hydrate(self, rows: Sequence[Sequence[Any]]) -> list[RunRecord]:
        runs = [run_record(row) for row in rows]
        if runs:
            by_id = {r.run_id: r for r in runs}
            marks = ", ".join("?" * len(by_id))
            for run_id, key, value in self._read(f"SELECT run_id, key, value FROM tags WHERE run_id IN ({marks})",
                                                 by_id):
                by_id[run_id].tags[key] = value
            for run_id, key, value in self._read(
                    f"SELECT run_id, key, value FROM properties WHERE run_id IN ({marks})", by_id):
                by_id[run_id].properties[key] = value
        return runs

    def update_run(self, run_id: str, *, display_name: str | None = None, description: str | None = None,
                   run_dir: str | None = None, snapshot_id: str | None = None) -> None:
        changes = {k: v for k, v in (("display_name", display_name), ("description", description),
                                     ("run_dir", run_dir), ("snapshot_id", snapshot_id)) if v is not None}
        if not changes:
            return
        with self._write() as db:
            sets = ", ".join(f"{k} = ?" for k in changes)
            if db.execute(f"UPDATE runs SET {sets} WHERE run_id = ?", (*changes.values(), run_id)).rowcount == 0:
                raise RunNotFoundError(f"no run {run_id!r} in the run history {self.path}")

    def transition(self, run_id: str, status: RunStatus | str, *, detail: str = "",
                   error: dict[str, Any] | None = None, at: float | None = None) -> bool:
        with self._write() as db:
            return self._transition(db, run_id, RunStatus(status), detail, error, at or time.time())

    @staticmethod
    def _transition(db: sqlite3.Connection, run_id: str, status: RunStatus, detail: str,
                    error: dict[str, Any] | None, at: float) -> bool:
        row = db.execute("SELECT status FROM runs WHERE run_id = ?", (run_id,)).fetchone()
        if row is None:
            raise RunNotFoundError(f"no run {run_id!r} in the run history")
        if not can_transition(row[0], status):
            return False
        db.execute(
            "UPDATE runs SET status = ?, status_detail = ?, error = COALESCE(?, error), "
            "start_at = CASE WHEN ? AND start_at IS NULL THEN ? ELSE start_at END, "
            "end_at = CASE WHEN ? THEN ? ELSE end_at END WHERE run_id = ?",
            (status.value, detail, json.dumps(error) if error else None, status == RunStatus.RUNNING, at,
             status.is_terminal, at, run_id))
        db.execute("INSERT INTO status_history (run_id, status, at, detail) VALUES (?, ?, ?, ?)",
                   (run_id, status.value, at, detail))
        return True

    def status_history(self, run_id: str) -> list[StatusChange]:
        return [StatusChange(RunStatus(s), at, d) for s, at, d in self._read(
            "SELECT status, at, detail FROM status_history WHERE run_id = ? ORDER BY ord", (run_id,))]

    # -- run data ----------------------------------------------------------------------
    def journal_mark(self, run_id: str, attempt: int, source: str) -> int:
        rows = self._read("SELECT seq FROM journal_marks WHERE run_id = ? AND attempt = ? AND source = ?",
                          (run_id, attempt, source))
        return int(rows[0][0]) if rows else 0

    def apply_journal(self, run_id: str, attempt: int, source: str, records: list[dict[str, Any]]) -> int:
        with self._write() as db:
            row = db.execute("SELECT seq FROM journal_marks WHERE run_id = ? AND attempt = ? AND source = ?",
                             (run_id, attempt, source)).fetchone()
            mark = int(row[0]) if row else 0
            plan = plan_journal(records, mark)
            if plan.last_seq == mark:
                return mark
            if db.execute("SELECT 1 FROM runs WHERE run_id = ?", (run_id,)).fetchone() is None:
                parent = plan.create and db.execute("SELECT experiment, target FROM runs WHERE run_id = ?",
                                                    (plan.create["parent"],)).fetchone()
                if not plan.create or not parent:
                    raise RunNotFoundError(f"no run {run_id!r} in the run history {self.path}")
                self._insert_run(db, run_id, parent[0], plan.create["at"], parent_id=plan.create["parent"],
                                 run_type="rundock.childrun", display_name=plan.create.get("name"),
                                 description=None, target=parent[1], run_definition={}, snapshot_id=None,
                                 submitted_by=None, run_dir=None, tags=None, properties=None)
            self._execute(db, run_id, plan)
            db.execute("INSERT INTO journal_marks VALUES (?, ?, ?, ?) ON CONFLICT (run_id, attempt, source) "
                       "DO UPDATE SET seq = excluded.seq", (run_id, attempt, source, plan.last_seq))
            return plan.last_seq

    def apply_plan(self, run_id: str, plan: JournalPlan) -> None:
        with self._write() as db:
            if db.execute("SELECT 1 FROM runs WHERE run_id = ?", (run_id,)).fetchone() is None:
                raise RunNotFoundError(f"no run {run_id!r} in the run history {self.path}")
            self._execute(db, run_id, plan)

    def _execute(self, db: sqlite3.Connection, run_id: str, plan: JournalPlan) -> None:
        if plan.metrics:
            db.executemany(
                "INSERT INTO metrics (run_id, name, kind, value, step, description, at) VALUES (?, ?, ?, ?, ?, ?, ?)",
                [(run_id, m.name, m.kind, value_json(m.value), m.step, m.description, m.at) for m in plan.metrics])
            db.executemany(LATEST_FROM_METRICS, [(run_id, n) for n in dict.fromkeys(m.name for m in plan.metrics)])
        if plan.tags:
            db.executemany("INSERT INTO tags VALUES (?, ?, ?) ON CONFLICT (run_id, key) DO UPDATE SET value = "
                           "excluded.value", [(run_id, k, v) for k, v in plan.tags.items()])
        if plan.properties:
            db.executemany("INSERT OR IGNORE INTO properties VALUES (?, ?, ?)",
                           [(run_id, k, v) for k, v in plan.properties.items()])
        if plan.files:
            for f in plan.files:
                if artifact_name(f.name) != f.name:  # every name entering the history is a clean relative one
                    raise ValueError(f"run file name {f.name!r} is not a normalized relative name")
            db.executemany("INSERT INTO files VALUES (?, ?, ?, ?, ?) ON CONFLICT (run_id, name) DO UPDATE SET "
                           "digest = excluded.digest, size = excluded.size, at = excluded.at",
                           [(run_id, f.name, f.digest, f.size, f.at) for f in plan.files])
        for status, at, detail, error in plan.states:
            self._transition(db, run_id, status, detail, error, at)
        if plan.heartbeat is not None:
            db.execute("UPDATE runs SET last_heartbeat = MAX(COALESCE(last_heartbeat, 0), ?), "
                       "heartbeat_interval = ? WHERE run_id = ?", (*plan.heartbeat, run_id))

    def query_runs(self, q: RunQuery) -> RunPage:
        st = sql_query.statements(q, sql_query.SQLITE, time.time())
        with self._lock:  # the count and the page from one snapshot
            try:
                self._db.execute("BEGIN")
            except sqlite3.Error as exc:
                raise store_error(exc, self.path, "read") from exc
            try:
                rows, total = sql_query.split_page(st, self._read(st.page, st.page_args))
                if total is None:
                    total = self._read(st.count, st.count_args)[0][0]
                runs = self._hydrate(rows)
                latest = self._read(*sql_query.latest_statement(sql_query.SQLITE, [r.run_id for r in runs],
                                                                 q.metrics)) if runs and q.metrics else []
            finally:
                rollback(self._db)
        return sql_query.page_of(runs, latest, total)

    def metric_names(self, experiment: str | None = None) -> list[str]:
        return [r[0] for r in self._read(*sql_query.metric_names_statement(sql_query.SQLITE, experiment))]

    def remove_tags(self, run_id: str, keys: Iterable[str]) -> None:
        with self._write() as db:
            db.executemany("DELETE FROM tags WHERE run_id = ? AND key = ?", [(run_id, k) for k in keys])

    def list_files(self, run_id: str) -> dict[str, FileRecord]:
        return {n: FileRecord(n, d, s, at) for n, d, s, at in self._read(
            "SELECT name, digest, size, at FROM files WHERE run_id = ? ORDER BY name", (run_id,))}

    def append_log(self, run_id: str, name: str, offset: int, data: bytes) -> None:
        if data:
            with self._write() as db:
                # A log only grows: a longer chunk at the same offset (shipped again after a restart) holds the other.
                db.execute("INSERT INTO log_chunks VALUES (?, ?, ?, ?) ON CONFLICT (run_id, name, pos) DO UPDATE SET "
                           "data = excluded.data WHERE length(excluded.data) > length(data)",
                           (run_id, name, offset, data))

    def read_log(self, run_id: str, name: str, offset: int = 0) -> bytes:
        rows = self._read("SELECT pos, data FROM log_chunks WHERE run_id = ? AND name = ? "
                          "AND pos + length(data) > ? ORDER BY pos", (run_id, name, offset))
        return join_log_chunks(((int(pos), bytes(data)) for pos, data in rows), offset)

    def log_names(self, run_id: str) -> list[str]:
        return [r[0] for r in self._read("SELECT DISTINCT name FROM log_chunks WHERE run_id = ? ORDER BY name",
                                         (run_id,))]

    # -- models --------------------------------------------------------------------------------
    def register_model(self, name: str, *, run_id: str | None, path: str, files: list[dict[str, Any]],
                       tags: Mapping[str, str | None] | None = None, properties: Mapping[str, str] | None = None,
                       framework: str | None = None, framework_version: str | None = None,
                       description: str | None = None, created_at: float | None = None) -> ModelRecord:
        with self._write() as db:
            (latest,) = db.execute("SELECT COALESCE(MAX(version), 0) FROM models WHERE name = ?", (name,)).fetchone()
            db.execute(f"INSERT INTO models ({MODEL_COLUMNS}) VALUES ({', '.join('?' * 11)})", (
                name, latest + 1, run_id, path, json.dumps(files), time.time() if created_at is None else created_at,
                json.dumps(dict(tags or {})),
                json.dumps({k: str(v) for k, v in (properties or {}).items()}), framework, framework_version,
                description))
        return self.get_model(name, latest + 1)

    def get_model(self, name: str, version: int | None = None) -> ModelRecord:
        sql = f"SELECT {MODEL_COLUMNS} FROM models WHERE name = ?"
        args: list[Any] = [name]
        if version is not None:
            sql += " AND version = ?"
            args.append(version)
        rows = self._read(sql + " ORDER BY version DESC LIMIT 1", args)
        if not rows:
            which = f"version {version} of model {name!r}" if version is not None else f"model {name!r}"
            raise KeyError(f"no {which} in the model registry {self.path}")
        return model_record(rows[0])

    def list_models(self, name: str | None = None) -> list[ModelRecord]:
        sql = f"SELECT {MODEL_COLUMNS} FROM models"
        rows = self._read(sql + " WHERE name = ? ORDER BY version DESC", (name,)) if name is not None else \
            self._read(sql + " ORDER BY created_at DESC, version DESC")
        return [model_record(r) for r in rows]

    # -- environments ------------------------------------------------------------------------
    def register_environment(self, name: str, definition: dict[str, Any]) -> int:
        with self._write() as db:
            (latest,) = db.execute("SELECT COALESCE(MAX(version), 0) FROM environments WHERE name = ?",
                                   (name,)).fetchone()
            db.execute("INSERT INTO environments VALUES (?, ?, ?, ?)",
                       (name, latest + 1, json.dumps(definition), time.time()))
        return int(latest) + 1

    def get_environment(self, name: str, version: int | None = None) -> tuple[int, dict[str, Any]]:
        sql, args = "SELECT version, definition FROM environments WHERE name = ?", [name]
        if version is not None:
            sql += " AND version = ?"
            args.append(str(version))
        rows = self._read(sql + " ORDER BY version DESC LIMIT 1", args)
        if not rows:
            which = f"version {version} of environment {name!r}" if version else f"environment {name!r}"
            raise KeyError(f"no {which} is registered in {self.path}; register it with env.register(ws)")
        return int(rows[0][0]), dict(json.loads(rows[0][1]))

    def environment_names(self) -> list[str]:
        return [r[0] for r in self._read("SELECT DISTINCT name FROM environments ORDER BY name")]

    # -- snapshots -----------------------------------------------------------------------
    def put_snapshot(self, snapshot_id: str, manifest: list[dict[str, Any]]) -> bool:
        with self._write() as db:
            cur = db.execute("INSERT OR IGNORE INTO snapshots VALUES (?, ?, ?)",
                             (snapshot_id, json.dumps(manifest), time.time()))
            db.execute("UPDATE snapshots SET created_at = ? WHERE snapshot_id = ?", (time.time(), snapshot_id))
            return cur.rowcount > 0

    def get_snapshot(self, snapshot_id: str) -> list[dict[str, Any]]:
        rows = self._read("SELECT manifest FROM snapshots WHERE snapshot_id = ?", (snapshot_id,))
        if not rows:
            raise StoreError(f"no snapshot {snapshot_id!r} in the run history {self.path}")
        return list(json.loads(rows[0][0]))

    def admin(self) -> SqliteAdmin:
        return SqliteAdmin(self)

    def close(self) -> None:
        with self._lock:
            self._db.close()


register_backend("sqlite", SqliteRunStore.from_uri)
