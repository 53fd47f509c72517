"""A run's data: journal batches, plans, metrics, tags, files and live logs (``/api/v1/runs/{run_id}/…``).

A journal batch may name a child run that does not exist yet (its job just made it): the batch is then
checked against the parent it names, whose agent or submitter is the one shipping it, and the new run's id
against the rules of run ids. The blobs an agent names in a run's files must be blobs it may read
(``access.BlobAccess``): its pools' or sent by itself.
"""

from __future__ import annotations

import json
import math
from typing import Any

from fastapi import APIRouter, Depends, Query, Request
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from starlette.responses import Response

from rundock.errors import RunNotFoundError, StoreError
from rundock.history import wire
from rundock.history.records import JournalPlan, plan_journal
from rundock.history.store import RunStore
from rundock.server.access import check_write, readable_run, writable_run
from rundock.server.auth import ANY_ROLE, Principal
from rundock.server.errors import ApiError, validation_message
from rundock.server.pools_fence import attempt_header, check_attempt
from rundock.server.responses import checked_batch, json_response, no_content
from rundock.server.services import Services, services
from rundock.server.uploads import check_digest
from rundock.server.validation import MAX_INT, MIN_INT, check_run_id

router = APIRouter(prefix="/api/v1", tags=["run data"])
_BEFORE_ANY = -(1 << 63)  # a mark below every sequence number: plan every record


class JournalBatch(BaseModel):
    model_config = ConfigDict(extra="forbid")

    attempt: int = Field(ge=0, le=MAX_INT)
    source: str
    records: list[dict[str, Any]]


class TagKeys(BaseModel):
    model_config = ConfigDict(extra="forbid")

    keys: list[str]


async def raw_body(request: Request) -> bytes:
    """The request's bytes (held by the body limit), read on the event loop; the plain ``def`` routes parse them
    in the threadpool, so that a batch of 100,000 records never holds up other requests while it is decoded."""
    return await request.body()


def _json_object(raw: bytes) -> dict[str, Any]:
    """A JSON object body, parsed here (in the threadpool) rather than on the event loop: batches are large."""
    try:
        data = json.loads(raw)
    except ValueError:
        raise ApiError(400, "the request body is not JSON") from None
    except RecursionError:
        raise ApiError(400, "the request body is nested too deeply") from None
    if not isinstance(data, dict):
        raise ApiError(400, f"the request body must be a JSON object, not {type(data).__name__}")
    return data


def _body_schema(model: type[BaseModel]) -> dict[str, Any]:
    """The OpenAPI request body of a route that parses ``model`` itself."""
    return {"requestBody": {"required": True, "content": {"application/json": {"schema": model.model_json_schema()}}}}


def _journal_run(store: RunStore, principal: Principal, run_id: str, records: list[dict[str, Any]]) -> None:
    try:
        writable_run(store, principal, run_id)
        return
    except RunNotFoundError:
        parents = [r.get("parent") for r in records if r.get("type") == "child"]
        if not parents or not isinstance(parents[-1], str):
            raise
    parent = store.get_run(parents[-1])
    check_write(store, principal, parent)
    check_run_id(run_id)  # the batch creates this run


def _check_named_blobs(svc: Services, principal: Principal, named: list[tuple[str, Any]]) -> None:
    """400 unless every (field, digest) names a blob by its SHA-256 and, for an agent, one it may read: an agent
    that names a blob it neither uploaded nor finds in its pools' runs would open it to itself by doing so."""
    for field, digest in named:
        if not isinstance(digest, str):
            raise ApiError(400, f"field {field!r}: a file record's digest must be a string")
        try:
            check_digest(digest)
        except ApiError as exc:
            raise ApiError(400, f"field {field!r}: {exc.message}") from None
    if principal.role != "agent" or not named:
        return
    readable = svc.blob_access.readable(principal, [d for _, d in named])
    for field, digest in named:
        if digest not in readable:
            raise ApiError(400, f"field {field!r}: {principal.describe()} may not name blob {digest} in a run's "
                                f"files: it did not upload the blob's bytes (PUT /api/v1/uploads/{digest}) and no "
                                "run of its pools holds it")


@router.post("/runs/{run_id}/journal", openapi_extra=_body_schema(JournalBatch))
def apply_journal(run_id: str, raw: bytes = Depends(raw_body), principal: Principal = Depends(ANY_ROLE),
                  svc: Services = Depends(services)) -> Response:
    """Apply the records above the stored mark of (run, attempt, source): ``{"mark": n}``."""
    try:
        body = JournalBatch.model_validate_json(raw)
    except ValidationError as exc:
        raise ApiError(400, validation_message(exc)) from None
    checked_batch(len(body.records), svc.settings.max_metrics_per_batch, "journal records")
    _journal_run(svc.store, principal, run_id, body.records)
    check_attempt(svc, principal, run_id, body.attempt if principal.role == "agent" else None)
    _check_named_blobs(svc, principal, [(f"records[{i}]", r.get("digest")) for i, r in enumerate(body.records)
                                        if r.get("type") == "file"])
    try:
        mark = svc.store.apply_journal(run_id, body.attempt, body.source, body.records)
    except StoreError:
        raise
    except _MALFORMED as exc:
        if isinstance(exc, RunNotFoundError):
            raise
        _find_malformed(body.records)  # 400 naming the record the store could not take
        raise
    return json_response({"mark": mark})


_MALFORMED = (KeyError, TypeError, AttributeError, ValueError)


