"""Plain records the run history hands out, and the plan of a journal batch."""

from __future__ import annotations

import dataclasses
import datetime as _dt
import json
import math
import re
from typing import Any, Iterable, NamedTuple

from rundock.states import RunStatus


def iso_utc(ts: float | None) -> str | None:
    """A unix time as ISO 8601 UTC with a trailing Z (Azure ML's format)."""
    if ts is None:
        return None
    return _dt.datetime.fromtimestamp(ts, _dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


@dataclasses.dataclass
class RunRecord:
    """One run as stored; ``status`` is the stored status (see liveness for NotResponding)."""

    run_id: str
    experiment: str
    number: int
    status: RunStatus
    created_at: float
    parent_id: str | None = None
    run_type: str = "rundock.scriptrun"
    display_name: str | None = None
    description: str | None = None
    target: str = "local"
    run_definition: dict[str, Any] = dataclasses.field(default_factory=dict)
    snapshot_id: str | None = None
    submitted_by: str | None = None
    run_dir: str | None = None
    start_at: float | None = None
    end_at: float | None = None
    status_detail: str = ""
    error: dict[str, Any] | None = None
    last_heartbeat: float | None = None
    heartbeat_interval: float | None = None
    tags: dict[str, str | None] = dataclasses.field(default_factory=dict)
    properties: dict[str, str] = dataclasses.field(default_factory=dict)
    archived: bool = False  # hidden from listings unless asked for (`rundock archive`)


@dataclasses.dataclass(frozen=True)
class StatusChange:
    status: RunStatus
    at: float
    detail: str


class MetricRecord(NamedTuple):
    """One logged value: kind is scalar, list, row, table, image or a JSON schema (a tuple: made by the
    hundred thousand when a journal is shipped)."""

    name: str
    kind: str
    value: Any
    step: int | None = None
    description: str = ""
    at: float = 0.0


@dataclasses.dataclass(frozen=True)
class FileRecord:
    name: str
    digest: str
    size: int
    at: float


@dataclasses.dataclass
class ModelRecord:
    """One registered version of a model: files of a run, by content."""

    name: str
    version: int
    run_id: str | None
    path: str
    files: list[dict[str, Any]]
    created_at: float
    tags: dict[str, str | None] = dataclasses.field(default_factory=dict)
    properties: dict[str, str] = dataclasses.field(default_factory=dict)
    framework: str | None = None
    framework_version: str | None = None
    description: str | None = None


@dataclasses.dataclass
class JournalPlan:
    """What a batch of journal records does to a run, in application order."""

    last_seq: int = 0
    metrics: list[MetricRecord] = dataclasses.field(default_factory=list)
    tags: dict[str, str | None] = dataclasses.field(default_factory=dict)
    properties: dict[str, str] = dataclasses.field(default_factory=dict)
    files: list[FileRecord] = dataclasses.field(default_factory=list)
    states: list[tuple[RunStatus, float, str, dict[str, Any] | None]] = dataclasses.field(default_factory=list)
    heartbeat: tuple[float, float] | None = None
    create: dict[str, Any] | None = None  # a child run created by its job


def plan_journal(records: list[dict[str, Any]], after_seq: int) -> JournalPlan:
    """Turn journal records with ``seq > after_seq`` into a plan (pure, no I/O).

    The records are those of one run: the syncer routes records that name
    another run (``"run"``: a child created by the job) to that run.
    File records must already carry ``digest`` and ``size`` (the syncer
    ingests staged paths into the artifact store before planning).

    ValueError for what no history can hold: a digest that is not a SHA-256
    in lowercase hex, a sequence number, step or size beyond 64 bits, a time
    that is not a finite number.
    """
    plan = JournalPlan(last_seq=after_seq)
    metrics = plan.metrics
    last = after_seq
    for rec in records:
        seq = rec["seq"]
        if seq <= after_seq:
            continue
        if seq > last:
            last = seq
        kind = rec["type"]
        if kind == "metric":  # the common case, by far: kept short
            metrics.append(MetricRecord(rec["name"], rec.get("kind", "scalar"), rec.get("value"), rec.get("step"),
                                        rec.get("description") or "", rec.get("t", 0.0)))
            continue
        at = float(rec.get("t", 0.0))
        if not math.isfinite(at):
            raise ValueError(f"record {seq}: its time 't' must be a finite number, got {at!r}")
        if kind == "tags":
            plan.tags.update(rec["values"])
        elif kind == "properties":
            for key, val in rec["values"].items():
                plan.properties.setdefault(key, val)
        elif kind == "file":
            plan.files.append(_file_record(rec, seq, at))
        elif kind == "state":
            plan.states.append((RunStatus(rec["status"]), at, rec.get("detail", ""), rec.get("error")))
        elif kind == "heartbeat":
            plan.heartbeat = (at, float(rec["interval"]))
        elif kind == "child":
            plan.create = {"parent": rec["parent"], "name": rec.get("name"), "at": at}
            plan.tags.update(rec.get("tags") or {})
            plan.states.append((RunStatus.RUNNING, at, "child run started by its job", None))
    if last > _INT64_MAX:
        raise ValueError(f"sequence number {last} is beyond what the history holds (64 bits)")
    for m in metrics:
        if type(m.step) is int and not -_INT64_MAX - 1 <= m.step <= _INT64_MAX:
            raise ValueError(f"metric {m.name!r}: step {m.step} is beyond what the history holds (64 bits)")
    plan.last_seq = last
    return plan


def join_log_chunks(chunks: Iterable[tuple[int, bytes]], offset: int) -> bytes:
    """The contiguous bytes of a live log from ``offset`` on, from its stored chunks ``(pos, data)`` in order of
    ``pos``: chunks may overlap (a log shipped again with other boundaries); a gap ends the answer (the rest
    arrives later). Every backend's ``read_log``."""
    out, at = bytearray(), offset
    for pos, data in chunks:
        if pos + len(data) <= at:
            continue
        if pos > at:
            break
        out += data[at - pos:]
        at = pos + len(data)
    return bytes(out)


_INT64_MAX = (1 << 63) - 1
_DIGEST = re.compile(r"[0-9a-f]{64}")


def _file_record(rec: dict[str, Any], seq: Any, at: float) -> FileRecord:
    digest, size = rec["digest"], int(rec["size"])
    if not isinstance(digest, str) or not _DIGEST.fullmatch(digest):
        raise ValueError(f"record {seq}: file digest {digest!r} is not a SHA-256 in lowercase hex (64 characters)")
    if not 0 <= size <= _INT64_MAX:
        raise ValueError(f"record {seq}: file size {size} is not a size the history can hold")
    return FileRecord(rec["name"], digest, size, at)


_INF = float("inf")


def value_json(value: Any) -> str:
    """A metric value as JSON text; plain numbers without going through the json module."""
    kind = type(value)
    if kind is int:
        return str(value)
    if kind is float and value == value and value not in (_INF, -_INF):
        return repr(value)
    return json.dumps(value)
