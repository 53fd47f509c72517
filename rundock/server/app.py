"""The team server's FastAPI app: ``create_app(settings)``.

Routes live in the ``routes_*`` modules, one family each; this module opens what they work with
(``Services``), adds the two anonymous health checks, the authenticated OpenAPI document, the error handlers,
the body limit and the access log. There is no anonymous route but ``/healthz`` and ``/readyz``: even the
OpenAPI document needs a token, and the interactive docs pages are off (they would need one too).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import Depends, FastAPI
from starlette.responses import Response

from rundock.errors import RunNotFoundError, StoreError
from rundock.history.artifacts import ArtifactStore
from rundock.history.store import open_store
from rundock.server import (
    errors,
    mlflow_api,
    routes_admin,
    routes_blobs,
    routes_pools,
    routes_query,
    routes_registry,
    routes_rundata,
    routes_runs,
    routes_secrets,
)
from rundock.server.access import BlobAccess
from rundock.server.auth import ANY_ROLE, Principal, TokenCache
from rundock.server.crypto import SecretBox
from rundock.server.limits import BodyLimit
from rundock.server.logging import AccessLog
from rundock.server.pools import Pools
from rundock.server.pools_state import PoolsState
from rundock.server.pools_sweeper import Sweeper
from rundock.server.responses import json_response
from rundock.server.services import Services, services
from rundock.server.settings import ServerSettings
from rundock.server.state import open_state
from rundock.server.timeouts import ReadTimeout
from rundock.server.uploads import Uploads
from rundock.ui.app import mount_team_ui

HEALTH_PATHS = ("/healthz", "/readyz")
_PROBE_RUN_ID = "rundock-readiness-probe"


def server_version() -> str:
    import rundock

    return str(rundock.__version__)


def open_services(settings: ServerSettings) -> Services:
    """Open the history, the artifact store and the server's tables; errors say what to fix."""
    box = SecretBox(settings.key_text())
    store = open_store(settings.store)
    try:
        state = open_state(settings.store)
        try:
            state.check()
            artifacts = ArtifactStore(settings.artifacts)
            uploads = Uploads(artifacts)
            uploads.remove_stale()
            return Services(settings=settings, store=store, artifacts=artifacts, state=state, box=box,
                            tokens=TokenCache(state), blob_access=BlobAccess(store, uploads), uploads=uploads,
                            history_id=state.history_id(),
                            pools=Pools(PoolsState(state), store, settings.lease_seconds))
        except BaseException:
            state.close()
            raise
    except BaseException:
        store.close()
        raise


def create_app(settings: ServerSettings) -> FastAPI:
    """The server's app over the history, artifacts and secrets key that ``settings`` name."""
    svc = open_services(settings)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        stop = asyncio.Event()
        sweeping = asyncio.create_task(Sweeper(svc.pools).run(stop))  # pool leases (``pools_sweeper``)
        try:
            yield
        finally:
            stop.set()
            await sweeping
            svc.close()

    app = FastAPI(title="rundock team server", version=server_version(), openapi_url=None, docs_url=None,
                  redoc_url=None, lifespan=lifespan,
                  description="The run history of a team: runs, their data, blobs, tokens and secrets.")
    app.state.services = svc
    errors.install(app)
    for module in (routes_runs, routes_rundata, routes_registry, routes_blobs, routes_secrets, routes_admin,
                   routes_pools, routes_query):
        app.include_router(module.router)
    app.include_router(mlflow_api.router)  # MLflow's tracking API (/api/2.0/mlflow) and run tokens
    mount_team_ui(app, svc)  # the web UI (/ui) behind a login with the server's tokens (``rundock.ui.auth``)

    @app.get("/healthz", tags=["health"])
    async def healthz() -> Response:
        """Anonymous: the process answers."""
        return json_response({"status": "ok"})

    @app.get("/readyz", tags=["health"])
    def readyz() -> Response:
        """Anonymous: 200 when the database answers, else 503."""
        try:
            svc.store.get_run(_PROBE_RUN_ID)
        except RunNotFoundError:
            pass  # the database answered
        except StoreError as exc:
            return json_response({"status": "unavailable", "error": {"code": "unavailable", "message":
                                  f"the run history does not answer ({type(exc).__name__})"}}, 503)
        try:
            svc.state.ping()
        except StoreError as exc:
            return json_response({"status": "unavailable", "error": {"code": "unavailable", "message":
                                  f"the server's tables do not answer ({type(exc).__name__})"}}, 503)
        return json_response({"status": "ok"})

    @app.get("/api/v1/whoami", tags=["server"])
    async def whoami(principal: Principal = Depends(ANY_ROLE)) -> Response:
        """The token's name, role, pools and expiry."""
        return json_response(principal.to_json())

    @app.get("/api/v1/info", tags=["server"])
    async def info(principal: Principal = Depends(ANY_ROLE), svc: Services = Depends(services)) -> Response:
        """The server's version, its history's id and its limits."""
        return json_response({"version": server_version(), "history_id": svc.history_id, "limits": {
            "max_request_bytes": svc.settings.max_request_bytes,
            "max_metrics_per_batch": svc.settings.max_metrics_per_batch}})

    @app.get("/openapi.json", tags=["server"], include_in_schema=False)
    async def openapi(principal: Principal = Depends(ANY_ROLE)) -> Response:
        """The OpenAPI document of this server (a token is needed, as everywhere but the health checks)."""
        return json_response(app.openapi())

    app.add_middleware(BodyLimit, limit=settings.max_request_bytes)
    app.add_middleware(ReadTimeout, seconds=settings.request_timeout_seconds)  # a stalled body: 408, closed
    app.add_middleware(AccessLog)  # outermost: it sees every answer, the body limit's and the timeout's too
    return app
