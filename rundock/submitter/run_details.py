"""What ``Run.get_details()`` and ``get_detailed_status()`` return, built from a run record (Azure ML v1 shapes)."""

from __future__ import annotations

from typing import Any

from rundock.history.artifacts import ArtifactStore
from rundock.history.records import RunRecord, iso_utc
from rundock.history.store import RunStore
from rundock.states import RunStatus


def detailed_status(run: RunRecord, shown: str) -> dict[str, str]:
    """``{'status': ..., 'details': ...}``: why the run is where it is (``shown`` may be NotResponding)."""
    details = run.status_detail
    if shown == RunStatus.NOT_RESPONDING.value:
        if run.target not in ("local", "sdk"):
            details = (f"the agent on target {run.target} has not been heard from for longer than its lease (its "
                       f"host may be unreachable); last status {run.status.value}: {details}")
        else:
            every = f" (it beats every {run.heartbeat_interval:g} s)" if run.heartbeat_interval else ""
            details = (f"no heartbeat from the agent for longer than its lease{every}; last status "
                       f"{run.status.value}: {details}")
    elif run.error:
        message = str(run.error.get("message", ""))
        details = message if message.startswith(details) else f"{details}: {message}"
    return {"status": shown, "details": details}


def details(run: RunRecord, shown: str, store: RunStore, artifacts: ArtifactStore) -> dict[str, Any]:
    """runId, target, status, times, properties, runDefinition, logFiles (paths), submittedBy (and error)."""
    out: dict[str, Any] = {"runId": run.run_id, "target": run.target, "status": shown}
    if run.start_at:
        out["startTimeUtc"] = iso_utc(run.start_at)
    if run.status.is_terminal:
        out["endTimeUtc"] = iso_utc(run.end_at)
    out.update({
        "properties": dict(run.properties), "inputDatasets": [], "outputDatasets": [],
        "runDefinition": run.run_definition,
        "logFiles": {name: artifacts.file_path(f.digest) for name, f in store.list_files(run.run_id).items()
                     if name.startswith(("system_logs/", "logs/"))},
        "submittedBy": run.submitted_by})
    if run.error:
        out["error"] = {"error": dict(run.error)}
    return out


def with_logs(details: dict[str, Any]) -> dict[str, Any]:
    """``details`` with the content of each log file instead of its location."""
    logs = {}
    for name, path in details["logFiles"].items():
        with open(path, encoding="utf-8", errors="replace") as fh:
            logs[name] = fh.read()
    return {**details, "logFiles": logs}
