"""Snapshots, models and environments (``/api/v1/snapshots``, ``/models``, ``/environments``).

Any role stores a snapshot (an agent submitting a child run's source does); an agent reads only the snapshots of
its pools' runs. Models and environments are registered by users and admins and read by every role (an agent
prepares a run's environment from them).
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends
from pydantic import BaseModel, ConfigDict
from starlette.responses import Response

from rundock.history import wire
from rundock.server.access import check_snapshot, readable_run, snapshot_or_none
from rundock.server.auth import ANY_ROLE, SUBMITTERS, Principal
from rundock.server.errors import ApiError
from rundock.server.responses import json_response
from rundock.server.services import Services, services

router = APIRouter(prefix="/api/v1", tags=["snapshots, models, environments"])


class _Body(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Manifest(_Body):
    manifest: list[dict[str, Any]]


class NewModelVersion(_Body):
    run_id: str | None = None
    path: str
    files: list[dict[str, Any]]
    tags: dict[str, str | None] | None = None
    properties: dict[str, str] | None = None
    framework: str | None = None
    framework_version: str | None = None
    description: str | None = None
    created_at: float | None = None  # a model version moved from another history keeps its time


class EnvironmentDefinition(_Body):
    definition: dict[str, Any]


@router.put("/snapshots/{snapshot_id}")
def put_snapshot(snapshot_id: str, body: Manifest, principal: Principal = Depends(ANY_ROLE),
                 svc: Services = Depends(services)) -> Response:
    """Record a snapshot's manifest: ``{"new": bool}`` (False: it was known; it counts as stored now)."""
    for i, entry in enumerate(body.manifest):
        if not isinstance(entry.get("path"), str) or not isinstance(entry.get("digest"), str):
            raise ApiError(400, f"field 'manifest[{i}]': an entry needs a 'path' and a 'digest'")
    return json_response({"new": svc.store.put_snapshot(snapshot_id, body.manifest)})


@router.get("/snapshots/{snapshot_id}")
def get_snapshot(snapshot_id: str, principal: Principal = Depends(ANY_ROLE),
                 svc: Services = Depends(services)) -> Response:
    """A snapshot's manifest: ``{"manifest": [...]}``."""
    check_snapshot(svc.store, principal, snapshot_id)
    manifest = snapshot_or_none(svc.store, snapshot_id)
    if manifest is None:
        raise ApiError(404, f"no snapshot {snapshot_id!r} in the run history")
    return json_response({"manifest": manifest})


@router.post("/models/{name}/versions")
def register_model(name: str, body: NewModelVersion, principal: Principal = Depends(SUBMITTERS),
                   svc: Services = Depends(services)) -> Response:
    """Add the next version of model ``name``: the model."""
    if body.run_id is not None:
        readable_run(svc.store, principal, body.run_id)
    return json_response(wire.model_to_json(svc.store.register_model(name, **body.model_dump())))


@router.get("/models")
def list_models(name: str | None = None, principal: Principal = Depends(ANY_ROLE),
                svc: Services = Depends(services)) -> Response:
    """Model versions (of ``name``), newest first."""
    return json_response([wire.model_to_json(m) for m in svc.store.list_models(wire.optional_str(name))])


@router.get("/models/{name}/versions/{version}")
def get_model(name: str, version: str, principal: Principal = Depends(ANY_ROLE),
              svc: Services = Depends(services)) -> Response:
    """One version of a model (``latest``: the newest)."""
    number: int | None = None
    if version != "latest":
        try:
            number = int(version)
        except ValueError:
            raise ApiError(400, f"field 'version': expected a version number or 'latest', got {version!r}") from None
    return json_response(wire.model_to_json(svc.store.get_model(name, number)))


@router.post("/environments/{name}")
def register_environment(name: str, body: EnvironmentDefinition, principal: Principal = Depends(SUBMITTERS),
                         svc: Services = Depends(services)) -> Response:
    """Store the next version of environment ``name``: ``{"version": n}``."""
    return json_response({"version": svc.store.register_environment(name, body.definition)})


@router.get("/environments/{name}")
def get_environment(name: str, version: int | None = None, principal: Principal = Depends(ANY_ROLE),
                    svc: Services = Depends(services)) -> Response:
    """A registered environment (the latest version by default): ``{"version", "definition"}``."""
    number, definition = svc.store.get_environment(name, version)
    return json_response({"version": number, "definition": definition})


@router.get("/environments")
def environment_names(principal: Principal = Depends(ANY_ROLE), svc: Services = Depends(services)) -> Response:
    return json_response(svc.store.environment_names())
