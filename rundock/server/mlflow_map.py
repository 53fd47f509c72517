"""How MLflow's tracking objects map onto rundock's run history (pure functions, no I/O).

The team server answers the part of MLflow's tracking REST API (``/api/2.0/mlflow``) that ``mlflow.start_run``,
``log_metric(s)``, ``log_param(s)``, ``set_tag(s)``, ``end_run``, ``MlflowClient.get_run``, ``search_runs`` and
``get_metric_history`` use. The mapping:

- **Experiment** = a rundock experiment name, and its MLflow ``experiment_id`` *is* that name (no second id to
  keep), except MLflow's default experiment: id ``"0"`` is rundock's experiment ``Default`` and the other way
  round. Names follow rundock's rule (1-255 letters, digits, ``-`` or ``_``, starting with a letter or digit);
  another name is refused with INVALID_PARAMETER_VALUE. A rundock experiment exists through its runs: one
  created through MLflow that has no run yet is remembered by the server process only.
- **Run** = a rundock run with the same ``run_id``. A run made by ``mlflow.start_run`` outside rundock is a run of
  type ``mlflow.run`` (target ``mlflow``, ``submitted_by`` = the token's name, never the client's ``user_id``);
  MLflow's ``run_name`` is the display name.
- **Status**: RUNNING/FINISHED/FAILED/KILLED are Running/Completed/Failed/Canceled, moved by the store's one
  ``transition`` (NotStarted→Running→final; a final status is never left). Statuses before Running read as
  SCHEDULED. The status of a run that rundock itself executes belongs to its agent: a status sent through MLflow
  for such a run is acknowledged and changes nothing (a job's own ``end_run()`` is followed by the agent's end).
- **Metrics** = rundock scalar metrics, with ``step`` (MLflow's default 0) and the time (MLflow's ms = rundock's
  seconds x 1000). Only numeric scalar values are MLflow metrics; lists, rows, tables and images logged through
  rundock's own API are not shown to MLflow clients. The run's metric value is its latest: the highest step,
  then the latest time, then the last logged.
- **Params** = run properties. Both are immutable: logging a param again with the same value is fine, with
  another value it is an INVALID_PARAMETER_VALUE error. Every property of a rundock run is a param to MLflow.
- **Tags** = rundock tags, MLflow's own ``mlflow.*`` tags included (kept as they are, so ``tags.mlflow.user``
  filters work); ``mlflow.runName`` also sets the display name, ``mlflow.note.content`` the description, and
  ``mlflow.parentRunId`` (a nested run) makes the new run a child of that run. A rundock tag without a value
  reads as an empty string.
- ``lifecycle_stage`` is ``deleted`` for an archived run, else ``active``. Artifacts are not served: a run's
  ``artifact_uri`` is empty.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Mapping
from typing import Any

from rundock.errors import RundockError
from rundock.history.records import MetricRecord, RunRecord
from rundock.states import RunStatus

MLFLOW_RUN_TYPE = "mlflow.run"
MLFLOW_TARGET = "mlflow"
DEFAULT_EXPERIMENT_ID = "0"
DEFAULT_EXPERIMENT = "Default"
RUN_NAME_TAG = "mlflow.runName"
NOTE_TAG = "mlflow.note.content"
PARENT_TAG = "mlflow.parentRunId"

# MLflow's own limits on what one run holds, so that a value MLflow would refuse is refused here too.
MAX_KEY_LENGTH = 250
MAX_PARAM_VALUE_LENGTH = 6000
MAX_TAG_VALUE_LENGTH = 8000

_EXPERIMENT_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,254}$")

# MLflow status <-> rundock status. Statuses before Running are SCHEDULED; the live ones RUNNING.
TO_RUNDOCK = {"RUNNING": RunStatus.RUNNING, "FINISHED": RunStatus.COMPLETED, "FAILED": RunStatus.FAILED,
              "KILLED": RunStatus.CANCELED}
_TO_MLFLOW = {RunStatus.COMPLETED: "FINISHED", RunStatus.FAILED: "FAILED", RunStatus.CANCELED: "KILLED",
              RunStatus.RUNNING: "RUNNING", RunStatus.FINALIZING: "RUNNING", RunStatus.CANCEL_REQUESTED: "RUNNING",
              RunStatus.NOT_RESPONDING: "RUNNING"}
# MLflow's RunStatus enum numbers: a client may send either the name or the number.
_STATUS_NUMBERS = {1: "RUNNING", 2: "SCHEDULED", 3: "FINISHED", 4: "FAILED", 5: "KILLED"}


class MlflowError(RundockError):
    """A request MLflow's way of saying no: an MLflow error code, its HTTP status and a message."""

    STATUS = {"INVALID_PARAMETER_VALUE": 400, "BAD_REQUEST": 400, "RESOURCE_ALREADY_EXISTS": 400,
              "RESOURCE_DOES_NOT_EXIST": 404, "ENDPOINT_NOT_FOUND": 404, "UNAUTHENTICATED": 401,
              "PERMISSION_DENIED": 403, "REQUEST_LIMIT_EXCEEDED": 429, "TEMPORARILY_UNAVAILABLE": 503,
              "INTERNAL_ERROR": 500}

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.status = self.STATUS.get(code, 400)

    def to_json(self) -> dict[str, str]:
        return {"error_code": self.code, "message": self.message}


