"""The JSON, event-stream and download endpoints the pages use (``/ui/api/...``), and tag edits.

- ``GET  /ui/api/runs/{run_id}/series?name=&x=step|time`` a scalar metric's points (LTTB-downsampled);
- ``GET  /ui/api/runs/{run_id}/metric.csv?name=`` every value of a metric, streamed as CSV;
- ``GET  /ui/api/runs/{run_id}/logs/{name}`` a live log as server-sent events (``log``, ``status``, ``end``)
  following it as it grows until the run ends; ``?download=1``: the log as it is now, as a file;
- ``GET  /ui/api/runs/{run_id}/files/{name}`` a stored file of the run (``?inline=1`` shows raster images);
- ``POST /ui/api/runs/{run_id}/tags`` ``{"set": {key: value}, "remove": [key]}`` with the CSRF header.

A file is found by its name among the run's stored file records and read by digest from the artifact store: no
path from the request ever reaches the file system, so ``..``, absolute paths and links in a run folder open
nothing.
"""

from __future__ import annotations

import asyncio
import codecs
import json
import time
from collections.abc import AsyncIterator, Iterator
from typing import Any
from urllib.parse import quote

from fastapi import APIRouter, Depends, Query, Request
from starlette.concurrency import run_in_threadpool
from starlette.responses import Response, StreamingResponse

from rundock.history import liveness
from rundock.server.errors import ApiError
from rundock.server.responses import json_response
from rundock.ui import data
from rundock.ui.auth import Viewer, check_csrf, ui_session
from rundock.ui.backend import UiBackend, ui_backend
from rundock.ui.layout import SECURITY_HEADERS

router = APIRouter(prefix="/ui/api")
POLL_SECONDS = 0.25
REFRESH_SECONDS = 1.0
MAX_TAG_KEY, MAX_TAG_VALUE = 255, 5000
MAX_OFFSET = (1 << 63) - 1  # a log offset past what the history stores is refused (400) before the stream starts
INLINE_TYPES = {".png": "image/png", ".jpg": "image/jpeg", ".jpeg": "image/jpeg", ".gif": "image/gif",
                ".webp": "image/webp"}  # never SVG or HTML: they could carry script


def _attachment(name: str) -> dict[str, str]:
    base = name.rsplit("/", 1)[-1] or "file"
    return {**SECURITY_HEADERS, "Content-Disposition": f"attachment; filename*=UTF-8''{quote(base)}"}


@router.get("/runs/{run_id}/series")
def series(run_id: str, name: str, x: str = Query("step", pattern="^(step|time)$"),
           max_points: int = Query(2000, ge=10, le=100_000), viewer: Viewer = Depends(ui_session),
           ui: UiBackend = Depends(ui_backend)) -> Response:
    ui.readable(viewer.principal, run_id)
    return json_response(_finite(data.metric_series(ui.store, run_id, name, max_points=max_points, x=x)))


def _finite(value: Any) -> Any:
    if isinstance(value, float) and value != value or value in (float("inf"), float("-inf")):
        return None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_finite(v) for v in value]
    return value


@router.get("/runs/{run_id}/metric.csv")
def metric_csv(run_id: str, name: str, viewer: Viewer = Depends(ui_session), ui: UiBackend = Depends(ui_backend)
               ) -> Response:
    ui.readable(viewer.principal, run_id)
    lines: Iterator[str] = data.metric_csv(ui.store, run_id, name)
    return StreamingResponse(lines, media_type="text/csv", headers=_attachment(f"{run_id}-{name}.csv"))


@router.get("/runs/{run_id}/files/{name:path}")
def file(run_id: str, name: str, inline: bool = False, viewer: Viewer = Depends(ui_session),
         ui: UiBackend = Depends(ui_backend)) -> Response:
    ui.readable(viewer.principal, run_id)
    record = ui.store.list_files(run_id).get(name)
    if record is None:
        raise ApiError(404, f"run {run_id} has no file {name!r}")
    extension = ("." + name.rsplit(".", 1)[-1].lower()) if "." in name else ""
    kind = INLINE_TYPES.get(extension) if inline else None
    stream = ui.artifacts.open(record.digest)

    def chunks() -> Iterator[bytes]:
        with stream:
            while block := stream.read(1 << 16):
                yield block

    headers = {**SECURITY_HEADERS, "Content-Length": str(record.size)} if kind else \
        {**_attachment(name), "Content-Length": str(record.size)}
    return StreamingResponse(chunks(), media_type=kind or "application/octet-stream", headers=headers)


