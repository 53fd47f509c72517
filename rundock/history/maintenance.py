"""Check, repair and back up an SQLite run history (``rundock doctor``, ``rundock backup``).

``check`` only reads: it never migrates, never takes the write lock, and
reports a damaged or newer file instead of raising.

``repair`` rebuilds a damaged (or missing) history, in this order, so that a
crash at any point loses nothing:

1. the damaged file (and its WAL) is copied to ``<file>.damaged-<UTC time>``;
2. a fresh history is made beside it, and every table is salvaged row by row
   from a scratch copy of the damaged one: each table is read forwards until
   SQLite can read no further, then backwards from the end, so the rows on
   both sides of a damaged page survive; unreadable tables are skipped;
3. the run directories' journals are replayed through ``Syncer`` (so through
   ``apply_journal``, idempotent by run, attempt, source and sequence number);
   a run missing from the salvaged rows is first recreated from its
   ``job.json``. When the ``runs``, ``metrics`` or ``journal_marks`` table
   could be read only in part, the salvaged marks and metrics of the runs
   that have a journal are dropped and their journals replayed from the
   start: a mark without its metrics would hide them for good, metrics without
   their mark would come back twice. Metrics such a run got from outside its
   job (``Run.log`` on the client) are then lost;
4. the new file replaces the damaged one (its stale WAL removed first).

Stop agents and running jobs first: a process that has the old file open
notices the replacement on its next write (StoreReplacedError) and does not
write to the new one. Artifacts are content addressed and left as they are.

``backup`` copies a live history with SQLite's online backup API in one step:
one read transaction, so the copy is consistent, and under WAL writers go on
while it is taken. The copy is a single self-contained file (no WAL).
"""

from __future__ import annotations

import dataclasses
import glob
import json
import os
import shutil
import sqlite3
import time
from collections.abc import Iterable, Iterator, Sequence
from typing import Any

from rundock.context import rundir
from rundock.errors import StoreError, StoreVersionError
from rundock.history.artifacts import ArtifactStore
from rundock.history.backends.sqlite import BUSY_TIMEOUT_S, SqliteRunStore
from rundock.history.backends.sqlite_file import REFILL_LATEST, SCHEMA_VERSION, file_version, store_error
from rundock.history.sync import Syncer

_SIDE_FILES = ("-wal", "-shm")
_BATCH = 1000
_COUNTED = ("runs", "experiments", "metrics", "models")


@dataclasses.dataclass
class Health:
    """What ``check`` found in one history file."""

    path: str
    exists: bool
    size: int = 0
    version: int | None = None  # None: unreadable
    problems: list[str] = dataclasses.field(default_factory=list)
    counts: dict[str, int] = dataclasses.field(default_factory=dict)

    @property
    def newer(self) -> bool:
        """Written by a newer rundock: not damage, but nothing this one may repair."""
        return self.version is not None and self.version > SCHEMA_VERSION

    @property
    def ok(self) -> bool:
        return not self.problems and not self.newer


@dataclasses.dataclass
class RepairReport:
    """What ``repair`` kept and rebuilt."""

    path: str
    backup: str | None
    salvaged: dict[str, int] = dataclasses.field(default_factory=dict)  # rows per table
    incomplete: list[str] = dataclasses.field(default_factory=list)  # tables read in part or not at all
    replayed: int = 0  # runs whose journals were replayed
    recreated: int = 0  # runs made again from their job.json
    skipped: list[str] = dataclasses.field(default_factory=list)  # "<run dir>: <why>"


@dataclasses.dataclass
class Backup:
    path: str
    size: int


def check(path: str) -> Health:
    """Integrity, schema version and row counts of the history at ``path``."""
    health = Health(path=os.path.abspath(path), exists=os.path.exists(path))
    if not health.exists:
        return health
    health.size = os.path.getsize(path)
    try:
        db = sqlite3.connect(health.path, timeout=BUSY_TIMEOUT_S, isolation_level=None)
    except sqlite3.Error as exc:
        health.problems.append(str(exc))
        return health
    try:
        health.version = file_version(db)
        if health.newer:
            return health
        found = [row[0] for row in db.execute("PRAGMA integrity_check(20)")]
        if found != ["ok"]:
            health.problems.extend(found)
        for table in _COUNTED:
            health.counts[table] = int(db.execute(f"SELECT COUNT(*) FROM {table}").fetchone()[0])
    except sqlite3.Error as exc:
        health.problems.append(str(exc))
    finally:
        db.close()
    return health


