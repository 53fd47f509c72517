"""Deadlines for clients that stop sending, so that half-sent requests cannot hold connections for ever.

Anyone who reaches the port can open connections and send half a request; without deadlines each one keeps a
file descriptor (and, for a body, a request in flight) until the client goes away, and a few thousand take them
all. uvicorn closes a connection idle *between* requests (its keep-alive timeout) but has no deadline while a
request is coming in. Two are added, both ``request_timeout_seconds`` (``--request-timeout-seconds``):

- headers: a request's headers must be complete within that time of its first byte (or, on a new connection,
  of the connection being opened); otherwise the server answers 408 and closes the connection
  (``protocol_class``: uvicorn's httptools protocol with this deadline added);
- body: each wait for the next part of a body is limited to that time (``ReadTimeout``, an ASGI middleware): per
  part, not per request, so an upload that keeps sending, however slowly, is never cut off, while one that
  stalls is answered 408 and its connection closed.

Connections past ``max_connections`` (uvicorn's ``limit_concurrency``) are answered 503 and closed.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send


def _timeout_message(seconds: float) -> str:
    return (f"the client sent nothing for {seconds:g} s in the middle of its request; the server closed the "
            "connection (request_timeout_seconds)")


def _timeout_body(seconds: float) -> bytes:
    return json.dumps({"error": {"code": "request_timeout", "message": _timeout_message(seconds)}}).encode()


def protocol_class(seconds: float) -> type[asyncio.Protocol]:
    """uvicorn's httptools protocol, closing a connection whose request headers do not arrive within ``seconds``."""
    from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

    body = _timeout_body(seconds)
    answer = (b"HTTP/1.1 408 Request Timeout\r\ncontent-type: application/json\r\nconnection: close\r\n"
              b"content-length: " + str(len(body)).encode() + b"\r\n\r\n" + body)

    class HeaderDeadlineProtocol(HttpToolsProtocol):
        """Closes the connection when a request's headers take longer than the deadline."""

        _header_timer: asyncio.TimerHandle | None = None
        _in_headers = False

        def connection_made(self, transport: Any) -> None:
            super().connection_made(transport)
            self._arm()

        def on_message_begin(self) -> None:
            super().on_message_begin()
            self._in_headers = True
            self._arm()

        def on_headers_complete(self) -> None:
            self._disarm()
            self._in_headers = False
            super().on_headers_complete()

        def connection_lost(self, exc: Exception | None) -> None:
            self._disarm()
            super().connection_lost(exc)

        def _arm(self) -> None:
            if self._header_timer is None:
                self._header_timer = self.loop.call_later(seconds, self._headers_timed_out)

        def _disarm(self) -> None:
            if self._header_timer is not None:
                self._header_timer.cancel()
                self._header_timer = None

        def _headers_timed_out(self) -> None:
            self._header_timer = None
            if self.transport.is_closing():
                return
            if self._in_headers:
                self.transport.write(answer)
            self.transport.close()

    return HeaderDeadlineProtocol


class ReadTimeout:
    """ASGI middleware: a request whose body stops coming for ``seconds`` gets 408 and its connection is closed.

    The app sees the stalled body end as a client that went away (``http.disconnect``); whatever it then tries to
    answer is replaced by the 408. Waits after the body is complete (a streamed answer listening for the client
    to leave) have no deadline.
    """

    def __init__(self, app: ASGIApp, seconds: float) -> None:
        self.app = app
        self.seconds = seconds

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        state = {"body_done": False, "timed_out": False, "started": False}

        async def timed_receive() -> Message:
            if state["body_done"] or state["timed_out"]:
                return await receive() if not state["timed_out"] else {"type": "http.disconnect"}
            try:
                message = await asyncio.wait_for(receive(), self.seconds)
            except asyncio.TimeoutError:
                state["timed_out"] = True
                return {"type": "http.disconnect"}
            if message["type"] != "http.request" or not message.get("more_body", False):
                state["body_done"] = True
            return message

        async def watched_send(message: Message) -> None:
            if state["timed_out"]:
                return  # the 408 below answers instead
            state["started"] = state["started"] or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, timed_receive, watched_send)
        except Exception:
            if not state["timed_out"]:
                raise
        if state["timed_out"] and not state["started"]:
            body = _timeout_body(self.seconds)
            await send({"type": "http.response.start", "status": 408, "headers": [
                (b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                (b"connection", b"close")]})
            await send({"type": "http.response.body", "body": body})
