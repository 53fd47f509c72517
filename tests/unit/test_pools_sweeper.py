"""The lease sweeper and the pool tables with the time given by the test (no sleeps), over SQLite and PostgreSQL:
silent after half a lease, fenced and lost after a whole one, re-queued while retries are left, a renewal that
comes first wins, two sweepers end a run once, and a lost run left half-done by a stopped server is finished."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from rundock.history.store import RunStore, open_store
from rundock.server import pools_gang
from rundock.server.pools import Pools
from rundock.server.pools_match import Requirements
from rundock.server.pools_state import AgentRecord, PoolsState
from rundock.server.pools_sweeper import Sweeper
from rundock.server.setup import migrate_history
from rundock.server.state import open_state
from rundock.states import RunStatus

LEASE = 30.0
T0 = 1_000_000.0


@pytest.fixture(params=["sqlite", "postgresql"])
def pools(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Pools]:
    def made(uri: str) -> Iterator[Pools]:
        migrate_history(uri)
        state, store = open_state(uri), open_store(uri)
        state.migrate()
        try:
            yield Pools(PoolsState(state), store, LEASE, clock=lambda: T0)
        finally:
            store.close()
            state.close()

    if request.param == "sqlite":
        yield from made(f"sqlite:///{tmp_path / 'history.db'}")
        return
    from tests import pg

    with pg.fresh_schema() as uri:
        yield from made(uri)


def agent(pools: Pools, name: str = "gpu-1") -> AgentRecord:
    record = AgentRecord(f"agt_{name}", name, "box", "a100", (), (), None, None, 4, 0.0, 0.0, None)
    pools.state.register(record, [], LEASE, T0)
    return record


def claimed(pools: Pools, store: RunStore, who: AgentRecord, **definition: object) -> str:
    run_id = store.create_run("sweep", target="a100", run_definition=dict(definition)).run_id
    pools.state.enqueue(run_id, "a100", 0, "alice", Requirements(), T0)
    store.transition(run_id, RunStatus.QUEUED)
    (taken,) = pools.state.claim(who.agent_id, None, LEASE, T0, lambda entry: True)
    assert taken[0].run_id == run_id
    return run_id


def test_silent_then_lost_by_the_given_clock(pools: Pools) -> None:
    sweeper, store = Sweeper(pools), pools.store
    run_id = claimed(pools, store, agent(pools))
    assert sweeper.sweep(T0 + LEASE / 2 - 1).silent == []
    assert [a.run_id for a in sweeper.sweep(T0 + LEASE / 2 + 1).silent] == [run_id]
    assert sweeper.sweep(T0 + LEASE / 2 + 2).silent == []  # marked once
    assert store.get_run(run_id).status == RunStatus.QUEUED
    report = sweeper.sweep(T0 + LEASE + 1)
    assert [a.run_id for a in report.lost] == [run_id] and report.requeued == []
    run = store.get_run(run_id)
    assert run.status == RunStatus.FAILED and run.error == {"code": "AgentLost",
                                                           "message": "agent lost: agent gpu-1 stopped reporting"}
    assert [a.state for a in pools.state.attempts(run_id)] == ["fenced"]
    assert pools.state.entry(run_id).state == "done"  # type: ignore[union-attr]
    assert Sweeper(pools).sweep(T0 + LEASE + 2).lost == []  # nothing twice


def test_a_renewal_keeps_the_lease_and_clears_the_silence(pools: Pools) -> None:
    sweeper, who = Sweeper(pools), agent(pools)
    run_id = claimed(pools, pools.store, who)
    sweeper.sweep(T0 + 20)
    assert pools.state.attempts(run_id)[0].silent_since is not None
    assert pools.state.renew(who.agent_id, [(run_id, 1), ("gone", 3)], LEASE, T0 + 25) == [("gone", 3)]
    assert pools.state.attempts(run_id)[0].silent_since is None
    assert sweeper.sweep(T0 + LEASE + 1).lost == []  # renewed at T0 + 25: good until T0 + 55
    expired = pools.state.expired(T0 + 56)
    pools.state.renew(who.agent_id, [(run_id, 1)], LEASE, T0 + 56)  # the agent polls between the look and the fence
    assert not pools.state.fence(expired[0], T0 + 56, requeue=False)
    assert pools.state.attempts(run_id)[0].state == "running"


def test_a_run_with_retries_left_goes_back_to_the_queue_first(pools: Pools) -> None:
    who = agent(pools)
    run_id = claimed(pools, pools.store, who, max_retries=1)
    later = pools.store.create_run("sweep", target="a100").run_id
    pools.state.enqueue(later, "a100", 0, "alice", Requirements(), T0 + 1)
    assert [a.run_id for a in Sweeper(pools).sweep(T0 + LEASE + 1).requeued] == [run_id]
    assert [e.run_id for e in pools.state.waiting("a100")] == [run_id, later]  # it keeps its place
    taken = pools.state.claim(who.agent_id, None, LEASE, T0 + 40, lambda entry: True)
    assert [(e.run_id, a.number) for e, a in taken][0] == (run_id, 2)
    assert [a.run_id for a in Sweeper(pools).sweep(T0 + 40 + LEASE + 1).lost] == [run_id, later]


def test_a_lost_run_a_stopped_server_left_half_done_is_finished_by_the_next_sweep(pools: Pools) -> None:
    run_id = claimed(pools, pools.store, agent(pools))
    (attempt,) = pools.state.expired(T0 + LEASE + 1)
    assert pools.state.fence(attempt, T0 + LEASE + 1, requeue=False)  # ... and the server stopped here
    assert pools.store.get_run(run_id).status == RunStatus.QUEUED
    assert [a.run_id for a in Sweeper(pools).sweep(T0 + LEASE + 2).lost] == [run_id]
    assert pools.store.get_run(run_id).status == RunStatus.FAILED


def two_node_run(pools: Pools) -> tuple[str, AgentRecord, AgentRecord]:
    """A 2-node run held by agents gpu-1 (node 0) and gpu-2 (node 1), Running."""
    first, second = agent(pools, "gpu-1"), agent(pools, "gpu-2")
    store = pools.store
    run_id = store.create_run("sweep", target="a100").run_id
    pools.state.enqueue(run_id, "a100", 0, "alice", Requirements(nodes=2), T0)
    store.transition(run_id, RunStatus.QUEUED)
    (taken,) = pools_gang.claim(pools.state, first.agent_id, None, LEASE, T0, T0 - LEASE, lambda entry: True)
    assert taken[0].run_id == run_id
    store.transition(run_id, RunStatus.RUNNING)
    return run_id, first, second


def test_a_node_lost_after_another_node_ended_fails_the_run_naming_it(pools: Pools) -> None:
    run_id, first, second = two_node_run(pools)
    assert pools.end(second, run_id, 1, "Completed")  # node 1 finished early
    assert pools.store.get_run(run_id).status == RunStatus.RUNNING  # node 0 still trains
    report = Sweeper(pools).sweep(T0 + LEASE + 1)  # node 0's box died: nobody renews its lease
    assert [(a.run_id, a.node) for a in report.lost] == [(run_id, 0)]
    run = pools.store.get_run(run_id)
    assert run.status == RunStatus.FAILED and run.error is not None and run.error["code"] == "AgentLost", run.error
    assert run.error["message"].startswith("node 0 of 2 (agent gpu-1) was lost: "), run.error
    assert pools.state.running() == []  # every GPU of the run is free
    assert pools.state.entry(run_id).state == "done"  # type: ignore[union-attr]


def test_the_run_of_every_node_completed_leaves_the_queue_once_the_last_ends(pools: Pools) -> None:
    run_id, first, second = two_node_run(pools)
    assert pools.end(first, run_id, 1, "Completed")
    assert pools.state.entry(run_id).state == "assigned"  # type: ignore[union-attr]
    assert pools.end(second, run_id, 1, "Completed")
    assert pools.store.get_run(run_id).status == RunStatus.COMPLETED
    assert pools.state.entry(run_id).state == "done"  # type: ignore[union-attr]
    assert Sweeper(pools).sweep(T0 + LEASE + 1).lost == []


def test_one_silent_node_marks_only_itself_silent(pools: Pools) -> None:
    run_id, first, second = two_node_run(pools)
    pools.state.renew(second.agent_id, [(run_id, 1)], LEASE, T0 + 14)  # node 1's box keeps polling
    report = Sweeper(pools).sweep(T0 + LEASE / 2 + 1)
    assert [(a.run_id, a.node) for a in report.silent] == [(run_id, 0)]
    silent = {a.node: a.silent_since is not None for a in pools.state.attempts(run_id)}
    assert silent == {0: True, 1: False}, silent
    # the run's queue speaks of the silent node, not of the other one
    answer = pools.queue_info(pools.store.get_run(run_id))
    assert answer["shown_status"] == RunStatus.NOT_RESPONDING.value and "agent gpu-1 has not reported" in \
        answer["reason"], answer
    pools.end(first, run_id, 1, "Completed")  # node 0 ended after all; node 1 trains on
    answer = pools.queue_info(pools.store.get_run(run_id))
    assert answer["shown_status"] == RunStatus.RUNNING.value and answer["reason"].startswith(
        "running on agent gpu-2"), answer