def run_dirs(workspace_path: str) -> list[str]:
    """The run directories of a workspace: local runs and the mirrors of remote ones."""
    found = glob.glob(os.path.join(workspace_path, "local", "runs", "*")) + \
        glob.glob(os.path.join(workspace_path, "remote", "*", "runs", "*"))
    return sorted(d for d in found if os.path.isdir(d))


def repair(path: str, dirs: Sequence[str], artifacts_root: str, now: float | None = None) -> RepairReport:
    """Rebuild the history at ``path`` from what can be read of it and from the journals in ``dirs``."""
    path = os.path.abspath(path)
    version = _readable_version(path)
    if version is not None and version > SCHEMA_VERSION:
        raise StoreVersionError(f"the run history {path} has schema version {version}, newer than this "
                                f"rundock's ({SCHEMA_VERSION}); upgrade rundock instead of repairing it")
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(now))
    report = RepairReport(path=path, backup=_keep_damaged(path, stamp))
    fresh = f"{path}.rebuild-{stamp}"
    scratch = f"{path}.salvage-{stamp}"
    for leftover in (fresh, scratch):
        _remove(leftover)
    try:
        _rebuild(fresh, scratch, dirs, artifacts_root, report)
    except BaseException:
        _remove(fresh)
        raise
    for suffix in _SIDE_FILES:  # a stale WAL beside the new file would be replayed into it
        _remove_file(path + suffix)
    os.replace(fresh, path)
    return report


def _rebuild(fresh: str, scratch: str, dirs: Sequence[str], artifacts_root: str, report: RepairReport) -> None:
    """Make the new history at ``fresh``: salvaged rows, then the journals replayed on top."""
    SqliteRunStore(fresh).close()  # the current schema, empty
    db = sqlite3.connect(fresh, timeout=BUSY_TIMEOUT_S, isolation_level=None)
    try:
        if report.backup is not None:
            _copy(report.backup, scratch)
            try:
                _salvage(scratch, db, report)
            finally:
                _remove(scratch)
        journaled = {os.path.basename(d) for d in dirs
                     if any(os.path.isdir(os.path.join(d, j)) for j in (rundir.JOURNAL_DIR, rundir.AGENT_JOURNAL_DIR))}
        if {"runs", "metrics", "journal_marks"} & set(report.incomplete):
            _forget_marks(db, journaled)
        store = SqliteRunStore(fresh)
        try:
            submitted = _replay(store, dirs, artifacts_root, report)
        finally:
            store.close()
        db.executemany("UPDATE runs SET created_at = ? WHERE run_id = ?", [(t, r) for r, t in submitted.items()])
        for statement in REFILL_LATEST:  # the runs table's latest values, from the metrics kept and replayed
            db.execute(statement)
        # One self-contained file, so that moving it moves everything; the next open turns WAL on again.
        if db.execute("PRAGMA journal_mode = DELETE").fetchone()[0] != "delete":
            raise StoreError(f"could not finish the rebuilt history {fresh}: another process has it open")
    finally:
        db.close()


def _readable_version(path: str) -> int | None:
    """The file's schema version, if SQLite can read that much of it."""
    if not os.path.exists(path):
        return None
    try:
        db = sqlite3.connect(path, timeout=BUSY_TIMEOUT_S)
        try:
            return file_version(db)
        finally:
            db.close()
    except sqlite3.Error:
        return None


def _keep_damaged(path: str, stamp: str) -> str | None:
    """Copy the damaged file (and its WAL) aside; return the copy's path (None when there is no file)."""
    if not os.path.exists(path):
        return None
    kept, n = f"{path}.damaged-{stamp}", 1
    while os.path.exists(kept):
        kept, n = f"{path}.damaged-{stamp}-{n}", n + 1
    _copy(path, kept)
    return kept


