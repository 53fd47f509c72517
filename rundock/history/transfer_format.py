"""The export archive's format: its members, its JSON documents, and the checks an import makes on them.

An archive is one plain tar file whose members come in this order::

    rundock-export.json              the manifest: format, version, created, source history, runs, models
    then, for each run (parents before their children):
      blobs/<sha256>                 each file and snapshot blob of the run not already in the archive
      snapshots/<snapshot id>.json   the run's snapshot manifest (once per snapshot)
      runs/<run id>/run.json         the run record, its status history, file records, log names, metric count
      runs/<run id>/metrics.jsonl    one metric per line: [name, kind, value, step, description, at]
      runs/<run id>/log-<i>          the bytes of the run's i-th live log (named in run.json)
    then, for each model version registered from those runs:
      blobs/<sha256>                 its file blobs not already in the archive
      models/<i>.json                the model version

A blob always comes before the first member that refers to it, so an import applies the archive in one
forward pass. Everything read from an archive is untrusted: the ``parse_*`` functions here turn a JSON
document into the history's own records or raise ArchiveError naming the member and the field.
"""

from __future__ import annotations

import dataclasses
import json
import math
import re
from typing import Any

from rundock.context import records as rec_types
from rundock.context import rundir
from rundock.context.names import artifact_name
from rundock.errors import RundockError
from rundock.history.records import FileRecord, MetricRecord, ModelRecord, RunRecord, StatusChange
from rundock.states import RunStatus, can_transition

FORMAT = "rundock-export"
VERSION = 1
MANIFEST = "rundock-export.json"
MAX_JSON = 64 << 20  # bytes of one JSON member (a run with a hundred thousand files fits)
MAX_METRIC_LINE = 2 << 20  # a journal record is at most 1 MiB; its metric line is shorter
IMPORT_SOURCE = "import"  # the journal source of imported runs: its mark makes an import resumable
PROP_NUMBER = "rundock.import.number"  # the run's number in the history it came from
PROP_SOURCE = "rundock.import.source"  # that history (see ``export_runs``'s ``source``)
PROP_SUBMITTED_BY = "rundock.import.submitted_by"  # who submitted it there
PROP_VERSION = "rundock.import.version"  # a model version's number in the history it came from

_SNAPSHOT_FIELDS = frozenset({"path", "digest", "size", "mode"})
_EXPERIMENT = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{0,254}")
_DIGEST = re.compile(r"[0-9a-f]{64}")
_MEMBER = re.compile(r"(?:runs/(?P<run>[^/]+)/(?P<part>run\.json|metrics\.jsonl|log-(?P<log>[0-9]{1,6}))"
                     r"|blobs/(?P<blob>[0-9a-f]{64})|snapshots/(?P<snapshot>[0-9a-f]{64})\.json"
                     r"|models/(?P<model>[0-9]{1,6})\.json)")


class TransferError(RundockError):
    """Runs that cannot be exported or imported as asked (a live run, an archive that is not valid)."""


class ArchiveError(TransferError, ValueError):
    """The archive is not a valid rundock export: not one at all, damaged, hostile, or of a newer format."""

    def __init__(self, message: str, member: str | None = None) -> None:
        super().__init__(f"{member}: {message}" if member else message)
        self.member = member


@dataclasses.dataclass(frozen=True)
class Member:
    """What an archive member is, from its name: ``kind`` is manifest, run, metrics, log, blob, snapshot or
    model; ``key`` is the run id, digest, snapshot id or model index; ``index`` a log's position."""

    name: str
    kind: str
    key: str = ""
    index: int = 0


def member(name: str) -> Member:
    """Classify a member name; ArchiveError for a name an export never writes (``..``, absolute, unknown)."""
    try:
        clean = artifact_name(name)
    except ValueError as exc:
        raise ArchiveError(f"refused: {exc}", name) from None
    if clean != name:
        raise ArchiveError(f"refused: the name is not in normal form (expected {clean!r})", name)
    if name == MANIFEST:
        return Member(name, "manifest")
    found = _MEMBER.fullmatch(name)
    if found is None:
        raise ArchiveError("refused: a rundock export has no member of this name", name)
    if found["run"] is not None:
        problem = rec_types.run_id_error(found["run"])
        if problem:
            raise ArchiveError(f"refused: {problem}", name)
        part = found["part"]
        if found["log"] is not None:
            return Member(name, "log", found["run"], int(found["log"]))
        return Member(name, "run" if part == "run.json" else "metrics", found["run"])
    if found["blob"] is not None:
        return Member(name, "blob", found["blob"])
    if found["snapshot"] is not None:
        return Member(name, "snapshot", found["snapshot"])
    return Member(name, "model", found["model"], int(found["model"]))


