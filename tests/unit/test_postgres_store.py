"""The PostgreSQL history under trouble: schema versions, writers at the same time, a lock held by someone
else, a value it cannot hold, a server that cannot be reached or restarts in the middle of a run.

What every backend must do is in tests/contract; these are the failures particular to a database server.
Each test gets a schema of its own (tests/pg.py); locks are held by a real second connection, never faked.
"""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import psycopg
import pytest

from rundock.errors import StoreError, StoreUnavailableError, StoreVersionError
from rundock.history.backends import postgres_schema
from rundock.history.backends.postgres import PostgresRunStore, migrate
from rundock.history.store import open_store
from rundock.states import RunStatus
from tests import pg
from tests.conftest import require_service

RESTART = os.environ.get("RUNDOCK_TEST_POSTGRES_RESTART", "pg_ctlcluster 15 main restart")


def _metrics(first: int, count: int, name: str = "loss") -> list[dict[str, Any]]:
    return [{"seq": s, "t": 1.0, "type": "metric", "name": name, "kind": "scalar", "value": s}
            for s in range(first, first + count)]


@pytest.fixture
def uri() -> Iterator[str]:
    with pg.fresh_schema() as made:
        yield made


@pytest.fixture
def store(uri: str) -> Iterator[PostgresRunStore]:
    opened = PostgresRunStore(uri)
    yield opened
    opened.close()


def _start(targets: Sequence[Callable[[], object]]) -> Callable[[], None]:
    """Start the targets at once; return what waits for them and fails if one raised or is still running after
    two minutes (a deadlock)."""
    errors: list[BaseException] = []

    def guarded(target: Callable[[], object]) -> None:
        try:
            target()
        except BaseException as exc:  # reported by finish(), in the test's thread
            errors.append(exc)

    threads = [threading.Thread(target=guarded, args=(t,), daemon=True) for t in targets]
    for t in threads:
        t.start()

    def finish() -> None:
        for t in threads:
            t.join(120)
        assert not [t for t in threads if t.is_alive()], "writers still running after 120 s: a deadlock?"
        if errors:
            raise errors[0]

    return finish


# -- schema versions ----------------------------------------------------------------------------------------
_EXTRA: postgres_schema.Migration = ("CREATE TABLE added_later (x INTEGER)",)


def test_an_empty_schema_is_created_on_open_and_migrate_is_idempotent(uri: str) -> None:
    with PostgresRunStore(uri) as store:
        assert store.create_run("e").number == 1
    assert migrate(uri) == (postgres_schema.SCHEMA_VERSION, postgres_schema.SCHEMA_VERSION)
    with psycopg.connect(uri, autocommit=True) as conn:
        assert postgres_schema.schema_version(conn) == postgres_schema.SCHEMA_VERSION
    with pg.fresh_schema() as other:
        assert migrate(other) == (0, postgres_schema.SCHEMA_VERSION)  # `rundock server init`


def test_an_older_schema_is_refused_until_upgraded_and_a_newer_one_always(uri: str) -> None:
    migrate(uri)
    newer_code = (*postgres_schema.MIGRATIONS, _EXTRA)
    now = postgres_schema.SCHEMA_VERSION
    with psycopg.connect(uri, autocommit=True) as conn:
        with pytest.raises(StoreVersionError, match="older than this rundock's.*rundock server upgrade"):
            postgres_schema.check_schema(conn, "the-history", newer_code)
        assert postgres_schema.migrate(conn, "the-history", newer_code) == (now, now + 1)  # the upgrade
        assert postgres_schema.check_schema(conn, "the-history", newer_code) == now + 1
        conn.execute("SELECT x FROM added_later")
    with pytest.raises(StoreVersionError, match=f"version {now + 1}, newer than this rundock's"):
        PostgresRunStore(uri)  # this code is one version behind: it refuses the schema a newer rundock wrote


def test_a_failed_upgrade_leaves_the_previous_version_whole(uri: str) -> None:
    migrate(uri)
    broken = (*postgres_schema.MIGRATIONS, ("CREATE TABLE half_made (x INTEGER)", "SELECT no_such_function()"))
    with psycopg.connect(uri, autocommit=True) as conn:
        with pytest.raises(psycopg.errors.UndefinedFunction):
            postgres_schema.migrate(conn, "the-history", broken)
        assert postgres_schema.schema_version(conn) == postgres_schema.SCHEMA_VERSION
        assert conn.execute("SELECT to_regclass('half_made')").fetchone() == (None,)
    with PostgresRunStore(uri) as store:
        store.create_run("e")