def invalid(message: str) -> MlflowError:
    return MlflowError("INVALID_PARAMETER_VALUE", message)


# -- experiments -------------------------------------------------------------------------------------------------
def experiment_name(experiment_id: str) -> str:
    """The rundock experiment an MLflow experiment id names (``"0"`` is ``Default``)."""
    if experiment_id == DEFAULT_EXPERIMENT_ID:
        return DEFAULT_EXPERIMENT
    return check_experiment_name(experiment_id, "experiment_id")


def experiment_id(name: str) -> str:
    return DEFAULT_EXPERIMENT_ID if name == DEFAULT_EXPERIMENT else name


def check_experiment_name(name: Any, field: str = "name") -> str:
    if not isinstance(name, str) or not _EXPERIMENT_NAME.match(name):
        raise invalid(f"{field} {name!r} is not a rundock experiment name: use 1-255 letters, digits, '-' or '_', "
                      "starting with a letter or digit (an MLflow experiment's id is its rundock name)")
    return name


def experiment_json(name: str, runs: Iterable[RunRecord]) -> dict[str, Any]:
    """An MLflow Experiment: its times are those of its first and latest runs."""
    created = [r.created_at for r in runs]
    out: dict[str, Any] = {"experiment_id": experiment_id(name), "name": name, "artifact_location": "",
                           "lifecycle_stage": "active", "tags": []}
    if created:
        out["creation_time"] = millis(min(created))
        out["last_update_time"] = millis(max(created))
    return out


# -- statuses ---------------------------------------------------------------------------------------------------
def mlflow_status(status: RunStatus) -> str:
    return _TO_MLFLOW.get(status, "SCHEDULED")


def requested_status(value: Any) -> str:
    """An MLflow status from a request (its name or its enum number), upper case."""
    if isinstance(value, int) and not isinstance(value, bool) and value in _STATUS_NUMBERS:
        return _STATUS_NUMBERS[value]
    if isinstance(value, str) and value.upper() in _STATUS_NUMBERS.values():
        return value.upper()
    raise invalid(f"status {value!r} is not an MLflow run status; expected one of RUNNING, SCHEDULED, FINISHED, "
                  "FAILED, KILLED")


# -- values from requests ---------------------------------------------------------------------------------------
def millis(seconds: float) -> int:
    return int(round(seconds * 1000))


def int64(body: Mapping[str, Any], field: str, default: int | None = None) -> int | None:
    """An int64 field: protobuf's JSON gives it as a number or as a string of digits."""
    value = body.get(field)
    if value is None or value == "":
        return default
    if isinstance(value, bool):
        raise invalid(f"{field} must be an integer, not {value!r}")
    if isinstance(value, int):
        return value
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, str) and re.fullmatch(r"-?\d{1,19}", value.strip()):
        return int(value)
    raise invalid(f"{field} must be an integer, not {value!r}")


_SPECIAL_DOUBLES = {"NaN": math.nan, "Infinity": math.inf, "-Infinity": -math.inf}