def run_member(run_id: str, part: str) -> str:
    return f"runs/{run_id}/{part}"


# -- reading JSON documents ----------------------------------------------------------------------------
class _Fields:
    """Typed getters over one JSON object of a member; every failure names the member and the field."""

    def __init__(self, data: Any, where: str, path: str = "") -> None:
        if not isinstance(data, dict):
            raise ArchiveError(f"{path or 'the document'} must be a JSON object", where)
        self.data, self.where, self.path = data, where, path

    def fail(self, key: str, problem: str) -> ArchiveError:
        return ArchiveError(f"field '{self.path}{key}' {problem}", self.where)

    def get(self, key: str, kinds: tuple[type, ...], optional: bool = False) -> Any:
        value = self.data.get(key)
        if value is None and optional:
            return None
        if isinstance(value, bool) and bool not in kinds or not isinstance(value, kinds):
            names = " or ".join(k.__name__ for k in kinds)
            raise self.fail(key, f"must be {names}{' or null' if optional else ''}, got {value!r:.80}")
        return value

    def text(self, key: str, optional: bool = False, limit: int = rec_types.MAX_TEXT) -> Any:
        value = self.get(key, (str,), optional)
        if value is not None and (len(value) > limit or "\0" in value or not _utf8(value)):
            raise self.fail(key, f"must be UTF-8 text of at most {limit} characters without NUL")
        return value

    def number(self, key: str, optional: bool = False) -> Any:
        value = self.get(key, (int, float), optional)
        if value is not None and not math.isfinite(value):
            raise self.fail(key, f"must be a finite number, got {value!r}")
        return None if value is None else float(value)

    def whole(self, key: str, low: int = 0) -> int:
        value = self.get(key, (int,))
        if not low <= value <= rec_types.MAX_INT:
            raise self.fail(key, f"must be a whole number from {low} to 2**63-1, got {value}")
        return int(value)

    def digest(self, key: str, optional: bool = False) -> Any:
        value = self.get(key, (str,), optional)
        if value is not None and not _DIGEST.fullmatch(value):
            raise self.fail(key, "must be a SHA-256 hex digest")
        return value

    def name(self, key: str) -> str:
        """A run file name (or model path, log name) in the normal form the history holds."""
        value = self.text(key, limit=4096)
        try:
            clean = artifact_name(value)
        except ValueError as exc:
            raise self.fail(key, f"is refused: {exc}") from None
        if clean != value:
            raise self.fail(key, f"is not in normal form (expected {clean!r})")
        return str(value)

    def run_id(self, key: str, optional: bool = False) -> Any:
        value = self.get(key, (str,), optional)
        if value is not None and rec_types.run_id_error(value):
            raise self.fail(key, str(rec_types.run_id_error(value)))
        return value

    def strings(self, key: str, nullable: bool) -> dict[str, Any]:
        """A map of tags (values may be null) or properties, held to the journal's limits."""
        values = self.get(key, (dict,))
        kind = rec_types.TAGS if nullable else rec_types.PROPERTIES
        try:
            rec_types.check({"seq": 1, "type": kind, "values": values}, rundir.AGENT_SOURCE, "x")
        except rec_types.RecordError as exc:
            raise self.fail(key, f"is refused: {exc}") from None
        return dict(values)

    def items(self, key: str) -> list[_Fields]:
        values = self.get(key, (list,))
        return [_Fields(v, self.where, f"{self.path}{key}[{i}].") for i, v in enumerate(values)]

    def sub(self, key: str) -> _Fields:
        return _Fields(self.data.get(key), self.where, f"{self.path}{key}.")


