"""Multi-node runs on a pool: gang scheduling, the nodes' rendezvous point, and one state for all nodes.

A run whose requirements ask for ``nodes`` = N > 1 (Azure ML v1's ``PyTorchConfiguration(node_count=N)`` or
``MpiConfiguration(node_count=N)``) needs N distinct agents of its pool at once, each with everything the
requirements ask for (they are per node: ``gpus: 4`` is 4 GPUs on every node).

**All or nothing.** When an agent polls, ``claim`` looks at the pool's queued multi-node runs in claim order
(the same order as single-node runs: priority, fair share, FIFO). The first one that fits on N online agents,
the polling agent among them, gets N attempt rows in one transaction: the same attempt number, node ranks
0..N-1 (the polling agent is node 0), one per agent, each holding that agent's GPUs. Before that transaction
nothing is held, so a multi-node run that waits holds no GPU. What another agent has free is judged by the
ledger (its running attempts); the polling agent's by its own report too. The other agents' long-polls are
woken (``Wakeups``) and each receives its node's assignment (``pending``) at once. On PostgreSQL the claim
locks the rows of all the pool's agents (in agent-id order: no deadlock with single-node claims, which lock one
agent's row), so no single-node claim on another agent counts the same GPUs; on SQLite ``BEGIN IMMEDIATE``
makes it the only writer.

**How it waits.** Like single-node runs, a multi-node run that does not fit now does not hold up smaller runs
behind it. ``reason`` explains it: "needs 2 agents of pool a100 with 4 GPUs free each; 1 has them",
"needs 2 agents of pool a100 at once; 1 is online".

**Rendezvous.** Each node's assignment carries ``node``: ``{"rank", "count", "master_addr", "master_port"}``:
node 0's agent address (reported at register, ``agent serve --address``; its host name when it reported none)
and a port chosen from the run id and attempt (29500-31499), the same for every node.

**One state for all nodes.** A multi-node run's per-run agents do not end the run themselves: each node's
``agent serve`` reports how its job ended when it ends the attempt (``outcome``). The first node that ends
other than Completed ends the run Failed naming the node ("node 1 of 2 (agent box-b) failed: …"), and the
other nodes' agents are told to cancel at their next poll (the run is terminal). When every node has ended,
a run that is still live ends Completed if every node completed, Canceled if a cancel was asked for.

**A lost node.** A node whose lease runs out (its box died, or its ``agent serve`` stayed away longer than the
lease) is fenced by the sweeper like any attempt, and the run ends Failed "node 1 of 2 (agent box-b) was lost:
…" (``lost_message``); the other nodes' agents are told to cancel at their next poll, and their attempts end
as usual, so every GPU is freed. A node's writes are refused only once every node of its attempt is fenced
(``attempt_fenced``): a write names its attempt, not its node, and the live nodes ship their last records.
A restarted ``agent serve`` that lists its node as running keeps it (adoption), as for single-node runs.

**Not for multi-node runs** (refused at enqueue, ``rundock.runconfig.distributed.multi_node_problem``):
retries (a lost node is not re-queued: the whole run fails) and Docker environments (nodes run as host
processes).
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any

from rundock.errors import RunNotFoundError
from rundock.server.pools_match import AgentView, Capacity, Requirements, asked, fit
from rundock.server.pools_state import AGENTS, ATTEMPTS, QUEUE, AgentRecord, AttemptRecord, PoolsState, QueueEntry
from rundock.states import RunStatus

if TYPE_CHECKING:
    from rundock.server.pools import Pools

BASE_PORT, PORT_RANGE = 29500, 2000
COMPLETED = RunStatus.COMPLETED.value


def master_port(run_id: str, number: int) -> int:
    """The rendezvous port of an attempt: the same for every node, spread over runs."""
    digest = hashlib.sha256(f"{run_id}\0{number}".encode()).digest()
    return BASE_PORT + int.from_bytes(digest[:4], "big") % PORT_RANGE


def claim(state: PoolsState, agent_id: str, reported_free: Iterable[int] | None, lease_seconds: float, now: float,
          online_since: float, accept: Callable[[QueueEntry], bool]) -> list[tuple[QueueEntry, AttemptRecord]]:
    """Assign the first queued multi-node run that fits on enough online agents, the polling one among them:
    one attempt row per node, all in one transaction. Returns the polling agent's node (node 0), if any."""
    free = list(reported_free) if reported_free is not None else None
    with state.state.transaction() as tx:
        me = next(iter(tx.query(f"SELECT pool FROM {AGENTS} WHERE agent_id = ?", (agent_id,))), None)
        if me is None:
            return []
        pool = str(me[0])
        entries = [e for e in state.waiting(pool, tx) if e.requirements.nodes > 1]
        if not entries:
            return []
        agents = state.lock_agents(tx, pool)
        online = [a for a in agents if a.agent_id == agent_id or a.last_seen >= online_since]
        caps = {a.agent_id: state.capacity(a, free if a.agent_id == agent_id else None, tx) for a in online}
        for entry in entries:
            req = entry.requirements
            fits = {a.agent_id: gpus for a in online if (gpus := fit(req, caps[a.agent_id])) is not None}
            if agent_id not in fits or len(fits) < req.nodes:
                continue
            if not accept(entry):
                tx.execute(f"UPDATE {QUEUE} SET state = 'done' WHERE run_id = ?", (entry.run_id,))
                continue
            if not tx.execute(f"UPDATE {QUEUE} SET state = 'assigned' WHERE run_id = ? AND state = 'queued'",
                              (entry.run_id,)):
                continue
            others = sorted((a for a in online if a.agent_id in fits and a.agent_id != agent_id),
                            key=lambda a: (a.name, a.agent_id))[:req.nodes - 1]
            number = int(tx.query(f"SELECT COALESCE(MAX(number), 0) + 1 FROM {ATTEMPTS} WHERE run_id = ?",
                                  (entry.run_id,))[0][0])
            rows = [AttemptRecord(entry.run_id, number, a_id, fits[a_id], now + lease_seconds, "running", now, now,
                                  None, rank, req.nodes)
                    for rank, a_id in enumerate([agent_id, *(a.agent_id for a in others)])]
            for row in rows:
                state.insert_attempt(tx, row)
            return [(entry, rows[0])]
    return []


