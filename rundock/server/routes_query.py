"""The runs-table query over HTTP (``POST /api/v1/runs/query``): one request answers one page of the table.

The body is a runs query as JSON (``rundock.history.query.query_to_json``); the answer is
``{"rows": [{"run": <run>, "latest": {metric: value}}], "total": n}``, computed by the server's store (in SQL
on SQLite and PostgreSQL). It reads runs, as ``GET /api/v1/runs`` does, with the same tokens; an agent's token
is refused: an agent sees only the runs of its pools, which a page and its total could not honour.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Body, Depends
from starlette.responses import Response

from rundock.history import wire
from rundock.history.query import query_from_json
from rundock.server.auth import ANY_ROLE, Principal
from rundock.server.errors import ApiError
from rundock.server.responses import json_response
from rundock.server.services import Services, services

router = APIRouter(prefix="/api/v1", tags=["runs"])


@router.post("/runs/query")
def query_runs(body: Any = Body(...), principal: Principal = Depends(ANY_ROLE),
               svc: Services = Depends(services)) -> Response:
    """One page of the runs table and how many runs match."""
    if principal.role == "agent":
        raise ApiError(403, "an agent's token cannot query the runs table; use a user's token")
    try:
        q = query_from_json(body)
        page = svc.store.query_runs(q)
    except ValueError as exc:
        raise ApiError(400, str(exc)) from None
    return json_response({"rows": [{"run": wire.run_to_json(r.record), "latest": r.latest} for r in page.rows],
                          "total": page.total})


@router.get("/metric-names")
def metric_names(experiment: str | None = None, principal: Principal = Depends(ANY_ROLE),
                 svc: Services = Depends(services)) -> Response:
    """The names of the metrics with a latest number in the experiment's runs (every run's without one)."""
    if principal.role == "agent":
        raise ApiError(403, "an agent's token cannot list metric names; use a user's token")
    return json_response(svc.store.metric_names(wire.optional_str(experiment)))
