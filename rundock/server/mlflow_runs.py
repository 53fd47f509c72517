"""MLflow's run routes over the run history: create, get, update, log (metric, param, tag, batch), search, history.

Each handler takes the ``Call`` (services, caller, fields) and returns the JSON answer; the mapping is
``mlflow_map``'s, the permissions ``mlflow_auth``'s. A batch is applied in one store transaction, after every
value in it was checked, so a refused batch leaves nothing behind.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from rundock.history.records import JournalPlan, MetricRecord, RunRecord
from rundock.server import mlflow_map as mm
from rundock.server import mlflow_search as search
from rundock.server.mlflow_auth import Call
from rundock.server.mlflow_map import MlflowError, invalid
from rundock.states import RunStatus

MAX_BATCH_METRICS = 1000
MAX_BATCH_PARAMS = 100
MAX_BATCH_TAGS = 100
MAX_BATCH_TOTAL = 1000
_VIEW_TYPES = {"ACTIVE_ONLY": False, "1": False, "DELETED_ONLY": True, "2": True, "ALL": None, "3": None}


def _run_answer(call: Call, run_id: str) -> dict[str, Any]:
    return {"run": mm.run_json(call.store.get_run(run_id), call.store.get_metric_records(run_id))}


# -- runs ----------------------------------------------------------------------------------------------------
def create_run(call: Call) -> dict[str, Any]:
    principal = call.submitter()
    body = call.body
    name = mm.experiment_name(str(body.get("experiment_id") or mm.DEFAULT_EXPERIMENT_ID))
    tags = _tags(body.get("tags"))
    run_name = mm.text(body, "run_name", required=False) or tags.get(mm.RUN_NAME_TAG) or None
    if run_name:
        tags[mm.RUN_NAME_TAG] = run_name
    parent_id = tags.get(mm.PARENT_TAG) or None
    if parent_id is not None:  # a child run is a change to its parent: the caller must be allowed to write that
        parent_id = call.write_run(parent_id).run_id
    record = call.store.create_run(name, run_type=mm.MLFLOW_RUN_TYPE, target=mm.MLFLOW_TARGET,
                                   display_name=run_name, description=tags.get(mm.NOTE_TAG) or None,
                                   parent_id=parent_id, submitted_by=principal.name, tags=tags)
    call.store.transition(record.run_id, RunStatus.RUNNING, detail="started by an MLflow client")
    call.experiments.add(name)
    return _run_answer(call, record.run_id)


def get_run(call: Call) -> dict[str, Any]:
    run = call.read_run(mm.run_id_of(call.body))
    return {"run": mm.run_json(run, call.store.get_metric_records(run.run_id))}


def update_run(call: Call) -> dict[str, Any]:
    """A new run name, and for runs MLflow clients made, a new status (by the store's transition table)."""
    run = call.write_run(mm.run_id_of(call.body))
    run_name = mm.text(call.body, "run_name", required=False)
    if run_name:
        call.store.update_run(run.run_id, display_name=run_name)
        call.store.set_tags(run.run_id, {mm.RUN_NAME_TAG: run_name})
    if call.body.get("status") not in (None, ""):
        _move(call, run, mm.requested_status(call.body["status"]))
    return {"run_info": mm.run_info_json(call.store.get_run(run.run_id))}


def _move(call: Call, run: RunRecord, wanted: str) -> None:
    if run.run_type != mm.MLFLOW_RUN_TYPE:
        return  # the status of a run rundock executes is its agent's to set: acknowledged, nothing changes
    if mm.mlflow_status(run.status) == wanted:
        return
    target = mm.TO_RUNDOCK.get(wanted)
    if target is None:
        raise invalid(f"run {run.run_id} cannot be moved back to {wanted}: it is {run.status.value}")
    if run.status.is_terminal:
        raise invalid(f"run {run.run_id} ended {run.status.value}; a run that ended cannot be resumed or ended again "
                      "with another status (start a new run)")
    moved = call.store.transition(run.run_id, target, detail=f"set to {wanted} by an MLflow client")
    if not moved and target == RunStatus.COMPLETED:  # a run that never ran cannot complete: it starts, then ends
        call.store.transition(run.run_id, RunStatus.RUNNING, detail="started by an MLflow client")
        call.store.transition(run.run_id, target, detail=f"set to {wanted} by an MLflow client")


# -- logging -------------------------------------------------------------------------------------------------
def log_metric(call: Call) -> dict[str, Any]:
    run = call.write_run(mm.run_id_of(call.body))
    call.store.log_metrics(run.run_id, [mm.metric_record(call.body)])
    return {}


def log_param(call: Call) -> dict[str, Any]:
    run = call.write_run(mm.run_id_of(call.body))
    params = _params([call.body], run)
    call.store.apply_plan(run.run_id, JournalPlan(properties=params))
    return {}


def set_tag(call: Call) -> dict[str, Any]:
    run = call.write_run(mm.run_id_of(call.body))
    tags = _tags([call.body])
    call.store.set_tags(run.run_id, tags)
    _tag_attributes(call, run.run_id, tags)
    return {}


def delete_tag(call: Call) -> dict[str, Any]:
    run = call.write_run(mm.run_id_of(call.body))
    name = mm.key(call.body)
    if name not in run.tags:
        raise MlflowError("RESOURCE_DOES_NOT_EXIST", f"run {run.run_id} has no tag {name!r}")
    call.store.remove_tags(run.run_id, [name])
    return {}


def log_batch(call: Call) -> dict[str, Any]:
    run = call.write_run(mm.run_id_of(call.body))
    metrics, params, tags = (_list(call.body, field) for field in ("metrics", "params", "tags"))
    for items, limit, what in ((metrics, MAX_BATCH_METRICS, "metrics"), (params, MAX_BATCH_PARAMS, "params"),
                               (tags, MAX_BATCH_TAGS, "tags")):
        if len(items) > limit:
            raise invalid(f"a batch holds at most {limit} {what}; this one has {len(items)}")
    if len(metrics) + len(params) + len(tags) > MAX_BATCH_TOTAL:
        raise invalid(f"a batch holds at most {MAX_BATCH_TOTAL} metrics, params and tags in all")
    plan = JournalPlan(metrics=[mm.metric_record(_object(m, "metrics")) for m in metrics],
                       properties=_params(params, run), tags=_tags(tags))
    call.store.apply_plan(run.run_id, plan)
    _tag_attributes(call, run.run_id, plan.tags)
    return {}


def accept_nothing(call: Call) -> dict[str, Any]:
    """log-inputs, outputs and log-model: rundock keeps no datasets or MLflow models; the client gets success."""
    call.write_run(mm.run_id_of(call.body))
    return {}


def _list(body: Mapping[str, Any], field: str) -> list[Any]:
    value = body.get(field) or []
    if not isinstance(value, list):
        raise invalid(f"{field} must be a list")
    return value


def _object(value: Any, field: str) -> Mapping[str, Any]:
    if not isinstance(value, Mapping):
        raise invalid(f"each item of {field} must be an object with a key and a value")
    return value


def _tags(items: Any) -> dict[str, str | None]:
    if items is None:
        return {}
    if not isinstance(items, list):
        raise invalid("tags must be a list of {key, value} objects")
    out: dict[str, str | None] = {}
    for item in items:
        tag = _object(item, "tags")
        out[mm.key(tag)] = mm.text(tag, "value", required=False, limit=mm.MAX_TAG_VALUE_LENGTH)
    return out


def _params(items: Iterable[Any], run: RunRecord) -> dict[str, str]:
    """Params to add: each new, or equal to what the run (or this batch) already holds."""
    out: dict[str, str] = {}
    for item in items:
        param = _object(item, "params")
        name = mm.key(param)
        if param.get("value") is None:
            raise invalid(f"param {name!r}: missing value for required parameter 'value'")
        value = mm.text(param, "value", required=False, limit=mm.MAX_PARAM_VALUE_LENGTH)
        held = out.get(name, run.properties.get(name))
        if held is not None and held != value:
            raise invalid(f"param {name!r} of run {run.run_id} is already {held!r}; params are immutable (they are "
                          f"the run's properties), so {value!r} cannot replace it: log a metric or a tag instead, "
                          "or start a new run")
        out[name] = value
    return out


def _tag_attributes(call: Call, run_id: str, tags: Mapping[str, str | None]) -> None:
    """MLflow's run name and note tags are also the run's display name and description."""
    if tags.get(mm.RUN_NAME_TAG) or tags.get(mm.NOTE_TAG):
        call.store.update_run(run_id, display_name=tags.get(mm.RUN_NAME_TAG) or None,
                              description=tags.get(mm.NOTE_TAG) or None)


# -- reading -------------------------------------------------------------------------------------------------
def metric_history(call: Call) -> dict[str, Any]:
    """Every value of a metric, in the order they were logged."""
    run = call.read_run(mm.run_id_of(call.body))
    name = mm.key(call.body, "metric_key")
    values = [r for r in call.store.get_metric_records(run.run_id, name) if mm.numeric(r)]
    limit = search.max_results(call.body.get("max_results")) if call.body.get("max_results") else len(values) or 1
    chosen, token = search.page(values, call.body.get("page_token"), limit)
    answer: dict[str, Any] = {"metrics": [mm.metric_json(r) for r in chosen]}
    if token:
        answer["next_page_token"] = token
    return answer


def search_runs(call: Call) -> dict[str, Any]:
    body = call.body
    comparisons = search.parse_filter(mm.text(body, "filter", required=False))
    orders = search.parse_order_by(_list(body, "order_by"))
    limit = search.max_results(body.get("max_results"))
    view = str(body.get("run_view_type") or "ACTIVE_ONLY").upper()
    if view not in _VIEW_TYPES:
        raise invalid(f"run_view_type {view!r} is not one of ACTIVE_ONLY, DELETED_ONLY, ALL")
    archived = _VIEW_TYPES[view]
    ids = _list(body, "experiment_ids")
    names = list(dict.fromkeys(mm.experiment_name(str(i)) for i in ids))
    runs = [r for name in names for r in call.store.list_runs(experiment=name)
            if call.readable(r) and (archived is None or r.archived == archived)]
    metrics = _MetricCache(call)
    found = search.order_runs([r for r in runs if search.matches(r, comparisons, metrics.latest)], orders,
                              metrics.latest)
    chosen, token = search.page(found, body.get("page_token"), limit)
    answer: dict[str, Any] = {"runs": [mm.run_json(r, metrics.all(r.run_id)) for r in chosen]}
    if token:
        answer["next_page_token"] = token
    return answer


class _MetricCache:
    """Each run's metrics, read from the store at most once per search."""

    def __init__(self, call: Call) -> None:
        self.call = call
        self._records: dict[str, list[MetricRecord]] = {}
        self._latest: dict[str, dict[str, MetricRecord]] = {}

    def all(self, run_id: str) -> list[MetricRecord]:
        if run_id not in self._records:
            self._records[run_id] = self.call.store.get_metric_records(run_id)
        return self._records[run_id]

    def latest(self, run_id: str) -> dict[str, MetricRecord]:
        if run_id not in self._latest:
            self._latest[run_id] = mm.latest_metrics(self.all(run_id))
        return self._latest[run_id]
