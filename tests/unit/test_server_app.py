"""The app's shape: every route but the health checks authenticates, and an unexpected error stays on the server.

The app runs in uvicorn in a thread of the test process here (a real HTTP server on loopback), so that a test
can add a route that fails on purpose.
"""

from __future__ import annotations

import io
import json
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
import uvicorn
from fastapi import Depends, FastAPI
from fastapi.dependencies.models import Dependant
from fastapi.routing import APIRoute

from rundock.server import logging as server_logging
from rundock.server.app import HEALTH_PATHS, create_app
from rundock.server.auth import authenticated
from rundock.server.mlflow_auth import caller
from rundock.server.settings import load_settings
from rundock.server.setup import init_server
from rundock.ui.auth import ANONYMOUS_PATHS, ui_session
from tests.server_fixtures import free_port

# The functions that authenticate a request: the server's own, and the MLflow routes' entry, which accepts a
# run token as well and hands every other token to ``authenticated``; and the web UI's session check.
AUTHENTICATING: set[Callable[..., Any]] = {authenticated, caller, ui_session}


@pytest.fixture
def app(tmp_path: Path) -> FastAPI:
    store = f"sqlite:///{tmp_path / 'history.db'}"
    result = init_server(store, str(tmp_path / "artifacts"), str(tmp_path / "server.yaml"))
    app = create_app(load_settings({}, {}, result.config_path))
    app.state.admin_token = result.admin_token
    return app


def _calls(dependant: Dependant) -> set[Callable[..., Any]]:
    found = {d.call for d in dependant.dependencies if d.call is not None}
    for sub in dependant.dependencies:
        found |= _calls(sub)
    return found


def _routes(app: FastAPI) -> Iterator[tuple[str, set[str], Dependant | None]]:
    """(path, methods, dependant or None for a route that is not a FastAPI route) of every route, included
    routers' routes too (recent FastAPI keeps those behind one entry per ``include_router``)."""
    try:
        from fastapi.routing import iter_route_contexts
    except ImportError:  # an older FastAPI copies included routes into ``app.routes``
        for route in app.routes:
            yield (getattr(route, "path", repr(route)), set(getattr(route, "methods", None) or ()),
                   route.dependant if isinstance(route, APIRoute) else None)
        return
    for context in iter_route_contexts(app.routes):
        api = isinstance(context.original_route, APIRoute)
        yield context.path or repr(context.route), set(context.methods or ()), context.dependant if api else None


def test_every_route_but_the_health_checks_authenticates(app: FastAPI) -> None:
    seen, unguarded = set(), []
    for path, methods, dependant in _routes(app):
        seen.add(path)
        if path not in HEALTH_PATHS + ANONYMOUS_PATHS and (dependant is None or not _calls(dependant) & AUTHENTICATING):
            unguarded.append(f"{sorted(methods)} {path}")
    assert not unguarded, f"routes without the auth dependency: {unguarded}"
    assert seen >= {"/api/v1/runs", "/api/v1/runs/{run_id}/secrets", "/api/v1/uploads/{digest}", "/openapi.json",
                    "/api/2.0/mlflow/runs/log-batch", *HEALTH_PATHS}
    assert len(seen) > 40


def test_an_unexpected_error_is_a_500_with_an_id_and_the_traceback_stays_in_the_log(app: FastAPI) -> None:
    @app.get("/api/v1/fails", dependencies=[Depends(authenticated)])
    def fails() -> None:
        raise RuntimeError("secret internals /srv/rundock/history.db")

    log = io.StringIO()
    server_logging.configure(log)
    with served_app(app) as url:
        answer = requests.get(f"{url}/api/v1/fails", headers={"Authorization": f"Bearer {app.state.admin_token}"},
                              timeout=30)
    assert answer.status_code == 500
    error = answer.json()["error"]
    assert error["code"] == "internal" and error["error_id"] in error["message"]
    assert "internals" not in answer.text and "Traceback" not in answer.text
    lines = [json.loads(line) for line in log.getvalue().splitlines()]
    logged = [line for line in lines if error["error_id"] in line.get("message", "")]
    assert logged and "RuntimeError: secret internals" in logged[0]["message"]
    access = [line for line in lines if line.get("path") == "/api/v1/fails"]
    assert access and access[0]["status"] == 500 and access[0]["principal"] == "admin"


def test_the_openapi_document_needs_a_token(app: FastAPI) -> None:
    with served_app(app) as url:
        assert requests.get(f"{url}/openapi.json", timeout=30).status_code == 401
        document = requests.get(f"{url}/openapi.json", timeout=30,
                                headers={"Authorization": f"Bearer {app.state.admin_token}"}).json()
    assert "/api/v1/runs/{run_id}" in document["paths"]
    assert "/healthz" in document["paths"]


class served_app:  # noqa: N801  (used like a function)
    """``with served_app(app) as url``: the app in uvicorn on a free port, in a thread."""

    def __init__(self, app: FastAPI) -> None:
        self.port = free_port()
        self.server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=self.port, log_level="warning"))
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def __enter__(self) -> str:
        self.thread.start()
        deadline = time.monotonic() + 20
        while not self.server.started:
            assert time.monotonic() < deadline, "uvicorn did not start"
            time.sleep(0.02)
        return f"http://127.0.0.1:{self.port}"

    def __exit__(self, *exc: object) -> None:
        self.server.should_exit = True
        self.thread.join(20)
