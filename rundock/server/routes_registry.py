"""Snapshots, models and environments (``/api/v1/snapshots``, ``/models``, ``/environments``).

Any role stores a snapshot (an agent submitting a child run's source does), only under the id of its manifest
(``submitter.snapshot.manifest_id``: the SHA-256 of the manifest's canonical JSON); a known id is never stored
again, so a manifest sent under another's id would be what every later run of that id executes. An agent reads
only the snapshots of its pools' runs. Models and environments are registered by users and admins and read by
every role (an agent prepares a run's environment from them); an agent sees the file digests of the models of its
pools' runs only (null for the others).
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends, Query
from pydantic import BaseModel, ConfigDict, Field
from starlette.responses import Response

from rundock.history import wire
from rundock.history.records import ModelRecord
from rundock.server.access import check_snapshot, readable_run, snapshot_or_none
from rundock.server.auth import ANY_ROLE, SUBMITTERS, Principal
from rundock.server.errors import ApiError
from rundock.server.responses import json_response
from rundock.server.services import Services, services
from rundock.server.uploads import check_digest
from rundock.server.validation import MAX_INT
from rundock.submitter.snapshot import manifest_id

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
    created_at: float | None = Field(None, allow_inf_nan=False)  # a version moved from another history keeps it


class EnvironmentDefinition(_Body):
    definition: dict[str, Any]


@router.put("/snapshots/{snapshot_id}")
def put_snapshot(snapshot_id: str, body: Manifest, principal: Principal = Depends(ANY_ROLE),
                 svc: Services = Depends(services)) -> Response:
    """Record a snapshot's manifest: ``{"new": bool}`` (False: it was known; it counts as stored now)."""
    for i, entry in enumerate(body.manifest):
        if not isinstance(entry.get("path"), str) or not isinstance(entry.get("digest"), str):
            raise ApiError(400, f"field 'manifest[{i}]': an entry needs a 'path' and a 'digest'")
        _check_digest(entry["digest"], f"manifest[{i}].digest")
    try:
        expected = manifest_id(body.manifest)
    except (TypeError, ValueError, RecursionError):
        raise ApiError(400, "field 'manifest': it cannot be written as JSON") from None
    if snapshot_id != expected:
        raise ApiError(400, f"snapshot id {snapshot_id!r} is not the id of this manifest ({expected}): a snapshot is "
                            "stored under the SHA-256 of its manifest's canonical JSON (sorted keys, no spaces)")
    return json_response({"new": svc.store.put_snapshot(snapshot_id, body.manifest)})


def _check_digest(digest: Any, field: str) -> None:
    try:
        check_digest(digest if isinstance(digest, str) else "")
    except ApiError:
        raise ApiError(400, f"field {field!r}: {digest!r} is not a blob digest (a SHA-256 in lowercase hex, 64 "
                            "characters)") from None


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
    for i, entry in enumerate(body.files):
        _check_digest(entry.get("digest"), f"files[{i}].digest")
    if body.run_id is not None:
        readable_run(svc.store, principal, body.run_id)
    return json_response(wire.model_to_json(svc.store.register_model(name, **body.model_dump())))


def _shown(svc: Services, principal: Principal, models: list[ModelRecord]) -> list[dict[str, Any]]:
    """Models as JSON; for an agent, the files of a model not made from a run of its pools come with a null
    digest (the blob is not the agent's to read)."""
    shown = [wire.model_to_json(m) for m in models]
    if principal.role != "agent":
        return shown
    targets: dict[str, str | None] = {}
    for model, data in zip(models, shown, strict=True):
        if model.run_id is not None and model.run_id not in targets:
            try:
                targets[model.run_id] = svc.store.get_run(model.run_id).target
            except KeyError:  # RunNotFoundError: a deleted run
                targets[model.run_id] = None
        if model.run_id is None or targets[model.run_id] not in principal.pools:
            data["files"] = [{**f, "digest": None} for f in model.files]
    return shown


@router.get("/models")
def list_models(name: str | None = None, principal: Principal = Depends(ANY_ROLE),
                svc: Services = Depends(services)) -> Response:
    """Model versions (of ``name``), newest first."""
    return json_response(_shown(svc, principal, svc.store.list_models(wire.optional_str(name))))


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
        if abs(number) > MAX_INT:
            raise ApiError(400, f"field 'version': {version} is beyond what the history holds (64 bits)")
    return json_response(_shown(svc, principal, [svc.store.get_model(name, number)])[0])


@router.post("/environments/{name}")
def register_environment(name: str, body: EnvironmentDefinition, principal: Principal = Depends(SUBMITTERS),
                         svc: Services = Depends(services)) -> Response:
    """Store the next version of environment ``name``: ``{"version": n}``."""
    return json_response({"version": svc.store.register_environment(name, body.definition)})


@router.get("/environments/{name}")
def get_environment(name: str, version: int | None = Query(None, ge=-MAX_INT, le=MAX_INT),
                    principal: Principal = Depends(ANY_ROLE), svc: Services = Depends(services)) -> Response:
    """A registered environment (the latest version by default): ``{"version", "definition"}``."""
    number, definition = svc.store.get_environment(name, version)
    return json_response({"version": number, "definition": definition})


@router.get("/environments")
def environment_names(principal: Principal = Depends(ANY_ROLE), svc: Services = Depends(services)) -> Response:
    return json_response(svc.store.environment_names())