def _utf8(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def load_json(data: bytes, where: str) -> Any:
    try:
        return json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise ArchiveError(f"not valid JSON ({type(exc).__name__}: {str(exc)[:200]})", where) from None


@dataclasses.dataclass
class Manifest:
    created: float
    source: str
    runs: list[str]  # run ids, in archive order
    models: int  # how many models/<i>.json members follow


def parse_manifest(data: Any) -> Manifest:
    """The manifest, refusing another format and a newer version of this one."""
    doc = _Fields(data, MANIFEST)
    if doc.data.get("format") != FORMAT:
        raise ArchiveError(f"not a rundock export (its 'format' is {doc.data.get('format')!r:.60})", MANIFEST)
    version = doc.whole("version", 1)
    if version > VERSION:
        raise ArchiveError(f"the archive has format version {version}, newer than this rundock's ({VERSION}): "
                           f"it was written by a newer rundock; upgrade rundock to import it", MANIFEST)
    runs = [entry.run_id("run_id") for entry in doc.items("runs")]
    if len(set(runs)) != len(runs):
        raise ArchiveError("a run is listed twice", MANIFEST)
    return Manifest(doc.number("created"), doc.text("source", limit=4096), runs, doc.whole("models"))


@dataclasses.dataclass
class RunDoc:
    """One run of an archive: everything ``run.json`` says about it."""

    record: RunRecord
    history: list[StatusChange]
    files: list[FileRecord]
    logs: list[str]
    metrics: int

    @property
    def total(self) -> int:
        """The journal mark an import of this run ends at: one record per metric, file, state and heartbeat."""
        beat = self.record.last_heartbeat is not None and self.record.heartbeat_interval is not None
        return self.metrics + len(self.files) + len(self.history) - 1 + int(beat)


def parse_run(data: Any, where: str, run_id: str) -> RunDoc:
    doc = _Fields(data, where)
    run = doc.sub("run")
    if run.run_id("run_id") != run_id:
        raise run.fail("run_id", f"is {run.data.get('run_id')!r}, not the run its member names ({run_id})")
    experiment = run.text("experiment", limit=255)
    if not _EXPERIMENT.fullmatch(experiment):
        raise run.fail("experiment", "must be 1-255 letters, digits, '-' or '_', starting with a letter or digit")
    status = _status(run, "status")
    if not status.is_terminal:
        raise run.fail("status", f"is {status.value}: only finished runs are exported")
    interval = run.number("heartbeat_interval", optional=True)
    if interval is not None and interval <= 0:
        raise run.fail("heartbeat_interval", "must be above 0")
    record = RunRecord(
        run_id=run_id, experiment=experiment, number=run.whole("number", 1), status=status,
        created_at=run.number("created_at"), parent_id=run.run_id("parent_id", optional=True),
        run_type=run.text("run_type", limit=255), display_name=run.text("display_name", optional=True),
        description=run.text("description", optional=True), target=run.text("target", limit=255),
        run_definition=run.get("run_definition", (dict,)), snapshot_id=run.digest("snapshot_id", optional=True),
        submitted_by=run.text("submitted_by", optional=True), start_at=run.number("start_at", optional=True),
        end_at=run.number("end_at", optional=True), status_detail=run.text("status_detail"),
        error=run.get("error", (dict,), optional=True), last_heartbeat=run.number("last_heartbeat", optional=True),
        heartbeat_interval=interval, tags=run.strings("tags", nullable=True),
        properties=run.strings("properties", nullable=False), archived=run.get("archived", (bool,)))
    if record.parent_id == run_id:
        raise run.fail("parent_id", "names the run itself")
    history = [StatusChange(_status(s, "status"), s.number("at"), s.text("detail"))
               for s in doc.items("status_history")]
    _check_history(history, status, doc)
    files = [FileRecord(f.name("name"), f.digest("digest"), f.whole("size"), f.number("at"))
             for f in doc.items("files")]
    logs = [entry.name("name") for entry in doc.items("logs")]
    for what, names in (("files", [f.name for f in files]), ("logs", logs)):
        if len(set(names)) != len(names):
            raise doc.fail(what, "names a file twice")
    return RunDoc(record, history, files, logs, doc.whole("metrics"))


def _status(doc: _Fields, key: str) -> RunStatus:
    value = doc.get(key, (str,))
    try:
        status = RunStatus(value)
    except ValueError:
        raise doc.fail(key, f"is not a run status: {value!r:.40}") from None
    if status == RunStatus.NOT_RESPONDING:
        raise doc.fail(key, "is NotResponding, which is never recorded")
    return status


def _check_history(history: list[StatusChange], final: RunStatus, doc: _Fields) -> None:
    """A status history is a run's moves by the transition table, from NotStarted to its final status."""
    if not history or history[0].status != RunStatus.NOT_STARTED:
        raise doc.fail("status_history", "must start with NotStarted")
    for before, after in zip(history, history[1:]):
        if not can_transition(before.status, after.status):
            raise doc.fail("status_history", f"moves from {before.status.value} to {after.status.value}, which "
                                             "the transition table forbids")
    if history[-1].status != final:
        raise doc.fail("status_history", f"ends in {history[-1].status.value}, not the run's status {final.value}")


def run_json(record: RunRecord, history: list[StatusChange], files: list[FileRecord], logs: list[str],
             metrics: int) -> dict[str, Any]:
    """``run.json`` of a run (its run directory stays behind: it is a path on the machine it ran on)."""
    run = dataclasses.asdict(record)
    run.pop("run_dir")
    run["status"] = record.status.value
    return {"run": run,
            "status_history": [{"status": c.status.value, "at": c.at, "detail": c.detail} for c in history],
            "files": [dataclasses.asdict(f) for f in files], "logs": [{"name": n} for n in logs], "metrics": metrics}


def metric_line(m: MetricRecord) -> bytes:
    return json.dumps([m.name, m.kind, m.value, m.step, m.description, m.at]).encode("utf-8") + b"\n"


def metric_record(line: bytes, seq: int, run_id: str, where: str) -> dict[str, Any]:
    """A metric line as the journal record that logs it (checked by the journal's own gate)."""
    row = load_json(line, where)
    if not isinstance(row, list) or len(row) != 6:
        raise ArchiveError(f"metric {seq} must be [name, kind, value, step, description, at]", where)
    name, kind, value, step, description, at = row
    rec = {"seq": seq, "type": rec_types.METRIC, "name": name, "kind": kind, "value": value, "step": step,
           "description": description, "t": at}
    try:
        rec_types.check(rec, rundir.AGENT_SOURCE, run_id)
    except rec_types.RecordError as exc:
        raise ArchiveError(f"metric {seq}: {exc}", where) from None
    return rec


def model_json(model: ModelRecord) -> dict[str, Any]:
    return dataclasses.asdict(model)


def parse_model(data: Any, where: str) -> ModelRecord:
    doc = _Fields(data, where)
    name = doc.text("name", limit=255)
    if not name or not name.isprintable() or "/" in name or "\\" in name:
        raise doc.fail("name", "must be 1-255 printable characters without '/' or '\\'")
    files = [{"name": f.name("name"), "digest": f.digest("digest"), "size": f.whole("size")}
             for f in doc.items("files")]
    return ModelRecord(name=name, version=doc.whole("version", 1), run_id=doc.run_id("run_id"), path=doc.name("path"),
                       files=files, created_at=doc.number("created_at"), tags=doc.strings("tags", nullable=True),
                       properties=doc.strings("properties", nullable=False),
                       framework=doc.text("framework", optional=True, limit=255),
                       framework_version=doc.text("framework_version", optional=True, limit=255),
                       description=doc.text("description", optional=True))


def parse_snapshot(data: Any, where: str, snapshot_id: str) -> list[dict[str, Any]]:
    """A snapshot manifest whose content hashes to its id (a wrong one would poison later submits)."""
    from rundock.submitter.snapshot import manifest_id  # the one definition of a snapshot's id

    if not isinstance(data, list):
        raise ArchiveError("a snapshot manifest must be a JSON list", where)
    for i, raw in enumerate(data):
        entry = _Fields(raw, where, f"[{i}].")
        entry.name("path")
        entry.digest("digest")
        entry.whole("size")
        if "mode" in raw and entry.whole("mode") > 0o7777:
            raise entry.fail("mode", "is above 0o7777")
        extra = sorted(set(raw) - _SNAPSHOT_FIELDS)
        if extra:
            raise entry.fail("", f"has fields a snapshot entry never has: {extra}")
    if manifest_id(data) != snapshot_id:
        raise ArchiveError("the manifest's content does not hash to its snapshot id", where)
    manifest: list[dict[str, Any]] = data
    return manifest