# -- writers at the same time ------------------------------------------------------------------------------
def test_concurrent_writers_apply_every_value_exactly_once(store: PostgresRunStore) -> None:
    """4 threads write to 4 runs; 3 write to one run: two sources, and one source shipped twice at once (a
    replayed shipper). Each batch repeats the end of the one before. Every value lands once, in order."""
    runs = [store.create_run("e").run_id for _ in range(4)]
    shared = store.create_run("e").run_id
    batches, size, overlap = 15, 200, 50

    def shipper(run_id: str, source: str) -> Callable[[], None]:
        def ship() -> None:
            for b in range(batches):
                first = max(1, b * size + 1 - overlap)
                last = (b + 1) * size
                recs = _metrics(first, last - first, name=f"loss-{source}")
                recs.append({"seq": last, "t": float(b), "type": "tags", "values": {source: str(b), "any": source}})
                assert store.apply_journal(run_id, 0, source, recs) >= last
                store.heartbeat(run_id, 1.0)
        return ship

    _start([shipper(r, "job") for r in runs] + [shipper(shared, "job-a"), shipper(shared, "job-b"),
                                                shipper(shared, "job-a")])()
    values = list(range(1, batches * size))  # the last seq of each batch is a tags record
    expected = [v for v in values if v % size]
    for run_id, source in [(r, "job") for r in runs] + [(shared, "job-a"), (shared, "job-b")]:
        assert [m.value for m in store.get_metric_records(run_id, f"loss-{source}")] == expected
        assert store.journal_mark(run_id, 0, source) == batches * size
    tags = store.get_run(shared).tags
    assert tags["job-a"] == tags["job-b"] == str(batches - 1) and tags["any"] in ("job-a", "job-b")
    assert store.get_run(shared).last_heartbeat is not None


def test_a_child_created_by_two_writers_at_once_is_created_once(uri: str) -> None:
    """Both writers find the child missing and wait (a third client holds the experiment's row); when it lets
    go, the first creates the child and the second sees it made."""
    name = f"child-race-{os.getpid()}"
    with PostgresRunStore(f"{uri}&application_name={name}") as store:
        parent = store.create_run("e").run_id
        child = f"{parent}_child"

        def creator(source: str) -> Callable[[], object]:
            return lambda: store.apply_journal(child, 0, source, [
                {"seq": 1, "t": 5.0, "type": "child", "run": child, "parent": parent, "name": "c"}, *_metrics(2, 3)])

        with psycopg.connect(uri) as blocker:
            blocker.execute("SELECT 1 FROM experiments WHERE name = 'e' FOR UPDATE")
            finish = _start([creator("job-1"), creator("job-2")])
            _wait_for_waiters(name, 2)
            blocker.rollback()
        finish()
        [made] = store.list_runs(parent_id=parent)
        assert (made.run_id, made.number, made.status) == (child, 2, RunStatus.RUNNING)
        assert len(store.get_metric_records(child)) == 6  # both sources' values, once each
        assert store.journal_mark(child, 0, "job-1") == store.journal_mark(child, 0, "job-2") == 4
        assert store.create_run("e").number == 3


def _wait_for_waiters(application_name: str, count: int) -> None:
    """Return once ``count`` sessions of ``application_name`` wait for a lock."""
    deadline = time.monotonic() + 30
    with pg.admin_connection() as conn:  # autocommit: each query sees the sessions as they are now
        while time.monotonic() < deadline:
            row = conn.execute("SELECT count(*) FROM pg_stat_activity WHERE application_name = %s "
                               "AND wait_event_type = 'Lock'", (application_name,)).fetchone()
            if row and row[0] >= count:
                return
            time.sleep(0.01)
    pytest.fail(f"{count} sessions of {application_name} never waited for a lock")


def test_a_writer_waiting_for_one_run_does_not_hold_up_the_others(store: PostgresRunStore, uri: str) -> None:
    held, free = store.create_run("e").run_id, store.create_run("e").run_id
    moved: list[bool] = []
    with psycopg.connect(uri) as blocker:  # another client holds the row of `held` in an open transaction
        blocker.execute("SELECT 1 FROM runs WHERE run_id = %s FOR UPDATE", (held,))
        waiting = threading.Thread(target=lambda: moved.append(store.transition(held, RunStatus.RUNNING)))
        waiting.start()
        started = time.monotonic()
        store.apply_journal(free, 0, "agent", [{"seq": 1, "t": 1.0, "type": "state", "status": "Running"},
                                               *_metrics(2, 1000)])
        assert time.monotonic() - started < 10 and waiting.is_alive() and not moved
        blocker.rollback()
    waiting.join(30)
    assert moved == [True] and store.get_run(free).status == RunStatus.RUNNING


