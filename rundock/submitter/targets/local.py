"""The local compute target: runs go to a detached agent process on this machine.

Submit order, so that a failing submit leaves nothing half-created: validate
the configuration, store the snapshot, create the run, write its run
directory and job file, then start the agent in its own session (it outlives
the submitting process). If the agent cannot be started the run ends Failed
with the reason.
"""

from __future__ import annotations

import getpass
import json
import os
import shutil
from collections.abc import Mapping
from typing import Any

from rundock.agent.job import MODE_STORE, JobSpec, request_cancel
from rundock.agent.runlock import write_heartbeat
from rundock.agent.slots import Ticket, issue_ticket
from rundock.context import rundir
from rundock.errors import ConfigError, RundockError
from rundock.history.records import RunRecord
from rundock.runconfig.distributed import job_distributed, single_node_problem
from rundock.runconfig.environment import Environment
from rundock.runconfig.script_run_config import ScriptRunConfig
from rundock.states import RunStatus
from rundock.submitter.gitinfo import git_properties
from rundock.submitter.mlflow_env import mlflow_environment
from rundock.submitter.secrets import SecretStore
from rundock.submitter.snapshot import Progress, take_snapshot
from rundock.submitter.workspace import Workspace

NAME = "local"


class LocalTarget:
    """This machine: one agent process per run, at most N runs at once."""

    name = NAME

    def __init__(self, workspace: Workspace) -> None:
        self.workspace = workspace
        self.runs_root = os.path.join(workspace.local_root, "runs")

    def submit(self, experiment: str, config: ScriptRunConfig, *, tags: Mapping[str, Any] | None = None,
               display_name: str | None = None, description: str | None = None,
               progress: Progress | None = None, parent_id: str | None = None) -> RunRecord:
        ws = self.workspace
        config.validate()
        problem = single_node_problem(config.run_config.to_mapping(), NAME)
        if problem:
            raise ConfigError(problem, source="distributed_job_config", field="node_count")
        env = config.job_environment(Environment.submitting_interpreter)
        snapshot = take_snapshot(config.source_directory, ws.store, ws.artifacts, ws.snapshot_limits, progress)
        run_definition = config.run_config.to_mapping()
        run_definition["environment"] = env.to_mapping()
        run_definition["source_directory"] = os.path.abspath(config.source_directory)
        record = ws.store.create_run(
            experiment, target=NAME, run_definition=run_definition, snapshot_id=snapshot.snapshot_id,
            submitted_by=getpass.getuser(), display_name=display_name, description=description, parent_id=parent_id,
            tags={k: None if v is None else str(v) for k, v in (tags or {}).items()},
            properties={"ContentSnapshotId": snapshot.snapshot_id, **git_properties(config.source_directory)})
        run_dir = os.path.join(self.runs_root, record.run_id)
        try:
            os.makedirs(run_dir, mode=0o700)
            write_heartbeat(run_dir, 0, ws.heartbeat_seconds)  # readers measure a start that never comes from here
            ws.store.update_run(record.run_id, run_dir=run_dir)
            secrets_file = self._write_secrets(run_dir, record.run_id, getattr(config.run_config, "secrets", None))
            job_env = {**mlflow_environment(ws, record.run_id, experiment), **env.environment_variables}
            JobSpec(run_id=record.run_id, experiment=experiment, mode=MODE_STORE, store_uri=ws.history_uri,
                    artifacts_root=ws.artifacts.root, snapshot_id=snapshot.snapshot_id,
                    script=config.run_config.script or "", interpreter=env.python.interpreter_path,
                    arguments=[str(a) for a in config.run_config.arguments],
                    environment_variables=job_env, display_name=display_name,
                    max_run_duration_seconds=config.run_config.max_run_duration_seconds,
                    cancel_grace_seconds=config.run_config.cancel_grace_seconds,
                    heartbeat_seconds=ws.heartbeat_seconds, slots_dir=os.path.join(ws.local_root, "slots"),
                    max_concurrent_runs=ws.max_concurrent_runs, target=NAME,
                    submitted_at=record.created_at, secrets_file=secrets_file, environment=env.to_mapping(),
                    run_as=f"{os.getuid()}:{os.getgid()}", workspace_name=ws.name,
                    workspace_path=ws.path, distributed=job_distributed(run_definition)).save(run_dir)
            issue_ticket(os.path.join(ws.local_root, "slots"), record.created_at, record.run_id)
            ws.store.transition(record.run_id, RunStatus.STARTING, detail="starting the local agent")
            self._spawn_agent(run_dir)
        except (OSError, RundockError) as exc:
            Ticket(os.path.join(ws.local_root, "slots"), record.created_at, record.run_id).release()
            ws.store.transition(record.run_id, RunStatus.FAILED, detail="the agent could not be started", error={
                "code": "SetupError", "message": f"could not start the local agent for {record.run_id}: {exc}"})
            raise RundockError(f"could not start the local agent for run {record.run_id}: {exc}") from exc
        return ws.store.get_run(record.run_id)

    def _write_secrets(self, run_dir: str, run_id: str, names: list[str] | None) -> str | None:
        """The secrets this run may read, in a private file of its run directory (the agent removes it); a team
        server's come from the server, for this run."""
        store = self.workspace.secrets
        if isinstance(store, SecretStore):
            values = store.for_run(names, remote=False)
        else:  # a team server's
            values = store.for_run(names, remote=False, run_id=run_id)
        if not values:
            return None
        path = os.path.join(run_dir, rundir.SECRETS_FILE)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            json.dump(values, fh)
        return path

    def _spawn_agent(self, run_dir: str) -> None:
        """Hand the run to the warm agent daemon; start one (or a one-off agent for this run) if none answers."""
        from rundock.submitter.agent_start import start_agent

        start_agent(self.workspace.local_root, run_dir)

    def sync(self, run: RunRecord) -> None:
        """Local agents write to the history themselves."""

    def cancel(self, run: RunRecord) -> None:
        """Leave the cancel request for the run's agent (the store records it separately)."""
        if run.run_dir and os.path.isdir(run.run_dir):
            request_cancel(run.run_dir)

    def clean(self, run: RunRecord) -> list[str]:
        """Remove a finished run's directory on this machine; return the files removed (relative to it)."""
        if not run.run_dir or not os.path.isdir(run.run_dir):
            return []
        removed = sorted(os.path.relpath(os.path.join(d, f), run.run_dir).replace(os.sep, "/")
                         for d, _, files in os.walk(run.run_dir) for f in files)
        shutil.rmtree(run.run_dir)
        return removed
