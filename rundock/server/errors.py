"""How failures reach a client: one JSON shape, ``{"error": {"code": ..., "message": ...}}``, and fixed codes.

| status | code            | when                                                                   |
|--------|-----------------|------------------------------------------------------------------------|
| 400    | bad_request     | bad input; the message names the field                                 |
| 401    | unauthorized    | no token, or a bad, expired or revoked one                              |
| 403    | forbidden       | the token's role may not do this, or the run is not the token's         |
| 404    | not_found       | unknown run, model, environment, snapshot, blob, token or secret        |
| 409    | conflict        | the request clashes with what is stored (an upload's offset, a run id)  |
| 413    | too_large       | a body or a batch over this server's limits                             |
| 503    | unavailable     | the run history cannot be used now; clients retry                       |
| 500    | internal        | a bug: the message carries an id to look for in the server's log        |

Store exceptions map onto these in ``install``: RunNotFoundError and KeyError -> 404, ValueError (and a number
too large or a value nested too deeply for the history: OverflowError, RecursionError) -> 400, StoreError -> 503
with a short message (the details, which may name server paths, go to the server log). Messages that come from
a store are ``scrub``-bed of the server's paths and database address.
"""

from __future__ import annotations

import json
import logging
import os
import re
import secrets
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from pydantic import ValidationError
from starlette.exceptions import HTTPException
from starlette.responses import Response

from rundock.errors import RunNotFoundError, StoreError

log = logging.getLogger("rundock.server")

_CODES = {400: "bad_request", 401: "unauthorized", 403: "forbidden", 404: "not_found", 405: "method_not_allowed",
          409: "conflict", 413: "too_large", 416: "range_not_satisfiable", 500: "internal", 503: "unavailable"}


class ApiError(Exception):
    """An answer other than success, raised anywhere below a route; ``extra`` adds fields to the error object."""

    def __init__(self, status: int, message: str, *, code: str | None = None, **extra: Any) -> None:
        super().__init__(message)
        self.status = status
        self.code = code or _CODES.get(status, "error")
        self.message = message
        self.extra = extra
        self.headers: dict[str, str] = {}


def error_response(status: int, message: str, code: str | None = None, headers: dict[str, str] | None = None,
                   **extra: Any) -> Response:
    body = {"error": {"code": code or _CODES.get(status, "error"), "message": message, **extra}}
    return Response(json.dumps(body), status_code=status, media_type="application/json", headers=headers)


def new_error_id() -> str:
    return secrets.token_hex(6)


_POSTGRES_URI = re.compile(r"\b(the run history |the model registry |in )?postgres(?:ql)?://(?:[^\s'\"]*[^\s'\",.:;)])?")
_URI_SHOWN_AS = {"the run history ": "the server's run history", "the model registry ": "the server's model registry",
                 "in ": "on the server"}


def scrub(request: Request, message: str) -> str:
    """``message`` without the server's own file paths (a store names its history file in its errors) or the
    address of its database."""
    settings = getattr(getattr(request.app.state, "services", None), "settings", None)
    store = getattr(settings, "store", "")
    if store.startswith("sqlite:"):
        from rundock.history.backends.sqlite_file import history_path

        path = history_path(store)
        for shown in dict.fromkeys((os.path.abspath(path), path)):
            message = message.replace(f"the run history {shown}", "the server's run history")
            message = message.replace(f"the model registry {shown}", "the server's model registry")
            message = message.replace(f"in {shown}", "on the server").replace(shown, "the server's run history")
    return _POSTGRES_URI.sub(lambda m: _URI_SHOWN_AS.get(m.group(1) or "", "the server's run history"), message)


async def _api_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, ApiError)
    return error_response(exc.status, exc.message, exc.code, exc.headers or None, **exc.extra)


async def _not_found(request: Request, exc: Exception) -> Response:
    message = str(exc.args[0]) if isinstance(exc, KeyError) and exc.args else str(exc)
    return error_response(404, scrub(request, message))


async def _bad_input(request: Request, exc: Exception) -> Response:
    return error_response(400, scrub(request, str(exc) or type(exc).__name__))


def limits_message(exc: Exception) -> str:
    """What to tell a client whose request held a number or a nesting the run history cannot take."""
    if isinstance(exc, RecursionError):
        return "the request holds values nested too deeply for the run history"
    return "the request holds a number too large for the run history (whole numbers are kept in 64 bits)"


async def _beyond_limits(request: Request, exc: Exception) -> Response:
    return error_response(400, limits_message(exc))


async def _store_error(request: Request, exc: Exception) -> Response:
    error_id = new_error_id()
    log.warning("run history error %s on %s %s: %s: %s", error_id, request.method, request.url.path,
                type(exc).__name__, exc)
    return error_response(503, f"the run history is unavailable now ({type(exc).__name__}); try again later. "
                               f"The server's log has the details under id {error_id}", error_id=error_id)


def validation_message(exc: RequestValidationError | ValidationError) -> str:
    """What is wrong with a request, naming the fields (at most five)."""
    problems = []
    for error in exc.errors()[:5]:
        where = [str(p) for p in error.get("loc", ()) if p not in ("body", "query", "path", "header")]
        field = ".".join(where) or "body"
        if error.get("type") == "json_invalid":
            problems.append("the request body is not JSON")
            continue
        problems.append(f"field {field!r}: {error.get('msg', 'invalid')}")
    return "; ".join(problems) or "invalid request"


async def _validation(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, RequestValidationError)
    return error_response(400, validation_message(exc))


async def _http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    message = exc.detail if isinstance(exc.detail, str) else json.dumps(exc.detail)
    if exc.status_code == 404 and message == "Not Found":
        message = f"no such route: {request.method} {request.url.path}"
    return error_response(exc.status_code, message, headers=dict(exc.headers or {}) or None)


def install(app: FastAPI) -> None:
    """Register the handlers that turn exceptions into the JSON error shape (unexpected ones: ``logging``)."""
    app.add_exception_handler(ApiError, _api_error)
    app.add_exception_handler(RunNotFoundError, _not_found)
    app.add_exception_handler(KeyError, _not_found)
    app.add_exception_handler(ValueError, _bad_input)
    app.add_exception_handler(OverflowError, _beyond_limits)
    app.add_exception_handler(RecursionError, _beyond_limits)
    app.add_exception_handler(StoreError, _store_error)
    app.add_exception_handler(RequestValidationError, _validation)
    app.add_exception_handler(HTTPException, _http_error)
