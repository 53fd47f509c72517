"""MLflow clients against the team server: the real ``mlflow`` package, a real server process, real HTTP.

Each test runs over an SQLite history and over a PostgreSQL one (the ``server`` fixture); rundock's own view of
what the MLflow client logged is read from the server's store directly.
"""

from __future__ import annotations

import math
import os
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import mlflow
import pytest
import requests
import yaml
from mlflow import MlflowClient
from mlflow.exceptions import MlflowException

from rundock.history.backends import http_credentials as creds
from rundock.history.store import RunStore, open_store
from rundock.states import RunStatus
from tests import server_fixtures
from tests.server_fixtures import ServerHandle, running_server

# This module's fixtures: one server per module, over SQLite and over PostgreSQL.
server = server_fixtures.server
store_uri_per_module = server_fixtures.store_uri_per_module
MLFLOW = "/api/2.0/mlflow"


@pytest.fixture
def alice(server: ServerHandle, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """MLflow pointed at the server with a user token; MLflow's retries off so a refusal is seen at once."""
    token = server.make_token("alice", "user")
    monkeypatch.setenv("MLFLOW_TRACKING_TOKEN", token)
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    monkeypatch.setenv("MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT", "1")
    monkeypatch.delenv("MLFLOW_RUN_ID", raising=False)
    monkeypatch.delenv("MLFLOW_EXPERIMENT_NAME", raising=False)
    monkeypatch.delenv("MLFLOW_EXPERIMENT_ID", raising=False)  # set_experiment() sets it: gone after the test
    if server.verify is not True:
        monkeypatch.setenv("MLFLOW_TRACKING_SERVER_CERT_PATH", str(server.verify))
    mlflow.set_tracking_uri(server.url)
    yield token
    while mlflow.active_run() is not None:
        mlflow.end_run()


@pytest.fixture
def history(server: ServerHandle) -> Iterator[RunStore]:
    """The server's own run history, opened beside the server."""
    store = open_store(server.store_uri)
    yield store
    store.close()


def _mlflow_error(call: object) -> MlflowException:
    assert callable(call)
    with pytest.raises(MlflowException) as caught:
        call()
    return caught.value


def test_what_an_mlflow_script_logs_is_a_rundock_run(alice: str, history: RunStore) -> None:
    mlflow.set_experiment("mlflow-basics")
    with mlflow.start_run(run_name="first") as active:
        mlflow.log_param("lr", 0.1)
        mlflow.log_params({"layers": 3, "optimizer": "adam"})
        for step, loss in enumerate([1.0, 0.5, 0.25]):
            mlflow.log_metric("loss", loss, step=step)
        mlflow.log_metrics({"acc": 0.8, "f1": 0.7}, step=2)
        mlflow.log_metric("grad_norm", float("nan"))
        with mlflow.start_run(run_name="fold-1", nested=True) as nested:
            mlflow.log_metric("fold_acc", 0.75)
        mlflow.set_tag("team", "vision")
        mlflow.set_tags({"stage": "dev"})
        refused = _mlflow_error(lambda: mlflow.log_param("lr", 0.2))
        assert refused.error_code == "INVALID_PARAMETER_VALUE" and "immutable" in refused.message
    run_id = active.info.run_id

    run = history.get_run(run_id)  # rundock's view
    assert (run.experiment, run.run_type, run.display_name, run.submitted_by) == \
        ("mlflow-basics", "mlflow.run", "first", "alice")
    assert run.status == RunStatus.COMPLETED
    assert [c.status for c in history.status_history(run_id)] == \
        [RunStatus.NOT_STARTED, RunStatus.RUNNING, RunStatus.COMPLETED]
    assert run.properties == {"lr": "0.1", "layers": "3", "optimizer": "adam"}
    assert run.tags["team"] == "vision" and run.tags["stage"] == "dev" and run.tags["mlflow.runName"] == "first"
    assert [(m.value, m.step) for m in history.get_metric_records(run_id, "loss")] == [(1.0, 0), (0.5, 1), (0.25, 2)]
    assert [m.value for m in history.get_metric_records(run_id, "acc")] == [0.8]  # each value exactly once
    child = history.get_run(nested.info.run_id)
    assert (child.parent_id, child.display_name, child.status) == (run_id, "fold-1", RunStatus.COMPLETED)

    got = MlflowClient().get_run(run_id)  # MLflow's view of the same run
    assert (got.info.status, got.info.run_name, got.info.experiment_id) == ("FINISHED", "first", "mlflow-basics")
    assert {k: v for k, v in got.data.metrics.items() if k != "grad_norm"} == {"loss": 0.25, "acc": 0.8, "f1": 0.7}
    assert math.isnan(got.data.metrics["grad_norm"])
    assert got.data.params == {"lr": "0.1", "layers": "3", "optimizer": "adam"}
    assert got.data.tags["team"] == "vision"
    history_of_loss = MlflowClient().get_metric_history(run_id, "loss")
    assert [(m.step, m.value) for m in history_of_loss] == [(0, 1.0), (1, 0.5), (2, 0.25)]


def test_search_runs_filters_and_orders_like_mlflow(alice: str) -> None:
    experiment_id = mlflow.set_experiment("mlflow-search").experiment_id
    made = {}
    for name, lr, acc, fail in (("low", "0.01", 0.4, False), ("mid", "0.1", 0.7, False), ("top", "0.1", 0.9, False),
                                ("broken", "0.1", 0.95, True)):
        with mlflow.start_run(run_name=name) as active:
            mlflow.log_param("lr", lr)
            mlflow.log_metric("acc", acc)
            if fail:
                mlflow.end_run("FAILED")
        made[name] = active.info.run_id
    client = MlflowClient()
    found = client.search_runs([experiment_id], "metrics.acc > 0.5 and params.lr = '0.1' "
                                                "and attributes.status = 'FINISHED'", order_by=["metrics.acc DESC"])
    assert [r.info.run_name for r in found] == ["top", "mid"]
    ascending = client.search_runs([experiment_id], "", order_by=["metrics.acc ASC"])
    assert [r.info.run_name for r in ascending] == ["low", "mid", "top", "broken"]
    assert [r.info.status for r in client.search_runs([experiment_id], "attributes.status = 'FAILED'")] == ["FAILED"]
    paged = client.search_runs([experiment_id], max_results=3)
    assert len(paged) == 3 and paged.token
    assert len(client.search_runs([experiment_id], max_results=3, page_token=paged.token)) == 1
    refused = _mlflow_error(lambda: client.search_runs([experiment_id], "metrics.acc > 0.5 OR params.lr = '0.1'"))
    assert refused.error_code == "INVALID_PARAMETER_VALUE" and "OR is not supported" in refused.message


FRESH_SCRIPT = """
import mlflow
with mlflow.start_run() as active:
    mlflow.log_metric("x", 1.0)
print(active.info.run_id, active.info.experiment_id)
"""


def test_runs_without_an_experiment_go_to_default_and_names_follow_rundocks_rule(
        server: ServerHandle, alice: str, history: RunStore) -> None:
    env = {**os.environ, "MLFLOW_TRACKING_URI": server.url}  # a fresh interpreter: no experiment was ever set
    env.pop("MLFLOW_EXPERIMENT_ID", None)
    done = subprocess.run([sys.executable, "-c", FRESH_SCRIPT], env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    run_id, experiment_id = done.stdout.split()[-2:]
    assert experiment_id == "0" and history.get_run(run_id).experiment == "Default"
    refused = _mlflow_error(lambda: mlflow.set_experiment("My Experiment"))
    assert refused.error_code == "INVALID_PARAMETER_VALUE" and "letters, digits, '-' or '_'" in refused.message


def test_errors_have_mlflows_shape_and_status(server: ServerHandle, alice: str) -> None:
    missing = _mlflow_error(lambda: MlflowClient().get_run("no_such_run"))
    assert missing.error_code == "RESOURCE_DOES_NOT_EXIST"
    assert mlflow.get_experiment_by_name("never-made") is None
    answer = requests.get(f"{server.url}{MLFLOW}/runs/get", params={"run_id": "x"}, verify=server.verify, timeout=30)
    assert answer.status_code == 401 and answer.json()["error_code"] == "UNAUTHENTICATED"
    answer = requests.get(f"{server.url}{MLFLOW}/artifacts/list", headers={"Authorization": f"Bearer {alice}"},
                          verify=server.verify, timeout=30)
    assert answer.status_code == 404 and answer.json()["error_code"] == "ENDPOINT_NOT_FOUND"


def _run_token(server: ServerHandle, user_token: str, run_id: str) -> requests.Response:
    with server.session(user_token) as session:
        return session.post(server.api(f"/runs/{run_id}/run-token"), timeout=30)


def test_a_run_token_logs_to_its_own_run_only_and_only_while_it_runs(
        server: ServerHandle, alice: str, history: RunStore, monkeypatch: pytest.MonkeyPatch) -> None:
    client = MlflowClient()
    experiment_id = mlflow.set_experiment("mlflow-tokens").experiment_id
    mine, other = (client.create_run(experiment_id).info.run_id for _ in range(2))
    assert _run_token(server, server.make_token("bob", "user"), mine).status_code == 403  # not bob's run
    minted = _run_token(server, alice, mine)
    assert minted.status_code == 200
    run_token = minted.json()["token"]

    monkeypatch.setenv("MLFLOW_TRACKING_TOKEN", run_token)
    client.log_metric(mine, "acc", 0.9, step=1)
    client.log_param(mine, "seed", "7")
    assert client.get_run(mine).data.metrics == {"acc": 0.9}
    assert _mlflow_error(lambda: client.log_metric(other, "acc", 0.1)).error_code == "PERMISSION_DENIED"
    assert _mlflow_error(lambda: client.create_run(experiment_id)).error_code == "PERMISSION_DENIED"
    with server.session(run_token) as session:  # the team API refuses run tokens
        assert session.get(server.api(f"/runs/{mine}"), timeout=30).status_code == 401

    client.set_terminated(mine)  # the run ends: its token is good no more
    assert history.get_run(mine).status == RunStatus.COMPLETED
    assert _mlflow_error(lambda: client.log_metric(mine, "acc", 0.95)).error_code == "UNAUTHENTICATED"
    assert [m.value for m in history.get_metric_records(mine, "acc")] == [0.9]
    assert _run_token(server, alice, mine).status_code == 409  # no token for a run that ended


JOB = """
import os
import mlflow
mlflow.log_metric("acc", 0.9)
mlflow.log_param("token_kind", os.environ["MLFLOW_TRACKING_TOKEN"].split("_")[0])
"""


def _job_logs_with_mlflow(server: ServerHandle, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Submit a job that logs with MLflow to a workspace whose history is ``server``; check what reached its run."""
    from rundock import Environment, Experiment, ScriptRunConfig
    from rundock.submitter.workspace import CONFIG_FILE, Workspace

    monkeypatch.setenv("RUNDOCK_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("RUNDOCK_HEARTBEAT_SECONDS", "0.2")
    monkeypatch.setenv("RUNDOCK_AGENT_IDLE_SECONDS", "10")
    for name in ("MLFLOW_TRACKING_TOKEN", "MLFLOW_TRACKING_URI", "MLFLOW_RUN_ID", "MLFLOW_EXPERIMENT_ID",
                 "MLFLOW_TRACKING_SERVER_CERT_PATH", "RUNDOCK_TOKEN"):
        monkeypatch.delenv(name, raising=False)
    creds.save_login(server.url, server.make_token("carol", "user"), name="carol", role="user")
    if server.verify is not True:  # what `rundock login URL --trust-cert` does
        creds.trust_cert(server.url, Path(str(server.verify)).read_text())
    ws = Workspace.create(str(tmp_path / "project"))
    (Path(ws.path) / CONFIG_FILE).write_text(yaml.safe_dump({"name": "team", "history": server.url}))
    ws = Workspace(ws.path)
    src = tmp_path / "src"
    src.mkdir()
    (src / "train.py").write_text(textwrap.dedent(JOB))
    env = Environment("with-mlflow")
    env.python.user_managed_dependencies = True
    env.python.interpreter_path = sys.executable
    try:
        run = Experiment(ws, "mlflow-job").submit(ScriptRunConfig(str(src), "train.py", environment=env))
        run.wait_for_completion(raise_on_error=False)
        with open_store(server.store_uri) as history:
            record = history.get_run(run.id)
            assert record.status == RunStatus.COMPLETED, record.error
            assert [m.value for m in history.get_metric_records(run.id, "acc")] == [0.9]
            assert record.properties["token_kind"] == "rdkrun"  # a run token, never carol's own
    finally:
        ws.close()


def test_a_job_of_a_server_backed_workspace_logs_with_mlflow_into_its_run(
        server: ServerHandle, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _job_logs_with_mlflow(server, tmp_path, monkeypatch)


def test_a_job_logs_over_https_trusting_the_certificate_its_user_trusted(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with running_server(tmp_path, tls=True) as tls_server:
        _job_logs_with_mlflow(tls_server, tmp_path, monkeypatch)
