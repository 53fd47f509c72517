"""Housekeeping of the PostgreSQL run history: archive, delete, prune snapshots, list blob references.

``PostgresAdmin`` is what ``PostgresRunStore.admin()`` hands out (the ``StoreAdmin`` of this backend). Every
change is one transaction of the store it serves, so it happens whole or not at all. The family of a run
(its descendants) is gathered inside the transaction that changes it, each run's row locked as it is found;
a child being created at that moment locks its parent's row too (``create_run``, a job's ``child`` record),
so it is either committed before the family is gathered, and included, or made after the change.

Deleting or archiving a run that is still being written to may deadlock with its writer (they take the
same rows in another order); PostgreSQL detects it, rolls one back, and the store runs that one again.

A snapshot's ``created_at`` holds when it was last stored: ``put_snapshot`` sets it again for a snapshot
it already has, so that ``prune_snapshots`` keeps one that a submit is storing again right now.
"""

from __future__ import annotations

import json
from collections.abc import Collection, Iterable

from rundock.errors import RunNotFoundError
from rundock.history.backends.postgres_tx import READ, Cursor, Database
from rundock.history.store import StoreAdmin

# Every table that holds rows of a run, by its ``run_id`` column (the runs table last).
RUN_TABLES = ("journal_marks", "tags", "properties", "files", "status_history", "metrics", "log_chunks", "runs")
_UNUSED = ("FROM snapshots WHERE created_at < %s AND snapshot_id NOT IN "
           "(SELECT snapshot_id FROM runs WHERE snapshot_id IS NOT NULL)")


def family_ids(cur: Cursor, run_ids: Iterable[str], where: str) -> list[str]:
    """The ids of the runs and all their descendants, parents first, their rows locked; RunNotFoundError for an
    unknown id."""
    wanted = list(dict.fromkeys(run_ids))
    known = {r[0] for r in cur.execute("SELECT run_id FROM runs WHERE run_id = ANY(%s) FOR UPDATE", (wanted,))}
    missing = [r for r in wanted if r not in known]
    if missing:
        raise RunNotFoundError(f"no run {missing[0]!r} in the run history {where}")
    found = dict.fromkeys(wanted)
    frontier = wanted
    while frontier:
        children = [r[0] for r in cur.execute("SELECT run_id FROM runs WHERE parent_id = ANY(%s) "
                                              "ORDER BY created_at, number FOR UPDATE", (frontier,))]
        frontier = [c for c in children if c not in found]
        found.update(dict.fromkeys(frontier))
    return list(found)


class PostgresAdmin(StoreAdmin):
    """The housekeeping primitives of one ``PostgresRunStore`` (of its ``Database``)."""

    def __init__(self, db: Database) -> None:
        self.db = db

    def set_archived(self, run_ids: Iterable[str], archived: bool = True) -> list[str]:
        wanted = list(run_ids)

        def body(cur: Cursor) -> list[str]:
            ids = family_ids(cur, wanted, self.db.where)
            cur.execute("UPDATE runs SET archived = %s WHERE run_id = ANY(%s)", (archived, ids))
            return ids

        return self.db.run(body)

    def delete_runs(self, run_ids: Iterable[str]) -> list[str]:
        wanted = list(run_ids)

        def body(cur: Cursor) -> list[str]:
            ids = family_ids(cur, wanted, self.db.where)
            for table in RUN_TABLES:
                cur.execute(f"DELETE FROM {table} WHERE run_id = ANY(%s)", (ids,))
            return ids

        return self.db.run(body, repeatable=False)

    def list_snapshots(self) -> dict[str, float]:
        return {sid: float(at) for sid, at in self.db.read("SELECT snapshot_id, created_at FROM snapshots")}

    def prune_snapshots(self, stored_before: float, *, dry_run: bool = False) -> list[str]:
        if dry_run:
            return sorted(r[0] for r in self.db.read(f"SELECT snapshot_id {_UNUSED}", (stored_before,)))
        return sorted(r[0] for r in self.db.run(
            lambda cur: cur.execute(f"DELETE {_UNUSED} RETURNING snapshot_id", (stored_before,)).fetchall(),
            repeatable=False))

    def referenced_digests(self, skip_snapshots: Collection[str] = ()) -> set[str]:
        def body(cur: Cursor) -> set[str]:
            digests = {r[0] for r in cur.execute("SELECT DISTINCT digest FROM files")}
            for snapshot_id, manifest in cur.execute("SELECT snapshot_id, manifest FROM snapshots"):
                if snapshot_id not in skip_snapshots:
                    digests.update(entry["digest"] for entry in json.loads(manifest))
            for (files,) in cur.execute("SELECT files FROM models"):
                digests.update(entry["digest"] for entry in json.loads(files))
            return digests

        return self.db.run(body, begin=READ, doing="read")
