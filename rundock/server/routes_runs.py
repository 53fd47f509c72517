"""Runs: create, list, read, change, move through states (``/api/v1/runs``).

Endpoints that touch the store are plain ``def``: FastAPI runs them in its threadpool, so a slow database
never stalls the event loop. ``submitted_by`` is always the token's name, whatever the body says.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends, Query
from pydantic import BaseModel, ConfigDict, Field
from starlette.responses import Response

from rundock.history import wire
from rundock.server.access import check_read, readable_run, writable_run
from rundock.server.auth import ANY_ROLE, SUBMITTERS, Principal
from rundock.server.errors import ApiError
from rundock.server.pools_fence import attempt_header, check_attempt
from rundock.server.responses import json_response, no_content
from rundock.server.services import Services, services
from rundock.server.validation import check_run_id
from rundock.states import RunStatus

router = APIRouter(prefix="/api/v1", tags=["runs"])


class _Body(BaseModel):
    model_config = ConfigDict(extra="forbid")


class NewRun(_Body):
    experiment: str
    run_id: str | None = None
    parent_id: str | None = None
    run_type: str = "rundock.scriptrun"
    display_name: str | None = None
    description: str | None = None
    target: str = "local"
    run_definition: dict[str, Any] | None = None
    snapshot_id: str | None = None
    run_dir: str | None = None
    tags: dict[str, str | None] | None = None
    properties: dict[str, str] | None = None
    submitted_by: str | None = None  # accepted for the store's signature; the server sets it from the token
    created_at: float | None = Field(None, allow_inf_nan=False)  # a run moved from another history keeps its time


class RunChanges(_Body):
    display_name: str | None = None
    description: str | None = None
    run_dir: str | None = None
    snapshot_id: str | None = None


class Transition(_Body):
    status: str
    detail: str = ""
    error: dict[str, Any] | None = None
    at: float | None = Field(None, allow_inf_nan=False)


@router.post("/runs", status_code=201)
def create_run(body: NewRun, principal: Principal = Depends(SUBMITTERS),
               svc: Services = Depends(services)) -> Response:
    """Create a NotStarted run submitted by the token's name (201, the run)."""
    store = svc.store
    if not body.experiment.strip():
        raise ApiError(400, "field 'experiment': a run needs an experiment name")
    if body.run_id is not None:
        check_run_id(body.run_id)
    if body.parent_id is not None:
        writable_run(store, principal, body.parent_id)
    if body.run_id is not None:
        try:
            store.get_run(body.run_id)
        except KeyError:
            pass
        else:
            raise ApiError(409, f"a run with id {body.run_id!r} already exists")
    fields = body.model_dump(exclude={"submitted_by"})
    run = store.create_run(fields.pop("experiment"), submitted_by=principal.name, **fields)
    return json_response(wire.run_to_json(run), 201)


@router.get("/runs")
def list_runs(experiment: str | None = None, status: list[str] | None = Query(None), parent_id: str | None = None,
              run_type: str | None = None, target: str | None = None, include_children: bool = True,
              principal: Principal = Depends(ANY_ROLE), svc: Services = Depends(services)) -> Response:
    """Runs matching the filters, newest first (an agent sees only the runs of its pools)."""
    for value in status or ():
        try:
            RunStatus(value)
        except ValueError:
            raise ApiError(400, f"field 'status': {value!r} is not a run status; expected one of "
                                f"{', '.join(s.value for s in RunStatus)}") from None
    runs = svc.store.list_runs(experiment=wire.optional_str(experiment), statuses=status,
                               parent_id=wire.optional_str(parent_id), run_type=wire.optional_str(run_type),
                               target=wire.optional_str(target), include_children=include_children)
    if principal.role == "agent":
        runs = [r for r in runs if r.target in principal.pools]
    return json_response(wire.runs_to_json(runs))


@router.get("/runs/{run_id}")
def get_run(run_id: str, principal: Principal = Depends(ANY_ROLE), svc: Services = Depends(services)) -> Response:
    """One run."""
    return json_response(wire.run_to_json(check_read(principal, svc.store.get_run(run_id))))


@router.patch("/runs/{run_id}", status_code=204)
def update_run(run_id: str, body: RunChanges, principal: Principal = Depends(ANY_ROLE),
               svc: Services = Depends(services), attempt: int | None = Depends(attempt_header)) -> Response:
    """Change a run's mutable attributes (null: unchanged). An agent may not move a run to another snapshot: it
    reads the snapshots of its pools' runs, so that would open any snapshot to it."""
    run = writable_run(svc.store, principal, run_id)
    check_attempt(svc, principal, run_id, attempt)
    if principal.role == "agent" and body.snapshot_id not in (None, run.snapshot_id):
        raise ApiError(403, f"{principal.describe()} may not change the snapshot of run {run_id}: a run's snapshot is "
                            "set by its submitter")
    svc.store.update_run(run_id, **body.model_dump())
    return no_content()


@router.post("/runs/{run_id}/transitions")
def transition(run_id: str, body: Transition, principal: Principal = Depends(ANY_ROLE),
               svc: Services = Depends(services), attempt: int | None = Depends(attempt_header)) -> Response:
    """Move the run to ``status`` if the transition table allows it: ``{"moved": bool}``."""
    try:
        status = RunStatus(body.status)
    except ValueError:
        raise ApiError(400, f"field 'status': {body.status!r} is not a run status") from None
    writable_run(svc.store, principal, run_id)
    check_attempt(svc, principal, run_id, attempt)
    moved = svc.store.transition(run_id, status, detail=body.detail, error=body.error, at=body.at)
    if moved:
        svc.pools.after_transition(run_id, status)  # a cancel reaches the run's pool agent at once
    return json_response({"moved": moved})


@router.get("/runs/{run_id}/statuses")
def statuses(run_id: str, principal: Principal = Depends(ANY_ROLE), svc: Services = Depends(services)) -> Response:
    """Every status the run went through, oldest first."""
    readable_run(svc.store, principal, run_id)
    return json_response([wire.status_to_json(c) for c in svc.store.status_history(run_id)])
