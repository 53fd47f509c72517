"""A team server's pool as a compute target: the run waits in the server's queue until an agent of the
pool (``rundock agent serve`` on a GPU box) takes it.

In a workspace whose history is a team server, a target name that is neither ``local`` nor an attached SSH
host names a pool (``rundock submit --target a100``, ``ComputeTarget(ws, "a100")``,
``RunConfiguration(target="a100")``). Submit order, so that a failing submit leaves nothing half-created:
validate, store the snapshot (its blobs go to the server), create the run with ``target`` = the pool, then
enqueue it (``POST /runs/{id}/enqueue``) with the requirements of its ``resources`` section; a run that cannot
be queued ends Failed with the reason. Cancel is the normal CancelRequested transition: the server pushes it
to the agent that holds the run. Liveness is the server's (each attempt has a lease); the run's files stay in
the agent's work folder on its box.
"""

from __future__ import annotations

import getpass
import os
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

from rundock.errors import ConfigError, RundockError
from rundock.history.records import RunRecord
from rundock.runconfig.distributed import multi_node_problem
from rundock.runconfig.environment import Environment, PythonSection
from rundock.runconfig.run_configuration import RunConfiguration
from rundock.runconfig.script_run_config import ScriptRunConfig
from rundock.states import RunStatus
from rundock.submitter.gitinfo import git_properties
from rundock.submitter.snapshot import Progress, take_snapshot

if TYPE_CHECKING:
    from rundock.history.backends.http import HttpRunStore
    from rundock.submitter.workspace import Workspace

NOT_POOLS = frozenset(("local", "docker", "sdk", ""))
WAITING = frozenset((RunStatus.NOT_STARTED, RunStatus.QUEUED))


def is_pool(workspace: Workspace, name: str | None) -> bool:
    """Whether target ``name`` is a pool of the workspace's team server (not local, not an attached host)."""
    if not name or name in NOT_POOLS or not workspace.is_server:
        return False
    from rundock.submitter.compute import ComputeTarget

    return name not in {c.name for c in ComputeTarget.list(workspace)}


def requirements(run_config: RunConfiguration, environment: Environment | None) -> dict[str, Any]:
    """What the run asks of an agent (the queue's ``requirements``: only what it asks for)."""
    res = run_config.resources
    docker = environment.docker if environment is not None else None
    gpus = res.gpu_count or (docker.gpu_count or len(docker.gpu_device_ids) if docker is not None else 0)
    labels = list(dict.fromkeys([*res.labels, *(["docker"] if docker is not None and docker.enabled else [])]))
    wanted: dict[str, Any] = {"gpus": gpus, "gpu_memory_mb": res.gpu_memory_mb, "cpus": res.cpus,
                              "memory_mb": res.memory_mb, "labels": labels}
    nodes = run_config.distributed.get("node_count") if run_config.distributed else None
    wanted["nodes"] = nodes if isinstance(nodes, int) and nodes > 1 else 0  # ``server.pools_gang``
    return {k: v for k, v in wanted.items() if v}


class PoolCompute:
    """What ``ComputeTarget(ws, name)`` gives for a pool of the team server."""

    type = "Pool"

    def __init__(self, workspace: Workspace, name: str) -> None:
        self.workspace = workspace
        self.name = name

    def wait_for_completion(self, show_output: bool = False) -> None:
        """A pool needs no provisioning; kept for Azure ML scripts."""

    def __repr__(self) -> str:
        return f"PoolCompute(name={self.name!r})"


class PoolTarget:
    """Pool ``name`` of the workspace's team server."""

    def __init__(self, workspace: Workspace, name: str) -> None:
        self.workspace = workspace
        self.name = name

    @property
    def store(self) -> HttpRunStore:
        from rundock.history.backends.http import HttpRunStore

        store = self.workspace.store
        if not isinstance(store, HttpRunStore):
            raise RundockError(f"target {self.name!r} is a pool, and pools belong to a team server; this "
                               f"workspace's history is {self.workspace.history_uri}")
        return store

    def submit(self, experiment: str, config: ScriptRunConfig, *, tags: Mapping[str, Any] | None = None,
               display_name: str | None = None, description: str | None = None,
               progress: Progress | None = None, parent_id: str | None = None) -> RunRecord:
        ws, store = self.workspace, self.store
        config.validate()
        env = config.job_environment(lambda: Environment(name="rundock-pool-python", python=PythonSection(
            user_managed_dependencies=True, interpreter_path="python3")))
        run_definition = {**config.run_config.to_mapping(), "environment": env.to_mapping(),
                          "source_directory": os.path.abspath(config.source_directory)}
        problem = multi_node_problem(run_definition)  # the server refuses it too; say so before anything is made
        if problem:
            raise ConfigError(f"pool {self.name}: {problem}", source="distributed_job_config")
        snapshot = take_snapshot(config.source_directory, store, ws.artifacts, ws.snapshot_limits, progress)
        record = store.create_run(
            experiment, target=self.name, run_definition=run_definition, snapshot_id=snapshot.snapshot_id,
            submitted_by=getpass.getuser(), display_name=display_name, description=description, parent_id=parent_id,
            tags={k: None if v is None else str(v) for k, v in (tags or {}).items()},
            properties={"ContentSnapshotId": snapshot.snapshot_id, **git_properties(config.source_directory)})
        try:
            self.enqueue(record.run_id, requirements(config.run_config, config.environment),
                         config.run_config.resources.priority)
        except (RundockError, OSError, ValueError) as exc:
            store.transition(record.run_id, RunStatus.FAILED, detail="the run could not be queued", error={
                "code": "SetupError", "message": f"could not queue run {record.run_id} in pool {self.name}: {exc}"})
            raise RundockError(f"could not queue run {record.run_id} in pool {self.name}: {exc}") from exc
        return store.get_run(record.run_id)

    def enqueue(self, run_id: str, wanted: dict[str, Any], priority: int = 0) -> int:
        """Queue the run in this pool; return its position (enqueuing it again answers the same)."""
        client = self.store.client
        answer = client.json(client.call("POST", f"/runs/{quote(run_id, safe='')}/enqueue",
                                         body={"pool": self.name, "priority": priority, "requirements": wanted,
                                               "idempotency_key": run_id},
                                         what=f"queuing run {run_id} in pool {self.name}"), "enqueue")
        return int(answer.get("position") or 0) if isinstance(answer, dict) else 0

    def queue(self, run_id: str) -> dict[str, Any]:
        """``{"state", "position", "reason"}``: where the run is in its pool's queue and why it waits."""
        client = self.store.client
        answer = client.get_json(f"/runs/{quote(run_id, safe='')}/queue", what=f"reading the queue of run {run_id}")
        return dict(answer) if isinstance(answer, dict) else {}

    def waiting_reason(self, run: RunRecord) -> str | None:
        """Why a queued run waits (None when it does not wait, or the server cannot say)."""
        if run.status not in WAITING:
            return None
        try:
            queue = self.queue(run.run_id)
        except (RundockError, OSError, ValueError):
            return None
        reason = queue.get("reason")
        return str(reason) if queue.get("state") == "queued" and reason else None

    def sync(self, run: RunRecord) -> None:
        """The pool's agents write to the history themselves."""

    def refresh(self, run: RunRecord) -> RunRecord:
        """The run as stored: the server judges its liveness (attempt leases)."""
        return run

    def cancel(self, run: RunRecord) -> None:
        """Nothing more than the CancelRequested transition the caller made: the server pushes it to the agent."""

    def clean(self, run: RunRecord) -> list[str]:
        """A pool run's folder lives on its agent's box: nothing to remove from here."""
        return []
