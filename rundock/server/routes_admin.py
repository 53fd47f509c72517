"""Admin-only routes: history housekeeping (``/api/v1/admin``) and tokens (``/api/v1/tokens``).

A token is shown once, in the answer that creates it; the server keeps only its hash. Revoking one takes
effect at once on this server and within ``auth.TOKEN_CACHE_SECONDS`` on others sharing the database.
"""

from __future__ import annotations

from fastapi import APIRouter, Depends
from pydantic import BaseModel, ConfigDict, Field
from starlette.responses import Response

from rundock.server.auth import ADMINS, Principal
from rundock.server.errors import ApiError
from rundock.server.responses import json_response, no_content
from rundock.server.services import Services, services
from rundock.server.tokens import issue_token

router = APIRouter(prefix="/api/v1", tags=["admin"])


class _Body(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ArchiveRequest(_Body):
    run_ids: list[str]
    archived: bool = True


class RunIds(_Body):
    run_ids: list[str]


class PruneRequest(_Body):
    stored_before: float = Field(allow_inf_nan=False)
    dry_run: bool = False


class DigestsRequest(_Body):
    skip_snapshots: list[str] = Field(default_factory=list)


class NewToken(_Body):
    name: str
    role: str
    pools: list[str] = Field(default_factory=list)
    expires_in_days: float | None = Field(default=None, gt=0, allow_inf_nan=False)


@router.post("/admin/archive")
def archive(body: ArchiveRequest, principal: Principal = Depends(ADMINS),
            svc: Services = Depends(services)) -> Response:
    """Archive (or restore) runs and their descendants: ``{"run_ids": [...]}``."""
    return json_response({"run_ids": svc.store.admin().set_archived(body.run_ids, body.archived)})


@router.post("/admin/delete")
def delete(body: RunIds, principal: Principal = Depends(ADMINS), svc: Services = Depends(services)) -> Response:
    """Delete runs, their descendants and all their records: ``{"run_ids": [...]}``."""
    return json_response({"run_ids": svc.store.admin().delete_runs(body.run_ids)})


@router.get("/admin/snapshots")
def snapshots(principal: Principal = Depends(ADMINS), svc: Services = Depends(services)) -> Response:
    """Every snapshot id with when it was last stored."""
    return json_response(svc.store.admin().list_snapshots())


@router.post("/admin/prune-snapshots")
def prune_snapshots(body: PruneRequest, principal: Principal = Depends(ADMINS),
                    svc: Services = Depends(services)) -> Response:
    return json_response({"snapshot_ids": svc.store.admin().prune_snapshots(body.stored_before,
                                                                            dry_run=body.dry_run)})


@router.post("/admin/referenced-digests")
def referenced_digests(body: DigestsRequest, principal: Principal = Depends(ADMINS),
                       svc: Services = Depends(services)) -> Response:
    return json_response({"digests": sorted(svc.store.admin().referenced_digests(body.skip_snapshots))})


@router.post("/tokens")
def create_token(body: NewToken, principal: Principal = Depends(ADMINS), svc: Services = Depends(services)) -> Response:
    """A new token: ``{"id": ..., "token": ...}``; the token is not shown again."""
    record, token = issue_token(svc.state, body.name, body.role, body.pools, body.expires_in_days)
    return json_response({**record.to_json(), "token": token})


@router.get("/tokens")
def list_tokens(principal: Principal = Depends(ADMINS), svc: Services = Depends(services)) -> Response:
    """Every token, without its secret."""
    return json_response([record.to_json() for record in svc.state.list_tokens()])


@router.delete("/tokens/{token_id}", status_code=204)
def revoke_token(token_id: str, principal: Principal = Depends(ADMINS), svc: Services = Depends(services)) -> Response:
    """Revoke a token now."""
    if not svc.state.revoke_token(token_id):
        raise ApiError(404, f"no token {token_id!r}; `GET /api/v1/tokens` lists them")
    svc.tokens.forget()
    return no_content()
