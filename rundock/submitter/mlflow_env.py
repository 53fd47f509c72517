"""MLflow's variables for the job of a run whose history is a team server, so ``import mlflow`` just works there.

A job of a server-backed workspace gets

- ``MLFLOW_TRACKING_URI``: the server's URL (it answers MLflow's tracking API under ``/api/2.0/mlflow``);
- ``MLFLOW_RUN_ID``: the rundock run id, so ``mlflow.log_metric()`` logs to this run (MLflow resumes it);
- ``MLFLOW_EXPERIMENT_NAME``: the run's experiment;
- ``MLFLOW_TRACKING_TOKEN``: a run token, minted by the server at submit for this run only and good only while
  it runs, never the user's own token;
- ``MLFLOW_TRACKING_SERVER_CERT_PATH``: the server certificate the user chose to trust (``rundock login
  --trust-cert``), when there is one.

A workspace with a local history gets nothing (MLflow then keeps its own ``mlruns`` folder, as it would without
rundock). Variables the run configuration sets itself win over these. When the server cannot mint a run token
(an older server, or a token without the right to write the run) the job still gets the rest, with a warning:
its MLflow calls are then refused with a clear 401 rather than sent somewhere else.
"""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING
from urllib.parse import quote

from rundock.errors import RundockError, StoreError
from rundock.history.backends import http_credentials as creds
from rundock.submitter.workspace import Workspace

if TYPE_CHECKING:
    from rundock.history.backends.http import HttpRunStore

SERVER_SCHEMES = ("http", "https")


def mlflow_environment(ws: Workspace, run_id: str, experiment: str) -> dict[str, str]:
    """The MLflow variables for a job of run ``run_id`` (empty unless ``ws``'s history is a team server)."""
    url = ws.history_uri.strip().rstrip("/")
    if url.split(":", 1)[0].lower() not in SERVER_SCHEMES:
        return {}
    env = {"MLFLOW_TRACKING_URI": url, "MLFLOW_RUN_ID": run_id, "MLFLOW_EXPERIMENT_NAME": experiment}
    cert = creds.trusted_cert(url) if url.lower().startswith("https:") else None
    if cert:
        env["MLFLOW_TRACKING_SERVER_CERT_PATH"] = cert
    try:
        env["MLFLOW_TRACKING_TOKEN"] = mint_run_token(ws, run_id)
    except (RundockError, ValueError) as exc:  # an older server (no such route), a token that may not write
        print(f"rundock: warning: run {run_id}: no MLflow run token ({exc}); the job's MLflow calls will be refused",
              file=sys.stderr)
    return env


def mint_run_token(ws: Workspace, run_id: str) -> str:
    """A run token for ``run_id`` from the workspace's server (``POST /api/v1/runs/{run_id}/run-token``)."""
    from rundock.history.backends.http import HttpRunStore

    store = ws.store
    if not isinstance(store, HttpRunStore):
        raise StoreError(f"the run history of workspace {ws.name!r} is not a team server's")
    return mint_run_token_from(store, run_id)


def pool_job_environment(store: HttpRunStore, run_id: str, experiment: str) -> dict[str, str]:
    """The MLflow variables for a pool job, made by its agent (whose token may write the run)."""
    env = {"MLFLOW_TRACKING_URI": store.url.rstrip("/"), "MLFLOW_RUN_ID": run_id, "MLFLOW_EXPERIMENT_NAME": experiment}
    try:
        env["MLFLOW_TRACKING_TOKEN"] = mint_run_token_from(store, run_id)
    except (RundockError, ValueError) as exc:
        print(f"rundock: warning: run {run_id}: no MLflow run token ({exc}); the job's MLflow calls will be refused",
              file=sys.stderr)
    return env


def mint_run_token_from(store: HttpRunStore, run_id: str) -> str:
    """A run token for ``run_id`` from ``store``'s server."""
    what = f"mint an MLflow run token for run {run_id}"
    answer = store.client.json(store.client.call("POST", f"/runs/{quote(run_id, safe='')}/run-token", what=what),
                               what)
    token = answer.get("token") if isinstance(answer, dict) else None
    if not isinstance(token, str) or not token:
        raise StoreError(f"the server at {store.url} answered no token when asked to {what}")
    return token
