"""``import_runs``: add an export archive's runs and models to a run history, once.

Two passes over the archive file:

1. **Check** everything, writing nothing: every member name and type, every JSON document's shape and
   limits, every blob's SHA-256 against its name, every reference (a file, snapshot or model names a blob
   that came before it; a child names a parent that came before it), the counts the manifest and each
   ``run.json`` promise. A damaged, truncated or hostile archive is refused here with an ArchiveError
   naming the member, and **nothing at all is imported**.
2. **Apply**, reading the archive again (and checking again, in case the file changed in between). Runs
   already in the history are left untouched ("already present"). Each new run is created with its id,
   then filled through ``RunStore.apply_journal`` under the journal source ``import`` (attempt 0): its
   metrics in batches, then its logs, then one last batch with its file records, heartbeat and every
   status change with its original time and detail. The journal mark makes this resumable: a run whose
   import was interrupted (it carries the ``rundock.import.source`` property and its mark is short of the
   total) is completed by the next import of the same archive, never duplicated.
"""

from __future__ import annotations

import dataclasses
from typing import IO, Any, Callable, cast

from rundock.errors import RunNotFoundError, StoreError
from rundock.history import transfer_format as fmt
from rundock.history.artifacts import ArtifactStore
from rundock.history.records import ModelRecord
from rundock.history.store import RunStore
from rundock.history.transfer_format import ArchiveError, RunDoc
from rundock.history.transfer_tar import CHUNK, ArchiveReader, HashingReader

METRIC_BATCH = 5000  # metrics per apply_journal call (a server takes up to 100,000 per request)
PROP_PARENT = "rundock.import.parent"  # a child imported without its parent: the parent it had

Progress = Callable[[str, int, int], None]  # typing's Callable: evaluated at run time, under Python 3.8 too


@dataclasses.dataclass
class ImportReport:
    """What an import did: runs imported or already present, model versions likewise, and any warning."""

    source: str
    imported: list[str] = dataclasses.field(default_factory=list)
    present: list[str] = dataclasses.field(default_factory=list)
    models_imported: list[tuple[str, int]] = dataclasses.field(default_factory=list)  # (name, version here)
    models_present: list[tuple[str, int]] = dataclasses.field(default_factory=list)  # (name, archive version)
    warnings: list[str] = dataclasses.field(default_factory=list)

    @property
    def summary(self) -> str:
        return (f"{len(self.imported)} imported, {len(self.present)} already present; model versions: "
                f"{len(self.models_imported)} imported, {len(self.models_present)} already present")


@dataclasses.dataclass
class _Plan:
    """What the checking pass learned: the runs, snapshots' blobs, models and blobs (digest -> size)."""

    manifest: fmt.Manifest
    runs: dict[str, RunDoc] = dataclasses.field(default_factory=dict)
    snapshots: dict[str, set[str]] = dataclasses.field(default_factory=dict)
    models: list[ModelRecord] = dataclasses.field(default_factory=list)
    blobs: dict[str, int] = dataclasses.field(default_factory=dict)
    listed: set[str] = dataclasses.field(init=False)  # the manifest's runs, for lookups

    def __post_init__(self) -> None:
        self.listed = set(self.manifest.runs)


def import_runs(store: RunStore, artifacts: ArtifactStore, path: str, *,
                progress: Progress | None = None) -> ImportReport:
    """Import the archive at ``path``; see the module's docstring. Raises ArchiveError (nothing imported)
    for an archive that is not a valid rundock export, FileNotFoundError when there is none."""
    plan = _Walk(path, None, progress).plan()
    return _Walk(path, _Target(store, artifacts, plan), progress).apply()


