"""The request body limit: JSON and log bodies over ``max_request_bytes`` get 413 before they are read whole.

A declared ``Content-Length`` over the limit is refused without keeping a byte of the body; a chunked body is
counted as it arrives and refused as soon as it passes the limit. Either way the rest of the body is read and
dropped (up to ``DRAIN_BYTES``): a client that is still sending, as most HTTP clients do before they look for
an answer, then gets the 413 rather than a reset connection. Blob uploads (``PUT /api/v1/uploads/…``) are
exempt: they are streamed to disk and may be any size.
"""

from __future__ import annotations

import json

from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

UPLOADS_PREFIX = "/api/v1/uploads/"
DRAIN_BYTES = 256 << 20


def too_large_message(limit: int) -> str:
    return (f"request body too large: this server takes at most {limit} bytes ({limit / (1 << 20):.1f} MiB) per "
            "request (max_request_bytes); clients send metrics and records in batches under that size")


class TooLarge(HTTPException):
    """Raised from the body as it is read (FastAPI passes HTTPExceptions on; the error handlers answer 413)."""

    def __init__(self, limit: int) -> None:
        super().__init__(413, too_large_message(limit))


class BodyLimit:
    """ASGI middleware that refuses request bodies over ``limit`` bytes with 413 (uploads excepted)."""

    def __init__(self, app: ASGIApp, limit: int) -> None:
        self.app = app
        self.limit = limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or str(scope.get("path", "")).startswith(UPLOADS_PREFIX):
            await self.app(scope, receive, send)
            return
        for name, value in scope.get("headers", ()):
            if name == b"content-length":
                try:
                    declared = int(value)
                except ValueError:
                    declared = 0
                if declared > self.limit:
                    await _drain(receive, declared)
                    await self._refuse(send)
                    return
        received = 0
        started = False

        async def counting_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.limit:
                    if message.get("more_body", False):
                        await _drain(receive, 0)
                    raise TooLarge(self.limit)
            return message

        async def watching_send(message: Message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, counting_receive, watching_send)
        except TooLarge:
            if started:
                raise
            await self._refuse(send)

    async def _refuse(self, send: Send) -> None:
        body = json.dumps({"error": {"code": "too_large", "message": too_large_message(self.limit),
                                     "limit": self.limit}}).encode()
        await send({"type": "http.response.start", "status": 413,
                    "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                                (b"connection", b"close")]})
        await send({"type": "http.response.body", "body": body})


async def _drain(receive: Receive, declared: int) -> None:
    """Read and drop the rest of a refused body (up to ``DRAIN_BYTES``), so that a client still sending it
    reads the 413 instead of finding its connection reset; a larger one is cut off with the connection."""
    if declared > DRAIN_BYTES:
        return
    dropped = 0
    while dropped <= DRAIN_BYTES:
        message = await receive()
        if message["type"] != "http.request":
            return
        dropped += len(message.get("body", b""))
        if not message.get("more_body", False):
            return