# -- what cannot be done ---------------------------------------------------------------------------------------
def test_a_lock_held_too_long_times_out_instead_of_hanging(uri: str) -> None:
    with PostgresRunStore(uri.replace("options=", "options=-cstatement_timeout%3D300%20", 1)) as store:
        run = store.create_run("e").run_id
        with psycopg.connect(uri) as blocker:
            blocker.execute("SELECT 1 FROM runs WHERE run_id = %s FOR UPDATE", (run,))
            started = time.monotonic()
            with pytest.raises(StoreUnavailableError, match="timeout"):
                store.transition(run, RunStatus.RUNNING)
            assert time.monotonic() - started < 10
        assert store.transition(run, RunStatus.RUNNING)  # the store goes on working


def test_a_value_postgresql_cannot_hold_is_refused_without_applying_the_batch(store: PostgresRunStore) -> None:
    """A NUL character in a name is a ValueError (not a StoreError), so the syncer sets that one record aside
    instead of retrying the batch forever; nothing of the batch is applied."""
    run = store.create_run("e").run_id
    with pytest.raises(ValueError, match="refused a value") as info:
        store.apply_journal(run, 0, "job", [*_metrics(1, 2), *_metrics(3, 1, name="bad\x00name")])
    assert not isinstance(info.value, StoreError)
    assert store.journal_mark(run, 0, "job") == 0 and store.get_metric_records(run) == []
    assert store.apply_journal(run, 0, "job", _metrics(1, 2)) == 2


def test_connections_the_server_closed_are_replaced_without_the_caller_noticing(uri: str) -> None:
    """What a restart does to idle connections, done to this store's only: the next calls still work."""
    name = f"killed-{os.getpid()}"
    with PostgresRunStore(f"{uri}&application_name={name}", pool_size=2) as store:
        run = store.create_run("e").run_id
        def ship(source: str) -> Callable[[], object]:
            return lambda: store.apply_journal(run, 0, source, _metrics(1, 10))

        _start([ship("job-1"), ship("job-2")])()  # two connections in the pool, idle now
        with pg.admin_connection() as admin:
            killed = admin.execute("SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
                                   "WHERE application_name = %s", (name,)).fetchone()
        assert killed and killed[0] >= 1
        assert store.apply_journal(run, 0, "job-1", _metrics(11, 10)) == 20
        assert store.transition(run, RunStatus.RUNNING)  # not repeatable, but it broke before COMMIT: run again
        assert len(store.get_metric_records(run)) == 30


def test_an_unreachable_server_is_a_store_error_at_once() -> None:
    started = time.monotonic()
    with pytest.raises(StoreError, match=r"postgresql://root@127\.0\.0\.1:1/x.*(refused|failed)") as info:
        open_store("postgresql://root:hunter2@127.0.0.1:1/x")
    assert time.monotonic() - started < 5 and "hunter2" not in str(info.value)


@pytest.mark.integration
def test_a_server_restart_in_the_middle_loses_and_doubles_nothing(store: PostgresRunStore, tmp_path: Path) -> None:
    """``RUNDOCK_TEST_POSTGRES_RESTART`` (default: the CI cluster's ``pg_ctlcluster 15 main restart``) restarts
    the server while a writer ships batches; the writer retries a batch only when the store says it could not
    apply it (what the syncer does)."""
    if shutil.which(shlex.split(RESTART)[0]) is None:
        require_service("POSTGRES", f"cannot restart the test server: {shlex.split(RESTART)[0]} is not installed")
    run = store.create_run("e").run_id
    refused: list[StoreError] = []
    restarted = threading.Event()
    marks = [0]

    def writer() -> None:
        after_restart = 0
        while after_restart < 30:
            try:
                marks[0] = store.apply_journal(run, 0, "job", _metrics(marks[0] + 1, 100))
            except StoreUnavailableError as exc:
                refused.append(exc)
            if restarted.is_set():
                after_restart += 1

    thread = threading.Thread(target=writer, daemon=True)
    thread.start()
    deadline = time.monotonic() + 60
    while marks[0] < 3000 and time.monotonic() < deadline:
        time.sleep(0.01)
    with open(tmp_path / "restart.log", "wb") as log:  # not a pipe: the restarted server may keep it open
        done = subprocess.run(shlex.split(RESTART), stdout=log, stderr=subprocess.STDOUT, timeout=120)
    assert done.returncode == 0, f"{RESTART} failed: {(tmp_path / 'restart.log').read_text()}"
    restarted.set()
    thread.join(120)
    assert not thread.is_alive()
    assert len(refused) <= 1, f"the writer saw {len(refused)} failed calls: {refused}"
    assert [m.value for m in store.get_metric_records(run)] == list(range(1, marks[0] + 1))
    assert store.journal_mark(run, 0, "job") == marks[0]
