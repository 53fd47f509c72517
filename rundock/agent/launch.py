"""The variables and processes of one node of a distributed run, as Azure ML v1 set them (standard library only).

Every node gets (``node_environment``): ``MASTER_ADDR`` and ``MASTER_PORT`` (node 0's address and the run's
rendezvous port), ``WORLD_SIZE`` (nodes x processes per node), ``NODE_RANK``, ``AZ_BATCH_MASTER_NODE``
(``addr:port``), ``AZUREML_NODE_COUNT`` and ``AZUREML_PROCESS_COUNT_PER_NODE``.

Processes (``process_environment``): with one process per node the job itself is that process, with ``RANK`` =
``NODE_RANK`` and ``LOCAL_RANK`` = 0. With more, this file is run as the job's script (``python launch.py
--processes P --node-rank K --kind pytorch -- train.py args…``): it starts P processes of the script, process
``i`` with ``LOCAL_RANK`` = i and ``RANK`` = K x P + i, forwards SIGTERM/SIGINT to them, and when one fails it
stops the others and exits with the failing one's status. An MPI run's processes get Open MPI's variables
(``OMPI_COMM_WORLD_RANK``, ``…_SIZE``, ``…_LOCAL_RANK``, ``…_LOCAL_SIZE``, ``…_NODE_RANK``) as well.

``torchrun_command`` is the alternative for ``PyTorchConfiguration(launcher="torchrun")``: one ``torchrun``
line per node (``python -m torch.distributed.run --nnodes … --node_rank … --nproc_per_node … --master_addr …
--master_port … train.py args…``), which sets the per-process variables itself.

``node_command`` is the one rewrite of a job into one node's launch, used by a pool's multi-node runs
(``rundock.pool_agent.nodes``) and by the agent for a run on one node (``rundock.agent.prepare.distribute``:
node 0 of 1, ``MASTER_ADDR`` 127.0.0.1, a free port). The job lib carries this file, so a job's Python (on
the host or in a container) runs it as ``python -m rundock.agent.launch``.
"""

from __future__ import annotations

import argparse
import os
import signal
import socket
import subprocess
import sys
import time
from typing import Any, Mapping

POLL_SECONDS = 0.2
STOP_GRACE_SECONDS = 10.0
MODULE = "rundock.agent.launch"  # ``python -m`` name, where the job lib is on the path


def node_environment(node_rank: int, nodes: int, per_node: int, master_addr: str, master_port: int) -> dict[str, str]:
    """The variables every process of node ``node_rank`` sees."""
    return {"MASTER_ADDR": master_addr, "MASTER_PORT": str(master_port), "WORLD_SIZE": str(nodes * per_node),
            "NODE_RANK": str(node_rank), "AZ_BATCH_MASTER_NODE": f"{master_addr}:{master_port}",
            "AZUREML_NODE_COUNT": str(nodes), "AZUREML_PROCESS_COUNT_PER_NODE": str(per_node)}


def process_environment(kind: str, node_rank: int, nodes: int, per_node: int, local_rank: int) -> dict[str, str]:
    """The variables of process ``local_rank`` of node ``node_rank``."""
    rank = node_rank * per_node + local_rank
    env = {"RANK": str(rank), "LOCAL_RANK": str(local_rank), "LOCAL_WORLD_SIZE": str(per_node)}
    if kind == "mpi":
        env.update({"OMPI_COMM_WORLD_RANK": str(rank), "OMPI_COMM_WORLD_SIZE": str(nodes * per_node),
                    "OMPI_COMM_WORLD_LOCAL_RANK": str(local_rank), "OMPI_COMM_WORLD_LOCAL_SIZE": str(per_node),
                    "OMPI_COMM_WORLD_NODE_RANK": str(node_rank)})
    return env


def torchrun_command(python: str, node_rank: int, nodes: int, per_node: int, master_addr: str, master_port: int,
                     script: str, arguments: list[str]) -> list[str]:
    """One node's ``torchrun`` line (``torch.distributed.run``, which ``torchrun`` is)."""
    return [python, "-m", "torch.distributed.run", "--nnodes", str(nodes), "--node_rank", str(node_rank),
            "--nproc_per_node", str(per_node), "--master_addr", master_addr, "--master_port", str(master_port),
            script, *arguments]


