"""The run history's records as JSON: the one place that says how they cross the team server's HTTP API.

Both sides use these functions: the server to answer, the HTTP store (``https://`` history URIs) to read the
answers. Each ``*_from_json`` checks the shape it is given and raises ``ValueError`` naming the field that is wrong,
so that a bad answer (or request) is a clear error rather than a stray ``KeyError`` later.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Dict, Mapping

from rundock.history.records import FileRecord, JournalPlan, MetricRecord, ModelRecord, RunRecord, StatusChange
from rundock.states import RunStatus

Json = Dict[str, Any]

_RUN_FIELDS = ("run_id", "experiment", "number", "status", "created_at", "parent_id", "run_type", "display_name",
               "description", "target", "run_definition", "snapshot_id", "submitted_by", "run_dir", "start_at",
               "end_at", "status_detail", "error", "last_heartbeat", "heartbeat_interval", "tags", "properties",
               "archived")


def _field(data: Mapping[str, Any], name: str, kind: type | tuple[type, ...], what: str) -> Any:
    if not isinstance(data, Mapping):
        raise ValueError(f"{what}: expected a JSON object, got {type(data).__name__}")
    if name not in data:
        raise ValueError(f"{what}: missing field {name!r}")
    value = data[name]
    if not isinstance(value, kind) or (isinstance(value, bool) and bool not in _kinds(kind)):
        raise ValueError(f"{what}: field {name!r} has the wrong type ({type(value).__name__})")
    return value


def _kinds(kind: type | tuple[type, ...]) -> tuple[type, ...]:
    return kind if isinstance(kind, tuple) else (kind,)


def _opt(data: Mapping[str, Any], name: str, kind: type | tuple[type, ...], what: str) -> Any:
    if data.get(name) is None:
        return None
    return _field(data, name, kind, what)


_NUM = (int, float)


def run_to_json(run: RunRecord) -> Json:
    out = {name: getattr(run, name) for name in _RUN_FIELDS}
    out["status"] = run.status.value
    return out


def run_from_json(data: Mapping[str, Any]) -> RunRecord:
    what = "run record"
    return RunRecord(
        run_id=_field(data, "run_id", str, what), experiment=_field(data, "experiment", str, what),
        number=_field(data, "number", int, what), status=RunStatus(_field(data, "status", str, what)),
        created_at=float(_field(data, "created_at", _NUM, what)), parent_id=_opt(data, "parent_id", str, what),
        run_type=_field(data, "run_type", str, what), display_name=_opt(data, "display_name", str, what),
        description=_opt(data, "description", str, what), target=_field(data, "target", str, what),
        run_definition=_opt(data, "run_definition", dict, what) or {},
        snapshot_id=_opt(data, "snapshot_id", str, what), submitted_by=_opt(data, "submitted_by", str, what),
        run_dir=_opt(data, "run_dir", str, what), start_at=_opt(data, "start_at", _NUM, what),
        end_at=_opt(data, "end_at", _NUM, what), status_detail=data.get("status_detail") or "",
        error=_opt(data, "error", dict, what), last_heartbeat=_opt(data, "last_heartbeat", _NUM, what),
        heartbeat_interval=_opt(data, "heartbeat_interval", _NUM, what),
        tags=dict(_opt(data, "tags", dict, what) or {}), properties=dict(_opt(data, "properties", dict, what) or {}),
        archived=bool(data.get("archived", False)))


def status_to_json(change: StatusChange) -> Json:
    return {"status": change.status.value, "at": change.at, "detail": change.detail}


def status_from_json(data: Mapping[str, Any]) -> StatusChange:
    what = "status change"
    return StatusChange(RunStatus(_field(data, "status", str, what)), float(_field(data, "at", _NUM, what)),
                        str(data.get("detail") or ""))


def metric_to_json(metric: MetricRecord) -> list[Any]:
    """A metric as a short array (``[name, kind, value, step, description, at]``): batches hold thousands."""
    return [metric.name, metric.kind, metric.value, metric.step, metric.description, metric.at]


def metric_from_json(data: Any) -> MetricRecord:
    if not isinstance(data, list) or len(data) != 6:
        raise ValueError("metric record: expected [name, kind, value, step, description, at]")
    name, kind, value, step, description, at = data
    if not isinstance(name, str) or not isinstance(kind, str) or not isinstance(description, str):
        raise ValueError("metric record: name, kind and description must be strings")
    if step is not None and (not isinstance(step, int) or isinstance(step, bool)):
        raise ValueError(f"metric record {name!r}: step must be an integer or null")
    if not isinstance(at, _NUM) or isinstance(at, bool):
        raise ValueError(f"metric record {name!r}: at must be a number")
    return MetricRecord(name, kind, value, step, description, float(at))


def file_to_json(record: FileRecord) -> Json:
    return {"name": record.name, "digest": record.digest, "size": record.size, "at": record.at}


def file_from_json(data: Mapping[str, Any]) -> FileRecord:
    what = "file record"
    return FileRecord(_field(data, "name", str, what), _field(data, "digest", str, what),
                      int(_field(data, "size", int, what)), float(_field(data, "at", _NUM, what)))


def model_to_json(model: ModelRecord) -> Json:
    return {"name": model.name, "version": model.version, "run_id": model.run_id, "path": model.path,
            "files": model.files, "created_at": model.created_at, "tags": model.tags,
            "properties": model.properties, "framework": model.framework,
            "framework_version": model.framework_version, "description": model.description}


def model_from_json(data: Mapping[str, Any]) -> ModelRecord:
    what = "model record"
    return ModelRecord(
        name=_field(data, "name", str, what), version=_field(data, "version", int, what),
        run_id=_opt(data, "run_id", str, what), path=_field(data, "path", str, what),
        files=list(_field(data, "files", list, what)), created_at=float(_field(data, "created_at", _NUM, what)),
        tags=dict(_opt(data, "tags", dict, what) or {}), properties=dict(_opt(data, "properties", dict, what) or {}),
        framework=_opt(data, "framework", str, what), framework_version=_opt(data, "framework_version", str, what),
        description=_opt(data, "description", str, what))


def plan_to_json(plan: JournalPlan) -> Json:
    return {"last_seq": plan.last_seq, "metrics": [metric_to_json(m) for m in plan.metrics], "tags": plan.tags,
            "properties": plan.properties, "files": [file_to_json(f) for f in plan.files],
            "states": [[status.value, at, detail, error] for status, at, detail, error in plan.states],
            "heartbeat": list(plan.heartbeat) if plan.heartbeat else None, "create": plan.create}


def plan_from_json(data: Mapping[str, Any]) -> JournalPlan:
    what = "journal plan"
    states = []
    for item in _opt(data, "states", list, what) or []:
        if not isinstance(item, list) or len(item) != 4:
            raise ValueError(f"{what}: a state is [status, at, detail, error]")
        status, at, detail, error = item
        if not isinstance(at, _NUM) or not isinstance(detail, str) or not isinstance(error, (dict, type(None))):
            raise ValueError(f"{what}: a state is [status, at, detail, error]")
        states.append((RunStatus(status), float(at), detail, error))
    heartbeat = _opt(data, "heartbeat", list, what)
    if heartbeat is not None and (len(heartbeat) != 2 or not all(isinstance(x, _NUM) for x in heartbeat)):
        raise ValueError(f"{what}: heartbeat is [at, interval]")
    return JournalPlan(
        last_seq=int(data.get("last_seq") or 0),
        metrics=[metric_from_json(m) for m in _opt(data, "metrics", list, what) or []],
        tags=dict(_opt(data, "tags", dict, what) or {}), properties=dict(_opt(data, "properties", dict, what) or {}),
        files=[file_from_json(f) for f in _opt(data, "files", list, what) or []], states=states,
        heartbeat=(float(heartbeat[0]), float(heartbeat[1])) if heartbeat else None,
        create=_opt(data, "create", dict, what))


def runs_to_json(runs: list[RunRecord]) -> list[Json]:
    return [run_to_json(r) for r in runs]


def optional_str(value: str | None) -> str | None:
    """Query parameters: an empty string means "not given"."""
    return value or None


@dataclasses.dataclass(frozen=True)
class Gpu:
    """One GPU of a pool's agent, as the agent reports it at register and the server keeps it in its ledger."""

    index: int
    name: str
    memory_mb: int

    def to_json(self) -> Json:
        return {"index": self.index, "name": self.name, "memory_mb": self.memory_mb}


def max_retries(run_definition: Any) -> int:
    """How many times a pool run whose agent was lost may go back to the queue: the run configuration's
    ``resources.max_retries`` (or a top-level ``max_retries``); 0 when absent or not a whole number.
    The server's sweeper and the pool agent both decide with this one rule."""
    if not isinstance(run_definition, Mapping):
        return 0
    resources = run_definition.get("resources")
    value = run_definition.get("max_retries", resources.get("max_retries") if isinstance(resources, Mapping) else None)
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else 0
