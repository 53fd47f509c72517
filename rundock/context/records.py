"""Journal records: every type, its fields and who may write it (standard library only).

A journal line is one JSON object with ``seq`` (the writer's sequence number,
from 1), ``t`` (the writer's wall time, informative only) and ``type``. A
record about a child run the job created carries ``run`` (the child's id).

| type       | fields                                              | written by                          |
|------------|-----------------------------------------------------|-------------------------------------|
| metric     | name, kind? (scalar), value, step?, description?    | job (own run or its children)       |
| tags       | values {str: str or null}                           | job                                 |
| properties | values {str: str}                                   | job                                 |
| file       | name + path (a file in ``uploads/``)                | job                                 |
| file       | name + digest + size (already in the artifact store)| agent only                          |
| child      | parent, name?, tags?  (with ``run`` = the child id) | job                                 |
| state      | status, detail?, error?                             | agent (the run); job (its children) |
| heartbeat  | interval                                            | agent only                          |

``check`` is the one gate: the syncer calls it on every record before
anything reaches the run history, and a record that fails is quarantined
with the reason (never the whole batch). The job is untrusted: whatever it
writes into its journal files, it cannot change its own run's state, beat
for its agent, name a stored blob it did not upload, or reach outside the
run's upload area.
"""

from __future__ import annotations

import math
import re
from typing import Any

from rundock.context import rundir
from rundock.context.names import artifact_name, metric_name
from rundock.states import RunStatus

METRIC = "metric"
TAGS = "tags"
PROPERTIES = "properties"
FILE = "file"
CHILD = "child"
STATE = "state"
HEARTBEAT = "heartbeat"

TYPES = frozenset({METRIC, TAGS, PROPERTIES, FILE, CHILD, STATE, HEARTBEAT})
AGENT_ONLY = frozenset({HEARTBEAT})
METRIC_KINDS = frozenset({"scalar", "list", "row", "table", "image", "accuracy_table", "confusion_matrix",
                          "predictions", "residuals"})
MAX_INT = (1 << 63) - 1  # what the history stores as an integer
MAX_TEXT = 256 << 10  # a tag, property or description longer than 256 KiB is refused (a record is <= 1 MiB)
_RUN_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.\-]{0,254}")
_DIGEST = re.compile(r"[0-9a-f]{64}")


class RecordError(ValueError):
    """A journal record that may not be applied (malformed, or not its writer's to make)."""


def run_id_error(run_id: Any) -> str | None:
    """Why ``run_id`` is not a valid run id (letters, digits, ``_ . -``; at most 255), or None."""
    if not isinstance(run_id, str) or not _RUN_ID.fullmatch(run_id) or ".." in run_id:
        return f"run id {run_id!r} is not valid: use letters, digits, '_', '.' and '-' (no '..', at most 255)"
    return None


def check_run_id(run_id: Any) -> str:
    """``run_id`` if it is a valid run id; ValueError otherwise."""
    problem = run_id_error(run_id)
    if problem:
        raise ValueError(problem)
    return str(run_id)


def _text(value: Any, what: str, optional: bool = False) -> None:
    if value is None and optional:
        return
    if not isinstance(value, str):
        raise RecordError(f"{what} must be a string, got {type(value).__name__}")
    if len(value) > MAX_TEXT:
        raise RecordError(f"{what} is {len(value)} characters long; the limit is {MAX_TEXT}")
    _utf8(value, what)


def _utf8(value: str, what: str) -> None:
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise RecordError(f"{what} {value!r} is not valid UTF-8") from None


def _string_map(values: Any, what: str, nullable: bool) -> None:
    if not isinstance(values, dict):
        raise RecordError(f"{what} must be an object")
    for key, val in values.items():
        _text(key, f"{what} key")
        if len(key) > 255:
            raise RecordError(f"{what} key {key[:40]!r}... is longer than 255 characters")
        _text(val, f"{what} {key!r}", optional=nullable)


