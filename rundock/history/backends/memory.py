"""A run history in this process's memory (``memory://NAME``): fast unit tests, and a reference for backends.

It keeps the same promises as the SQLite and PostgreSQL backends (the contract tests run over it), with one
lock for the whole history, so that each method is atomic. Stores opened with the same URI in one process share
one history; nothing is kept when the process ends. Names are free: ``memory://`` alone gives a fresh history.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import secrets
import threading
import time
from collections.abc import Collection, Iterable, Mapping
from typing import Any

from rundock.context.names import artifact_name
from rundock.errors import RunNotFoundError, StoreError
from rundock.history.records import (
    FileRecord,
    JournalPlan,
    MetricRecord,
    ModelRecord,
    RunRecord,
    StatusChange,
    join_log_chunks,
    plan_journal,
    value_json,
)
from rundock.history.store import RunStore, StoreAdmin, new_run_id, register_backend
from rundock.states import RunStatus, can_transition


@dataclasses.dataclass
class _History:
    lock: threading.RLock = dataclasses.field(default_factory=threading.RLock)
    last_number: dict[str, int] = dataclasses.field(default_factory=dict)
    runs: dict[str, RunRecord] = dataclasses.field(default_factory=dict)
    order: dict[str, int] = dataclasses.field(default_factory=dict)  # creation order, for stable listings
    statuses: dict[str, list[StatusChange]] = dataclasses.field(default_factory=dict)
    metrics: dict[str, list[MetricRecord]] = dataclasses.field(default_factory=dict)
    files: dict[str, dict[str, FileRecord]] = dataclasses.field(default_factory=dict)
    logs: dict[tuple[str, str], dict[int, bytes]] = dataclasses.field(default_factory=dict)
    marks: dict[tuple[str, int, str], int] = dataclasses.field(default_factory=dict)
    models: dict[str, list[ModelRecord]] = dataclasses.field(default_factory=dict)
    environments: dict[str, list[str]] = dataclasses.field(default_factory=dict)
    snapshots: dict[str, tuple[str, float]] = dataclasses.field(default_factory=dict)


_SHARED: dict[str, _History] = {}
_SHARED_LOCK = threading.Lock()


class MemoryRunStore(RunStore):
    """RunStore in memory; safe across threads of one process."""

    def __init__(self, name: str = "") -> None:
        self.name = name or secrets.token_hex(8)
        with _SHARED_LOCK:
            self._h = _SHARED.setdefault(self.name, _History())

    @classmethod
    def from_uri(cls, uri: str) -> MemoryRunStore:
        return cls(uri.split("://", 1)[1] if "://" in uri else "")

    def _run(self, run_id: str) -> RunRecord:
        run = self._h.runs.get(run_id)
        if run is None:
            raise RunNotFoundError(f"no run {run_id!r} in the run history memory://{self.name}")
        return run

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
        with self._h.lock:
            self._insert(run_id, experiment, now, parent_id=parent_id, run_type=run_type,
                         display_name=display_name, description=description, target=target,
                         run_definition=copy.deepcopy(run_definition or {}), snapshot_id=snapshot_id,
                         submitted_by=submitted_by, run_dir=run_dir, tags=dict(tags or {}),
                         properties={k: str(v) for k, v in (properties or {}).items()})
        return self.get_run(run_id)

    def _insert(self, run_id: str, experiment: str, now: float, **fields: Any) -> None:
        h = self._h
        if run_id in h.runs:
            raise StoreError(f"a run with id {run_id!r} already exists")
        number = h.last_number.get(experiment, 0) + 1
        h.last_number[experiment] = number
        h.runs[run_id] = RunRecord(run_id=run_id, experiment=experiment, number=number,
                                   status=RunStatus.NOT_STARTED, created_at=now, **fields)
        h.order[run_id] = len(h.order)
        h.statuses[run_id] = [StatusChange(RunStatus.NOT_STARTED, now, "run created")]

    def get_run(self, run_id: str) -> RunRecord:
        with self._h.lock:
            return copy.deepcopy(self._run(run_id))

    def list_runs(self, *, experiment: str | None = None, statuses: Iterable[str] | None = None,
                  parent_id: str | None = None, run_type: str | None = None, target: str | None = None,
                  include_children: bool = True) -> list[RunRecord]:
        wanted = None if statuses is None else {RunStatus(s) for s in statuses}
        with self._h.lock:
            runs = [r for r in self._h.runs.values()
                    if (experiment is None or r.experiment == experiment)
                    and (parent_id is None or r.parent_id == parent_id)
                    and (run_type is None or r.run_type == run_type) and (target is None or r.target == target)
                    and (wanted is None or r.status in wanted)
                    and (include_children or parent_id is not None or r.parent_id is None)]
            runs.sort(key=lambda r: (r.created_at, r.number, self._h.order[r.run_id]), reverse=True)
            return copy.deepcopy(runs)

    def update_run(self, run_id: str, *, display_name: str | None = None, description: str | None = None,
                   run_dir: str | None = None, snapshot_id: str | None = None) -> None:
        with self._h.lock:
            run = self._run(run_id)
            for key, value in (("display_name", display_name), ("description", description),
                               ("run_dir", run_dir), ("snapshot_id", snapshot_id)):
                if value is not None:
                    setattr(run, key, value)

    def transition(self, run_id: str, status: RunStatus | str, *, detail: str = "",
                   error: dict[str, Any] | None = None, at: float | None = None) -> bool:
        with self._h.lock:
            return self._transition(self._run(run_id), RunStatus(status), detail, error, at or time.time())

    def _transition(self, run: RunRecord, status: RunStatus, detail: str, error: dict[str, Any] | None,
                    at: float) -> bool:
        if not can_transition(run.status, status):
            return False
        run.status, run.status_detail = status, detail
        if error:
            run.error = copy.deepcopy(error)
        if status == RunStatus.RUNNING and run.start_at is None:
            run.start_at = at
        if status.is_terminal:
            run.end_at = at
        self._h.statuses[run.run_id].append(StatusChange(status, at, detail))
        return True

    def status_history(self, run_id: str) -> list[StatusChange]:
        with self._h.lock:
            return list(self._h.statuses.get(run_id, []))

    # -- run data ----------------------------------------------------------------------
    def journal_mark(self, run_id: str, attempt: int, source: str) -> int:
        with self._h.lock:
            return self._h.marks.get((run_id, attempt, source), 0)

    def apply_journal(self, run_id: str, attempt: int, source: str, records: list[dict[str, Any]]) -> int:
        with self._h.lock:
            mark = self._h.marks.get((run_id, attempt, source), 0)
            plan = plan_journal(records, mark)
            if plan.last_seq == mark:
                return mark
            if run_id not in self._h.runs:
                parent = plan.create and self._h.runs.get(plan.create["parent"])
                if not plan.create or not parent:
                    raise RunNotFoundError(f"no run {run_id!r} in the run history memory://{self.name}")
                self._insert(run_id, parent.experiment, plan.create["at"], parent_id=parent.run_id,
                             run_type="rundock.childrun", display_name=plan.create.get("name"),
                             target=parent.target)
            self._execute(run_id, plan)
            self._h.marks[(run_id, attempt, source)] = plan.last_seq
            return plan.last_seq

    def apply_plan(self, run_id: str, plan: JournalPlan) -> None:
        with self._h.lock:
            self._run(run_id)
            self._execute(run_id, plan)

    def _execute(self, run_id: str, plan: JournalPlan) -> None:
        """All checks first, then the changes: a batch applies whole or not at all."""
        for f in plan.files:
            if artifact_name(f.name) != f.name:
                raise ValueError(f"run file name {f.name!r} is not a normalized relative name")
        metrics = [m._replace(value=json.loads(value_json(m.value))) for m in plan.metrics]  # as stored elsewhere
        run = self._run(run_id)
        self._h.metrics.setdefault(run_id, []).extend(metrics)
        run.tags.update(plan.tags)
        for key, value in plan.properties.items():
            run.properties.setdefault(key, value)
        files = self._h.files.setdefault(run_id, {})
        for f in plan.files:
            files[f.name] = f
        for status, at, detail, error in plan.states:
            self._transition(run, status, detail, error, at)
        if plan.heartbeat is not None:
            run.last_heartbeat = max(run.last_heartbeat or 0.0, plan.heartbeat[0])
            run.heartbeat_interval = plan.heartbeat[1]

    def get_metric_records(self, run_id: str, name: str | None = None) -> list[MetricRecord]:
        with self._h.lock:
            return [copy.deepcopy(m) for m in self._h.metrics.get(run_id, []) if name is None or m.name == name]

    def remove_tags(self, run_id: str, keys: Iterable[str]) -> None:
        with self._h.lock:
            run = self._h.runs.get(run_id)
            for key in keys:
                if run is not None:
                    run.tags.pop(key, None)

    def list_files(self, run_id: str) -> dict[str, FileRecord]:
        with self._h.lock:
            return dict(sorted(self._h.files.get(run_id, {}).items()))

    def append_log(self, run_id: str, name: str, offset: int, data: bytes) -> None:
        if data:
            with self._h.lock:
                chunks = self._h.logs.setdefault((run_id, name), {})
                if len(data) > len(chunks.get(offset, b"")):  # a log only grows
                    chunks[offset] = bytes(data)

    def read_log(self, run_id: str, name: str, offset: int = 0) -> bytes:
        with self._h.lock:
            chunks = sorted(self._h.logs.get((run_id, name), {}).items())
        return join_log_chunks(chunks, offset)

    def log_names(self, run_id: str) -> list[str]:
        with self._h.lock:
            return sorted(name for (rid, name), chunks in self._h.logs.items() if rid == run_id and chunks)

    # -- models and environments ------------------------------------------------------------
    def register_model(self, name: str, *, run_id: str | None, path: str, files: list[dict[str, Any]],
                       tags: Mapping[str, str | None] | None = None, properties: Mapping[str, str] | None = None,
                       framework: str | None = None, framework_version: str | None = None,
                       description: str | None = None, created_at: float | None = None) -> ModelRecord:
        with self._h.lock:
            versions = self._h.models.setdefault(name, [])
            model = ModelRecord(name, len(versions) + 1, run_id, path, copy.deepcopy(files),
                                time.time() if created_at is None else created_at,
                                dict(tags or {}), {k: str(v) for k, v in (properties or {}).items()}, framework,
                                framework_version, description)
            versions.append(model)
            return copy.deepcopy(model)

    def get_model(self, name: str, version: int | None = None) -> ModelRecord:
        with self._h.lock:
            versions = self._h.models.get(name, [])
            found = versions[-1:] if version is None else [m for m in versions if m.version == version]
            if not found:
                which = f"version {version} of model {name!r}" if version is not None else f"model {name!r}"
                raise KeyError(f"no {which} in the model registry memory://{self.name}")
            return copy.deepcopy(found[0])

    def list_models(self, name: str | None = None) -> list[ModelRecord]:
        with self._h.lock:
            if name is not None:
                return copy.deepcopy(list(reversed(self._h.models.get(name, []))))
            every = [m for versions in self._h.models.values() for m in versions]
            return copy.deepcopy(sorted(every, key=lambda m: (m.created_at, m.version), reverse=True))

    def register_environment(self, name: str, definition: dict[str, Any]) -> int:
        with self._h.lock:
            versions = self._h.environments.setdefault(name, [])
            versions.append(json.dumps(definition))
            return len(versions)

    def get_environment(self, name: str, version: int | None = None) -> tuple[int, dict[str, Any]]:
        with self._h.lock:
            versions = self._h.environments.get(name, [])
            number = version or len(versions)
            if not 1 <= number <= len(versions):
                which = f"version {version} of environment {name!r}" if version else f"environment {name!r}"
                raise KeyError(f"no {which} is registered in memory://{self.name}; register it with env.register(ws)")
            return number, dict(json.loads(versions[number - 1]))

    def environment_names(self) -> list[str]:
        with self._h.lock:
            return sorted(self._h.environments)

    # -- snapshots -----------------------------------------------------------------------
    def put_snapshot(self, snapshot_id: str, manifest: list[dict[str, Any]]) -> bool:
        with self._h.lock:
            known = self._h.snapshots.get(snapshot_id)
            self._h.snapshots[snapshot_id] = (known[0] if known else json.dumps(manifest), time.time())
            return known is None

    def get_snapshot(self, snapshot_id: str) -> list[dict[str, Any]]:
        with self._h.lock:
            known = self._h.snapshots.get(snapshot_id)
        if known is None:
            raise StoreError(f"no snapshot {snapshot_id!r} in the run history memory://{self.name}")
        return list(json.loads(known[0]))

    def admin(self) -> MemoryAdmin:
        return MemoryAdmin(self)

    def close(self) -> None:
        """Nothing to release: the history lives as long as the process."""


class MemoryAdmin(StoreAdmin):
    """Housekeeping of a ``MemoryRunStore``; each method holds the history's lock throughout."""

    def __init__(self, store: MemoryRunStore) -> None:
        self.store = store
        self._h = store._h

    def _family(self, run_ids: Iterable[str]) -> list[str]:
        wanted = list(dict.fromkeys(run_ids))
        for run_id in wanted:
            self.store._run(run_id)
        found = dict.fromkeys(wanted)
        frontier = wanted
        while frontier:
            children = sorted((r for r in self._h.runs.values() if r.parent_id in frontier),
                              key=lambda r: (r.created_at, r.number))
            frontier = [r.run_id for r in children if r.run_id not in found]
            found.update(dict.fromkeys(frontier))
        return list(found)

    def set_archived(self, run_ids: Iterable[str], archived: bool = True) -> list[str]:
        with self._h.lock:
            ids = self._family(run_ids)
            for run_id in ids:
                self._h.runs[run_id].archived = archived
            return ids

    def delete_runs(self, run_ids: Iterable[str]) -> list[str]:
        with self._h.lock:
            ids = self._family(run_ids)
            gone = set(ids)
            for run_id in ids:
                for table in (self._h.runs, self._h.order, self._h.statuses, self._h.metrics, self._h.files):
                    table.pop(run_id, None)
            self._h.logs = {k: v for k, v in self._h.logs.items() if k[0] not in gone}
            self._h.marks = {k: v for k, v in self._h.marks.items() if k[0] not in gone}
            return ids

    def list_snapshots(self) -> dict[str, float]:
        with self._h.lock:
            return {sid: at for sid, (_, at) in self._h.snapshots.items()}

    def prune_snapshots(self, stored_before: float, *, dry_run: bool = False) -> list[str]:
        with self._h.lock:
            used = {r.snapshot_id for r in self._h.runs.values() if r.snapshot_id}
            ids = sorted(sid for sid, (_, at) in self._h.snapshots.items() if at < stored_before and sid not in used)
            if not dry_run:
                for sid in ids:
                    del self._h.snapshots[sid]
            return ids

    def referenced_digests(self, skip_snapshots: Collection[str] = ()) -> set[str]:
        with self._h.lock:
            digests = {f.digest for files in self._h.files.values() for f in files.values()}
            for sid, (manifest, _) in self._h.snapshots.items():
                if sid not in skip_snapshots:
                    digests.update(entry["digest"] for entry in json.loads(manifest))
            for versions in self._h.models.values():
                digests.update(entry["digest"] for m in versions for entry in m.files)
            return digests


register_backend("memory", MemoryRunStore.from_uri)
