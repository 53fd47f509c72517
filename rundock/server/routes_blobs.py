"""Blobs (content addressed by SHA-256) and resumable uploads (``/api/v1/blobs``, ``/api/v1/uploads``).

Downloads stream from disk in 1 MiB pieces and honour ``Range: bytes=N-`` (and ``N-M``) with 206. Uploads
stream to disk (``uploads``), each uploader's into partials of its own. Every role uploads; an agent reads only
the blobs of its pools' runs and those it uploaded (``access.BlobAccess``). To an agent, a blob the server has but
the agent may not read is missing: ``/blobs/missing`` lists it and ``GET /uploads`` answers an offset, so the
agent's client sends its bytes, which proves it holds them.
"""

from __future__ import annotations

from collections.abc import Iterator

from fastapi import APIRouter, Depends, Query, Request
from pydantic import BaseModel, ConfigDict
from starlette.concurrency import run_in_threadpool
from starlette.responses import Response, StreamingResponse

from rundock.server.auth import ANY_ROLE, Principal
from rundock.server.errors import ApiError
from rundock.server.responses import json_response
from rundock.server.services import Services, services
from rundock.server.uploads import check_digest
from rundock.server.validation import MAX_INT

router = APIRouter(prefix="/api/v1", tags=["blobs"])
_PIECE = 1 << 20


class Digests(BaseModel):
    model_config = ConfigDict(extra="forbid")

    digests: list[str]


@router.post("/blobs/missing")
def missing(body: Digests, principal: Principal = Depends(ANY_ROLE), svc: Services = Depends(services)) -> Response:
    """Which of ``digests`` the server lacks: ``{"missing": [...]}``. Those it has are stamped as used now, so a
    garbage collection running meanwhile spares the blobs a client is about to refer to."""
    for digest in body.digests:
        check_digest(digest)
    wanted = list(dict.fromkeys(body.digests))
    stored = [d for d in wanted if svc.artifacts.keep(d)]
    readable = svc.blob_access.readable(principal, stored)
    return json_response({"missing": [d for d in wanted if d not in readable]})


def _readable_size(svc: Services, principal: Principal, digest: str) -> int:
    check_digest(digest)
    if not svc.artifacts.has(digest):
        raise ApiError(404, f"no blob {digest} on this server")
    svc.blob_access.check(principal, digest)
    return svc.artifacts.size(digest)


@router.head("/blobs/{digest}")
def head_blob(digest: str, principal: Principal = Depends(ANY_ROLE), svc: Services = Depends(services)) -> Response:
    """200 with the blob's Content-Length, or 404."""
    size = _readable_size(svc, principal, digest)
    return Response(headers={"content-length": str(size), "accept-ranges": "bytes"},
                    media_type="application/octet-stream")


def _range(header: str | None, size: int) -> tuple[int, int] | None:
    """(first, last) byte of a ``bytes=N-`` or ``bytes=N-M`` range; None for the whole blob; 416 if unusable."""
    if not header:
        return None
    unit, _, spec = header.partition("=")
    first, dash, last = spec.strip().partition("-")
    try:
        if unit.strip() != "bytes" or not dash or "," in spec:
            raise ValueError
        start = int(first)
        end = int(last) if last.strip() else size - 1
    except ValueError:
        raise ApiError(416, f"unsupported Range {header!r}: this server takes 'bytes=N-' or 'bytes=N-M'") from None
    if start >= size or end < start:
        error = ApiError(416, f"Range {header!r} is outside the blob ({size} bytes)")
        error.headers["content-range"] = f"bytes */{size}"
        raise error
    return start, min(end, size - 1)


def _pieces(svc: Services, digest: str, start: int, length: int) -> Iterator[bytes]:
    with svc.artifacts.open(digest) as fh:
        fh.seek(start)
        while length > 0:
            piece = fh.read(min(_PIECE, length))
            if not piece:
                raise OSError(f"blob {digest} ended early: the artifact store is damaged")
            length -= len(piece)
            yield piece


@router.get("/blobs/{digest}")
def get_blob(digest: str, request: Request, principal: Principal = Depends(ANY_ROLE),
             svc: Services = Depends(services)) -> Response:
    """The blob's bytes, streamed; ``Range: bytes=N-`` gives 206 with the rest from N."""
    size = _readable_size(svc, principal, digest)
    wanted = _range(request.headers.get("range"), size)
    start, end = wanted if wanted else (0, size - 1)
    headers = {"content-length": str(end - start + 1), "accept-ranges": "bytes"}
    if wanted:
        headers["content-range"] = f"bytes {start}-{end}/{size}"
    return StreamingResponse(_pieces(svc, digest, start, end - start + 1), status_code=206 if wanted else 200,
                             headers=headers, media_type="application/octet-stream")


@router.get("/uploads/{digest}")
def upload_state(digest: str, principal: Principal = Depends(ANY_ROLE), svc: Services = Depends(services)) -> Response:
    """``{"complete": true}`` when the blob is stored, else ``{"offset": n}``: the bytes already held."""
    check_digest(digest)
    if _have(svc, principal, digest):
        return json_response({"complete": True})
    return json_response({"offset": svc.uploads.offset(principal.token_id, digest)})


def _have(svc: Services, principal: Principal, digest: str) -> bool:
    """Whether the server has blob ``digest`` as far as ``principal`` can tell (it has it and may read it)."""
    return svc.artifacts.keep(digest) and bool(svc.blob_access.readable(principal, [digest]))


@router.put("/uploads/{digest}")
async def upload(digest: str, request: Request, offset: int = Query(ge=0, le=MAX_INT),
                 principal: Principal = Depends(ANY_ROLE), svc: Services = Depends(services)) -> Response:
    """Append the streamed body at ``offset`` to this token's partial upload; the last request (header
    ``X-Rundock-Final: 1``, or an empty body) checks the SHA-256 and installs the blob. Answers ``{"offset": n}``
    or ``{"complete": true}``; 409 (with the right ``offset``) when ``offset`` is not what the server holds; 400
    "digest mismatch" discards the upload."""
    check_digest(digest)
    final = request.headers.get("x-rundock-final", "").strip() in ("1", "true")
    if await run_in_threadpool(_have, svc, principal, digest):
        return json_response(await svc.uploads.drain(principal.token_id, digest, request.stream()))
    result = await svc.uploads.receive(principal.token_id, digest, offset, request.stream(), final,
                                       remember=principal.role == "agent")
    return json_response(result)

