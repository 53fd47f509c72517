"""Move finished runs between run histories as one tar file: ``export_runs`` here, ``import_runs`` beside it.

An archive carries everything about each run (record, status history, metrics, live logs, files and
their bytes, snapshot, child runs, models registered from the runs), so that a laptop's runs can move to
a team server, or across an air gap on a disk (the format: ``transfer_format``). Only the ``RunStore``
interface and an ``ArtifactStore`` are used, so any backend can be on either side.

What moves and what does not:

- Run ids are kept: they are unique across histories, which makes an import idempotent (a run already
  in the target is left as it is; an interrupted import picks up where it stopped, see
  ``transfer_import``). Numbers are not identities: an imported run takes the next number of its
  experiment in the target (the same number when the runs arrive into an empty experiment in order, as
  they do); its number in the source history is kept in the property ``rundock.import.number`` and the
  source history's label in ``rundock.import.source``.
- Only finished runs (Completed, Failed, Canceled) are exported: a live run's record is still changing.
- A model version is identified by its name, run and files' digests; it takes the next version of its
  name in the target, its source version kept in the property ``rundock.import.version``.
- Not carried (the store interface has no way to write them): the time a run was created and the time
  of its first ``NotStarted`` entry (an imported run is created when it is imported; every later status
  keeps its time and detail), a model version's registration time, and where the run's directory was.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Iterable
from typing import Callable

from rundock.errors import RunNotFoundError
from rundock.history import transfer_format as fmt
from rundock.history.artifacts import ArtifactStore
from rundock.history.records import FileRecord, ModelRecord, RunRecord
from rundock.history.store import RunStore
from rundock.history.transfer_format import ArchiveError, TransferError
from rundock.history.transfer_import import ImportReport, import_runs
from rundock.history.transfer_tar import ArchiveWriter

__all__ = ["ArchiveError", "ExportReport", "ImportReport", "TransferError", "export_runs", "import_runs",
           "select_runs"]

Progress = Callable[[str, int, int], None]  # (what is being done, bytes done, bytes in all)


@dataclasses.dataclass
class ExportReport:
    """What an export wrote."""

    path: str
    runs: list[str]
    models: int
    blobs: int
    blob_bytes: int

    @property
    def summary(self) -> str:
        return (f"Exported {len(self.runs)} run(s) and {self.models} model version(s) to {self.path} "
                f"({self.blobs} stored file(s), {self.blob_bytes:,} bytes)")


def select_runs(store: RunStore, experiment: str | None = None) -> tuple[list[str], list[str]]:
    """The top-level runs of ``experiment`` (every experiment when None) whose whole family has finished,
    and, apart, the ones left out because a run of their family is still live."""
    chosen: list[str] = []
    live: list[str] = []
    for run in store.list_runs(experiment=experiment, include_children=False):
        (chosen if all(r.status.is_terminal for r in store.family([run.run_id])) else live).append(run.run_id)
    return chosen[::-1], live[::-1]  # oldest first


def export_runs(store: RunStore, artifacts: ArtifactStore, run_ids: Iterable[str], path: str, *,
                include_children: bool = True, source: str = "", overwrite: bool = False,
                progress: Progress | None = None) -> ExportReport:
    """Write the runs (and, with ``include_children``, all their descendants) and the models registered
    from them to a new archive at ``path``; return what was written.

    ``source`` labels the exporting history in the archive (it becomes the imported runs'
    ``rundock.import.source``). RunNotFoundError for an unknown id and TransferError for a run that has not
    finished leave no file behind; so does any failure on the way.
    """
    wanted = list(dict.fromkeys(run_ids))
    if not wanted:
        raise TransferError("no runs to export: name run ids, an experiment, or all runs")
    runs = _gather(store, wanted, include_children)
    live = [r for r in runs if not r.status.is_terminal]
    if live:
        names = ", ".join(f"{r.run_id} ({r.status.value})" for r in live[:5])
        raise TransferError(f"only finished runs can be exported, and {len(live)} of these are not: {names}; "
                            "wait for them to end (rundock wait) or cancel them (rundock cancel)")
    files = {r.run_id: sorted(store.list_files(r.run_id).values(), key=lambda f: f.name) for r in runs}
    ids = {r.run_id for r in runs}
    models = sorted((m for m in store.list_models() if m.run_id in ids), key=lambda m: (m.name, m.version))
    now = time.time()
    out = ArchiveWriter(path, now, overwrite)
    try:
        writer = _Exporter(store, artifacts, out, progress)
        writer.total = writer.blob_total(runs, files, models)
        out.add_json(fmt.MANIFEST, {
            "format": fmt.FORMAT, "version": fmt.VERSION, "created": now, "source": source,
            "runs": [{"run_id": r.run_id, "experiment": r.experiment, "number": r.number, "parent_id": r.parent_id}
                     for r in runs],
            "models": len(models)})
        for run in runs:
            writer.run(run, files[run.run_id])
        for index, model in enumerate(models):
            writer.model(index, model)
        out.commit()
    except BaseException:
        out.discard()
        raise
    return ExportReport(out.path, [r.run_id for r in runs], len(models), len(writer.written), writer.done)


def _gather(store: RunStore, run_ids: list[str], include_children: bool) -> list[RunRecord]:
    """The runs to export, in the order they were created, each after its parent."""
    try:
        runs = store.family(run_ids) if include_children else [store.get_run(r) for r in run_ids]
    except RunNotFoundError as exc:
        raise RunNotFoundError(f"cannot export: {exc}; `rundock runs --children --archived` lists them") from None
    ordered, placed = [], set()
    pending = sorted(runs, key=lambda r: (r.created_at, r.number))
    ids = {r.run_id for r in runs}
    while pending:  # a child whose parent comes later (clocks of two machines) waits for its parent
        left = []
        for run in pending:
            if run.parent_id in ids and run.parent_id not in placed:
                left.append(run)
            else:
                ordered.append(run)
                placed.add(run.run_id)
        if len(left) == len(pending):  # not reached: a parent cycle cannot be recorded
            ordered.extend(left)
            break
        pending = left
    return ordered


class _Exporter:
    """Writes each run's members, and each blob once."""

    def __init__(self, store: RunStore, artifacts: ArtifactStore, out: ArchiveWriter,
                 progress: Progress | None) -> None:
        self.store, self.artifacts, self.out, self.progress = store, artifacts, out, progress
        self.written: set[str] = set()
        self.snapshots: set[str] = set()
        self.done = self.total = 0

    def blob_total(self, runs: list[RunRecord], files: dict[str, list[FileRecord]], models: list[ModelRecord]) -> int:
        sizes = {f.digest: f.size for fs in files.values() for f in fs}
        sizes.update((f["digest"], int(f["size"])) for m in models for f in m.files)
        for snapshot_id in {r.snapshot_id for r in runs if r.snapshot_id}:
            sizes.update((e["digest"], int(e["size"])) for e in self.store.get_snapshot(snapshot_id))
        return sum(sizes.values())

    def _moved(self, count: int) -> None:
        self.done += count
        if self.progress is not None:
            self.progress("Exporting", self.done, self.total)

    def blob(self, digest: str, size: int, owner: str) -> None:
        if digest in self.written:
            return
        try:
            stream = self.artifacts.open(digest)
        except FileNotFoundError:
            raise TransferError(f"{owner}: its blob {digest} is missing from the artifact store "
                                f"{self.artifacts.root}") from None
        with stream:
            try:
                self.out.add_blob(digest, size, stream, self._moved)
            except TransferError as exc:
                raise TransferError(f"{owner}: {exc}") from None
        self.written.add(digest)

    def run(self, run: RunRecord, files: list[FileRecord]) -> None:
        run_id = run.run_id
        for f in files:
            self.blob(f.digest, f.size, f"run {run_id}, file {f.name}")
        if run.snapshot_id and run.snapshot_id not in self.snapshots:
            manifest = self.store.get_snapshot(run.snapshot_id)
            for entry in manifest:
                self.blob(entry["digest"], int(entry["size"]), f"snapshot {run.snapshot_id}, file {entry['path']}")
            self.out.add_json(f"snapshots/{run.snapshot_id}.json", manifest)
            self.snapshots.add(run.snapshot_id)
        logs = self.store.log_names(run_id)
        metrics = self.store.get_metric_records(run_id)
        self.out.add_json(fmt.run_member(run_id, "run.json"), fmt.run_json(
            run, self.store.status_history(run_id), files, logs, len(metrics)))
        with self.out.spool() as spool:
            for m in metrics:
                spool.write(fmt.metric_line(m))
            del metrics
            size = spool.tell()
            spool.seek(0)
            self.out.add_stream(fmt.run_member(run_id, "metrics.jsonl"), spool, size)
        for index, name in enumerate(logs):
            self.out.add_bytes(fmt.run_member(run_id, f"log-{index}"), self.store.read_log(run_id, name))

    def model(self, index: int, model: ModelRecord) -> None:
        for f in model.files:
            self.blob(f["digest"], int(f["size"]), f"model {model.name} version {model.version}, file {f['name']}")
        self.out.add_json(f"models/{index}.json", fmt.model_json(model))