def double(body: Mapping[str, Any], field: str) -> float:
    """A double field: a JSON number, or protobuf's ``"NaN"``, ``"Infinity"``, ``"-Infinity"``."""
    value = body.get(field)
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    if isinstance(value, str):
        if value in _SPECIAL_DOUBLES:
            return _SPECIAL_DOUBLES[value]
        try:
            return float(value)
        except ValueError:
            pass
    if value is None:
        raise invalid(f"missing value for required parameter '{field}'")
    raise invalid(f"{field} must be a number, not {value!r}")


def text(body: Mapping[str, Any], field: str, *, required: bool = True, limit: int | None = None) -> str:
    value = body.get(field)
    if value is None or (required and value == ""):
        if required:
            raise invalid(f"missing value for required parameter '{field}'")
        return ""
    if not isinstance(value, str):
        raise invalid(f"{field} must be a string, not {type(value).__name__}")
    if limit is not None and len(value) > limit:
        raise invalid(f"{field} is {len(value)} characters long; at most {limit} are allowed")
    return value


def key(body: Mapping[str, Any], field: str = "key") -> str:
    """A metric, param or tag name: non-empty, at most 250 characters, no NUL and not only blanks."""
    name = text(body, field, limit=MAX_KEY_LENGTH)
    if "\0" in name or not name.strip():
        raise invalid(f"{field} {name!r} is not a valid name (empty, blank or with a NUL character)")
    return name


def run_id_of(body: Mapping[str, Any]) -> str:
    """The run a request names: ``run_id``, or the older ``run_uuid``."""
    value = body.get("run_id") or body.get("run_uuid")
    if not isinstance(value, str) or not value:
        raise invalid("missing value for required parameter 'run_id'")
    return value


def metric_record(body: Mapping[str, Any]) -> MetricRecord:
    """A rundock scalar metric from an MLflow Metric (key, value, timestamp in ms, step)."""
    name = key(body)
    value = double(body, "value")
    timestamp = int64(body, "timestamp")
    if timestamp is None:
        raise invalid(f"metric {name!r}: missing value for required parameter 'timestamp'")
    step = int64(body, "step", 0)
    return MetricRecord(name, "scalar", value, step, "", timestamp / 1000.0)


# -- answers ------------------------------------------------------------------------------------------------------
def numeric(record: MetricRecord) -> bool:
    """Whether a stored metric is an MLflow metric: a scalar real number."""
    return record.kind == "scalar" and isinstance(record.value, (int, float))


def metric_json(record: MetricRecord) -> dict[str, Any]:
    value = float(record.value)
    shown: float | str = value if math.isfinite(value) else \
        ("NaN" if math.isnan(value) else ("Infinity" if value > 0 else "-Infinity"))
    return {"key": record.name, "value": shown, "timestamp": millis(record.at),
            "step": record.step if record.step is not None else 0}


def latest_metrics(records: Iterable[MetricRecord]) -> dict[str, MetricRecord]:
    """Each metric's latest value: the highest step, then the latest time, then the last logged."""
    latest: dict[str, MetricRecord] = {}
    for record in records:
        if not numeric(record):
            continue
        held = latest.get(record.name)
        if held is None or (record.step or 0, record.at) >= (held.step or 0, held.at):
            latest[record.name] = record
    return latest


def run_info_json(run: RunRecord) -> dict[str, Any]:
    info: dict[str, Any] = {
        "run_id": run.run_id, "run_uuid": run.run_id, "run_name": run.display_name or run.run_id,
        "experiment_id": experiment_id(run.experiment), "user_id": run.submitted_by or "",
        "status": mlflow_status(run.status), "start_time": millis(run.start_at or run.created_at),
        "artifact_uri": "", "lifecycle_stage": "deleted" if run.archived else "active"}
    if run.end_at is not None:
        info["end_time"] = millis(run.end_at)
    return info


def run_json(run: RunRecord, metrics: Iterable[MetricRecord]) -> dict[str, Any]:
    """An MLflow Run: info, and data with the latest metrics, the params (properties) and the tags."""
    return {"info": run_info_json(run), "inputs": {}, "outputs": {}, "data": {
        "metrics": [metric_json(m) for m in latest_metrics(metrics).values()],
        "params": [{"key": k, "value": v} for k, v in sorted(run.properties.items())],
        "tags": [{"key": k, "value": v or ""} for k, v in sorted(run.tags.items())]}}
