"""Agent pools on a real server process, over SQLite and PostgreSQL: the queue's order, claims by agents polling
at once, requirements and the reasons a run waits, the GPU ledger across restarts, leases (time injected into
the sweeper), fencing of a lost attempt's writes, cancel pushed to a long-poll, and who may call what.

The agents here are plain HTTP clients speaking the pool protocol (``rundock agent serve`` has its own tests).
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import requests

from rundock.history.store import open_store
from rundock.server.pools import Pools
from rundock.server.pools_state import PoolsState
from rundock.server.pools_sweeper import Sweeper, SweepReport
from rundock.server.state import open_state
from tests import server_fixtures
from tests.integration.test_server_workspace import restart
from tests.server_fixtures import ServerHandle, running_server

server = server_fixtures.server
store_uri_per_module = server_fixtures.store_uri_per_module
LEASE = 30.0  # the server's default
A100 = {"name": "A100-SXM4-80GB", "memory_mb": 81920}


@dataclass
class Agent:
    """One ``agent serve`` as the server sees it: registers, long-polls, ends attempts."""

    server: ServerHandle
    token: str
    pool: str
    name: str = "box-1"
    gpus: list[dict[str, Any]] = field(default_factory=list)
    slots: int = 1
    extra: dict[str, Any] = field(default_factory=dict)
    agent_id: str = ""
    running: list[tuple[str, int]] = field(default_factory=list)

    def call(self, path: str, body: dict[str, Any], timeout: float = 60) -> requests.Response:
        with self.server.session(self.token) as session:
            return session.post(self.server.api(path), json=body, timeout=timeout)

    def register(self) -> dict[str, Any]:
        answer = self.call("/agents/register", {"name": self.name, "pool": self.pool, "slots": self.slots,
                                                "gpus": self.gpus, "running": self._listed(), **self.extra})
        assert answer.status_code == 200, answer.text
        self.agent_id = answer.json()["agent_id"]
        return dict(answer.json())

    def poll(self, wait: float = 0) -> dict[str, Any]:
        answer = self.call(f"/agents/{self.agent_id}/poll", {"running": self._listed(), "wait": wait,
                                                             "free_gpus": [g["index"] for g in self.gpus]})
        assert answer.status_code == 200, answer.text
        found = answer.json()
        self.running += [(a["run_id"], a["attempt"]) for a in found["assignments"]]
        return dict(found)

    def end(self, run_id: str) -> bool:
        number = next(n for r, n in self.running if r == run_id)
        self.running.remove((run_id, number))
        answer = self.call(f"/agents/{self.agent_id}/attempts/{run_id}/{number}/end", {})
        assert answer.status_code == 200, answer.text
        return bool(answer.json()["ended"])

    def _listed(self) -> list[dict[str, Any]]:
        return [{"run_id": r, "attempt": n} for r, n in self.running]


def gpus(count: int, **kind: Any) -> list[dict[str, Any]]:
    return [{"index": i, **(kind or A100)} for i in range(count)]


def new_run(server: ServerHandle, token: str, pool: str, **fields: Any) -> str:
    with server.session(token) as session:
        answer = session.post(server.api("/runs"), json={"experiment": "pools", "target": pool, **fields}, timeout=30)
    assert answer.status_code == 201, answer.text
    return str(answer.json()["run_id"])


def enqueue(server: ServerHandle, token: str, run_id: str, pool: str, **body: Any) -> requests.Response:
    with server.session(token) as session:
        return session.post(server.api(f"/runs/{run_id}/enqueue"), json={"pool": pool, **body}, timeout=30)


def queued(server: ServerHandle, token: str, pool: str, **body: Any) -> str:
    run_id = new_run(server, token, pool)
    answer = enqueue(server, token, run_id, pool, **body)
    assert answer.status_code == 200, answer.text
    return run_id


def get(server: ServerHandle, token: str, path: str, **kwargs: Any) -> Any:
    with server.session(token) as session:
        answer = session.get(server.api(path), timeout=30, **kwargs)
    assert answer.status_code == 200, answer.text
    return answer.json()


def reason(server: ServerHandle, token: str, run_id: str) -> str:
    return str(get(server, token, f"/runs/{run_id}/queue")["reason"])


@contextlib.contextmanager
def sweeper(server: ServerHandle) -> Iterator[Sweeper]:
    """The server's sweeper, run in this process over the same database, with the time a test gives it."""
    state, store = open_state(server.store_uri), open_store(server.store_uri)
    try:
        yield Sweeper(Pools(PoolsState(state), store, LEASE))
    finally:
        store.close()
        state.close()


