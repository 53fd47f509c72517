"""Agent pools over HTTP: enqueue, queue reasons, the pools' view, and the agent routes (``/api/v1``).

- ``POST /runs/{run_id}/enqueue`` (user/admin, W on the run) and ``GET /runs/{run_id}/queue`` (R);
- ``GET /pools`` (every role; an agent sees its own pools);
- ``POST /agents/register``, ``POST /agents/{agent_id}/poll`` (a long-poll) and
  ``POST /agents/{agent_id}/attempts/{run_id}/{attempt}/end``: agent tokens only, for the pools they hold, and
  only for the agent ids they registered.

The meaning of each answer is in ``pools`` (order, wake-ups, cancel) and ``pools_sweeper`` (leases).
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends
from pydantic import BaseModel, ConfigDict, Field
from starlette.concurrency import run_in_threadpool
from starlette.responses import Response

from rundock.history.wire import Gpu
from rundock.server.access import readable_run, writable_run
from rundock.server.auth import ANY_ROLE, SUBMITTERS, Principal, allow
from rundock.server.errors import ApiError
from rundock.server.pools_match import Requirements
from rundock.server.pools_state import AgentRecord, agent_id_for
from rundock.server.responses import json_response
from rundock.server.services import Services, services
from rundock.server.validation import MAX_INT

router = APIRouter(prefix="/api/v1", tags=["pools"])
AGENTS = allow("agent")


class _Body(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Enqueue(_Body):
    pool: str
    priority: int = Field(0, ge=-1_000_000, le=1_000_000)
    requirements: dict[str, Any] = Field(default_factory=dict)
    idempotency_key: str | None = None  # enqueuing a run twice is harmless anyway: it answers its position


class GpuInfo(_Body):
    index: int = Field(ge=0, le=1023)
    name: str = ""
    memory_mb: int = Field(0, ge=0, le=MAX_INT)


class RunAttemptBody(_Body):
    run_id: str
    attempt: int = Field(ge=0, le=MAX_INT)


class Register(_Body):
    name: str = Field(min_length=1, max_length=200)  # the agent's own name (its host's, by default)
    pool: str
    slots: int = Field(1, ge=1, le=10_000)
    gpus: list[GpuInfo] = Field(default_factory=list)
    cpus: int | None = Field(None, ge=0, le=1_000_000)
    memory_mb: int | None = Field(None, ge=0, le=MAX_INT)
    labels: list[str] = Field(default_factory=list)
    version: str | None = None
    running: list[RunAttemptBody] = Field(default_factory=list)
    address: str | None = Field(None, max_length=255)  # where other nodes reach it (multi-node runs)


class End(_Body):
    outcome: str | None = Field(None, max_length=40)  # how the job ended (a node of a multi-node run)
    message: str | None = Field(None, max_length=4000)


class Poll(_Body):
    running: list[RunAttemptBody] = Field(default_factory=list)
    free_gpus: list[int] | None = None
    wait: float = Field(0, ge=0, le=30, allow_inf_nan=False)


@router.post("/runs/{run_id}/enqueue")
def enqueue(run_id: str, body: Enqueue, principal: Principal = Depends(SUBMITTERS),
            svc: Services = Depends(services)) -> Response:
    """Queue a NotStarted run in a pool (its target): ``{"position": n}``; again: its position now."""
    run = writable_run(svc.store, principal, run_id)
    requirements = Requirements.from_json(body.requirements)
    return json_response({"position": svc.pools.enqueue(run, body.pool, body.priority, requirements)})


@router.get("/runs/{run_id}/queue")
def queue(run_id: str, principal: Principal = Depends(ANY_ROLE), svc: Services = Depends(services)) -> Response:
    """Where a pool run is: ``{"state", "position", "reason", ...}`` with why it still waits."""
    return json_response(svc.pools.queue_info(readable_run(svc.store, principal, run_id)))


@router.get("/pools")
def pools(principal: Principal = Depends(ANY_ROLE), svc: Services = Depends(services)) -> Response:
    """Every pool with its agents, their GPUs (and which run uses each) and the number of queued runs."""
    return json_response(svc.pools.listing(principal.pools if principal.role == "agent" else None))


@router.post("/agents/register")
def register(body: Register, principal: Principal = Depends(AGENTS), svc: Services = Depends(services)) -> Response:
    """Register (or re-register) an agent of a pool and adopt the attempts it still runs."""
    if body.pool not in principal.pools:
        raise ApiError(403, f"{principal.describe()} may not serve pool {body.pool!r}: not one of the token's pools")
    if len({g.index for g in body.gpus}) != len(body.gpus):
        raise ApiError(400, "field 'gpus': two GPUs with the same index")
    labels = tuple(dict.fromkeys(x.strip() for x in body.labels if x.strip()))
    agent = AgentRecord(agent_id_for(principal.name, body.pool, body.name), body.name, principal.name, body.pool,
                        labels, tuple(Gpu(g.index, g.name, g.memory_mb) for g in body.gpus), body.cpus,
                        body.memory_mb, body.slots, 0.0, 0.0, body.version, body.address)
    return json_response(svc.pools.register(agent, [(r.run_id, r.attempt) for r in body.running]))


@router.post("/agents/{agent_id}/poll")
async def poll(agent_id: str, body: Poll, principal: Principal = Depends(AGENTS),
               svc: Services = Depends(services)) -> Response:
    """Renew the agent's leases and wait (up to ``wait`` s) for work: ``{"assignments", "cancel", "fenced"}``."""
    agent = await run_in_threadpool(svc.pools.agent_for, principal.name, principal.pools, agent_id)
    answer = await svc.pools.poll(agent, [(r.run_id, r.attempt) for r in body.running], body.free_gpus, body.wait)
    return json_response(answer)


@router.post("/agents/{agent_id}/attempts/{run_id}/{attempt}/end")
def end(agent_id: str, run_id: str, attempt: int, body: End | None = None, principal: Principal = Depends(AGENTS),
        svc: Services = Depends(services)) -> Response:
    """The agent is done with an attempt (its GPUs are free): ``{"ended": bool}`` (false: it was not running)."""
    agent = svc.pools.agent_for(principal.name, principal.pools, agent_id)
    outcome, message = (body.outcome, body.message) if body is not None else (None, None)
    return json_response({"ended": svc.pools.end(agent, run_id, attempt, outcome, message)})