@router.get("/runs/{run_id}/logs/{name:path}")
async def log(request: Request, run_id: str, name: str, offset: int = Query(0, ge=0, le=MAX_OFFSET),
              download: bool = False,
              viewer: Viewer = Depends(ui_session), ui: UiBackend = Depends(ui_backend)) -> Response:
    await run_in_threadpool(ui.readable, viewer.principal, run_id)
    if download:
        text = await run_in_threadpool(ui.store.read_log, run_id, name, 0)
        return Response(text, media_type="text/plain; charset=utf-8", headers=_attachment(name))
    headers = {"Cache-Control": "no-store", "X-Accel-Buffering": "no", "X-Content-Type-Options": "nosniff"}
    return StreamingResponse(_follow(request, ui, run_id, name, offset), media_type="text/event-stream",
                             headers=headers)


def _event(kind: str, payload: Any) -> str:
    return f"event: {kind}\ndata: {json.dumps(payload)}\n\n"


async def _follow(request: Request, ui: UiBackend, run_id: str, name: str, offset: int) -> AsyncIterator[str]:
    """Events until the run ends: ``log`` ({"text", "offset"}) for new bytes, ``status`` on each change, then
    ``end``. A UTF-8 character cut in two between reads waits for its second half."""
    shown, refreshed = None, 0.0
    decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
    while True:
        run = await run_in_threadpool(ui.store.get_run, run_id)
        if time.monotonic() - refreshed > REFRESH_SECONDS and not run.status.is_terminal:
            run = await run_in_threadpool(ui.refresh, run)
            refreshed = time.monotonic()
        status = liveness.shown_status(run).value
        if status != shown:
            shown = status
            yield _event("status", {"status": status, "terminal": run.status.is_terminal})
        chunk = await run_in_threadpool(ui.store.read_log, run_id, name, offset)
        offset += len(chunk)
        text = decoder.decode(chunk, final=run.status.is_terminal)
        if text:
            yield _event("log", {"text": text, "offset": offset})
        if run.status.is_terminal:
            yield _event("end", {"status": status})
            return
        if await request.is_disconnected():
            return
        await asyncio.sleep(POLL_SECONDS)


@router.post("/runs/{run_id}/tags")
async def tags(request: Request, run_id: str, viewer: Viewer = Depends(ui_session),
               ui: UiBackend = Depends(ui_backend)) -> Response:
    check_csrf(request, viewer)
    try:
        body = await request.json()
    except ValueError:
        raise ApiError(400, "send a JSON object: {\"set\": {\"key\": \"value\"}, \"remove\": [\"key\"]}") from None
    to_set = body.get("set") or {} if isinstance(body, dict) else None
    to_remove = body.get("remove") or [] if isinstance(body, dict) else None
    if not isinstance(to_set, dict) or not isinstance(to_remove, list) or \
            not all(isinstance(k, str) and k and (v is None or isinstance(v, str)) for k, v in to_set.items()) or \
            not all(isinstance(k, str) for k in to_remove):
        raise ApiError(400, "tags: 'set' maps keys to string values (or null), 'remove' lists keys")
    for key, value in to_set.items():
        if len(key) > MAX_TAG_KEY or (value is not None and len(value) > MAX_TAG_VALUE):
            raise ApiError(400, f"tag {key[:40]!r}: keys are at most {MAX_TAG_KEY} characters and values at most "
                                f"{MAX_TAG_VALUE}")
    await run_in_threadpool(ui.writable, viewer.principal, run_id)
    if to_set:
        await run_in_threadpool(ui.store.set_tags, run_id, to_set)
    if to_remove:
        await run_in_threadpool(ui.store.remove_tags, run_id, to_remove)
    run = await run_in_threadpool(ui.store.get_run, run_id)
    return json_response({"tags": run.tags})