def sweep(server: ServerHandle, seconds_from_now: float) -> SweepReport:
    with sweeper(server) as found:
        return found.sweep(time.time() + seconds_from_now)


def test_the_queue_goes_by_priority_then_fair_share_then_first_come(server: ServerHandle) -> None:
    alice, bob = server.make_token("alice-o", "user"), server.make_token("bob-o", "user")
    pool = "order"
    a1, a2, a3 = (queued(server, alice, pool) for _ in range(3))
    b1 = queued(server, bob, pool)
    urgent = new_run(server, alice, pool)
    assert enqueue(server, alice, urgent, pool, priority=5).json() == {"position": 1}
    assert enqueue(server, alice, urgent, pool, priority=5).json() == {"position": 1}  # again: where it is
    assert get(server, alice, f"/runs/{a1}/queue")["position"] == 2
    agent = Agent(server, server.make_token("box-o", "agent", [pool]), pool, slots=5)
    agent.register()
    assert reason(server, alice, a2) == "2 runs ahead"
    # bob has no run going when his turn is weighed against alice's, who has one (the urgent run) by then
    assert [a["run_id"] for a in agent.poll()["assignments"]] == [urgent, b1, a1, a2, a3]
    assert get(server, alice, f"/runs/{a1}")["status"] == "Queued"