class _Target:
    """The history being imported into, and what of the archive it still lacks."""

    def __init__(self, store: RunStore, artifacts: ArtifactStore, plan: _Plan) -> None:
        self.store, self.artifacts, self.plan = store, artifacts, plan
        self.report = ImportReport(plan.manifest.source)
        self.todo: dict[str, int] = {}  # run id -> its journal mark when the import starts
        self.unarchived: list[str] = []  # archived runs this history would not let the import archive
        self.refusal = ""
        for run_id, doc in plan.runs.items():
            try:
                there = store.get_run(run_id)
            except RunNotFoundError:
                self.todo[run_id] = 0
                continue
            mark = store.journal_mark(run_id, 0, fmt.IMPORT_SOURCE) if fmt.PROP_SOURCE in there.properties else 0
            if fmt.PROP_SOURCE in there.properties and mark < doc.total:
                self.todo[run_id] = mark  # an import that stopped half way: finish it
            else:
                self.report.present.append(run_id)
        self.new_models = [m for m in plan.models if not self._has_model(m)]
        self.report.models_present = [(m.name, m.version) for m in plan.models if m not in self.new_models]
        self.needed = {f.digest for r in self.todo for f in plan.runs[r].files}
        for run_id in self.todo:
            self.needed |= plan.snapshots.get(plan.runs[run_id].record.snapshot_id or "", set())
        self.needed |= {f["digest"] for m in self.new_models for f in m.files}
        self.snapshots = {plan.runs[r].record.snapshot_id for r in self.todo}  # the snapshots to store

    def _has_model(self, model: ModelRecord) -> bool:
        key = _model_key(model)
        return any(_model_key(m) == key for m in self.store.list_models(model.name))

    def register(self, model: ModelRecord) -> None:
        made = self.store.register_model(
            model.name, run_id=model.run_id, path=model.path, files=model.files, tags=model.tags,
            properties={**model.properties, fmt.PROP_VERSION: str(model.version)}, framework=model.framework,
            framework_version=model.framework_version, description=model.description, created_at=model.created_at)
        self.report.models_imported.append((made.name, made.version))

    def begin(self, doc: RunDoc) -> None:
        """Create the run (unless an earlier import did)."""
        run = doc.record
        if self.todo[run.run_id] > 0 or self._exists(run.run_id):
            return
        properties = {**run.properties, fmt.PROP_NUMBER: str(run.number), fmt.PROP_SOURCE: self.report.source}
        if run.submitted_by:  # a team server records the importing token's name as the submitter
            properties[fmt.PROP_SUBMITTED_BY] = run.submitted_by
        parent = run.parent_id
        if parent is not None and not self._exists(parent):
            properties[PROP_PARENT] = parent  # a run never points at a run its history does not hold
            parent = None
        try:
            self.store.create_run(run.experiment, run_id=run.run_id, parent_id=parent, run_type=run.run_type,
                                  display_name=run.display_name, description=run.description, target=run.target,
                                  run_definition=run.run_definition, snapshot_id=run.snapshot_id,
                                  submitted_by=run.submitted_by, tags=run.tags, properties=properties,
                                  created_at=run.created_at)
        except (StoreError, ValueError):
            if not self._exists(run.run_id):
                raise  # else another import of the same archive created it just now: the marks keep both apart

    def _exists(self, run_id: str) -> bool:
        try:
            self.store.get_run(run_id)
        except RunNotFoundError:
            return False
        return True

    def finish(self, doc: RunDoc) -> None:
        """The run's last batch: files, heartbeat and status history, applied at once with the final mark."""
        run, seq = doc.record, doc.metrics
        if run.archived:
            try:
                self.store.admin().set_archived([run.run_id], True)
            except PermissionError as exc:  # a server lets only its admins archive
                self.unarchived.append(run.run_id)
                self.refusal = str(exc)
        records: list[dict[str, Any]] = []
        for f in doc.files:
            seq += 1
            records.append({"seq": seq, "type": "file", "name": f.name, "digest": f.digest, "size": f.size,
                            "t": f.at})
        if run.last_heartbeat is not None and run.heartbeat_interval is not None:
            seq += 1
            records.append({"seq": seq, "type": "heartbeat", "interval": run.heartbeat_interval,
                            "t": run.last_heartbeat})
        for change in doc.history[1:]:
            seq += 1
            records.append({"seq": seq, "type": "state", "status": change.status.value, "detail": change.detail,
                            "t": change.at})
        if run.error is not None:
            records[-1]["error"] = run.error
        self.store.apply_journal(run.run_id, 0, fmt.IMPORT_SOURCE, records)
        self.report.imported.append(run.run_id)
        got = [(c.status, c.at, c.detail) for c in self.store.status_history(run.run_id)[1:]]
        if got != [(c.status, c.at, c.detail) for c in doc.history[1:]]:
            self.report.warnings.append(f"run {run.run_id}: its status history here differs from the archive's "
                                        f"({', '.join(s.value for s, _, _ in got)})")


def _model_key(model: ModelRecord) -> tuple[str, str | None, list[tuple[str, str]]]:
    return model.name, model.run_id, sorted((f["name"], f["digest"]) for f in model.files)