def node_command(distributed: Mapping[str, Any], node_rank: int, nodes: int, master_addr: str, master_port: int,
                 launcher: list[str], python: str, script: str,
                 arguments: list[str]) -> tuple[list[str] | None, dict[str, str]]:
    """How node ``node_rank`` runs ``script``: (the command after the interpreter, the variables to add).

    ``distributed`` holds ``kind`` (``pytorch`` or ``mpi``), ``process_count_per_node`` and ``launcher``
    (``per-process`` or ``torchrun``); ``launcher`` here is how the interpreter starts this file (its path, or
    ``["-m", MODULE]``). The command is None when the script itself is the node's one process (the variables
    then include its ``RANK`` and ``LOCAL_RANK``)."""
    per_node = int(distributed.get("process_count_per_node") or 1)
    kind = "mpi" if distributed.get("kind") == "mpi" else "pytorch"
    env = node_environment(node_rank, nodes, per_node, master_addr, master_port)
    head = [*launcher, "--node-rank", str(node_rank), "--nodes", str(nodes), "--kind", kind]
    if distributed.get("launcher") == "torchrun":
        line = torchrun_command(python, node_rank, nodes, per_node, master_addr, master_port, script, arguments)
        return [*head, "--processes", "1", "--", *line[1:]], env
    if per_node > 1:
        return [*head, "--processes", str(per_node), "--", script, *arguments], env
    env.update(process_environment(kind, node_rank, nodes, 1, 0))
    return None, env


def free_port() -> int:
    """A TCP port of this host's loopback that nobody listens on now (the rendezvous of a one-node run)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def run_processes(kind: str, node_rank: int, nodes: int, per_node: int, command: list[str]) -> int:
    """Start ``per_node`` processes of ``command`` and wait for them; the first failure stops the others."""
    children: list[subprocess.Popen[bytes]] = []
    stopping: list[int] = []

    def forward(signum: int, frame: object) -> None:
        stopping.append(signum)
        for child in children:
            if child.poll() is None:
                child.send_signal(signum)

    signal.signal(signal.SIGTERM, forward)
    signal.signal(signal.SIGINT, forward)
    for local_rank in range(per_node):
        env = dict(os.environ)
        env.update(process_environment(kind, node_rank, nodes, per_node, local_rank))
        children.append(subprocess.Popen(command, env=env))
    failed: int | None = None
    while _running(children):  # every child is polled each round (``any`` would stop at the first running one)
        codes = [c.returncode for c in children if c.returncode not in (None, 0)]
        if codes and failed is None:
            failed = codes[0]
            forward(signal.SIGTERM, None)
            deadline = time.monotonic() + STOP_GRACE_SECONDS
            while _running(children) and time.monotonic() < deadline:
                time.sleep(POLL_SECONDS)
            for child in children:
                if child.poll() is None:
                    child.kill()
            continue
        time.sleep(POLL_SECONDS)
    if failed is None:
        failed = next((c.returncode for c in children if c.returncode != 0), 0)
    return exit_status(failed)


def _running(children: list[subprocess.Popen[bytes]]) -> list[subprocess.Popen[bytes]]:
    """The children still running, each one polled (so that every exit status is known)."""
    return [c for c in children if c.poll() is None]


def exit_status(returncode: int) -> int:
    """The launcher's exit status for a process's ``returncode``: a process killed by signal N counts as
    128 + N, as a shell reports it (``sys.exit`` of a negative number would not say so)."""
    return 128 - returncode if returncode < 0 else returncode


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="launch.py", description="start one node's processes of a distributed run")
    parser.add_argument("--processes", type=int, required=True)
    parser.add_argument("--node-rank", type=int, required=True)
    parser.add_argument("--nodes", type=int, required=True)
    parser.add_argument("--kind", choices=("pytorch", "mpi"), default="pytorch")
    parser.add_argument("command", nargs=argparse.REMAINDER)
    args = parser.parse_args(argv)
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    if not command:
        parser.error("no script to run: give it after --")
    return run_processes(args.kind, args.node_rank, args.nodes, args.processes, [sys.executable, *command])


if __name__ == "__main__":
    sys.exit(main())
