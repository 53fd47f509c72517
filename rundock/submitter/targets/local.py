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
import signal
import site
import socket
import subprocess
import sys
from collections.abc import Mapping
from typing import Any

import psutil

import rundock
from rundock.agent.daemon import request_agent
from rundock.agent.job import ENV_USER_PYTHONPATH, JobSpec, request_cancel
from rundock.agent.slots import Ticket, issue_ticket
from rundock.context.run import ENV_RUN_ID
from rundock.errors import RundockError
from rundock.history.records import RunRecord
from rundock.runconfig.environment import Environment
from rundock.runconfig.script_run_config import ScriptRunConfig
from rundock.states import RunStatus
from rundock.submitter.bundle import code_version
from rundock.submitter.gitinfo import git_properties
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
        env = config.environment or Environment.submitting_interpreter()
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
            os.makedirs(run_dir)
            ws.store.update_run(record.run_id, run_dir=run_dir)
            JobSpec(run_id=record.run_id, experiment=experiment, store_uri=ws.history_uri,
                    artifacts_root=ws.artifacts.root, snapshot_id=snapshot.snapshot_id,
                    script=config.run_config.script or "", interpreter=env.python.interpreter_path,
                    arguments=[str(a) for a in config.run_config.arguments],
                    environment_variables=dict(env.environment_variables), display_name=display_name,
                    max_run_duration_seconds=config.run_config.max_run_duration_seconds,
                    cancel_grace_seconds=config.run_config.cancel_grace_seconds,
                    heartbeat_seconds=ws.heartbeat_seconds, slots_dir=os.path.join(ws.local_root, "slots"),
                    max_concurrent_runs=ws.max_concurrent_runs, target=NAME,
                    submitted_at=record.created_at, secrets_file=ws.secrets.path, environment=env.to_mapping(),
                    run_as=f"{os.getuid()}:{os.getgid()}").save(run_dir)
            issue_ticket(os.path.join(ws.local_root, "slots"), record.created_at, record.run_id)
            ws.store.transition(record.run_id, RunStatus.STARTING, detail="starting the local agent")
            self._spawn_agent(run_dir)
        except (OSError, RundockError) as exc:
            Ticket(os.path.join(ws.local_root, "slots"), record.created_at, record.run_id).release()
            ws.store.transition(record.run_id, RunStatus.FAILED, detail="the agent could not be started", error={
                "code": "SetupError", "message": f"could not start the local agent for {record.run_id}: {exc}"})
            raise RundockError(f"could not start the local agent for run {record.run_id}: {exc}") from exc
        return ws.store.get_run(record.run_id)

    def _spawn_agent(self, run_dir: str) -> None:
        """Hand the run to the warm agent daemon; start one (and a one-off agent for this run) if none answers."""
        logs = os.path.join(run_dir, "system_logs")
        os.makedirs(logs, exist_ok=True)
        version = code_version()
        root = self.workspace.local_root
        if request_agent(root, version, run_dir, dict(os.environ)) is not None:
            return
        # The agent needs only the standard library (watchdog and docker-py when present): it starts with -S,
        # skipping the site module's .pth processing, and finds rundock and site-packages on PYTHONPATH.
        package_parent = os.path.dirname(os.path.dirname(os.path.abspath(rundock.__file__)))
        env = dict(os.environ)
        env[ENV_USER_PYTHONPATH] = env.get("PYTHONPATH", "")
        paths = [package_parent, *site.getsitepackages(), env.get("PYTHONPATH", "")]
        env["PYTHONPATH"] = os.pathsep.join(dict.fromkeys(p for p in paths if p))
        # New sessions: agents keep running when the submitter (or its terminal) goes away.
        with open(os.path.join(root, "agent-daemon.log"), "ab") as daemon_log:
            subprocess.Popen([sys.executable, "-S", "-m", "rundock.agent", "serve", root, version], cwd=root,
                             env=env, stdin=subprocess.DEVNULL, stdout=daemon_log, stderr=subprocess.STDOUT,
                             start_new_session=True, close_fds=True)
        with open(os.path.join(logs, "agent_log.txt"), "ab") as agent_log:
            subprocess.Popen([sys.executable, "-S", "-m", "rundock.agent", "run", run_dir], cwd=run_dir, env=env,
                             stdin=subprocess.DEVNULL, stdout=agent_log, stderr=subprocess.STDOUT,
                             start_new_session=True, close_fds=True)

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

    def reap_lost(self, run: RunRecord) -> None:
        """Kill what is left of a run whose agent died (the job's process group on this host)."""
        try:
            with open(os.path.join(run.run_dir or "", "processes.json"), encoding="utf-8") as fh:
                info = json.load(fh)
        except (OSError, ValueError):
            return
        if info.get("host") != socket.gethostname():
            return
        if info.get("container"):
            _remove_container(str(info["container"]))
            return
        try:
            leader = psutil.Process(int(info["job_pgid"]))
            if leader.environ().get(ENV_RUN_ID) != run.run_id:
                return  # the id was reused by an unrelated process
            os.killpg(leader.pid, signal.SIGKILL)
        except (psutil.Error, ProcessLookupError, PermissionError, KeyError, ValueError):
            pass


def _remove_container(container_id: str) -> None:
    import docker
    import docker.errors

    try:
        docker.from_env(timeout=30).containers.get(container_id).remove(force=True)
    except docker.errors.DockerException:
        pass  # already gone, or the engine is unreachable: nothing more to do from here
