"""The SQLite history under trouble: a writer holding the lock, old and new files, damage, a full disk, a
file deleted or replaced under an open store.

Each test states the failure it guards against; none sleeps: a lock is held by a real second process.
"""

from __future__ import annotations

import os
import random
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from rundock.errors import (
    StoreDamagedError,
    StoreError,
    StoreReplacedError,
    StoreUnavailableError,
    StoreVersionError,
)
from rundock.history.backends import sqlite as sqlite_backend
from rundock.history.backends.sqlite import SqliteRunStore
from rundock.history.backends.sqlite_file import MIGRATIONS, SCHEMA_VERSION, ensure_schema, rollback, store_error

HOLD_LOCK = """
import sqlite3, sys
db = sqlite3.connect(sys.argv[1], isolation_level=None)
db.execute("BEGIN IMMEDIATE")
db.execute("INSERT INTO tags VALUES ('held', 'k', 'v')")
print("locked", flush=True)
sys.stdin.read()  # hold the write lock until the test closes our stdin
db.execute("ROLLBACK")
"""


def _metrics(first: int, count: int) -> list[dict[str, object]]:
    return [{"seq": s, "t": 1.0, "type": "metric", "name": "loss", "kind": "scalar", "value": s / 3}
            for s in range(first, first + count)]


def _user_version(path: Path) -> int:
    db = sqlite3.connect(path)
    try:
        return int(db.execute("PRAGMA user_version").fetchone()[0])
    finally:
        db.close()


@pytest.fixture
def history(tmp_path: Path) -> Path:
    """A history file with one run, closed."""
    path = tmp_path / "history.db"
    store = SqliteRunStore(str(path))
    store.create_run("exp", run_id="exp_1")
    store.close()
    return path


