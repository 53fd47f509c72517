"""One node of a multi-node run (``server.pools_gang``) on this box: its job file, and how its records reach
the run.

A node's per-run agent is the usual one, but it keeps its records in its run directory (``MODE_JOURNAL``, as on
an SSH host) and ``agent serve`` ships them (``NodeSync``: the usual ``Syncer`` over a ``NodeStore``), so that
no node ends the run by itself: the server settles the run from every node's outcome. What is shipped:

- node 0 keeps the usual names; every node's metrics, tags and properties go into the one run;
- node k > 0's files and logs go one folder down: ``logs/node-k/…``, ``outputs/node-k/…``,
  ``system_logs/node-k/driver_log.txt`` (the rule for outputs is simply "node k's outputs are under
  ``outputs/node-k/``", so two nodes writing ``outputs/model.pt`` never clash, whichever finishes first);
  its journal sources are ``node<k>.<source>`` (sequence numbers are per source);
- state records change nothing on the run but node 0's Preparing/Running; each node's final state (and its
  error message) is kept as the node's ``outcome``, which ``agent serve`` sends when it ends the attempt. Node 0's
  Finalizing is not shipped either (node 0 storing its outputs says nothing of the nodes still training: the
  run goes from Running to its final state once every node ended), while every node's heartbeats are (the run
  keeps the latest), so the run does not look NotResponding while any node still runs.

The job gets the launcher variables of ``rundock.agent.launch``; with more than one process per node its script
is that launcher (copied into the run directory), or a ``torchrun`` line when the run asks for it.
"""

from __future__ import annotations

import inspect
import json
import os
from typing import Any, cast

from rundock.agent import launch
from rundock.agent.job import MODE_JOURNAL, JobSpec
from rundock.context import records as rec_types
from rundock.history.artifacts import ArtifactStore
from rundock.history.backends.http import HttpRunStore
from rundock.history.store import RunStore
from rundock.history.sync import Syncer
from rundock.states import RunStatus

LAUNCHER_FILE = "launch.py"
NODE_FILE = "node.json"  # the node's {rank, count, master_addr, master_port}: a restarted ``agent serve`` reads it
_KEEP_STATES = frozenset({RunStatus.PREPARING.value, RunStatus.QUEUED.value, RunStatus.RUNNING.value})
_QUIET_STATES = frozenset({RunStatus.FINALIZING.value})  # not an outcome, not shown


def node_name(name: str, node: int) -> str:
    """Where node ``node``'s file or log ``name`` goes in the run (node 0: where it is)."""
    if node == 0:
        return name
    head, sep, rest = name.partition("/")
    return f"{head}/node-{node}/{rest}" if sep else f"node-{node}/{name}"


def node_job(spec: JobSpec, node: dict[str, Any], distributed: dict[str, Any], run_dir: str) -> JobSpec:
    """The job file of one node: journal mode, the launcher variables, and the launch line."""
    rank, count = int(node["rank"]), int(node["count"])
    addr, port = str(node["master_addr"]), int(node["master_port"])
    command, variables = launch.node_command(distributed, rank, count, addr, port,
                                             [os.path.join(run_dir, LAUNCHER_FILE)], spec.interpreter, spec.script,
                                             spec.arguments)
    env = {**spec.environment_variables, **variables}
    spec.mode = MODE_JOURNAL
    with open(os.path.join(run_dir, NODE_FILE), "w", encoding="utf-8") as fh:
        json.dump({"rank": rank, "count": count, "master_addr": addr, "master_port": port}, fh)
    if command is not None:
        _launcher(run_dir)
        spec.shown_script = spec.script  # the status names the user's script, not the launcher
        spec.script, spec.arguments = command[0], command[1:]
    spec.environment_variables = env
    return spec


def read_node(run_dir: str) -> dict[str, Any] | None:
    """The node a run directory holds (``node_job`` wrote it), or None for a single-node run's."""
    try:
        with open(os.path.join(run_dir, NODE_FILE), encoding="utf-8") as fh:
            node = json.load(fh)
    except (OSError, ValueError):
        return None
    return node if isinstance(node, dict) and isinstance(node.get("rank"), int) else None


def _launcher(run_dir: str) -> str:
    """Copy the stdlib-only launcher beside the job (the job's Python may not see rundock)."""
    path = os.path.join(run_dir, LAUNCHER_FILE)
    with open(path, "w", encoding="utf-8") as fh:
        fh.write(inspect.getsource(launch))
    return path


class NodeStore:
    """The history as one node's ``Syncer`` sees it (see the module docstring); the rest goes to ``store``."""

    def __init__(self, store: HttpRunStore, run_id: str, node: int) -> None:
        self.store = store
        self.run_id = run_id
        self.node = node
        self.outcome: str | None = None
        self.message: str | None = None

    def apply_journal(self, run_id: str, attempt: int, source: str, records: list[dict[str, Any]]) -> int:
        kept = []
        for rec in records:
            kind = rec.get("type")
            if run_id == self.run_id and kind == rec_types.STATE:
                status = str(rec.get("status"))
                if status in _QUIET_STATES:
                    continue
                if status not in _KEEP_STATES:
                    self.outcome = status
                    error = rec.get("error")
                    self.message = str(error.get("message")) if isinstance(error, dict) and error.get("message") \
                        else None
                    continue
                if self.node:
                    continue
            if self.node and kind == rec_types.FILE and isinstance(rec.get("name"), str):
                rec = {**rec, "name": node_name(rec["name"], self.node)}
            kept.append(rec)
        name = source if self.node == 0 else f"node{self.node}.{source}"
        mark = self.store.apply_journal(run_id, attempt, name, kept) if kept else 0
        return max([mark, *(int(r.get("seq") or 0) for r in records)])

    def append_log(self, run_id: str, name: str, offset: int, data: bytes) -> None:
        self.store.append_log(run_id, node_name(name, self.node), offset, data)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.store, name)


class NodeSync:
    """Ships one node's run directory while its job runs; ``finish`` ships the rest and says how it ended."""

    def __init__(self, server_url: str, token: str | None, artifacts: ArtifactStore, run_dir: str, run_id: str,
                 attempt: int, node: int) -> None:
        self.http = HttpRunStore(server_url, artifacts_root=artifacts.root, token=token, attempt=attempt)
        self.store = NodeStore(self.http, run_id, node)
        self.syncer = Syncer(run_dir, run_id, cast(RunStore, self.store), artifacts, attempt)

    def start(self) -> None:
        self.syncer.start()

    def finish(self) -> tuple[str | None, str | None]:
        """Ship what is left; the node's (outcome, message). Raises if the server cannot be reached: call it
        again (what was not applied is read again from the run directory); ``close`` once done."""
        self.syncer.stop()
        return self.store.outcome, self.store.message

    def close(self) -> None:
        self.http.close()
