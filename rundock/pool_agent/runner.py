"""From an assignment to a running per-run agent: run directory, job file, snapshot blobs, GPUs, process.

The per-run agent (``python -m rundock.agent run RUN_DIR``, ``rundock.agent.lifecycle``) is the same one a
local run gets; it writes the run straight into the team server's history (``MODE_STORE``) for its attempt:

- ``job.json``: the run's definition as stored on the server, with ``attempt`` = the attempt number (its
  journal marks are per attempt) and the assigned GPUs as ``environment.docker.gpu_device_ids``, so the
  agent sets ``CUDA_VISIBLE_DEVICES`` to exactly those for a host process and asks Docker for exactly those
  devices for a container;
- its environment: what an agent gets (``rundock.agent.jobenv.agent_environment``), plus the server token
  (``RUNDOCK_TOKEN``: the agent's, never the job's), ``RUNDOCK_ATTEMPT`` (its HTTP history client sends it as
  ``X-Rundock-Attempt``, and stops the job when the server answers that the attempt is fenced) and
  ``CUDA_VISIBLE_DEVICES`` (the assigned GPUs; empty for a run that asked for none);
- the snapshot's blobs are fetched from the server into this box's artifact cache first (``ArtifactStore``
  with the server as its remote source), so the agent materializes the snapshot from local files;
- the secrets the run lists come from the server (an agent token of the run's pool may read them while the
  run lives), in a private file the per-run agent removes.

The process starts in its own session and outlives ``agent serve``: a restarted ``agent serve`` adopts it
(``rundock.pool_agent.adopt``). Run directories are ``<work dir>/runs/<run id>`` for a run's first attempt and
``<run id>.<attempt>`` for later ones (an attempt never reuses the directory of another: one execution each).
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
from typing import Any

from rundock.agent.job import MODE_STORE, JobSpec, request_cancel
from rundock.agent.runlock import write_heartbeat
from rundock.context import rundir
from rundock.history import wire
from rundock.history.artifacts import ArtifactStore
from rundock.history.backends.http import ENV_ATTEMPT, HttpRunStore
from rundock.pool_agent.client import Assignment, Attempt
from rundock.runconfig.distributed import job_distributed
from rundock.states import RunStatus
from rundock.submitter.mlflow_env import pool_job_environment

log = logging.getLogger("rundock.pool_agent")

DEFAULT_HEARTBEAT_SECONDS = 2.0
DEFAULT_MAX_RUN_DURATION = 30 * 24 * 3600
DEFAULT_PYTHON = "python3"  # a run submitted without an environment runs with the box's python3


class AssignmentError(ValueError):
    """This agent cannot run the assigned run (it needs Docker and the agent has none, ...); the run fails."""


def run_dir_of(work_dir: str, attempt: Attempt) -> str:
    name = attempt.run_id if attempt.attempt <= 1 else f"{attempt.run_id}.{attempt.attempt}"
    return os.path.join(work_dir, "runs", name)


class Runner:
    """Starts the per-run agents of one ``agent serve``."""

    def __init__(self, work_dir: str, server_url: str, token: str | None, pool: str, slots: int,
                 docker: bool, store: HttpRunStore, agent_name: str) -> None:
        self.work_dir = work_dir
        self.server_url = server_url
        self.token = token
        self.pool = pool
        self.slots = slots
        self.docker = docker
        self.store = store
        self.agent_name = agent_name
        self.artifacts = ArtifactStore(os.path.join(work_dir, "artifacts"))
        self.artifacts.remote = store.remote_blobs()

    def job_spec(self, assignment: Assignment, run_dir: str, secrets_file: str | None) -> JobSpec:
        """The job file of an assignment (AssignmentError when this agent cannot run it)."""
        run = wire.run_from_json(assignment.run)
        definition = run.run_definition
        environment: dict[str, Any] = dict(definition.get("environment") or {
            "name": "rundock-pool-python", "python": {"user_managed_dependencies": True,
                                                      "interpreter_path": DEFAULT_PYTHON}})
        docker = dict(environment.get("docker") or {})
        if docker.get("enabled") and not self.docker:
            raise AssignmentError(f"run {run.run_id} uses a Docker environment, but agent {self.agent_name} of pool "
                                  f"{self.pool} runs none: start it with `rundock agent serve ... --docker`")
        docker["gpu_count"] = 0
        docker["gpu_device_ids"] = [str(g) for g in assignment.gpus]
        environment["docker"] = docker
        interpreter = str((environment.get("python") or {}).get("interpreter_path") or DEFAULT_PYTHON)
        if not run.snapshot_id:
            raise AssignmentError(f"run {run.run_id} has no snapshot to run")
        return JobSpec(
            run_id=run.run_id, experiment=run.experiment, mode=MODE_STORE, store_uri=self.server_url,
            artifacts_root=self.artifacts.root, snapshot_id=run.snapshot_id, script=str(definition.get("script") or ""),
            interpreter=interpreter, arguments=[str(a) for a in definition.get("arguments") or []],
            display_name=run.display_name, attempt=assignment.attempt.attempt,
            environment_variables=pool_job_environment(self.store, run.run_id, run.experiment),
            max_run_duration_seconds=float(definition.get("max_run_duration_seconds") or DEFAULT_MAX_RUN_DURATION),
            cancel_grace_seconds=float(definition.get("cancel_grace_seconds", 10.0)),
            heartbeat_seconds=_heartbeat_seconds(), slots_dir=os.path.join(self.work_dir, "slots"),
            max_concurrent_runs=self.slots, target=self.pool, submitted_at=run.created_at, secrets_file=secrets_file,
            environment=environment, run_as=f"{os.getuid()}:{os.getgid()}",
            # one box's processes (a node of a multi-node run gets its launch from ``node_job`` instead)
            distributed=job_distributed(definition) if assignment.node is None else None)

    def prepare(self, assignment: Assignment) -> str:
        """Make the run directory with its job file, secrets and snapshot blobs; return its path."""
        attempt = assignment.attempt
        run_dir = run_dir_of(self.work_dir, attempt)
        os.makedirs(os.path.dirname(run_dir), mode=0o700, exist_ok=True)
        os.makedirs(run_dir, mode=0o700)  # an existing one is another pick-up of this attempt: never run twice
        write_heartbeat(run_dir, 0, _heartbeat_seconds())
        run = wire.run_from_json(assignment.run)
        secrets_file = self._write_secrets(run_dir, run.run_id, run.run_definition.get("secrets"))
        spec = self.job_spec(assignment, run_dir, secrets_file)
        if assignment.node is not None:  # one node of a multi-node run
            from rundock.pool_agent.nodes import node_job

            node_job(spec, assignment.node, dict(run.run_definition.get("distributed") or {}), run_dir)
        manifest = self.store.get_snapshot(spec.snapshot_id)
        for entry in manifest:  # into the cache before the agent reads them
            self.artifacts.size(str(entry["digest"]))
        if assignment.node is not None:  # a node's agent reads no history: it gets the snapshot's list here
            with open(os.path.join(run_dir, rundir.MANIFEST_FILE), "w", encoding="utf-8") as fh:
                json.dump(manifest, fh)
        spec.save(run_dir)
        return run_dir

    def _write_secrets(self, run_dir: str, run_id: str, names: Any) -> str | None:
        if not names:
            return None
        from rundock.submitter.server_secrets import ServerSecrets

        values = ServerSecrets(self.store).for_run([str(n) for n in names], remote=True, run_id=run_id)
        path = os.path.join(run_dir, rundir.SECRETS_FILE)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            json.dump(values, fh)
        return path

    def environment(self, attempt: Attempt, gpus: list[int]) -> dict[str, str]:
        """The per-run agent's environment (see the module docstring)."""
        from rundock.submitter.agent_start import agent_env

        env = agent_env()
        if self.token:
            env["RUNDOCK_TOKEN"] = self.token
        env[ENV_ATTEMPT] = str(attempt.attempt)
        env["CUDA_VISIBLE_DEVICES"] = ",".join(str(g) for g in gpus)
        return env

    def spawn(self, run_dir: str, attempt: Attempt, gpus: list[int]) -> subprocess.Popen[bytes]:
        """Start the per-run agent in its own session (it outlives ``agent serve``)."""
        logs = os.path.join(run_dir, rundir.SYSTEM_LOGS_DIR)
        os.makedirs(logs, exist_ok=True)
        fd = os.open(os.path.join(logs, rundir.AGENT_LOG), os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC,
                     0o600)
        try:
            return subprocess.Popen([sys.executable, "-S", "-m", "rundock.agent", "run", run_dir], cwd=run_dir,
                                    env=self.environment(attempt, gpus), stdin=subprocess.DEVNULL, stdout=fd,
                                    stderr=subprocess.STDOUT, start_new_session=True, close_fds=True)
        finally:
            os.close(fd)

    def fail(self, attempt: Attempt, message: str) -> None:
        """End a run this agent cannot start Failed with ``message`` (written for its attempt)."""
        store = HttpRunStore(self.server_url, token=self.token, attempt=attempt.attempt)
        try:
            store.transition(attempt.run_id, RunStatus.FAILED, detail="the pool agent could not start the run",
                             error={"code": "SetupError", "message": message})
        finally:
            store.close()

    @staticmethod
    def cancel(run_dir: str) -> None:
        """Leave the cancel request for the per-run agent: it stops the job (grace, then every process) and
        ends the run Canceled."""
        if os.path.isdir(run_dir):
            request_cancel(run_dir)


def _heartbeat_seconds() -> float:
    try:
        value = float(os.environ.get("RUNDOCK_HEARTBEAT_SECONDS", DEFAULT_HEARTBEAT_SECONDS))
    except ValueError:
        return DEFAULT_HEARTBEAT_SECONDS
    return value if 0 < value < float("inf") else DEFAULT_HEARTBEAT_SECONDS
