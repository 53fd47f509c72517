"""MLflow clients welcome: the part of MLflow's tracking REST API (``/api/2.0/mlflow``) their logging calls use.

``mlflow.set_tracking_uri("https://runs.lab:8765")`` (or ``MLFLOW_TRACKING_URI``) with ``MLFLOW_TRACKING_TOKEN``
set to a server token or a run token lets ``mlflow.start_run``, ``log_metric(s)``, ``log_param(s)``,
``set_tag(s)``, ``end_run``, ``MlflowClient.get_run``, ``search_runs`` and ``get_metric_history`` work against
the team server, on rundock runs. How MLflow's objects map onto rundock's is ``mlflow_map``'s docstring; run
search is ``mlflow_search``'s; who may do what is ``mlflow_auth``'s; run tokens are ``mlflow_tokens``'s.

Routes (MLflow's names; GET routes read the query string, POST routes a JSON body):

- experiments: ``get-by-name``, ``get`` (GET); ``create``, ``search`` (POST);
- runs: ``create``, ``update``, ``log-metric``, ``log-parameter``, ``set-tag``, ``delete-tag``, ``log-batch``,
  ``search`` (POST); ``get`` (GET); ``log-inputs``, ``outputs``, ``log-model`` answer success and keep nothing;
- metrics: ``get-history`` (GET).

Every other path under the prefix answers ENDPOINT_NOT_FOUND (artifacts, models, traces and the UI's
``/ajax-api`` are not served). Errors have MLflow's shape, ``{"error_code": ..., "message": ...}``, with
MLflow's HTTP statuses; a history that cannot be used now is TEMPORARILY_UNAVAILABLE (503), which the MLflow
client retries.

``router`` also holds ``POST /api/v1/runs/{run_id}/run-token`` to the team API: a run token for a run the caller
may write (``{"token", "expires_at"}``), which the submitter hands to the run's job as ``MLFLOW_TRACKING_TOKEN``.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Coroutine
from typing import Any

from fastapi import APIRouter, Depends, Request
from fastapi.exceptions import RequestValidationError
from fastapi.routing import APIRoute
from starlette.exceptions import HTTPException
from starlette.responses import JSONResponse, Response

from rundock.errors import RunNotFoundError, StoreError
from rundock.server import access
from rundock.server import mlflow_experiments as experiments
from rundock.server import mlflow_runs as runs
from rundock.server.auth import ANY_ROLE, Principal
from rundock.server.errors import ApiError, limits_message, new_error_id, scrub
from rundock.server.mlflow_auth import Call, Caller, caller, request_fields
from rundock.server.mlflow_map import MlflowError
from rundock.server.mlflow_tokens import mint_token, signing_key
from rundock.server.services import Services, services

PREFIX = "/api/2.0/mlflow"
log = logging.getLogger("rundock.server")

Handler = Callable[[Call], dict[str, Any]]

ROUTES: tuple[tuple[str, str, Handler], ...] = (
    ("GET", "/experiments/get-by-name", experiments.get_by_name),
    ("GET", "/experiments/get", experiments.get_experiment),
    ("POST", "/experiments/create", experiments.create_experiment),
    ("POST", "/experiments/search", experiments.search_experiments),
    ("POST", "/runs/create", runs.create_run),
    ("GET", "/runs/get", runs.get_run),
    ("POST", "/runs/update", runs.update_run),
    ("POST", "/runs/log-metric", runs.log_metric),
    ("POST", "/runs/log-parameter", runs.log_param),
    ("POST", "/runs/set-tag", runs.set_tag),
    ("POST", "/runs/delete-tag", runs.delete_tag),
    ("POST", "/runs/log-batch", runs.log_batch),
    ("POST", "/runs/search", runs.search_runs),
    ("GET", "/metrics/get-history", runs.metric_history),
    ("POST", "/runs/log-inputs", runs.accept_nothing),
    ("POST", "/runs/outputs", runs.accept_nothing),
    ("POST", "/runs/log-model", runs.accept_nothing),
)
_BY_STATUS = {400: "INVALID_PARAMETER_VALUE", 401: "UNAUTHENTICATED", 403: "PERMISSION_DENIED",
              404: "RESOURCE_DOES_NOT_EXIST", 409: "INVALID_PARAMETER_VALUE", 413: "INVALID_PARAMETER_VALUE",
              503: "TEMPORARILY_UNAVAILABLE"}


def as_mlflow_error(exc: Exception, request: Request) -> MlflowError | None:
    """The MLflow error an exception stands for; None for one that is a bug (the server's 500 handling)."""
    if isinstance(exc, MlflowError):
        return exc
    if isinstance(exc, RunNotFoundError):
        return MlflowError("RESOURCE_DOES_NOT_EXIST", scrub(request, str(exc)))
    if isinstance(exc, StoreError):
        error_id = new_error_id()
        log.warning("run history error %s on %s %s: %s: %s", error_id, request.method, request.url.path,
                    type(exc).__name__, exc)
        return MlflowError("TEMPORARILY_UNAVAILABLE", f"the run history is unavailable now ({type(exc).__name__}); "
                                                      f"the server's log has the details under id {error_id}")
    status, message = None, str(exc)
    if isinstance(exc, ApiError):
        status, message = exc.status, exc.message
    elif isinstance(exc, HTTPException):
        status, message = exc.status_code, str(exc.detail)
    elif isinstance(exc, (ValueError, RequestValidationError)):
        status = 400
    elif isinstance(exc, (OverflowError, RecursionError)):
        status, message = 400, limits_message(exc)
    if status is None:
        return None
    error = MlflowError(_BY_STATUS.get(status, "BAD_REQUEST" if status < 500 else "INTERNAL_ERROR"),
                        scrub(request, message))
    error.status = status
    return error


class MlflowRoute(APIRoute):
    """A route whose failures are answered in MLflow's error shape (those of its dependencies too)."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()

        async def answer(request: Request) -> Response:
            try:
                return await handler(request)
            except Exception as exc:
                error = as_mlflow_error(exc, request)
                if error is None:
                    raise
                headers = {"WWW-Authenticate": "Bearer"} if error.status == 401 else None
                return JSONResponse(error.to_json(), status_code=error.status, headers=headers)

        return answer


async def _call(request: Request, who: Caller = Depends(caller), found: Services = Depends(services)) -> Call:
    """Each request's ``Call``, with the experiments created through MLflow in this app that have no run yet."""
    remembered: set[str] | None = getattr(request.app.state, "mlflow_experiments", None)
    if remembered is None:
        remembered = request.app.state.mlflow_experiments = set()
    return Call(found, who, await request_fields(request), remembered)


def _endpoint(handler: Handler) -> Callable[..., dict[str, Any]]:
    def endpoint(this: Call = Depends(_call)) -> dict[str, Any]:  # plain def: the threadpool runs the store calls
        return handler(this)

    endpoint.__name__ = f"mlflow_{handler.__name__}"
    return endpoint


def mlflow_router() -> APIRouter:
    """The MLflow routes under ``/api/2.0/mlflow``, and ENDPOINT_NOT_FOUND for every other path there."""
    router = APIRouter(prefix=PREFIX, route_class=MlflowRoute, tags=["mlflow"])
    for method, path, handler in ROUTES:
        router.add_api_route(path, _endpoint(handler), methods=[method])

    async def not_served(request: Request, path: str, who: Caller = Depends(caller)) -> Response:
        raise MlflowError("ENDPOINT_NOT_FOUND", f"{request.method} {request.url.path} is not served: this server "
                                                "answers the MLflow tracking calls that create, log to and search "
                                                "runs (no artifacts, models or traces)")

    router.add_api_route("/{path:path}", not_served, methods=["GET", "POST", "PUT", "PATCH", "DELETE"],
                         include_in_schema=False)
    return router


def run_token_router() -> APIRouter:
    """``POST /api/v1/runs/{run_id}/run-token``: a run token for a run the caller may write and that has not ended;
    it is good for as long as the caller's own token is (neither revoked nor expired), 30 days at most."""
    router = APIRouter(prefix="/api/v1", tags=["runs"])

    @router.post("/runs/{run_id}/run-token")
    def run_token(run_id: str, principal: Principal = Depends(ANY_ROLE),
                  found: Services = Depends(services)) -> dict[str, Any]:
        run = access.writable_run(found.store, principal, run_id)
        if run.status.is_terminal:
            raise ApiError(409, f"run {run_id} ended {run.status.value}; a run token is only good while its run is "
                                "not finished")
        token, expires_at = mint_token(signing_key(found.settings.key_text()), run_id, principal.token_id,
                                       not_after=principal.expires_at)
        return {"token": token, "expires_at": expires_at}

    return router


router = APIRouter()  # what ``create_app`` includes: the run-token route and the MLflow routes
router.include_router(run_token_router())
router.include_router(mlflow_router())