def pending(state: PoolsState, agent_id: str, listed: set[tuple[str, int]]) -> list[AttemptRecord]:
    """This agent's running nodes of multi-node runs that it does not report running yet: claimed for it by
    another agent's poll, to be handed out now (an agent starts an attempt it already has only once)."""
    return [a for a in state.running(agent_id=agent_id) if a.nodes > 1 and (a.run_id, a.number) not in listed]


def node_info(state: PoolsState, attempt: AttemptRecord) -> dict[str, Any]:
    """What a node needs to find the others: ``{"rank", "count", "master_addr", "master_port"}``."""
    head = next((a for a in state.attempts(attempt.run_id) if a.number == attempt.number and a.node == 0), attempt)
    agent = state.agent(head.agent_id)
    address = (agent.address or agent.name) if agent is not None else "127.0.0.1"
    return {"rank": attempt.node, "count": attempt.nodes, "master_addr": address,
            "master_port": master_port(attempt.run_id, attempt.number)}


def reason(pool: str, requirements: Requirements, views: list[AgentView], ahead: int) -> str:
    """Why a queued multi-node run waits (``views``: the pool's online agents)."""
    nodes = requirements.nodes
    runs_ahead = f"; {ahead} run{'s' if ahead != 1 else ''} ahead" if ahead else ""
    if len(views) < nodes:
        return f"needs {nodes} agents of pool {pool} at once; {len(views)} {_is(len(views))} online{runs_ahead}"
    idle = sum(fit(requirements, Capacity(v.slots, v.gpus, v.cpus, v.memory_mb, v.labels)) is not None
               for v in views)
    if idle < nodes:
        return (f"needs {nodes} agents of pool {pool} with {asked(requirements)} each; only {idle} "
                f"{_has(idle)} that much even when idle")
    now = sum(fit(requirements, v.free) is not None for v in views)
    if now < nodes:
        return f"needs {nodes} agents of pool {pool} with {asked(requirements)} free each; {now} {_has(now)} " \
               f"them{runs_ahead}"
    return f"{nodes} agents of pool {pool} can take it: it starts at their next poll{runs_ahead}"


def _is(n: int) -> str:
    return "is" if n == 1 else "are"


def _has(n: int) -> str:
    return "has" if n == 1 else "have"


def lost_message(attempt: AttemptRecord, agent_name: str, why: str) -> str:
    """The error of a run that lost node ``attempt`` (its lease ran out, or its restarted agent no longer runs
    it): the run ends Failed with it, and the other nodes are canceled."""
    return (f"node {attempt.node} of {attempt.nodes} (agent {agent_name}) was lost: agent {agent_name} {why}; "
            "the other nodes were canceled")


def attempt_fenced(nodes: list[AttemptRecord]) -> bool:
    """Whether writes of a multi-node attempt (its node rows ``nodes``) are refused: once every node is fenced.
    A write names only its attempt, not its node, so while one node is lost the others still ship their last
    records (the run already ended Failed, and their agents stop them at their next poll)."""
    return all(a.state == "fenced" for a in nodes)


def node_ended(pools: Pools, agent: AgentRecord, held: AttemptRecord, outcome: str | None,
               message: str | None) -> bool:
    """A node's agent ended its attempt with ``outcome`` (its job's final state): settle the run (see the module
    docstring). False when the node was not running on that agent."""
    state, store = pools.state, pools.store
    if not state.end(agent.agent_id, held.run_id, held.number, outcome=outcome or "Lost", leave_queue=False):
        return False
    nodes = [a for a in state.attempts(held.run_id) if a.number == held.number]
    try:
        run = store.get_run(held.run_id)
    except RunNotFoundError:
        return True
    if not run.status.is_terminal and outcome != COMPLETED and \
            not (outcome == RunStatus.CANCELED.value and run.status == RunStatus.CANCEL_REQUESTED):
        what = message or (f"its job ended {outcome}" if outcome else "its agent ended it without an outcome")
        text = f"node {held.node} of {held.nodes} (agent {agent.name}) failed: {what}; the other nodes were canceled"
        store.transition(held.run_id, RunStatus.FAILED, detail=f"node {held.node} failed",
                         error={"code": "NodeFailed", "message": text})
    elif not run.status.is_terminal and all(a.state != "running" for a in nodes):
        if all(a.outcome == COMPLETED for a in nodes):
            store.transition(held.run_id, RunStatus.COMPLETED, detail=f"all {held.nodes} nodes completed")
        elif run.status == RunStatus.CANCEL_REQUESTED:
            store.transition(held.run_id, RunStatus.CANCELED, detail=f"all {held.nodes} nodes stopped")
    if all(a.state != "running" for a in nodes):
        state.finish(held.run_id)
    pools.wakeups.notify(agent.pool)
    return True
