"""Azure ML v1's distributed job configurations: ``PyTorchConfiguration`` and ``MpiConfiguration``.

Passed as ``ScriptRunConfig(..., distributed_job_config=...)``; stored in the run definition as
``distributed``: ``{"kind", "node_count", "process_count_per_node", "communication_backend_name", "launcher"}``.
A run with ``node_count`` > 1 on a team server's pool runs on that many agents at once (``server.pools_gang``);
what each node and process gets is in ``rundock.agent.launch``. A run with one node (any target) gets the same
launch on its one box: its job carries ``job_distributed``'s part and the agent starts the processes. Targets that
are not a pool refuse ``node_count`` > 1 at submit (``single_node_problem``).

``PyTorchConfiguration`` takes v1's ``process_count`` (all processes of all nodes) or, as a shorthand,
``process_count_per_node``; ``launcher="torchrun"`` starts each node with one ``torchrun`` line instead of one
process per GPU with ``RANK``/``LOCAL_RANK`` set (v1's per-process launch, the default).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from rundock.errors import ConfigError

LAUNCHERS = ("per-process", "torchrun")


def _count(value: Any, field: str) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ConfigError(f"expected a whole number, at least 1, got {value!r}", source="distributed_job_config",
                          field=field)
    return value


class PyTorchConfiguration:
    """v1's ``PyTorchConfiguration(communication_backend_name, distributed_backend, process_count, node_count)``."""

    def __init__(self, communication_backend_name: str | None = None, distributed_backend: str | None = None,
                 process_count: int | None = None, node_count: int = 1, process_count_per_node: int | None = None,
                 launcher: str = "per-process") -> None:
        self.node_count = _count(node_count, "node_count")
        if process_count is not None and process_count_per_node is not None:
            raise ConfigError("give process_count (all nodes) or process_count_per_node, not both",
                              source="distributed_job_config", field="process_count")
        if process_count is not None and _count(process_count, "process_count") % self.node_count:
            raise ConfigError(f"process_count {process_count} is not a multiple of node_count {node_count}",
                              source="distributed_job_config", field="process_count")
        per_node = process_count // self.node_count if process_count is not None else process_count_per_node or 1
        self.process_count_per_node = _count(per_node, "process_count_per_node")
        self.communication_backend_name = communication_backend_name or distributed_backend or "nccl"
        if launcher not in LAUNCHERS:
            raise ConfigError(f"expected one of {', '.join(LAUNCHERS)}, got {launcher!r}",
                              source="distributed_job_config", field="launcher")
        self.launcher = launcher

    @property
    def process_count(self) -> int:
        return self.node_count * self.process_count_per_node

    def to_mapping(self) -> dict[str, Any]:
        return {"kind": "pytorch", "node_count": self.node_count, "process_count_per_node": self.process_count_per_node,
                "communication_backend_name": self.communication_backend_name, "launcher": self.launcher}


class MpiConfiguration:
    """v1's ``MpiConfiguration(process_count_per_node, node_count)``: each process gets the Open MPI variables."""

    def __init__(self, process_count_per_node: int = 1, node_count: int = 1) -> None:
        self.node_count = _count(node_count, "node_count")
        self.process_count_per_node = _count(process_count_per_node, "process_count_per_node")

    def to_mapping(self) -> dict[str, Any]:
        return {"kind": "mpi", "node_count": self.node_count, "process_count_per_node": self.process_count_per_node,
                "communication_backend_name": "mpi", "launcher": "per-process"}


def multi_node_problem(run_definition: Mapping[str, Any]) -> str | None:
    """Why a run definition cannot run on several nodes of a pool, naming the fix; None when it can (or when
    it asks for one node).

    - A Docker environment: each node's processes run on the box itself (the launcher, the rendezvous port on
      the box's address), not in a container.
    - Retries (``resources.max_retries``): a lost node ends the whole run Failed; a multi-node run is never put
      back in the queue.
    """
    from rundock.history.wire import max_retries

    distributed = run_definition.get("distributed")
    nodes = distributed.get("node_count") if isinstance(distributed, Mapping) else None
    if not isinstance(nodes, int) or nodes <= 1:
        return None
    environment = run_definition.get("environment")
    docker = environment.get("docker") if isinstance(environment, Mapping) else None
    if isinstance(docker, Mapping) and docker.get("enabled"):
        return (f"a multi-node run (node_count={nodes}) runs each node's processes on its box, not in a Docker "
                "container: use an environment without Docker (environment.docker.enabled = False, "
                "environment.python.interpreter_path = a Python on the boxes that has your packages), or "
                "node_count=1 to run in the container")
    retries = max_retries(run_definition)
    if retries:
        return (f"resources.max_retries={retries}: a multi-node run (node_count={nodes}) is not retried (a lost "
                "node ends the whole run Failed); set max_retries=0 and submit the run again if a node is lost")
    return None


def job_distributed(run_definition: Mapping[str, Any]) -> dict[str, Any] | None:
    """What the agent needs to start a one-node distributed run's processes (``JobSpec.distributed``), or None
    for a run that is not distributed."""
    distributed = run_definition.get("distributed")
    if not isinstance(distributed, Mapping) or not distributed:
        return None
    return {"kind": "mpi" if distributed.get("kind") == "mpi" else "pytorch",
            "process_count_per_node": _count(distributed.get("process_count_per_node") or 1,
                                             "process_count_per_node"),
            "launcher": "torchrun" if distributed.get("launcher") == "torchrun" else "per-process"}


def single_node_problem(run_definition: Mapping[str, Any], target: str) -> str | None:
    """Why ``target`` (not a pool) cannot run this run definition, naming the fix; None when it can."""
    distributed = run_definition.get("distributed")
    nodes = distributed.get("node_count") if isinstance(distributed, Mapping) else None
    if not isinstance(nodes, int) or nodes <= 1:
        return None
    return (f"node_count={nodes}, but target {target!r} runs a job on one box: multi-node runs need a pool of the "
            "team server: --target <pool> (ScriptRunConfig(..., compute_target='<pool>')), or node_count=1 to "
            "start every process on this one box")