class _Walk:
    """One pass over the archive: checking only (``plan``), or checking and applying (``apply``)."""

    def __init__(self, path: str, target: _Target | None, progress: Progress | None) -> None:
        self.path, self.target, self.progress = path, target, progress
        self.phase = "Importing" if target else "Checking"
        self.plan_: _Plan | None = None
        self.current: RunDoc | None = None
        self.metrics_done = False
        self.logs_done = 0
        self.handlers = {"manifest": self._on_manifest, "blob": self._on_blob, "snapshot": self._on_snapshot,
                         "run": self._on_run, "metrics": self._on_metrics, "log": self._on_log,
                         "model": self._on_model}

    def plan(self) -> _Plan:
        self._walk()
        assert self.plan_ is not None
        return self.plan_

    def apply(self) -> ImportReport:
        assert self.target is not None
        self._walk()
        for model in self.target.new_models:
            self.target.register(model)
        target = self.target
        if target.unarchived:
            target.report.warnings.append(
                f"{len(target.unarchived)} run(s) archived in the archive are not archived here ({target.refusal}); "
                f"an admin can archive them: rundock archive {' '.join(target.unarchived)}")
        return target.report

    def _walk(self) -> None:
        with ArchiveReader(self.path) as reader:
            self.reader = reader
            members = reader.members()
            first = next(members, None)
            if first is None:
                raise ArchiveError(f"{self.path} is not a rundock export archive (it is an empty tar file)")
            manifest = fmt.parse_manifest(fmt.load_json(reader.read_json(first[1], fmt.MAX_JSON), fmt.MANIFEST))
            plan = self.plan_ = _Plan(manifest)
            for m, info in members:
                if m.kind in ("run", "model"):
                    self._close_run()
                self.handlers[m.kind](m, info, plan)
                self._report()
            self._close_run()
            missing = [r for r in manifest.runs if r not in plan.runs]
            if missing or len(plan.models) != manifest.models:
                what = f"run {missing[0]}" if missing else f"model {len(plan.models)}"
                raise ArchiveError(f"{self.path} ends before {what} that its manifest lists: the archive is "
                                   "truncated or damaged")
            if self.target is not None and self.target.plan.runs.keys() != plan.runs.keys():
                raise ArchiveError(f"{self.path} changed while it was being imported")

    def _report(self, *_: Any) -> None:
        if self.progress is not None:
            self.progress(self.phase, self.reader.position, self.reader.size)

    # -- one handler per kind of member ------------------------------------------------------------------
    def _on_manifest(self, m: fmt.Member, info: Any, plan: _Plan) -> None:
        raise ArchiveError("a second manifest", m.name)

    def _on_blob(self, m: fmt.Member, info: Any, plan: _Plan) -> None:
        digest = m.key
        if digest in plan.blobs:
            return
        plan.blobs[digest] = info.size
        with self.reader.open(info) as fh:
            reader = HashingReader(fh, self._report)
            if self.target is None:
                if reader.drain() != digest:
                    raise ArchiveError("its content does not match its SHA-256 name: the archive is damaged", m.name)
            elif digest in self.target.needed and not self.target.artifacts.keep(digest):
                stored, _, _ = self.target.artifacts.put_stream(cast(IO[bytes], reader))
                if stored != digest:
                    raise ArchiveError("its content does not match its SHA-256 name: the archive changed or is "
                                       "damaged", m.name)

    def _blob_ref(self, plan: _Plan, digest: str, size: int, what: str, where: str) -> None:
        if plan.blobs.get(digest) != size:
            problem = "no blob before it" if digest not in plan.blobs else f"a blob of {plan.blobs[digest]} bytes"
            raise ArchiveError(f"{what} names blob {digest} of {size} bytes, and the archive has {problem}", where)

    def _on_snapshot(self, m: fmt.Member, info: Any, plan: _Plan) -> None:
        manifest = fmt.parse_snapshot(fmt.load_json(self.reader.read_json(info, fmt.MAX_JSON), m.name), m.name, m.key)
        for entry in manifest:
            self._blob_ref(plan, entry["digest"], entry["size"], f"file {entry['path']!r}", m.name)
        plan.snapshots[m.key] = {e["digest"] for e in manifest}
        if self.target is not None and m.key in self.target.snapshots:
            self.target.store.put_snapshot(m.key, manifest)

    def _on_run(self, m: fmt.Member, info: Any, plan: _Plan) -> None:
        expected = plan.manifest.runs[len(plan.runs)] if len(plan.runs) < len(plan.manifest.runs) else None
        if m.key != expected:
            raise ArchiveError(f"the manifest lists {expected or 'no more runs'} here", m.name)
        doc = fmt.parse_run(fmt.load_json(self.reader.read_json(info, fmt.MAX_JSON), m.name), m.name, m.key)
        for f in doc.files:
            self._blob_ref(plan, f.digest, f.size, f"file {f.name!r}", m.name)
        snapshot, parent = doc.record.snapshot_id, doc.record.parent_id
        if snapshot is not None and snapshot not in plan.snapshots:
            raise ArchiveError(f"its snapshot {snapshot} has no snapshots/{snapshot}.json before it", m.name)
        if parent in plan.listed and parent not in plan.runs:
            raise ArchiveError(f"its parent {parent} comes after it", m.name)
        plan.runs[m.key] = doc
        self.current, self.metrics_done, self.logs_done = doc, False, 0
        if self.target is not None and m.key in self.target.todo:
            self.target.begin(doc)

    def _run_of(self, m: fmt.Member) -> RunDoc:
        if self.current is None or self.current.record.run_id != m.key:
            raise ArchiveError(f"out of place: it does not follow runs/{m.key}/run.json", m.name)
        return self.current

    def _importing(self, run_id: str) -> bool:
        return self.target is not None and run_id in self.target.todo

    def _on_metrics(self, m: fmt.Member, info: Any, plan: _Plan) -> None:
        doc = self._run_of(m)
        if self.metrics_done:
            raise ArchiveError("a second metrics member", m.name)
        run_id, mark, seq, batch = m.key, self.target.todo.get(m.key, 0) if self.target else 0, 0, []
        with self.reader.open(info) as fh:
            while True:
                line = fh.readline(fmt.MAX_METRIC_LINE + 1)
                if not line:
                    break
                if len(line) > fmt.MAX_METRIC_LINE:
                    raise ArchiveError(f"metric {seq + 1} is longer than {fmt.MAX_METRIC_LINE} bytes", m.name)
                seq += 1
                record = fmt.metric_record(line, seq, run_id, m.name)
                if self._importing(run_id) and seq > mark:
                    batch.append(record)
                    if len(batch) >= METRIC_BATCH:
                        self._apply(run_id, batch)
                        batch = []
        if batch:
            self._apply(run_id, batch)
        if seq != doc.metrics:
            raise ArchiveError(f"holds {seq} metrics; its run.json says {doc.metrics}", m.name)
        self.metrics_done = True

    def _apply(self, run_id: str, records: list[dict[str, Any]]) -> None:
        assert self.target is not None
        self.target.store.apply_journal(run_id, 0, fmt.IMPORT_SOURCE, records)
        self._report()

    def _on_log(self, m: fmt.Member, info: Any, plan: _Plan) -> None:
        doc = self._run_of(m)
        if not self.metrics_done or m.index != self.logs_done or m.index >= len(doc.logs):
            raise ArchiveError(f"out of place: log {self.logs_done} of {len(doc.logs)} was expected after the "
                               "metrics", m.name)
        self.logs_done += 1
        if not self._importing(m.key):
            return
        assert self.target is not None
        offset, name = 0, doc.logs[m.index]
        with self.reader.open(info) as fh:
            while True:
                data = fh.read(CHUNK)
                if not data:
                    break
                self.target.store.append_log(m.key, name, offset, data)
                offset += len(data)
                self._report()

    def _close_run(self) -> None:
        doc, self.current = self.current, None
        if doc is None:
            return
        where = fmt.run_member(doc.record.run_id, "run.json")
        if not self.metrics_done or self.logs_done != len(doc.logs):
            raise ArchiveError(f"its run lacks {'its metrics' if not self.metrics_done else 'a log'} member", where)
        if self._importing(doc.record.run_id):
            assert self.target is not None
            if self.target.plan.runs[doc.record.run_id] != doc:
                raise ArchiveError("changed while the archive was being imported", where)
            self.target.finish(doc)

    def _on_model(self, m: fmt.Member, info: Any, plan: _Plan) -> None:
        if m.index != len(plan.models):
            raise ArchiveError(f"out of place: models/{len(plan.models)}.json was expected", m.name)
        model = fmt.parse_model(fmt.load_json(self.reader.read_json(info, fmt.MAX_JSON), m.name), m.name)
        if model.run_id not in plan.runs:
            raise ArchiveError(f"its run {model.run_id} is not in the archive", m.name)
        for f in model.files:
            self._blob_ref(plan, f["digest"], f["size"], f"file {f['name']!r}", m.name)
        plan.models.append(model)
