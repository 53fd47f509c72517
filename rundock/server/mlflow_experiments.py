"""MLflow's experiment routes: get, get-by-name, create and search, over rundock experiment names.

An MLflow experiment id is its rundock name (``"0"``: ``Default``, which always exists); see ``mlflow_map``. An
experiment exists when it has runs, or when it was created through MLflow since this server process started
(rundock keeps experiments through their runs, so one with no run yet is not stored).
"""

from __future__ import annotations

from typing import Any

from rundock.history.records import RunRecord
from rundock.server import mlflow_map as mm
from rundock.server import mlflow_search as search
from rundock.server.mlflow_auth import Call
from rundock.server.mlflow_map import MlflowError


def _experiment(call: Call, name: str) -> dict[str, Any]:
    """The MLflow Experiment named ``name``; RESOURCE_DOES_NOT_EXIST when rundock knows no such experiment."""
    token = call.caller.run_token
    if token is not None and name != call.read_run(token.run_id).experiment:
        raise MlflowError("PERMISSION_DENIED", f"the run token of run {token.run_id} may read its own run's "
                                               f"experiment only, not {name!r}")
    runs = call.store.list_runs(experiment=name)
    if not runs and name not in call.experiments and name != mm.DEFAULT_EXPERIMENT:
        raise MlflowError("RESOURCE_DOES_NOT_EXIST", f"no experiment named {name!r} (rundock keeps an experiment "
                                                     "through its runs; create it, or start a run in it)")
    return mm.experiment_json(name, runs)


def get_experiment(call: Call) -> dict[str, Any]:
    experiment_id = mm.text(call.body, "experiment_id")
    return {"experiment": _experiment(call, mm.experiment_name(experiment_id))}


def get_by_name(call: Call) -> dict[str, Any]:
    name = mm.text(call.body, "experiment_name")
    if name != mm.DEFAULT_EXPERIMENT:
        try:
            mm.check_experiment_name(name, "experiment_name")
        except MlflowError:  # a name rundock cannot hold names no experiment here: MLflow's answer is "none"
            raise MlflowError("RESOURCE_DOES_NOT_EXIST", f"no experiment named {name!r}") from None
    return {"experiment": _experiment(call, name)}


def create_experiment(call: Call) -> dict[str, Any]:
    call.submitter()
    name = mm.check_experiment_name(mm.text(call.body, "name"))
    if name == mm.DEFAULT_EXPERIMENT or name in call.experiments or call.store.list_runs(experiment=name):
        raise MlflowError("RESOURCE_ALREADY_EXISTS", f"experiment {name!r} already exists")
    call.experiments.add(name)
    return {"experiment_id": mm.experiment_id(name)}


def search_experiments(call: Call) -> dict[str, Any]:
    """Every experiment (``Default``, those with runs, those created here), with MLflow's name and time filters."""
    body = call.body
    attributes = search.EXPERIMENT_ATTRIBUTES
    comparisons = search.parse_filter(mm.text(body, "filter", required=False), attributes)
    orders = search.parse_order_by(body.get("order_by") or [], attributes)
    limit = search.max_results(body.get("max_results"))
    if str(body.get("view_type") or "ACTIVE_ONLY").upper() in ("DELETED_ONLY", "2"):
        return {}
    if call.caller.run_token is not None:
        raise MlflowError("PERMISSION_DENIED", "a run token may not list experiments")
    by_name: dict[str, list[RunRecord]] = {mm.DEFAULT_EXPERIMENT: [], **{name: [] for name in call.experiments}}
    for run in call.store.list_runs():
        by_name.setdefault(run.experiment, []).append(run)
    found = [mm.experiment_json(name, runs) for name, runs in by_name.items()]

    def value(experiment: dict[str, Any], ident: search.Identifier) -> str | float | None:
        if ident.entity != "attribute":
            return None  # rundock experiments have no tags
        have = experiment.get(ident.name)
        return float(have) if isinstance(have, int) else have

    newest = search.Order(search.Identifier("attribute", "last_update_time"), True)
    chosen = search.ordered([e for e in found if search.satisfies(e, comparisons, value)], [*orders, newest], value,
                            lambda e: str(e["name"]))
    page, token = search.page(chosen, body.get("page_token"), limit)
    answer: dict[str, Any] = {"experiments": page}
    if token:
        answer["next_page_token"] = token
    return answer

