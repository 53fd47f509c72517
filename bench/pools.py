"""Figure 18: how fast an idle agent of a pool gets a run once it is enqueued (``rundock server`` over PostgreSQL).

10 agents long-poll one pool, as ``rundock agent serve`` does; 1,000 runs wait in that pool's queue for a label
no agent has, so every claim looks past them. Then runs are enqueued one at a time, each once the agents are
idle again: the pick-up latency is from just before ``POST /runs/{id}/enqueue`` to the moment an agent's poll
answer carrying the run is read. The baseline is the same with an empty queue.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import requests

from bench.common import Figure, log, p50, p95
from tests.server_fixtures import ServerHandle, postgres_database, running_server

AGENTS, BACKLOG = 10, 1000
PROBES = int(os.environ.get("RUNDOCK_BENCH_POOL_PROBES", "100"))
GOAL_P50_S = 0.100


class _Agents:
    """``AGENTS`` threads long-polling ``pool``; each ends its attempt at once and polls again."""

    def __init__(self, server: ServerHandle, token: str, pool: str) -> None:
        self.server, self.token, self.pool = server, token, pool
        self.received: dict[str, float] = {}
        self.arrived = threading.Condition()
        self.stop = threading.Event()
        self.threads = [threading.Thread(target=self._serve, args=(f"bench-{i}",), daemon=True)
                        for i in range(AGENTS)]

    def __enter__(self) -> _Agents:
        for thread in self.threads:
            thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        for thread in self.threads:
            thread.join(30)

    def _serve(self, name: str) -> None:
        with self.server.session(self.token) as session:
            def post(path: str, body: dict[str, Any]) -> Any:
                answer = session.post(self.server.api(path), json=body, timeout=60)
                answer.raise_for_status()
                return answer.json()

            agent_id = post("/agents/register", {"name": name, "pool": self.pool, "slots": 1})["agent_id"]
            while not self.stop.is_set():
                found = post(f"/agents/{agent_id}/poll", {"running": [], "wait": 2})
                now = time.perf_counter()
                for assignment in found["assignments"]:
                    with self.arrived:
                        self.received[assignment["run_id"]] = now
                        self.arrived.notify_all()
                    post(f"/agents/{agent_id}/attempts/{assignment['run_id']}/{assignment['attempt']}/end", {})

    def wait_for(self, run_id: str, timeout: float = 30) -> float:
        with self.arrived:
            if not self.arrived.wait_for(lambda: run_id in self.received, timeout):
                raise RuntimeError(f"no agent received run {run_id} within {timeout:.0f} s")
            return self.received[run_id]


def _client(server: ServerHandle, token: str, pool: str) -> tuple[Callable[[], str], Callable[..., None]]:
    session: requests.Session = server.session(token)

    def create() -> str:
        answer = session.post(server.api("/runs"), json={"experiment": "bench-pools", "target": pool}, timeout=60)
        answer.raise_for_status()
        return str(answer.json()["run_id"])

    def enqueue(run_id: str, **requirements: Any) -> None:
        session.post(server.api(f"/runs/{run_id}/enqueue"), json={"pool": pool, "requirements": requirements},
                     timeout=60).raise_for_status()

    return create, enqueue


def _latencies(server: ServerHandle, pool: str, backlog: int) -> list[float]:
    user = server.make_token(f"bench-{pool}", "user")
    create, enqueue = _client(server, user, pool)
    for _ in range(backlog):
        enqueue(create(), labels=["later"])
    latencies = []
    with _Agents(server, server.make_token(f"bench-{pool}-agent", "agent", [pool]), pool) as agents:
        time.sleep(1.0)  # every agent registered and waiting
        for _ in range(PROBES):
            run_id = create()
            began = time.perf_counter()
            enqueue(run_id)
            latencies.append(agents.wait_for(run_id) - began)
            time.sleep(0.05)  # the agent that took it ends its attempt and polls again
    return latencies


def pickup_latency(root: Path) -> Figure:
    """Figure 18 on a server of its own over a new PostgreSQL database."""
    with postgres_database() as uri, running_server(root / "pools-server", uri) as server:
        ours = _latencies(server, "busy", BACKLOG)
        empty = _latencies(server, "idle", 0)
    log(f"18: pick-up p50 {p50(ours) * 1000:.0f} ms, p95 {p95(ours) * 1000:.0f} ms with {BACKLOG:,} queued; "
        f"empty queue p50 {p50(empty) * 1000:.0f} ms")
    return Figure(18, f"pick-up latency of a pool run: enqueue -> assignment read by one of {AGENTS} idle "
                      f"long-polling agents, {BACKLOG:,} runs queued", "s", ours,
                  f"p50 <= {GOAL_P50_S * 1000:.0f} ms", p50(ours) <= GOAL_P50_S, "the same with an empty queue", empty,
                  note=f"p95 {p95(ours) * 1000:.0f} ms (empty queue: {p95(empty) * 1000:.0f} ms). The backlog waits "
                       "for a label no agent has, so each claim looks past all of it. Long-polls wake on the "
                       "enqueue (an in-process signal), then each agent's claim is one transaction.")
