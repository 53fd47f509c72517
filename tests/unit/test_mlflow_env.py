"""The MLflow variables a job gets: only where the run history is a team server."""

from __future__ import annotations

from rundock.submitter.mlflow_env import mlflow_environment
from rundock.submitter.workspace import Workspace


def test_a_workspace_with_a_local_history_gives_its_jobs_no_mlflow_variables(workspace: Workspace) -> None:
    assert workspace.history_uri.startswith("sqlite:")
    assert mlflow_environment(workspace, "exp_1_ab", "exp") == {}  # MLflow keeps its own mlruns folder there