@pytest.fixture
def locked(history: Path) -> Iterator[Path]:
    """The history while another process holds its write lock (a long write transaction)."""
    holder = subprocess.Popen([sys.executable, "-c", HOLD_LOCK, str(history)], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "locked"
        yield history
    finally:
        assert holder.stdin is not None
        holder.stdin.close()
        holder.wait(timeout=30)


# -- 1. readers never take the write lock ------------------------------------------------------------
def test_open_and_read_while_another_process_writes(locked: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # Before: opening ran the schema DDL in BEGIN IMMEDIATE and waited the whole busy timeout, then failed.
    monkeypatch.setattr(sqlite_backend, "BUSY_TIMEOUT_S", 5.0)
    started = time.monotonic()
    store = SqliteRunStore(str(locked))
    try:
        assert store.get_run("exp_1").experiment == "exp"
        assert [r.run_id for r in store.list_runs()] == ["exp_1"]
        assert store.status_history("exp_1")
        assert time.monotonic() - started < 2.0
    finally:
        store.close()


def test_a_write_blocked_past_the_timeout_is_transient(locked: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sqlite_backend, "BUSY_TIMEOUT_S", 0.2)
    store = SqliteRunStore(str(locked))
    try:
        with pytest.raises(StoreUnavailableError, match="database is locked") as caught:
            store.create_run("exp")
        assert str(locked) in str(caught.value)
    finally:
        store.close()


# -- 2. schema versions --------------------------------------------------------------------------------
def test_a_new_history_gets_the_current_version(history: Path) -> None:
    assert _user_version(history) == SCHEMA_VERSION == len(MIGRATIONS)


def test_a_history_from_before_versions_is_recognised_and_stamped(history: Path) -> None:
    db = sqlite3.connect(history)
    db.execute("ALTER TABLE runs DROP COLUMN archived")  # the tables of version 1 (version 2 added the column)
    db.execute("PRAGMA user_version = 0")  # what every history made before versions looks like
    db.close()
    store = SqliteRunStore(str(history))
    try:
        assert store.get_run("exp_1").number == 1 and not store.get_run("exp_1").archived
    finally:
        store.close()
    assert _user_version(history) == SCHEMA_VERSION  # taken for version 1, then migrated and stamped


def test_a_history_from_a_newer_rundock_is_refused(history: Path) -> None:
    db = sqlite3.connect(history)
    db.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    db.close()
    with pytest.raises(StoreVersionError) as caught:
        SqliteRunStore(str(history))
    message = str(caught.value)
    assert str(history) in message and "upgrade rundock" in message
    assert f"version {SCHEMA_VERSION + 1}" in message and f"({SCHEMA_VERSION})" in message
    assert _user_version(history) == SCHEMA_VERSION + 1  # left as it was


def test_migrations_run_in_order_once(history: Path) -> None:
    later = (*MIGRATIONS, ("ALTER TABLE runs ADD COLUMN note TEXT", "UPDATE runs SET note = 'v2'"),
             ("UPDATE runs SET note = note || '+v3'",))
    n = len(MIGRATIONS)
    db = sqlite3.connect(history, isolation_level=None)
    try:
        assert ensure_schema(db, str(history), later[:n + 1]) == n + 1
        assert ensure_schema(db, str(history), later) == n + 2
        assert ensure_schema(db, str(history), later) == n + 2  # current: nothing runs again
        assert db.execute("SELECT note FROM runs").fetchall() == [("v2+v3",)]
        assert db.execute("PRAGMA user_version").fetchone() == (n + 2,)
    finally:
        db.close()


# -- 3. damage ---------------------------------------------------------------------------------------------
def test_a_file_of_random_bytes_names_the_file_and_doctor(tmp_path: Path) -> None:
    path = tmp_path / "history.db"
    path.write_bytes(random.Random(1).randbytes(16384))
    with pytest.raises(StoreDamagedError) as caught:
        SqliteRunStore(str(path))
    assert str(path) in str(caught.value) and "rundock doctor" in str(caught.value)


def test_a_file_damaged_in_the_middle_names_the_file_and_doctor(tmp_path: Path) -> None:
    path = tmp_path / "history.db"
    store = SqliteRunStore(str(path))
    for i in range(300):
        store.create_run("exp", run_definition={"padding": "x" * 1000, "i": i})
    store.close()
    size = path.stat().st_size
    with open(path, "r+b") as fh:  # pages in the middle of the runs table become noise
        fh.seek(size // 4)
        fh.write(random.Random(2).randbytes(size // 2))
    with pytest.raises(StoreDamagedError) as caught:
        SqliteRunStore(str(path)).list_runs()
    assert str(path) in str(caught.value) and "rundock doctor" in str(caught.value)
    assert isinstance(caught.value.__cause__, sqlite3.DatabaseError)


# -- 4. a failed write raises what SQLite said, not what a failed ROLLBACK said ----------------------------------
def test_a_full_disk_raises_the_real_error_and_leaves_the_store_usable(history: Path) -> None:
    store = SqliteRunStore(str(history))
    try:
        (pages,) = store._db.execute("PRAGMA page_count").fetchone()  # the file may not grow: SQLITE_FULL
        store._db.execute(f"PRAGMA max_page_count = {pages}")
        with pytest.raises(StoreUnavailableError, match="database or disk is full") as caught:
            store.apply_journal("exp_1", 0, "job", _metrics(1, 5000))
        assert str(history) in str(caught.value)
        assert store.journal_mark("exp_1", 0, "job") == 0  # nothing half applied
        store._db.execute("PRAGMA max_page_count = 1073741823")
        assert store.apply_journal("exp_1", 0, "job", _metrics(1, 5000)) == 5000
        assert len(store.get_metric_records("exp_1")) == 5000
    finally:
        store.close()


def test_rollback_never_raises(tmp_path: Path) -> None:
    db = sqlite3.connect(tmp_path / "x.db", isolation_level=None)
    rollback(db)  # no transaction: a bare ROLLBACK would raise "no transaction is active"
    db.execute("BEGIN")
    rollback(db)
    assert not db.in_transaction
    db.close()


# -- 5. a file deleted or replaced under an open store ----------------------------------------------------------
def test_a_deleted_history_is_noticed_before_writing(history: Path) -> None:
    store = SqliteRunStore(str(history))
    try:
        for suffix in ("", "-wal", "-shm"):
            Path(f"{history}{suffix}").unlink(missing_ok=True)
        with pytest.raises(StoreReplacedError, match="deleted or replaced while this process had it open") as caught:
            store.create_run("exp")
        assert str(history) in str(caught.value)
    finally:
        store.close()


def test_a_replaced_history_is_noticed_before_writing(history: Path, tmp_path: Path) -> None:
    store = SqliteRunStore(str(history))
    other = tmp_path / "other.db"
    SqliteRunStore(str(other)).close()
    try:
        os.replace(other, history)
        with pytest.raises(StoreReplacedError):
            store.transition("exp_1", "Starting")
    finally:
        store.close()
    reopened = SqliteRunStore(str(history))  # the new file, as a new store sees it
    try:
        assert reopened.list_runs() == []
    finally:
        reopened.close()


# -- 6. what an error means --------------------------------------------------------------------------------------
@pytest.mark.parametrize(("message", "kind"), [
    ("database is locked", StoreUnavailableError),
    ("database or disk is full", StoreUnavailableError),
    ("attempt to write a readonly database", StoreUnavailableError),
    ("disk I/O error", StoreUnavailableError),
    ("database disk image is malformed", StoreDamagedError),
    ("file is not a database", StoreDamagedError),
    ("no such table: runs", StoreError),
])
def test_errors_are_told_apart_by_message_where_python_gives_no_code(message: str, kind: type[StoreError]) -> None:
    # Python < 3.11 (job side, remote hosts) has no sqlite_errorcode: the message decides.
    error = store_error(sqlite3.OperationalError(message), "/h/history.db", "write")
    assert type(error) is kind
    assert "/h/history.db" in str(error) and message in str(error)
