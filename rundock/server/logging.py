"""The server's log: one JSON line per request (the access log), and JSON lines for errors, on standard error.

An access line holds ``time``, ``method``, ``path``, ``status``, ``duration_ms``, ``principal`` (the token's
name, or null), ``bytes_in`` and ``bytes`` (the response body's size). Never the token, and never a query
string: query strings are left out of every line, so that nothing a secret route is asked for is written down.

``AccessLog`` is also the last line of defence: an exception no handler turned into an answer becomes a 500
``{"error": {"code": "internal", ...}}`` carrying an id, and the traceback is logged under that id, never sent.
A client that goes away before its answer (an upload dropped mid-way) is logged with status 499.
"""

from __future__ import annotations

import json
import logging
import sys
import time
import traceback
from typing import Any

from starlette.requests import ClientDisconnect
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from rundock.server.errors import new_error_id

access_log = logging.getLogger("rundock.server.access")
server_log = logging.getLogger("rundock.server")


class _JsonLines(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        if record.name == access_log.name and isinstance(record.args, dict):
            return json.dumps(record.args, separators=(",", ":"))
        entry: dict[str, Any] = {"time": _now(), "level": record.levelname.lower(), "logger": record.name,
                                 "message": record.getMessage()}
        if record.exc_info:
            entry["traceback"] = self.formatException(record.exc_info)
        return json.dumps(entry, separators=(",", ":"))


def _now() -> str:
    t = time.time()
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(t)) + f".{int(t % 1 * 1000):03d}Z"


def configure(stream: Any = None) -> None:
    """Send rundock's server logs, as JSON lines, to ``stream`` (standard error by default)."""
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(_JsonLines())
    for logger in (access_log, server_log):
        logger.handlers[:] = [handler]
        logger.setLevel(logging.INFO)
        logger.propagate = False


class AccessLog:
    """ASGI middleware: log each HTTP request once it is answered; answer 500 for an exception left unhandled."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        state = scope.setdefault("state", {})
        seen = {"status": 0, "bytes": 0, "bytes_in": 0, "started": False}

        async def counting_receive() -> Message:
            message = await receive()
            if message["type"] == "http.request":
                seen["bytes_in"] += len(message.get("body", b""))
            return message

        async def watching_send(message: Message) -> None:
            if message["type"] == "http.response.start":
                seen["status"] = message["status"]
                seen["started"] = True
            elif message["type"] == "http.response.body":
                seen["bytes"] += len(message.get("body", b""))
            await send(message)

        try:
            await self.app(scope, counting_receive, watching_send)
        except ClientDisconnect:
            seen["status"] = seen["status"] or 499  # the client went away before the answer: nobody to tell
        except Exception:
            error_id = new_error_id()
            server_log.error("unexpected error %s on %s %s\n%s", error_id, scope.get("method"), scope.get("path"),
                             traceback.format_exc())
            if not seen["started"]:
                body = json.dumps({"error": {"code": "internal", "message": f"internal server error; the server's "
                                             f"log has the details under id {error_id}", "error_id": error_id}})
                await watching_send({"type": "http.response.start", "status": 500,
                                     "headers": [(b"content-type", b"application/json"),
                                                 (b"content-length", str(len(body)).encode())]})
                await watching_send({"type": "http.response.body", "body": body.encode()})
        finally:
            principal = state.get("principal")
            access_log.info("", {
                "time": _now(), "method": scope.get("method"), "path": scope.get("path"), "status": seen["status"],
                "duration_ms": round((time.perf_counter() - started) * 1000, 3),
                "principal": getattr(principal, "name", None), "bytes_in": seen["bytes_in"], "bytes": seen["bytes"]})
