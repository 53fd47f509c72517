"""What one node of a multi-node run ships to the run (``NodeStore``), over a real SQLite history: node 0's
Running shows, its Finalizing does not (the other nodes may still train), every node's heartbeats keep the run
live, and each node's final state is kept as its outcome instead of ending the run."""

from __future__ import annotations

from pathlib import Path
from typing import Any, cast

from rundock.history.backends.http import HttpRunStore
from rundock.history.store import open_store
from rundock.pool_agent.nodes import NodeStore
from rundock.states import RunStatus


def test_a_node_ships_running_and_heartbeats_but_not_finalizing_nor_its_end(tmp_path: Path) -> None:
    store = open_store(f"sqlite:///{tmp_path / 'history.db'}")
    try:
        run_id = store.create_run("nodes", target="a100").run_id
        store.transition(run_id, RunStatus.QUEUED)
        head = NodeStore(cast(HttpRunStore, store), run_id, 0)
        other = NodeStore(cast(HttpRunStore, store), run_id, 1)

        def state(seq: int, status: str, t: float) -> dict[str, Any]:
            return {"seq": seq, "type": "state", "status": status, "detail": status.lower(), "t": t}

        head.apply_journal(run_id, 1, "agent", [state(1, "Running", 100.0),
                                                 {"seq": 2, "type": "heartbeat", "interval": 5.0, "t": 101.0},
                                                 state(3, "Finalizing", 102.0), state(4, "Completed", 103.0)])
        run = store.get_run(run_id)
        assert run.status == RunStatus.RUNNING and head.outcome == "Completed"  # the server settles the run
        other.apply_journal(run_id, 1, "agent", [state(1, "Running", 100.5),
                                                  {"seq": 2, "type": "heartbeat", "interval": 5.0, "t": 150.0}])
        run = store.get_run(run_id)
        assert run.status == RunStatus.RUNNING and run.last_heartbeat == 150.0  # node 1 still trains: live
        assert other.outcome is None
    finally:
        store.close()