def _salvage(source: str, db: sqlite3.Connection, report: RepairReport) -> None:
    """Copy every row SQLite can still read from ``source`` into the fresh history ``db``."""
    tables = [r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type = 'table' "
                                       "AND name NOT LIKE 'sqlite_%' ORDER BY rowid")]
    try:
        damaged = sqlite3.connect(source, isolation_level=None)
    except sqlite3.Error:
        report.incomplete.extend(tables)
        return
    try:
        db.execute("BEGIN IMMEDIATE")
        for table in tables:
            rows, complete = _salvage_table(damaged, db, table)
            report.salvaged[table] = rows
            if not complete:
                report.incomplete.append(table)
        # Run numbers go on from the highest kept, even when the experiments table was lost.
        db.execute("INSERT INTO experiments SELECT experiment, MAX(number) FROM runs WHERE true GROUP BY experiment "
                   "ON CONFLICT (name) DO UPDATE SET last_number = MAX(last_number, excluded.last_number)")
        db.execute("COMMIT")
    finally:
        damaged.close()


def _salvage_table(damaged: sqlite3.Connection, db: sqlite3.Connection, table: str) -> tuple[int, bool]:
    """Rows copied from ``table`` and whether all of it could be read."""
    wanted = [r[1] for r in db.execute(f"PRAGMA table_info({table})")]
    stopped: list[bool] = []
    present = {r[1] for r in _rows(damaged, f"PRAGMA table_info({table})", (), stopped)}
    columns = [c for c in wanted if c in present]
    if not columns:
        return 0, False
    names = ", ".join(columns)
    insert = f"INSERT OR IGNORE INTO {table} ({names}) VALUES ({', '.join('?' * len(columns))})"
    select = f"SELECT rowid, {names} FROM {table}"
    copied, last = 0, None
    batch: list[tuple[Any, ...]] = []
    for row in _rows(damaged, select + " ORDER BY rowid", (), stopped):
        last = row[0]
        batch.append(row[1:])
        if len(batch) >= _BATCH:
            copied += _insert(db, insert, batch)
    copied += _insert(db, insert, batch)
    if not stopped:
        return copied, True
    # Stopped by damage: read the rest from the other end, back down to the damage.
    after, args = (" WHERE rowid > ?", (last,)) if last is not None else ("", ())
    for row in _rows(damaged, f"{select}{after} ORDER BY rowid DESC", args, stopped):
        batch.append(row[1:])
        if len(batch) >= _BATCH:
            copied += _insert(db, insert, batch)
    return copied + _insert(db, insert, batch), False


def _rows(damaged: sqlite3.Connection, sql: str, args: tuple[Any, ...],
          stopped: list[bool]) -> Iterator[tuple[Any, ...]]:
    """The rows of ``sql`` up to the first SQLite cannot read; then ``stopped`` gets an entry.

    Only reading is guarded: an error writing the new file is not damage of the old one.
    """
    try:
        cursor = damaged.execute(sql, args)
        while True:
            row = cursor.fetchone()
            if row is None:
                return
            yield tuple(row)
    except sqlite3.DatabaseError:
        stopped.append(True)


def _insert(db: sqlite3.Connection, insert: str, batch: list[tuple[Any, ...]]) -> int:
    db.executemany(insert, batch)
    count = len(batch)
    batch.clear()
    return count


def _forget_marks(db: sqlite3.Connection, journaled: Iterable[str]) -> None:
    """Drop the marks and metrics of runs whose journals will be replayed from the start.

    Those are the runs with a journal, their descendants, and runs missing from
    the ``runs`` table (a child whose row was lost comes back from its parent's
    journal).
    """
    db.execute("CREATE TEMP TABLE replay (run_id TEXT PRIMARY KEY)")
    db.executemany("INSERT OR IGNORE INTO replay VALUES (?)", [(r,) for r in journaled])
    while db.execute("INSERT OR IGNORE INTO replay SELECT run_id FROM runs WHERE parent_id IN "
                     "(SELECT run_id FROM replay)").rowcount > 0:
        pass
    db.execute("INSERT OR IGNORE INTO replay SELECT DISTINCT run_id FROM journal_marks "
               "WHERE run_id NOT IN (SELECT run_id FROM runs)")
    db.execute("INSERT OR IGNORE INTO replay SELECT DISTINCT run_id FROM metrics "
               "WHERE run_id NOT IN (SELECT run_id FROM runs)")
    for table in ("journal_marks", "metrics"):
        db.execute(f"DELETE FROM {table} WHERE run_id IN (SELECT run_id FROM replay)")
    db.execute("DROP TABLE replay")


