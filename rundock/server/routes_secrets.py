"""Team secrets (``/api/v1/secrets``) and a live run's view of them (``/api/v1/runs/{run_id}/secrets``).

Users and admins set secrets; values are encrypted before they reach the database (``crypto``) and never
come back through ``/secrets``. A run's secrets go only to the run's agent (an agent token whose pools hold the
run's target) or to the token that submitted it (a laptop runs its own runs' agent), only while the run is not
finished, and only the names its run configuration lists under ``secrets``: a run that lists none gets none,
as a remote run of a workspace does.
"""

from __future__ import annotations

import re

from fastapi import APIRouter, Depends, Query
from pydantic import BaseModel, ConfigDict
from starlette.responses import Response

from rundock.server.access import owner
from rundock.server.auth import ANY_ROLE, SUBMITTERS, Principal
from rundock.server.errors import ApiError
from rundock.server.responses import json_response, no_content
from rundock.server.services import Services, services

router = APIRouter(prefix="/api/v1", tags=["secrets"])
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,126}$")


class SecretValue(BaseModel):
    model_config = ConfigDict(extra="forbid")

    value: str


def _check_name(name: str) -> str:
    if not _NAME.match(name):
        raise ApiError(400, f"secret name {name!r} must be letters, digits, '-' or '_' (at most 127)")
    return name


def _may_change(principal: Principal, set_by: str, name: str) -> None:
    if not principal.is_admin and set_by != principal.name:
        raise ApiError(403, f"secret {name!r} was set by {set_by!r}: only they or an admin may change it")


@router.put("/secrets/{name}", status_code=204)
def put_secret(name: str, body: SecretValue, principal: Principal = Depends(SUBMITTERS),
               svc: Services = Depends(services)) -> Response:
    """Add or replace a secret (a secret someone else set: admins only)."""
    _check_name(name)
    if not body.value:
        raise ApiError(400, f"field 'value': secret {name!r} needs a non-empty value")
    existing = svc.state.get_secret(name)
    if existing is not None:
        _may_change(principal, existing.owner, name)
    svc.state.put_secret(name, svc.box.seal(name, body.value), principal.name)
    return no_content()


@router.get("/secrets")
def list_secrets(principal: Principal = Depends(SUBMITTERS), svc: Services = Depends(services)) -> Response:
    """The names of the secrets, in order (never their values)."""
    return json_response([secret.name for secret in svc.state.list_secrets()])


@router.delete("/secrets/{name}", status_code=204)
def delete_secret(name: str, principal: Principal = Depends(SUBMITTERS), svc: Services = Depends(services)) -> Response:
    existing = svc.state.get_secret(_check_name(name))
    if existing is None:
        raise ApiError(404, f"no secret {name!r} on this server")
    _may_change(principal, existing.owner, name)
    svc.state.delete_secret(name)
    return no_content()


@router.get("/runs/{run_id}/secrets")
def run_secrets(run_id: str, name: list[str] = Query(default_factory=list), principal: Principal = Depends(ANY_ROLE),
                svc: Services = Depends(services)) -> Response:
    """The values of secrets ``name`` for a live run: ``{"values": {name: value or null}}`` (null: not set)."""
    if not name:
        raise ApiError(400, "field 'name': ask for at least one secret (?name=A&name=B)")
    run = svc.store.get_run(run_id)
    if principal.role == "agent":
        if run.target not in principal.pools:
            raise ApiError(403, f"{principal.describe()} may not read the secrets of run {run_id}: its target "
                                f"{run.target!r} is not one of the token's pools")
    elif owner(svc.store, run) != principal.name:
        raise ApiError(403, f"{principal.describe()} may not read the secrets of run {run_id}: only its agent and "
                            "the token that submitted it may")
    if run.status.is_terminal:
        raise ApiError(403, f"run {run_id} has ended ({run.status.value}): its secrets are no longer handed out")
    listed = run.run_definition.get("secrets")
    allowed = {n for n in listed if isinstance(n, str)} if isinstance(listed, list) else set()
    refused = [n for n in name if n not in allowed]
    if refused:
        raise ApiError(403, f"run {run_id} may not read secret {refused[0]!r}: its run configuration lists "
                            f"{sorted(allowed) or 'no secrets'} under 'secrets'")
    values: dict[str, str | None] = {}
    for wanted in dict.fromkeys(name):
        stored = svc.state.get_secret(wanted)
        values[wanted] = None if stored is None else svc.box.open(wanted, stored.value)
    return json_response({"values": values})
