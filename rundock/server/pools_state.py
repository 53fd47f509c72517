"""Agent pools in the server's database: the queue, the agents and their attempts (the GPU ledger).

Three tables beside the tokens (``state``, migration 2), the same over SQLite and PostgreSQL:

- ``rundock_server_queue``: one row per enqueued run: its pool, priority, FIFO ``seq``, submitter,
  requirements (JSON) and state ``queued`` -> ``assigned`` -> ``done`` (back to ``queued`` when a lost attempt
  may be retried: it keeps its ``seq``, so it goes before the runs enqueued after it).
- ``rundock_server_agents``: one row per ``agent serve`` (its id is stable for token name, pool and agent
  name, so a restarted agent is the same agent), with what it has (GPUs, CPUs, memory, slots, labels) and when
  it was last seen.
- ``rundock_server_attempts``: one row per pick-up, ``(run_id, number)`` with the agent, the GPUs it holds,
  its lease and state ``running`` -> ``ended`` | ``fenced``. The GPU ledger is the GPUs of the ``running``
  rows: it is in the database, so it survives server and agent restarts. ``renewed_at`` and
  ``silent_since`` (set by the sweeper once an attempt has not been renewed for half its lease) are the
  server's own additions to the shared design; nothing outside the server sees them.

Claim order within a pool: higher ``priority`` first; then fair share, the submitter with fewer running
attempts in the pool first; then FIFO by ``seq``. The first run in that order that fits what the agent has free
(``pools_match.fit``) is taken, so a small run may pass a large one that does not fit now.

Claiming is one transaction. SQLite: ``BEGIN IMMEDIATE`` makes it the only writer. PostgreSQL: the agent's row
is locked first (``FOR UPDATE``: one claim per agent at a time, so its free GPUs are counted once), then each
candidate with ``FOR UPDATE SKIP LOCKED`` and a conditional ``UPDATE … WHERE state = 'queued'``: two agents
never take the same run, and neither waits on the other's candidate. Every time in here is the server's
``time.time()``, passed in by the caller (tests pass their own).
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
from collections.abc import Callable, Iterable, Sequence
from typing import Any

from rundock.history.wire import Gpu
from rundock.server.pools_match import Capacity, Requirements, capacity, fit
from rundock.server.state import ServerState

QUEUE, AGENTS, ATTEMPTS = "rundock_server_queue", "rundock_server_agents", "rundock_server_attempts"
_QUEUE_COLUMNS = "q.run_id, q.pool, q.priority, q.seq, q.submitted_by, q.requirements, q.enqueued_at, q.state"
_AGENT_COLUMNS = ("agent_id, name, token_name, pool, labels, gpus, cpus, memory_mb, slots, registered_at, last_seen, "
                  "version, address")
_ATTEMPT_COLUMNS = ("run_id, number, agent_id, gpus, lease_expires, state, started_at, renewed_at, silent_since, node, "
                    "nodes, outcome")
_ATTEMPT_VALUES = "?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?"
RunAttempt = tuple[str, int]  # (run_id, attempt number), as agents list them


@dataclasses.dataclass(frozen=True)
class QueueEntry:
    run_id: str
    pool: str
    priority: int
    seq: int
    submitted_by: str | None
    requirements: Requirements
    enqueued_at: float
    state: str

    def to_json(self) -> dict[str, Any]:
        return {"pool": self.pool, "priority": self.priority, "submitted_by": self.submitted_by,
                "requirements": self.requirements.to_json(), "enqueued_at": self.enqueued_at}


@dataclasses.dataclass(frozen=True)
class AgentRecord:
    agent_id: str
    name: str
    token_name: str
    pool: str
    labels: tuple[str, ...]
    gpus: tuple[Gpu, ...]
    cpus: int | None
    memory_mb: int | None
    slots: int
    registered_at: float
    last_seen: float
    version: str | None
    address: str | None = None  # where the other nodes of a multi-node run reach this agent (its primary IP)


@dataclasses.dataclass(frozen=True)
class AttemptRecord:
    run_id: str
    number: int
    agent_id: str
    gpus: tuple[int, ...]
    lease_expires: float
    state: str
    started_at: float
    renewed_at: float
    silent_since: float | None
    node: int = 0  # a multi-node run's attempt has one row per node (``pools_gang``), all with the same number
    nodes: int = 1
    outcome: str | None = None  # how a node's job ended, as its agent reported it (multi-node runs only)


def agent_id_for(token_name: str, pool: str, name: str) -> str:
    """The stable id of the agent ``name`` serving ``pool`` with token ``token_name``."""
    return "agt_" + hashlib.sha256(f"{token_name}\0{pool}\0{name}".encode()).hexdigest()[:16]


@functools.lru_cache(maxsize=4096)
def _requirements(text: str) -> Requirements:
    """Requirements as stored (cached: a claim reads every queued run's, and most runs ask alike)."""
    return Requirements.from_json(json.loads(text))


def _entry(row: Sequence[Any]) -> QueueEntry:
    run_id, pool, priority, seq, who, requirements, at, state = row[:8]
    return QueueEntry(run_id, pool, int(priority), int(seq), who, _requirements(requirements), float(at), state)


def _agent(row: Sequence[Any]) -> AgentRecord:
    agent_id, name, token, pool, labels, gpus, cpus, memory, slots, registered, seen, version, address = row
    return AgentRecord(agent_id, name, token, pool, tuple(json.loads(labels)),
                       tuple(Gpu(int(g["index"]), str(g["name"]), int(g["memory_mb"])) for g in json.loads(gpus)),
                       cpus, memory, int(slots), float(registered), float(seen), version, address)


def _attempt(row: Sequence[Any]) -> AttemptRecord:
    run_id, number, agent_id, gpus, lease, state, started, renewed, silent, node, nodes, outcome = row
    return AttemptRecord(run_id, int(number), agent_id, tuple(json.loads(gpus)), float(lease), state, float(started),
                         float(renewed), silent, int(node), int(nodes), outcome)


class PoolsState:
    """The pool tables over one ``ServerState``; every method is one transaction or one read."""

    def __init__(self, state: ServerState) -> None:
        self.state = state
        pg = state.dialect == "postgresql"
        self._lock_row = " FOR UPDATE" if pg else ""
        self._skip_locked = " FOR UPDATE SKIP LOCKED" if pg else ""

    # -- the queue ------------------------------------------------------------------------------------------------
    def enqueue(self, run_id: str, pool: str, priority: int, submitted_by: str | None, requirements: Requirements,
                now: float) -> bool:
        """Queue a run (True), or leave an already queued one as it is (False)."""
        with self.state.transaction() as tx:
            return bool(tx.execute(
                f"INSERT INTO {QUEUE} (run_id, pool, priority, seq, submitted_by, requirements, enqueued_at, state) "
                f"SELECT ?, ?, ?, COALESCE(MAX(seq), 0) + 1, ?, ?, ?, 'queued' FROM {QUEUE} WHERE TRUE "
                "ON CONFLICT (run_id) DO NOTHING",
                (run_id, pool, priority, submitted_by, json.dumps(requirements.to_json()), now)))

    def entry(self, run_id: str) -> QueueEntry | None:
        rows = self.state.query(f"SELECT {_QUEUE_COLUMNS} FROM {QUEUE} q WHERE q.run_id = ?", (run_id,))
        return _entry(rows[0]) if rows else None

    def waiting(self, pool: str, tx: Any = None) -> list[QueueEntry]:
        """The queued runs of ``pool`` in claim order (see the module docstring)."""
        sql = (f"SELECT {_QUEUE_COLUMNS} FROM {QUEUE} q LEFT JOIN ("
               f"SELECT r.submitted_by AS who, COUNT(*) AS n FROM {ATTEMPTS} a JOIN {QUEUE} r ON r.run_id = a.run_id "
               "WHERE a.state = 'running' AND r.pool = ? GROUP BY r.submitted_by) f ON f.who = q.submitted_by "
               "WHERE q.pool = ? AND q.state = 'queued' ORDER BY q.priority DESC, COALESCE(f.n, 0), q.seq, q.run_id")
        rows = (tx or self.state).query(sql, (pool, pool))
        return [_entry(r) for r in rows]

    def finish(self, run_id: str, *, only_queued: bool = False) -> bool:
        """Mark a run's queue entry done (``only_queued``: only if no agent holds it yet)."""
        states = "('queued')" if only_queued else "('queued', 'assigned')"
        with self.state.transaction() as tx:
            return bool(tx.execute(f"UPDATE {QUEUE} SET state = 'done' WHERE run_id = ? AND state IN {states}",
                                   (run_id,)))

    def requeue(self, run_id: str) -> bool:
        """Put a run whose attempt was lost back in the queue, in its old place."""
        with self.state.transaction() as tx:
            return bool(tx.execute(f"UPDATE {QUEUE} SET state = 'queued' WHERE run_id = ? AND state = 'assigned'",
                                   (run_id,)))

    def pools(self) -> list[str]:
        """Every pool that has an agent or a queued run."""
        rows = self.state.query(f"SELECT pool FROM {AGENTS} UNION SELECT pool FROM {QUEUE} WHERE state = 'queued'")
        return sorted(str(r[0]) for r in rows)

    # -- agents -------------------------------------------------------------------------------------------------
    def agent(self, agent_id: str) -> AgentRecord | None:
        rows = self.state.query(f"SELECT {_AGENT_COLUMNS} FROM {AGENTS} WHERE agent_id = ?", (agent_id,))
        return _agent(rows[0]) if rows else None

    def agents(self, pool: str) -> list[AgentRecord]:
        rows = self.state.query(f"SELECT {_AGENT_COLUMNS} FROM {AGENTS} WHERE pool = ? ORDER BY name, agent_id",
                                (pool,))
        return [_agent(r) for r in rows]

    def lock_agents(self, tx: Any, pool: str) -> list[AgentRecord]:
        """The agents of ``pool`` inside transaction ``tx``; on PostgreSQL their rows are locked, in agent-id
        order (a single-node claim locks one agent's row, so neither waits on the other in a cycle)."""
        rows = tx.query(f"SELECT {_AGENT_COLUMNS} FROM {AGENTS} WHERE pool = ? ORDER BY agent_id{self._lock_row}",
                        (pool,))
        return [_agent(r) for r in rows]

    def register(self, agent: AgentRecord, running: Iterable[RunAttempt], lease_seconds: float,
                 now: float) -> tuple[list[RunAttempt], list[AttemptRecord]]:
        """Record (or update) an agent and adopt what it still runs.

        Returns (the listed attempts it must kill: fenced, ended or unknown here; the attempts the database had
        running on it that it no longer lists, now fenced: their runs were lost with the agent's restart).
        """
        listed = set(running)
        with self.state.transaction() as tx:
            tx.execute(
                f"INSERT INTO {AGENTS} ({_AGENT_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) "
                "ON CONFLICT (agent_id) DO UPDATE SET labels = excluded.labels, gpus = excluded.gpus, "
                "cpus = excluded.cpus, memory_mb = excluded.memory_mb, slots = excluded.slots, "
                "registered_at = excluded.registered_at, last_seen = excluded.last_seen, version = excluded.version, "
                "address = excluded.address",
                (agent.agent_id, agent.name, agent.token_name, agent.pool, json.dumps(list(agent.labels)),
                 json.dumps([g.to_json() for g in agent.gpus]), agent.cpus, agent.memory_mb, agent.slots, now, now,
                 agent.version, agent.address))
            held = [_attempt(r) for r in tx.query(f"SELECT {_ATTEMPT_COLUMNS} FROM {ATTEMPTS} WHERE agent_id = ? "
                                                  "AND state = 'running'", (agent.agent_id,))]
            dropped = [a for a in held if (a.run_id, a.number) not in listed]
            for a in dropped:
                tx.execute(f"UPDATE {ATTEMPTS} SET state = 'fenced' WHERE run_id = ? AND number = ? AND "
                           "agent_id = ? AND state = 'running'", (a.run_id, a.number, a.agent_id))
            kill = self._renew(tx, agent.agent_id, listed, lease_seconds, now)
        return kill, dropped

    def renew(self, agent_id: str, running: Iterable[RunAttempt], lease_seconds: float,
              now: float) -> list[RunAttempt]:
        """Renew the leases of the agent's listed attempts (a heartbeat); return those it must kill."""
        with self.state.transaction() as tx:
            tx.execute(f"UPDATE {AGENTS} SET last_seen = ? WHERE agent_id = ?", (now, agent_id))
            return self._renew(tx, agent_id, set(running), lease_seconds, now)

    def _renew(self, tx: Any, agent_id: str, listed: set[RunAttempt], lease_seconds: float,
               now: float) -> list[RunAttempt]:
        kill = []
        for run_id, number in sorted(listed):
            if not tx.execute(f"UPDATE {ATTEMPTS} SET lease_expires = ?, renewed_at = ?, silent_since = NULL "
                              "WHERE run_id = ? AND number = ? AND agent_id = ? AND state = 'running'",
                              (now + lease_seconds, now, run_id, number, agent_id)):
                kill.append((run_id, number))
        return kill

    # -- attempts -------------------------------------------------------------------------------------------------
    def attempts(self, run_id: str) -> list[AttemptRecord]:
        """Every attempt of a run, first first."""
        rows = self.state.query(f"SELECT {_ATTEMPT_COLUMNS} FROM {ATTEMPTS} WHERE run_id = ? ORDER BY number, node",
                                (run_id,))
        return [_attempt(r) for r in rows]

    def running(self, *, agent_id: str | None = None, pool: str | None = None) -> list[AttemptRecord]:
        """The running attempts of one agent, of one pool's agents, or of all."""
        sql = f"SELECT {', '.join('a.' + c for c in _ATTEMPT_COLUMNS.split(', '))} FROM {ATTEMPTS} a " \
              f"JOIN {AGENTS} g ON g.agent_id = a.agent_id WHERE a.state = 'running'"
        args: list[Any] = []
        if agent_id is not None:
            sql, args = sql + " AND a.agent_id = ?", args + [agent_id]
        if pool is not None:
            sql, args = sql + " AND g.pool = ?", args + [pool]
        return [_attempt(r) for r in self.state.query(sql + " ORDER BY a.started_at", args)]

    def capacity(self, agent: AgentRecord, reported_free: Iterable[int] | None, tx: Any = None) -> Capacity:
        """What ``agent`` has free now, by the ledger (and the GPUs it reported free, if given)."""
        rows = (tx or self.state).query(
            f"SELECT a.gpus, q.requirements FROM {ATTEMPTS} a LEFT JOIN {QUEUE} q ON q.run_id = a.run_id "
            "WHERE a.agent_id = ? AND a.state = 'running'", (agent.agent_id,))
        held = [(tuple(json.loads(g)), _requirements(r) if r else Requirements()) for g, r in rows]
        return capacity(agent.slots, agent.gpus, agent.cpus, agent.memory_mb, agent.labels, held, reported_free)

    def claim(self, agent_id: str, reported_free: Iterable[int] | None, lease_seconds: float, now: float,
              accept: Callable[[QueueEntry], bool]) -> list[tuple[QueueEntry, AttemptRecord]]:
        """Assign to the agent every queued run of its pool that fits what it has free, in claim order.

        ``accept(entry)`` is asked before a run is taken (the caller checks the run's status in the history);
        a run it refuses is marked done and skipped.
        """
        taken: list[tuple[QueueEntry, AttemptRecord]] = []
        free = list(reported_free) if reported_free is not None else None
        with self.state.transaction() as tx:
            rows = tx.query(f"SELECT {_AGENT_COLUMNS} FROM {AGENTS} WHERE agent_id = ?{self._lock_row}", (agent_id,))
            if not rows:
                return taken
            agent = _agent(rows[0])
            cap = self.capacity(agent, free, tx)
            if cap.slots < 1:
                return taken
            passed: set[str] = set()  # runs that do not fit, are being taken by another agent, or were refused
            while cap.slots >= 1:
                found = self._next(tx, agent.pool, cap, passed)
                if found is None:
                    break
                entry, gpus = found
                passed.add(entry.run_id)
                if not accept(entry):
                    tx.execute(f"UPDATE {QUEUE} SET state = 'done' WHERE run_id = ?", (entry.run_id,))
                    continue
                if not tx.execute(f"UPDATE {QUEUE} SET state = 'assigned' WHERE run_id = ? AND state = 'queued'",
                                  (entry.run_id,)):
                    continue
                number = int(tx.query(f"SELECT COALESCE(MAX(number), 0) + 1 FROM {ATTEMPTS} WHERE run_id = ?",
                                      (entry.run_id,))[0][0])
                attempt = AttemptRecord(entry.run_id, number, agent_id, gpus, now + lease_seconds, "running", now,
                                        now, None)
                self.insert_attempt(tx, attempt)
                taken.append((entry, attempt))
                cap = cap.take(entry.requirements, gpus)
        return taken

    @staticmethod
    def insert_attempt(tx: Any, attempt: AttemptRecord) -> None:
        tx.execute(f"INSERT INTO {ATTEMPTS} ({_ATTEMPT_COLUMNS}) VALUES ({_ATTEMPT_VALUES})",
                   (attempt.run_id, attempt.number, attempt.agent_id, json.dumps(list(attempt.gpus)),
                    attempt.lease_expires, attempt.state, attempt.started_at, attempt.renewed_at,
                    attempt.silent_since, attempt.node, attempt.nodes, attempt.outcome))

    def _next(self, tx: Any, pool: str, cap: Capacity,
              passed: set[str]) -> tuple[QueueEntry, tuple[int, ...]] | None:
        """The first queued run of ``pool`` in claim order (fair share counted now) that fits ``cap``, locked for
        this transaction, with the GPUs it would get."""
        for entry in self.waiting(pool, tx):
            if entry.run_id in passed or entry.requirements.nodes > 1:  # multi-node runs: ``pools_gang``
                continue
            gpus = fit(entry.requirements, cap)
            if gpus is None:
                passed.add(entry.run_id)
                continue
            if self._skip_locked and not tx.query(
                    f"SELECT run_id FROM {QUEUE} WHERE run_id = ? AND state = 'queued'{self._skip_locked}",
                    (entry.run_id,)):
                passed.add(entry.run_id)  # another agent is taking it
                continue
            return entry, gpus
        return None

    def end(self, agent_id: str, run_id: str, number: int, *, requeue: bool = False,
            outcome: str | None = None, leave_queue: bool = True) -> bool:
        """The agent is done with an attempt: its GPUs are free and the run leaves the queue (False: it was not
        running on that agent, e.g. already fenced). ``requeue``: the attempt was lost and its run may be tried
        again: the attempt is fenced (its late writes are refused) and the run goes back to the queue.
        ``leave_queue=False`` (a node of a multi-node run): the run stays assigned, so a node lost after this
        one ended is still judged by the sweeper; the caller finishes the run once no node runs."""
        with self.state.transaction() as tx:
            if not tx.execute(f"UPDATE {ATTEMPTS} SET state = ?, outcome = ? WHERE run_id = ? AND number = ? AND "
                              "agent_id = ? AND state = 'running'",
                              ("fenced" if requeue else "ended", outcome, run_id, number, agent_id)):
                return False
            if leave_queue or requeue:
                tx.execute(f"UPDATE {QUEUE} SET state = ? WHERE run_id = ? AND state = 'assigned'",
                           ("queued" if requeue else "done", run_id))
            return True

    # -- leases (the sweeper) ------------------------------------------------------------------------------------
    def mark_silent(self, now: float, after: float) -> list[AttemptRecord]:
        """Mark the running attempts not renewed for ``after`` seconds as silent; return those newly marked."""
        with self.state.transaction() as tx:
            rows = tx.query(f"SELECT {_ATTEMPT_COLUMNS} FROM {ATTEMPTS} WHERE state = 'running' AND "
                            "silent_since IS NULL AND renewed_at < ?", (now - after,))
            for row in rows:  # one node of a multi-node attempt going silent says nothing of the others
                tx.execute(f"UPDATE {ATTEMPTS} SET silent_since = ? WHERE run_id = ? AND number = ? AND node = ? "
                           "AND agent_id = ? AND silent_since IS NULL", (now, row[0], row[1], row[9], row[2]))
        return [_attempt(r) for r in rows]

    def expired(self, now: float) -> list[AttemptRecord]:
        rows = self.state.query(f"SELECT {_ATTEMPT_COLUMNS} FROM {ATTEMPTS} WHERE state = 'running' AND "
                                "lease_expires < ? ORDER BY lease_expires", (now,))
        return [_attempt(r) for r in rows]

    def fence(self, attempt: AttemptRecord, now: float, requeue: bool) -> bool:
        """Fence one attempt whose lease expired before ``now`` (False: it was renewed or ended meanwhile);
        ``requeue`` puts its run back in the queue in the same transaction."""
        with self.state.transaction() as tx:
            if not tx.execute(f"UPDATE {ATTEMPTS} SET state = 'fenced' WHERE run_id = ? AND number = ? AND "
                              "node = ? AND state = 'running' AND lease_expires < ?",
                              (attempt.run_id, attempt.number, attempt.node, now)):
                return False
            if requeue:
                tx.execute(f"UPDATE {QUEUE} SET state = 'queued' WHERE run_id = ? AND state = 'assigned'",
                           (attempt.run_id,))
            return True

    def lost(self) -> list[AttemptRecord]:
        """Fenced attempts whose run is still assigned to them: their run must still be ended (once) as lost."""
        rows = self.state.query(
            f"SELECT {', '.join('a.' + c for c in _ATTEMPT_COLUMNS.split(', '))} FROM {QUEUE} q "
            f"JOIN {ATTEMPTS} a ON a.run_id = q.run_id WHERE q.state = 'assigned' AND a.state = 'fenced' AND "
            f"a.number = (SELECT MAX(number) FROM {ATTEMPTS} m WHERE m.run_id = q.run_id)")
        return [_attempt(r) for r in rows]
