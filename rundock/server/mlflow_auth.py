"""Who calls an MLflow route, and what they may do: the server's bearer tokens, plus run-scoped tokens.

- A server token (``rdk_…``) is checked by the server's own ``authenticated``; then the team API's rules hold
  (``access``): admins and users read every run, agents the runs of their pools; admins write every run, users
  the runs they submitted, agents the runs of their pools. Only admins and users create runs and experiments.
- A run token (``rdkrun_…``, see ``mlflow_tokens``) reads and writes its own run while that run is not final
  and the server token that minted it is neither revoked nor expired, and reads its run's experiment; anything
  else is PERMISSION_DENIED, and once its run has ended or its minter is void it is UNAUTHENTICATED.

Errors are MLflow's (``MlflowError``): the route class of ``mlflow_api`` turns them into MLflow's JSON shape.
"""

from __future__ import annotations

import dataclasses
import json
from typing import Any

from fastapi import Request
from starlette.concurrency import run_in_threadpool

from rundock.history.records import RunRecord
from rundock.history.store import RunStore
from rundock.server import access
from rundock.server.auth import Principal, authenticated, token_problem
from rundock.server.mlflow_map import MlflowError, invalid
from rundock.server.mlflow_tokens import RunToken, RunTokenError, is_run_token, signing_key, verify
from rundock.server.services import Services


@dataclasses.dataclass(frozen=True)
class Caller:
    """A server token's principal, or the run a run token is good for (exactly one of the two)."""

    principal: Principal | None = None
    run_token: RunToken | None = None

    def describe(self) -> str:
        if self.principal is not None:
            return self.principal.describe()
        assert self.run_token is not None
        return f"the run token of run {self.run_token.run_id}"


@dataclasses.dataclass
class Call:
    """One MLflow request: the server's services, the caller, the request's fields (JSON body or query) and the
    experiments made through MLflow that have no run yet (remembered by this server process only)."""

    services: Services
    caller: Caller
    body: dict[str, Any]
    experiments: set[str]

    @property
    def store(self) -> RunStore:
        return self.services.store

    def readable(self, run: RunRecord) -> bool:
        if self.caller.run_token is not None:
            return run.run_id == self.caller.run_token.run_id
        assert self.caller.principal is not None
        return access.may_read(self.caller.principal, run)

    def read_run(self, run_id: str) -> RunRecord:
        """The run if the caller may read it; MlflowError otherwise (RunNotFoundError if there is none)."""
        run = self._own_run(run_id)
        if run is None:
            run = self.store.get_run(run_id)
            assert self.caller.principal is not None
            access.check_read(self.caller.principal, run)
        return run

    def write_run(self, run_id: str) -> RunRecord:
        """The run if the caller may change it; MlflowError otherwise (RunNotFoundError if there is none)."""
        run = self._own_run(run_id)
        if run is None:
            run = self.store.get_run(run_id)
            assert self.caller.principal is not None
            access.check_write(self.store, self.caller.principal, run)
        return run

    def _own_run(self, run_id: str) -> RunRecord | None:
        """For a run token: its run, checked; for a server token: None (the caller checks)."""
        token = self.caller.run_token
        if token is None:
            return None
        if run_id != token.run_id:
            raise MlflowError("PERMISSION_DENIED", f"the run token of run {token.run_id} may not use run {run_id}: "
                                                   "a run token is good for its own run only")
        run = self.store.get_run(run_id)
        if run.status.is_terminal:
            raise MlflowError("UNAUTHENTICATED", f"the run token of run {run_id} is no longer valid: the run ended "
                                                 f"{run.status.value}")
        return run

    def submitter(self) -> Principal:
        """The caller if it may create runs and experiments (an admin or a user); PERMISSION_DENIED otherwise."""
        principal = self.caller.principal
        if principal is None:
            raise MlflowError("PERMISSION_DENIED", f"{self.caller.describe()} may not create runs or experiments: a "
                                                   "run token logs to its own run only")
        if principal.role not in ("admin", "user"):
            raise MlflowError("PERMISSION_DENIED", f"{principal.describe()} may not create runs or experiments: it "
                                                   "needs the role admin or user")
        return principal


async def caller(request: Request) -> Caller:
    """Authenticate an MLflow request: a run token here, any other bearer token through the server's check."""
    scheme, _, token = request.headers.get("authorization", "").partition(" ")
    token = token.strip()
    if scheme.lower() == "bearer" and is_run_token(token):
        services: Services = request.app.state.services
        key = signing_key(await run_in_threadpool(services.settings.key_text))
        try:
            run_token = verify(key, token)
        except RunTokenError as exc:
            raise MlflowError("UNAUTHENTICATED", str(exc)) from None
        minter = await run_in_threadpool(services.tokens.by_id, run_token.minted_by)
        problem = "the token that minted it is gone" if minter is None else token_problem(minter)
        if problem:
            raise MlflowError("UNAUTHENTICATED", f"the run token of run {run_token.run_id} is no longer valid: "
                                                 f"{problem}; submit the run again with a valid token")
        request.state.principal = Principal("run-token", f"run:{run_token.run_id}", "run")  # for the access log
        return Caller(run_token=run_token)
    return Caller(principal=await authenticated(request))


async def request_fields(request: Request) -> dict[str, Any]:
    """The request's fields: its query parameters (GET), else its JSON object body (empty body: no fields)."""
    if request.method == "GET":
        return dict(request.query_params)
    raw = await request.body()
    if not raw.strip():
        return {}
    try:
        data = json.loads(raw)
    except ValueError:
        raise invalid("the request body is not valid JSON") from None
    except RecursionError:
        raise invalid("the request body is nested too deeply") from None
    if not isinstance(data, dict):
        raise invalid(f"the request body must be a JSON object, not {type(data).__name__}")
    return data