def test_agents_polling_at_once_never_get_the_same_run(server: ServerHandle) -> None:
    pool = "crowd"
    alice = server.make_token("alice-c", "user")
    token = server.make_token("box-c", "agent", [pool])
    runs = [queued(server, alice, pool) for _ in range(50)]
    agents = [Agent(server, token, pool, name=f"box-{i}", slots=2) for i in range(4)]
    for agent in agents:
        agent.register()
    got: list[list[str]] = [[] for _ in agents]

    def work(i: int) -> None:
        agent = agents[i]
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and sum(map(len, got)) < len(runs):
            for assignment in agent.poll(wait=0.5)["assignments"]:
                got[i].append(assignment["run_id"])
                assert assignment["attempt"] == 1
                assert agent.end(assignment["run_id"])

    threads = [threading.Thread(target=work, args=(i,)) for i in range(len(agents))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    every = [run for taken in got for run in taken]
    assert sorted(every) == sorted(runs), "each run is assigned exactly once"
    assert sum(1 for taken in got if taken) >= 2, "the work was shared"
    assert {p["name"]: p["queued"] for p in get(server, alice, "/pools")}[pool] == 0


def test_requirements_are_matched_and_every_wait_is_explained(server: ServerHandle) -> None:
    pool = "explain"
    alice = server.make_token("alice-e", "user")
    plain = queued(server, alice, pool)
    assert reason(server, alice, plain).startswith("no agent of pool explain has ever joined the server (is the name "
                                                  "right? pools with agents: ")  # a misspelt pool waits for ever
    agent = Agent(server, server.make_token("box-e", "agent", [pool]), pool, slots=2,
                  gpus=gpus(2, name="A100-PCIE-40GB", memory_mb=40960),
                  extra={"labels": ["ssd"], "cpus": 8, "memory_mb": 65536})
    agent.register()
    assert reason(server, alice, plain) == "next in line: an agent of pool explain takes it at its next poll"
    never = {"no agent of pool explain has label ib": {"labels": ["ib"]},
             "no agent of pool explain has 80 GB GPUs": {"gpus": 1, "gpu_memory_mb": 81920},
             "no agent of pool explain has 4 GPUs": {"gpus": 4},
             "no agent of pool explain has 16 CPUs": {"cpus": 16},
             "no agent of pool explain has 128 GB of memory": {"memory_mb": 131072}}
    for expected, requirements in never.items():
        assert reason(server, alice, queued(server, alice, pool, requirements=requirements)) == expected
    both = queued(server, alice, pool, requirements={"gpus": 2, "labels": ["ssd"]})
    assert reason(server, alice, both) == "6 runs ahead"
    taken = agent.poll()["assignments"]
    assert [(a["run_id"], a["gpus"]) for a in taken] == [(plain, []), (both, [0, 1])]
    assert taken[1]["enqueued"]["requirements"]["gpus"] == 2 and taken[1]["run"]["run_id"] == both
    one_gpu = queued(server, alice, pool, requirements={"gpus": 1})
    assert reason(server, alice, one_gpu) == "all 2 GPUs of pool explain are busy; 5 runs ahead"
    no_gpu = queued(server, alice, pool)
    assert reason(server, alice, no_gpu) == "all 2 slots of pool explain are busy; 6 runs ahead"
    assert agent.end(plain)
    assert reason(server, alice, no_gpu) == "6 runs ahead"
    assert [a["run_id"] for a in agent.poll()["assignments"]] == [no_gpu]
    assert reason(server, alice, both) == "running on agent box-1 (attempt 1 on GPUs 0, 1)"
    bad = {"requirements": {"gpu": 1}}, {"requirements": {"gpus": -1}}, {"requirements": {"labels": "ssd"}}
    for body in bad:
        answer = enqueue(server, alice, new_run(server, alice, pool), pool, **body)
        assert answer.status_code == 400 and "requirements." in answer.json()["error"]["message"]
    elsewhere = enqueue(server, alice, new_run(server, alice, "other"), pool)
    assert elsewhere.status_code == 400 and "target 'other'" in elsewhere.json()["error"]["message"]


def test_a_lost_agent_shows_not_responding_then_its_run_fails_and_its_writes_are_fenced(server: ServerHandle) -> None:
    pool = "lease"
    alice = server.make_token("alice-l", "user")
    agent_token = server.make_token("box-l", "agent", [pool])
    agent = Agent(server, agent_token, pool, name="gpu-7")
    agent.register()
    run_id = queued(server, alice, pool)
    assert agent.poll()["assignments"][0]["attempt"] == 1
    assert run_id in [a.run_id for a in sweep(server, LEASE / 2 + 1).silent]
    seen = get(server, alice, f"/runs/{run_id}/queue")
    assert seen["shown_status"] == "NotResponding" and "agent gpu-7 has not reported" in seen["reason"]
    agent.poll()  # it reports again: the mark is gone
    assert get(server, alice, f"/runs/{run_id}/queue")["shown_status"] == "Queued"
    assert run_id in [a.run_id for a in sweep(server, LEASE + 1).lost]
    run = get(server, alice, f"/runs/{run_id}")
    assert run["status"] == "Failed" and run["error"]["message"] == "agent lost: agent gpu-7 stopped reporting"
    assert agent.poll()["fenced"] == [{"run_id": run_id, "attempt": 1}]
    with server.session(agent_token) as session:
        writes = [session.post(server.api(f"/runs/{run_id}/journal"), timeout=30,
                               json={"attempt": 1, "source": "agent", "records": []}),
                  session.post(server.api(f"/runs/{run_id}/transitions"), json={"status": "Completed"},
                               headers={"X-Rundock-Attempt": "1"}, timeout=30),
                  session.put(server.api(f"/runs/{run_id}/logs/driver.txt"), params={"offset": 0}, data=b"late",
                              headers={"X-Rundock-Attempt": "1"}, timeout=30)]
        assert [w.status_code for w in writes] == [409, 409, 409]
        assert all(w.json()["error"]["code"] == "fenced" for w in writes)
        unnamed = session.put(server.api(f"/runs/{run_id}/logs/driver.txt"), params={"offset": 0}, data=b"x")
        assert unnamed.status_code == 400 and "X-Rundock-Attempt" in unnamed.json()["error"]["message"]
    assert get(server, alice, f"/runs/{run_id}")["status"] == "Failed"


def test_a_lost_attempt_is_retried_when_the_run_allows_and_the_old_one_stays_fenced(server: ServerHandle) -> None:
    pool = "retry"
    alice = server.make_token("alice-r", "user")
    agent_token = server.make_token("box-r", "agent", [pool])
    agent = Agent(server, agent_token, pool)
    agent.register()
    run_id = new_run(server, alice, pool, run_definition={"max_retries": 1})
    assert enqueue(server, alice, run_id, pool).status_code == 200
    agent.poll()
    assert run_id in [a.run_id for a in sweep(server, LEASE + 1).requeued]
    assert get(server, alice, f"/runs/{run_id}/queue")["state"] == "queued"
    agent.running.clear()
    again = agent.poll()["assignments"]
    assert [(a["run_id"], a["attempt"]) for a in again] == [(run_id, 2)]
    with server.session(agent_token) as session:
        old = session.post(server.api(f"/runs/{run_id}/transitions"), json={"status": "Running"},
                           headers={"X-Rundock-Attempt": "1"}, timeout=30)
        assert old.status_code == 409 and "attempt 1" in old.json()["error"]["message"]
        new = session.post(server.api(f"/runs/{run_id}/transitions"), json={"status": "Running"},
                           headers={"X-Rundock-Attempt": "2"}, timeout=30)
        assert new.status_code == 200 and new.json() == {"moved": True}
    assert run_id in [a.run_id for a in sweep(server, LEASE + 1).lost]  # no retry left
    assert get(server, alice, f"/runs/{run_id}")["status"] == "Failed"


def test_a_cancel_reaches_the_polling_agent_within_a_second(server: ServerHandle) -> None:
    pool = "cancel"
    alice = server.make_token("alice-x", "user")
    agent = Agent(server, server.make_token("box-x", "agent", [pool]), pool)
    agent.register()
    run_id = queued(server, alice, pool)
    agent.poll()
    answers: list[tuple[float, dict[str, Any]]] = []
    poller = threading.Thread(target=lambda: answers.append((time.monotonic(), agent.poll(wait=8))))
    poller.start()
    time.sleep(0.5)  # the agent is waiting in its long-poll
    asked = time.monotonic()
    with server.session(alice) as session:
        moved = session.post(server.api(f"/runs/{run_id}/transitions"), json={"status": "CancelRequested"})
    assert moved.json() == {"moved": True}
    poller.join()
    (answered, answer), = answers
    assert answer["cancel"] == [{"run_id": run_id, "attempt": 1}]
    assert answered - asked < 1.0
    began = time.monotonic()
    assert agent.poll(wait=1)["cancel"] == [{"run_id": run_id, "attempt": 1}]  # still listed, no longer news
    assert time.monotonic() - began >= 0.9
    waiting = queued(server, alice, pool)
    with server.session(alice) as session:
        session.post(server.api(f"/runs/{waiting}/transitions"), json={"status": "CancelRequested"})
    assert get(server, alice, f"/runs/{waiting}")["status"] == "Canceled"
    assert get(server, alice, f"/runs/{waiting}/queue")["state"] == "done"


def test_agents_act_only_for_their_pools_and_users_never_as_agents(server: ServerHandle) -> None:
    alice = server.make_token("alice-a", "user")
    mine = Agent(server, server.make_token("box-a", "agent", ["guarded"]), "guarded")
    mine.register()
    run_id = queued(server, alice, "guarded")
    stranger = server.make_token("box-z", "agent", ["elsewhere"])
    intruder = Agent(server, stranger, "guarded", agent_id=mine.agent_id)
    assert intruder.call("/agents/register", {"name": "x", "pool": "guarded"}).status_code == 403
    assert intruder.call(f"/agents/{mine.agent_id}/poll", {"wait": 0}).status_code == 403
    assert intruder.call(f"/agents/{mine.agent_id}/attempts/{run_id}/1/end", {}).status_code == 403
    with server.session(stranger) as session:
        assert session.get(server.api(f"/runs/{run_id}")).status_code == 403
        assert session.get(server.api(f"/runs/{run_id}/queue")).status_code == 403
        assert [p["name"] for p in session.get(server.api("/pools")).json()] == []
        assert session.post(server.api(f"/runs/{run_id}/enqueue"), json={"pool": "guarded"}).status_code == 403
    as_user = Agent(server, alice, "guarded", agent_id=mine.agent_id)
    assert as_user.call("/agents/register", {"name": "x", "pool": "guarded"}).status_code == 403
    assert as_user.call(f"/agents/{mine.agent_id}/poll", {"wait": 0}).status_code == 403
    assert [a["run_id"] for a in mine.poll()["assignments"]] == [run_id]  # nothing was taken by the others


@pytest.fixture(params=["sqlite", "postgresql"])
def own_server(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[ServerHandle]:
    """A server of the test's own (it is restarted)."""
    if request.param == "sqlite":
        with running_server(tmp_path) as handle:
            yield handle
        return
    with server_fixtures.postgres_database() as uri, running_server(tmp_path, uri) as handle:
        yield handle


def test_runs_never_share_a_gpu_and_the_ledger_and_queue_survive_restarts(own_server: ServerHandle) -> None:
    server, pool = own_server, "ledger"
    alice = server.make_token("alice", "user")
    agent = Agent(server, server.make_token("box", "agent", [pool]), pool, slots=4, gpus=gpus(4))
    agent.register()
    first, second, third = (queued(server, alice, pool, requirements={"gpus": 2}) for _ in range(3))
    held = {a["run_id"]: a["gpus"] for a in agent.poll()["assignments"]}
    assert held == {first: [0, 1], second: [2, 3]}
    assert reason(server, alice, third) == "all 4 GPUs of pool ledger are busy"
    server.stop()
    server = restart(server)
    try:
        after_restart(server, agent, alice, first, second, third)
    finally:
        server.stop()


def after_restart(server: ServerHandle, agent: Agent, alice: str, first: str, second: str, third: str) -> None:
    agent.server = server
    (listed,) = get(server, alice, "/pools")
    assert {g["index"]: g["used_by"] for g in listed["agents"][0]["gpus"]} == {0: first, 1: first, 2: second,
                                                                               3: second}
    assert listed["queued"] == 1 and sorted(listed["agents"][0]["running"]) == sorted([first, second])
    assert agent.register()["fenced"] == []  # a restarted agent adopts what it still runs
    assert agent.poll()["assignments"] == [] and reason(server, alice, third) == "all 4 GPUs of pool ledger are busy"
    assert agent.end(first)
    assert [(a["run_id"], a["gpus"]) for a in agent.poll()["assignments"]] == [(third, [0, 1])]
    agent.running.remove((second, 1))  # the agent restarts without it: its run was lost with it
    agent.register()
    failed = get(server, alice, f"/runs/{second}")
    assert failed["status"] == "Failed"
    assert failed["error"]["message"] == "agent lost: agent box-1 restarted and no longer runs it"
    (listed,) = get(server, alice, "/pools")
    assert {g["index"]: g["used_by"] for g in listed["agents"][0]["gpus"]} == {0: third, 1: third, 2: None, 3: None}