def _finite(value: Any, what: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise RecordError(f"{what} must be a finite number, got {value!r}")
    return float(value)


def is_plain_metric(record: Any) -> bool:
    """The common case, checked fast: a scalar metric of the run itself (what ``run.log(name, value)``
    writes). True means ``check`` would accept it from any source; False means: ask ``check``."""
    if type(record) is not dict or record.get("type") != METRIC or "run" in record or len(record) > 6:
        return False
    seq, name, t = record.get("seq"), record.get("name"), record.get("t", 0.0)
    return (type(seq) is int and 0 < seq <= MAX_INT and type(name) is str and 0 < len(name) <= 255 and name.isascii()
            and record.get("kind", "scalar") == "scalar" and (type(t) is float or type(t) is int)
            and math.isfinite(t) and "step" not in record and "description" not in record)


def check(record: Any, source: str, run_id: str, children: frozenset[str] | set[str] = frozenset()) -> None:
    """Raise RecordError unless ``record`` from journal ``source`` of run ``run_id`` may be applied.

    ``children`` are the child runs of ``run_id`` known so far (created by its job); a record naming
    another run (``run``) must name one of them, except a ``child`` record that creates it.
    """
    if not isinstance(record, dict):
        raise RecordError("a record must be a JSON object")
    seq = record.get("seq")
    if isinstance(seq, bool) or not isinstance(seq, int) or not 1 <= seq <= MAX_INT:
        raise RecordError(f"'seq' must be a whole number from 1 to 2**63-1, got {seq!r}")
    kind = record.get("type")
    if kind not in TYPES:
        raise RecordError(f"unknown record type {kind!r}; known: {', '.join(sorted(TYPES))}")
    if "t" in record:
        _finite(record["t"], "'t'")
    agent = rundir.is_agent_source(source)
    if kind in AGENT_ONLY and not agent:
        raise RecordError(f"a {kind} record may only come from the run's agent, not from {source!r}")
    target = record.get("run", run_id)
    if target != run_id:
        problem = run_id_error(target)
        if problem:
            raise RecordError(problem)
        if agent:
            raise RecordError("the agent's records are about its own run only")
        if kind != CHILD and target not in children:
            raise RecordError(f"run {target!r} is not a child run created by this job")
    _CHECKS[kind](record, source, agent, target != run_id, run_id)


def _metric(record: dict[str, Any], source: str, agent: bool, child: bool, run_id: str) -> None:
    try:
        metric_name(record.get("name"))  # type: ignore[arg-type]
    except ValueError as exc:
        raise RecordError(str(exc)) from None
    _utf8(record["name"], "metric name")
    kind = record.get("kind", "scalar")
    if kind not in METRIC_KINDS:
        raise RecordError(f"metric kind {kind!r} is not one of {', '.join(sorted(METRIC_KINDS))}")
    step = record.get("step")
    if step is not None and (isinstance(step, bool) or not isinstance(step, int) or not -MAX_INT <= step <= MAX_INT):
        raise RecordError(f"metric step must be a whole number within 64 bits, got {step!r}")
    _text(record.get("description"), "metric description", optional=True)


def _values(record: dict[str, Any], source: str, agent: bool, child: bool, run_id: str) -> None:
    _string_map(record.get("values"), f"{record['type']} values", nullable=record["type"] == TAGS)


def _file(record: dict[str, Any], source: str, agent: bool, child: bool, run_id: str) -> None:
    name = record.get("name")
    _text(name, "file name")
    try:
        clean = artifact_name(name)  # type: ignore[arg-type]
    except ValueError as exc:
        raise RecordError(str(exc)) from None
    if clean != name:
        raise RecordError(f"file name {name!r} is not in normal form (expected {clean!r})")
    if agent and "digest" in record:
        if not isinstance(record["digest"], str) or not _DIGEST.fullmatch(record["digest"]):
            raise RecordError(f"file digest {record['digest']!r} is not a SHA-256 hex digest")
        if isinstance(record.get("size"), bool) or not isinstance(record.get("size"), int) or record["size"] < 0:
            raise RecordError(f"file size {record.get('size')!r} is not a whole number >= 0")
        return
    if "digest" in record:
        raise RecordError("a job's file record names a staged file ('path'), never a stored blob ('digest')")
    upload_path(record.get("path"))


def upload_path(path: Any) -> str:
    """The normalized relative path of a staged upload (``uploads/<name>``); RecordError otherwise."""
    if not isinstance(path, str) or not path:
        raise RecordError(f"file record 'path' must name a file in {rundir.UPLOADS_DIR}/, got {path!r}")
    try:
        clean = artifact_name(path)
    except ValueError as exc:
        raise RecordError(f"file record 'path': {exc}") from None
    parts = clean.split("/")
    if clean != path or len(parts) != 2 or parts[0] != rundir.UPLOADS_DIR:
        raise RecordError(f"file record 'path' {path!r} is not a file directly in {rundir.UPLOADS_DIR}/")
    return clean


def _child(record: dict[str, Any], source: str, agent: bool, child: bool, run_id: str) -> None:
    if not child:
        raise RecordError("a child record must name the new child run ('run')")
    problem = run_id_error(record.get("parent"))
    if problem:
        raise RecordError(f"child record 'parent': {problem}")
    _text(record.get("name"), "child run name", optional=True)
    _string_map(record.get("tags") or {}, "child tags", nullable=True)


def _state(record: dict[str, Any], source: str, agent: bool, child: bool, run_id: str) -> None:
    try:
        status = RunStatus(record.get("status"))
    except ValueError:
        raise RecordError(f"unknown status {record.get('status')!r}") from None
    if not agent and not child:
        raise RecordError(f"only the run's agent changes the run's state; {source!r} asked for {status.value}")
    if status == RunStatus.NOT_RESPONDING:
        raise RecordError("NotResponding is derived by readers, never recorded")
    _text(record.get("detail", ""), "state detail")
    error = record.get("error")
    if error is not None and not isinstance(error, dict):
        raise RecordError("state 'error' must be an object")


def _heartbeat(record: dict[str, Any], source: str, agent: bool, child: bool, run_id: str) -> None:
    if _finite(record.get("interval"), "heartbeat interval") <= 0:
        raise RecordError("heartbeat interval must be above 0")


_CHECKS = {METRIC: _metric, TAGS: _values, PROPERTIES: _values, FILE: _file, CHILD: _child, STATE: _state,
           HEARTBEAT: _heartbeat}