def _replay(store: SqliteRunStore, dirs: Sequence[str], artifacts_root: str,
            report: RepairReport) -> dict[str, float]:
    """Replay every run directory's journal; return the submit times of the runs recreated."""
    artifacts = ArtifactStore(artifacts_root)
    known = {r.run_id for r in store.list_runs()}
    submitted: dict[str, float] = {}
    for run_dir in dirs:
        run_id = os.path.basename(run_dir)
        job = _job(run_dir)
        try:
            if run_id not in known:
                if job is None:
                    report.skipped.append(f"{run_dir}: not in the history and no readable job.json")
                    continue
                snapshot = job.get("snapshot_id") or None
                store.create_run(str(job.get("experiment") or "recovered"), run_id=run_id,
                                 target=str(job.get("target") or "local"), snapshot_id=snapshot,
                                 display_name=job.get("display_name"), run_dir=run_dir,
                                 properties={"ContentSnapshotId": snapshot} if snapshot else None)
                report.recreated += 1
                if job.get("submitted_at"):
                    submitted[run_id] = float(job["submitted_at"])
            syncer = Syncer(run_dir, run_id, store, artifacts, int((job or {}).get("attempt") or 0))
            syncer.sync_once()
            syncer.sync_once()  # records of children whose creating record came later in another file
            report.replayed += 1
        except (StoreError, KeyError, ValueError, TypeError) as exc:
            report.skipped.append(f"{run_dir}: {exc}")
    return submitted


def _job(run_dir: str) -> dict[str, Any] | None:
    try:
        with open(os.path.join(run_dir, rundir.JOB_FILE), encoding="utf-8") as fh:
            data = json.load(fh)
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def backup(path: str, dest: str, *, overwrite: bool = False) -> Backup:
    """Copy the live history at ``path`` to ``dest`` (a file, or a folder to put ``history-<time>.db`` in)."""
    path = os.path.abspath(path)
    if not os.path.exists(path):
        raise StoreError(f"there is no run history at {path}")
    if os.path.isdir(dest):
        dest = os.path.join(dest, time.strftime("history-%Y%m%dT%H%M%SZ.db", time.gmtime()))
    dest = os.path.abspath(dest)
    if os.path.exists(dest) and not overwrite:
        raise StoreError(f"{dest} exists; choose another name or overwrite it with --force")
    partial = dest + ".partial"
    _remove(partial)
    try:
        src = sqlite3.connect(path, timeout=BUSY_TIMEOUT_S, isolation_level=None)
        try:
            copy = sqlite3.connect(partial, isolation_level=None)
            try:
                src.backup(copy)  # all pages in one step: one consistent read transaction
                copy.execute("PRAGMA journal_mode = DELETE")
            finally:
                copy.close()
        finally:
            src.close()
    except sqlite3.Error as exc:
        _remove(partial)
        raise store_error(exc, path, "back up") from exc
    os.replace(partial, dest)
    return Backup(dest, os.path.getsize(dest))


def _copy(path: str, to: str) -> None:
    """Copy an SQLite file and its WAL (the WAL holds committed writes not yet in the file)."""
    shutil.copyfile(path, to)
    if os.path.exists(path + "-wal"):
        shutil.copyfile(path + "-wal", to + "-wal")


def _remove(path: str) -> None:
    """Remove an SQLite file of this module's own making, with its side files."""
    for suffix in ("", *_SIDE_FILES):
        _remove_file(path + suffix)


def _remove_file(path: str) -> None:
    try:
        os.remove(path)
    except FileNotFoundError:
        pass
