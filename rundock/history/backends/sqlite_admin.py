"""Housekeeping of the SQLite run history: archive, delete, prune snapshots, list blob references.

``SqliteAdmin`` is what ``SqliteRunStore.admin()`` hands out (the ``StoreAdmin`` of this backend). Every
change is one ``BEGIN IMMEDIATE`` transaction of the store it serves, so it happens whole or not at all and
sees the runs as they are at that moment: the family of a run (its descendants) is gathered inside the
same transaction that changes it, so a child added by another process just before is included.

A snapshot's ``created_at`` holds when it was last stored: ``put_snapshot`` sets it again for a snapshot
it already has, so that ``prune_snapshots`` keeps one that a submit is storing again right now.

Long lists of ids are sent in chunks: SQLite limits the number of parameters of a statement (999 before
SQLite 3.32).
"""

from __future__ import annotations

import json
from collections.abc import Collection, Iterable, Iterator, Sequence
from typing import TYPE_CHECKING

from rundock.errors import RunNotFoundError
from rundock.history.store import StoreAdmin

if TYPE_CHECKING:
    import sqlite3

    from rundock.history.backends.sqlite import SqliteRunStore

_CHUNK = 500
# Every table that holds rows of a run, by its ``run_id`` column (the runs table last).
RUN_TABLES = ("status_history", "tags", "properties", "metrics", "files", "log_chunks", "journal_marks", "runs")
_UNUSED = ("FROM snapshots WHERE created_at < ? AND snapshot_id NOT IN "
           "(SELECT snapshot_id FROM runs WHERE snapshot_id IS NOT NULL)")


def _chunks(items: Sequence[str]) -> Iterator[tuple[Sequence[str], str]]:
    """``items`` in slices short enough for one statement, each with its ``?, ?, ...`` placeholders."""
    for start in range(0, len(items), _CHUNK):
        part = items[start:start + _CHUNK]
        yield part, ", ".join("?" * len(part))


def family_ids(db: sqlite3.Connection, run_ids: Iterable[str], path: str) -> list[str]:
    """The ids of the runs and all their descendants, parents first; RunNotFoundError for an unknown id."""
    wanted = list(dict.fromkeys(run_ids))
    known: set[str] = set()
    for part, marks in _chunks(wanted):
        known.update(r[0] for r in db.execute(f"SELECT run_id FROM runs WHERE run_id IN ({marks})", part))
    missing = [r for r in wanted if r not in known]
    if missing:
        raise RunNotFoundError(f"no run {missing[0]!r} in the run history {path}")
    found = dict.fromkeys(wanted)
    frontier = wanted
    while frontier:
        children: list[str] = []
        for part, marks in _chunks(frontier):
            children.extend(r[0] for r in db.execute(
                f"SELECT run_id FROM runs WHERE parent_id IN ({marks}) ORDER BY created_at, number", part))
        frontier = [c for c in children if c not in found]
        found.update(dict.fromkeys(frontier))
    return list(found)


class SqliteAdmin(StoreAdmin):
    """The housekeeping primitives of one ``SqliteRunStore``."""

    def __init__(self, store: SqliteRunStore) -> None:
        self.store = store

    def set_archived(self, run_ids: Iterable[str], archived: bool = True) -> list[str]:
        with self.store._write() as db:
            ids = family_ids(db, run_ids, self.store.path)
            for part, marks in _chunks(ids):
                db.execute(f"UPDATE runs SET archived = ? WHERE run_id IN ({marks})", (int(archived), *part))
        return ids

    def delete_runs(self, run_ids: Iterable[str]) -> list[str]:
        with self.store._write() as db:
            ids = family_ids(db, run_ids, self.store.path)
            for table in RUN_TABLES:
                for part, marks in _chunks(ids):
                    db.execute(f"DELETE FROM {table} WHERE run_id IN ({marks})", part)
        return ids

    def list_snapshots(self) -> dict[str, float]:
        return {sid: float(at) for sid, at in self.store._read("SELECT snapshot_id, created_at FROM snapshots")}

    def prune_snapshots(self, stored_before: float, *, dry_run: bool = False) -> list[str]:
        if dry_run:
            return sorted(r[0] for r in self.store._read(f"SELECT snapshot_id {_UNUSED}", (stored_before,)))
        with self.store._write() as db:
            ids = sorted(r[0] for r in db.execute(f"SELECT snapshot_id {_UNUSED}", (stored_before,)))
            db.execute(f"DELETE {_UNUSED}", (stored_before,))
        return ids

    def referenced_digests(self, skip_snapshots: Collection[str] = ()) -> set[str]:
        read = self.store._read
        digests = {r[0] for r in read("SELECT DISTINCT digest FROM files")}
        for snapshot_id, manifest in read("SELECT snapshot_id, manifest FROM snapshots"):
            if snapshot_id not in skip_snapshots:
                digests.update(entry["digest"] for entry in json.loads(manifest))
        for (files,) in read("SELECT files FROM models"):
            digests.update(entry["digest"] for entry in json.loads(files))
        return digests