def _find_malformed(records: list[dict[str, Any]]) -> None:
    """400 naming the first record that cannot be planned (a missing field, a wrong type); return if none."""
    for i, record in enumerate(records):
        try:
            if not isinstance(record.get("seq"), int) or isinstance(record.get("seq"), bool):
                raise ValueError("'seq' must be a whole number")
            plan_journal([record], _BEFORE_ANY)
        except _MALFORMED as exc:
            problem = f"missing field {exc}" if isinstance(exc, KeyError) else str(exc)
            raise ApiError(400, f"field 'records[{i}]': a {record.get('type')!r} record is malformed: "
                                f"{problem}") from None


@router.get("/runs/{run_id}/journal-mark")
def journal_mark(run_id: str, attempt: int = Query(ge=0, le=MAX_INT), source: str = Query(),
                 principal: Principal = Depends(ANY_ROLE), svc: Services = Depends(services)) -> Response:
    """The last sequence number applied for (run, attempt, source): ``{"mark": n}``."""
    readable_run(svc.store, principal, run_id)
    return json_response({"mark": svc.store.journal_mark(run_id, attempt, source)})


@router.post("/runs/{run_id}/plan", status_code=204, openapi_extra={"requestBody": {
    "required": True, "content": {"application/json": {"schema": {"type": "object"}}}}})
def apply_plan(run_id: str, raw: bytes = Depends(raw_body), principal: Principal = Depends(ANY_ROLE),
               svc: Services = Depends(services), attempt: int | None = Depends(attempt_header)) -> Response:
    """Apply changes made outside a job (a plan in ``history.wire``'s shape)."""
    body = _json_object(raw)
    metrics = body.get("metrics")
    checked_batch(len(metrics) if isinstance(metrics, list) else 0, svc.settings.max_metrics_per_batch, "metrics")
    plan = wire.plan_from_json(body)
    _check_plan_numbers(plan)
    writable_run(svc.store, principal, run_id)
    check_attempt(svc, principal, run_id, attempt)
    _check_named_blobs(svc, principal, [(f"files[{i}]", f.digest) for i, f in enumerate(plan.files)])
    svc.store.apply_plan(run_id, plan)
    return no_content()


def _check_plan_numbers(plan: JournalPlan) -> None:
    """400 for a time that is not a finite number or a whole number the history cannot hold."""
    times = [(f"states[{i}]", state[1]) for i, state in enumerate(plan.states)]
    times += [(f"files[{i}].at", f.at) for i, f in enumerate(plan.files)]
    times += [("heartbeat", value) for value in plan.heartbeat or ()]
    for field, value in times:
        if not math.isfinite(value):
            raise ApiError(400, f"field {field!r}: a time must be a finite number, got {value!r}")
    for i, f in enumerate(plan.files):
        if not 0 <= f.size <= MAX_INT:
            raise ApiError(400, f"field 'files[{i}].size': {f.size} is not a size the history can hold")
    for i, m in enumerate(plan.metrics):
        if m.step is not None and not MIN_INT <= m.step <= MAX_INT:
            raise ApiError(400, f"field 'metrics[{i}]': step {m.step} is beyond what the history holds (64 bits)")
        if not math.isfinite(m.at):
            raise ApiError(400, f"field 'metrics[{i}]': a time must be a finite number, got {m.at!r}")


@router.get("/runs/{run_id}/metrics")
def metrics(run_id: str, name: str | None = None, principal: Principal = Depends(ANY_ROLE),
            svc: Services = Depends(services)) -> Response:
    """Logged values in logging order, each ``[name, kind, value, step, description, at]``."""
    readable_run(svc.store, principal, run_id)
    records = svc.store.get_metric_records(run_id, wire.optional_str(name))
    return json_response([wire.metric_to_json(m) for m in records])


@router.post("/runs/{run_id}/tags/remove", status_code=204)
def remove_tags(run_id: str, body: TagKeys, principal: Principal = Depends(ANY_ROLE),
                svc: Services = Depends(services), attempt: int | None = Depends(attempt_header)) -> Response:
    writable_run(svc.store, principal, run_id)
    check_attempt(svc, principal, run_id, attempt)
    svc.store.remove_tags(run_id, body.keys)
    return no_content()


@router.get("/runs/{run_id}/files")
def files(run_id: str, principal: Principal = Depends(ANY_ROLE), svc: Services = Depends(services)) -> Response:
    """The run's files by name (latest version of each)."""
    readable_run(svc.store, principal, run_id)
    return json_response({n: wire.file_to_json(f) for n, f in svc.store.list_files(run_id).items()})


@router.put("/runs/{run_id}/logs/{name:path}", status_code=204)
def append_log(run_id: str, name: str, offset: int = Query(ge=0, le=MAX_INT), data: bytes = Depends(raw_body),
               principal: Principal = Depends(ANY_ROLE), svc: Services = Depends(services),
               attempt: int | None = Depends(attempt_header)) -> Response:
    """Store a chunk of a live log at ``offset`` (the raw body); the same chunk twice is harmless."""
    writable_run(svc.store, principal, run_id)
    check_attempt(svc, principal, run_id, attempt)
    svc.store.append_log(run_id, name, offset, data)
    return no_content()


@router.get("/runs/{run_id}/logs/{name:path}")
def read_log(run_id: str, name: str, offset: int = Query(0, ge=0, le=MAX_INT), principal: Principal = Depends(ANY_ROLE),
             svc: Services = Depends(services)) -> Response:
    """The contiguous bytes of a live log from ``offset`` on (application/octet-stream)."""
    readable_run(svc.store, principal, run_id)
    return Response(svc.store.read_log(run_id, name, offset), media_type="application/octet-stream")


@router.get("/runs/{run_id}/logs")
def log_names(run_id: str, principal: Principal = Depends(ANY_ROLE), svc: Services = Depends(services)) -> Response:
    readable_run(svc.store, principal, run_id)
    return json_response(svc.store.log_names(run_id))
