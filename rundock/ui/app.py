"""The UI's router and the two apps that serve it.

- ``ui_router()``: every ``/ui`` route (pages, ``/ui/api``, static files), for any app that sets
  ``app.state.ui`` (a ``UiBackend``) and ``app.state.ui_auth`` (a ``UiAuth``);
- ``mount_team_ui(app, svc)``: the team server's ``/ui`` behind its tokens (a login page), and ``/`` → ``/ui/``;
- ``local_app(backend)``: ``rundock ui``'s app over a local history, behind a one-time token.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, FastAPI
from starlette.responses import RedirectResponse, Response

from rundock.history.records import RunRecord
from rundock.server import errors
from rundock.server.auth import Principal
from rundock.server.services import Services
from rundock.ui import pages_other, pages_run, pages_runs, routes_api
from rundock.ui.auth import LocalAuth, ServerAuth, session_key
from rundock.ui.backend import UiBackend


def ui_router() -> APIRouter:
    router = APIRouter(include_in_schema=False)
    for module in (pages_runs, pages_run, pages_other, routes_api):
        router.include_router(module.router)
    return router


def _root(app: FastAPI) -> None:
    @app.get("/", include_in_schema=False)
    def root() -> Response:
        """Anonymous: the UI is at /ui/."""
        return RedirectResponse("/ui/", status_code=303)


def mount_team_ui(app: FastAPI, svc: Services) -> None:
    """Serve the UI on the team server, over its history, artifacts, tokens and pools."""

    def pools(principal: Principal) -> list[dict[str, object]]:
        return svc.pools.listing(principal.pools if principal.role == "agent" else None)

    def queue(run: RunRecord) -> dict[str, Any] | None:
        try:
            return svc.pools.queue_info(run)
        except errors.ApiError:  # never queued in a pool
            return None

    app.state.ui = UiBackend(store=svc.store, artifacts=svc.artifacts, title="rundock team server", pools=pools,
                             queue=queue)
    app.state.ui_auth = ServerAuth(session_key(svc.settings.key_text()), svc.tokens)
    app.include_router(ui_router())
    _root(app)


def local_app(backend: UiBackend) -> tuple[FastAPI, LocalAuth]:
    """``rundock ui``'s app and its auth (``auth.once`` is the token for the printed URL)."""
    app = FastAPI(title="rundock ui", openapi_url=None, docs_url=None, redoc_url=None)
    errors.install(app)
    auth = LocalAuth()
    app.state.ui = backend
    app.state.ui_auth = auth
    app.include_router(ui_router())
    _root(app)
    return app, auth
