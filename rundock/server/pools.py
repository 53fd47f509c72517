"""Agent pools: the server's side of ``rundock agent serve`` (the tables are ``pools_state``'s).

A run submitted to a pool (``target`` = the pool's name) is enqueued, then picked up by an agent of that pool
that long-polls the server: each pick-up is an **attempt** with a lease that the agent's polls renew. This
module is what the routes (``routes_pools``), the write routes' fencing check (``pools_fence``) and the sweeper
(``pools_sweeper``) share.

Order in a pool's queue: higher ``priority`` first; within a priority, fair share: the submitter with fewer
running attempts in the pool goes first; then first enqueued, first served. The first run in that order that
fits what the polling agent has free is the one it gets (``pools_match``), so a run that asks for more than is
free now does not hold up smaller runs behind it.

Wake-ups: a long-poll waits on an in-process signal per pool (``Wakeups``), raised when a run is enqueued or
canceled, an attempt ends or a lease is swept; it also looks at the database every ``RECHECK_SECONDS``, which
is all that several server processes sharing one database need. A long-poll is held at most a third of the
lease, so an agent that keeps polling keeps its leases.

Cancel: a user's CancelRequested on a run an agent holds is pushed to that agent in its poll's ``cancel`` list
(the agent's per-run process then stops the job and ends the run Canceled); a run still queued is taken out of
the queue and ends Canceled at once.
"""

from __future__ import annotations

import asyncio
import dataclasses
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

from starlette.concurrency import run_in_threadpool

from rundock.errors import RunNotFoundError
from rundock.history import wire
from rundock.history.records import RunRecord
from rundock.history.store import RunStore
from rundock.runconfig.distributed import multi_node_problem
from rundock.server import pools_gang
from rundock.server.errors import ApiError
from rundock.server.pools_match import AgentView, Requirements, never_fits, waiting_reason
from rundock.server.pools_state import AgentRecord, AttemptRecord, PoolsState, QueueEntry, RunAttempt
from rundock.states import RunStatus

RECHECK_SECONDS = 0.5
MAX_WAIT_SECONDS = 30.0


class Wakeups:
    """Per-pool signals that wake long-polls; ``notify`` may be called from any thread."""

    def __init__(self) -> None:
        self._generation: dict[str, int] = {}
        self._waiters: dict[str, set[asyncio.Future[None]]] = {}
        self._lock = threading.Lock()

    def generation(self, pool: str) -> int:
        """Take this before looking at the database; ``wait`` returns at once if a notify came after it."""
        with self._lock:
            return self._generation.get(pool, 0)

    def notify(self, pool: str) -> None:
        with self._lock:
            self._generation[pool] = self._generation.get(pool, 0) + 1
            waiters = self._waiters.pop(pool, set())
        for future in waiters:
            future.get_loop().call_soon_threadsafe(_wake, future)

    async def wait(self, pool: str, since: int, timeout: float) -> None:
        """Until a notify for ``pool`` after generation ``since``, or ``timeout`` seconds."""
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        with self._lock:
            if self._generation.get(pool, 0) != since:
                return
            self._waiters.setdefault(pool, set()).add(future)
        try:
            await asyncio.wait([future], timeout=max(0.0, timeout))
        finally:
            with self._lock:
                self._waiters.get(pool, set()).discard(future)


def _wake(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)


class Pools:
    """The queue, the agents and their leases, over the pool tables and the run history."""

    def __init__(self, state: PoolsState, store: RunStore, lease_seconds: float,
                 clock: Callable[[], float] = time.time) -> None:
        self.state = state
        self.store = store
        self.lease_seconds = lease_seconds
        self.clock = clock
        self.wakeups = Wakeups()
        self._told: dict[str, frozenset[tuple[str, str, int]]] = {}  # agent -> cancels and fences it was sent

    @property
    def poll_seconds(self) -> float:
        """The longest a poll is held: a third of the lease, so that polling keeps every lease alive."""
        return min(MAX_WAIT_SECONDS, self.lease_seconds / 3)

    # -- submitters ---------------------------------------------------------------------------------------------
    def enqueue(self, run: RunRecord, pool: str, priority: int, requirements: Requirements) -> int:
        """Queue a NotStarted run (it moves to Queued); the same run again answers where it is. Its position."""
        if run.target != pool:
            raise ApiError(400, f"field 'pool': run {run.run_id} has target {run.target!r}, not {pool!r}: a run "
                                "queued in a pool is created with that pool as its target")
        entry = self.state.entry(run.run_id)
        problem = multi_node_problem(run.run_definition) if requirements.nodes > 1 else None
        if entry is None and problem:
            raise ApiError(400, problem)
        if entry is None:
            if run.status != RunStatus.NOT_STARTED:
                raise ApiError(409, f"run {run.run_id} is {run.status.value}: only a NotStarted run can be queued")
            self.state.enqueue(run.run_id, pool, priority, run.submitted_by, requirements, self.clock())
            self.store.transition(run.run_id, RunStatus.QUEUED, detail=f"queued in pool {pool}")
            self.wakeups.notify(pool)
            entry = self.state.entry(run.run_id)
        return self.position(entry) if entry is not None else 0

    def position(self, entry: QueueEntry) -> int:
        """1 for the next run of its pool, 0 once it left the queue."""
        if entry.state != "queued":
            return 0
        order = [e.run_id for e in self.state.waiting(entry.pool)]
        return order.index(entry.run_id) + 1 if entry.run_id in order else 0

    def queue_info(self, run: RunRecord) -> dict[str, Any]:
        """``{"state", "position", "reason", "attempt", "agent", "shown_status"}`` for ``GET /runs/{id}/queue``."""
        entry = self.state.entry(run.run_id)
        if entry is None:
            raise ApiError(404, f"run {run.run_id} was never queued in a pool (its target is {run.target!r})")
        answer: dict[str, Any] = {"state": entry.state, "position": self.position(entry), "reason": "",
                                  "attempt": None, "agent": None, "shown_status": run.status.value}
        attempts = self.state.attempts(run.run_id)
        shown = _shown_node(attempts) if attempts else None
        if shown is not None:
            answer["attempt"] = shown.number
            answer["agent"] = _name(self.state.agent(shown.agent_id), shown.agent_id)
        if entry.state == "queued":
            answer["reason"] = self._waiting_reason(entry, answer["position"] - 1)
        elif entry.state == "assigned" and shown is not None:
            answer["reason"], silent = self._held_reason(shown, answer["agent"])
            if silent and not run.status.is_terminal:
                answer["shown_status"] = RunStatus.NOT_RESPONDING.value
        else:
            answer["reason"] = f"it left the queue: {run.status.value}"
        return answer

    def _waiting_reason(self, entry: QueueEntry, ahead: int) -> str:
        views = [AgentView(a.gpus, a.cpus, a.memory_mb, frozenset(a.labels), a.slots, self.state.capacity(a, None))
                 for a in self.online(entry.pool)]
        if not views and not self.state.agents(entry.pool):  # a misspelt pool waits for ever: say so
            known = [p for p in self.state.pools() if p != entry.pool and self.state.agents(p)]
            return (f"no agent of pool {entry.pool} has ever joined the server (is the name right? pools with "
                    f"agents: {', '.join(known) if known else 'none yet'})")
        if entry.requirements.nodes > 1:
            return pools_gang.reason(entry.pool, entry.requirements, views, ahead)
        return never_fits(entry.pool, entry.requirements, views) or \
            waiting_reason(entry.pool, entry.requirements, views, ahead)

    def _held_reason(self, attempt: AttemptRecord, agent: str) -> tuple[str, bool]:
        gpus = f" on GPU{'s' if len(attempt.gpus) != 1 else ''} {', '.join(map(str, attempt.gpus))}" \
            if attempt.gpus else ""
        if attempt.state == "fenced":
            return f"attempt {attempt.number} on agent {agent} was lost (its lease ran out)", False
        if attempt.silent_since is not None:
            silent = self.clock() - attempt.renewed_at
            return (f"NotResponding: agent {agent} has not reported for {silent:.0f} s (attempt {attempt.number}"
                    f"{gpus}); the run is lost if it stays silent for {self.lease_seconds:.0f} s"), True
        return f"running on agent {agent} (attempt {attempt.number}{gpus})", False

    def online(self, pool: str) -> list[AgentRecord]:
        """The agents of ``pool`` seen within a lease."""
        since = self.clock() - self.lease_seconds
        return [a for a in self.state.agents(pool) if a.last_seen >= since]

    def listing(self, pools: Sequence[str] | None) -> list[dict[str, Any]]:
        """``GET /pools``: every pool (or those of ``pools``), its agents, their GPUs and the queue length."""
        since = self.clock() - self.lease_seconds
        answer = []
        for pool in self.state.pools():
            if pools is not None and pool not in pools:
                continue
            held = {}
            running: dict[str, list[str]] = {}
            for attempt in self.state.running(pool=pool):
                running.setdefault(attempt.agent_id, []).append(attempt.run_id)
                held.update({(attempt.agent_id, g): attempt.run_id for g in attempt.gpus})
            agents = [{"agent_id": a.agent_id, "name": a.name, "online": a.last_seen >= since, "slots": a.slots,
                       "labels": list(a.labels), "version": a.version, "last_seen": a.last_seen,
                       "gpus": [{**g.to_json(), "used_by": held.get((a.agent_id, g.index))} for g in a.gpus],
                       "running": running.get(a.agent_id, [])} for a in self.state.agents(pool)]
            answer.append({"name": pool, "agents": agents, "queued": len(self.state.waiting(pool))})
        return answer

    def after_transition(self, run_id: str, status: RunStatus) -> None:
        """A run moved to ``status`` through the transitions route: push a cancel to its agent, or take a run
        that no agent holds yet out of the queue."""
        if status != RunStatus.CANCEL_REQUESTED and not status.is_terminal:
            return
        entry = self.state.entry(run_id)
        if entry is None:
            return
        if entry.state == "queued" and self.state.finish(run_id, only_queued=True) and \
                status == RunStatus.CANCEL_REQUESTED:
            self.store.transition(run_id, RunStatus.CANCELED, detail="canceled while queued")
        self.wakeups.notify(entry.pool)

    # -- agents -------------------------------------------------------------------------------------------------
    def register(self, agent: AgentRecord, running: list[RunAttempt]) -> dict[str, Any]:
        kill, dropped = self.state.register(agent, running, self.lease_seconds, self.clock())
        for attempt in dropped:
            if self.may_retry(attempt):
                self.state.requeue(attempt.run_id)
            else:
                self._lost(attempt, agent, "restarted and no longer runs it")
        self.wakeups.notify(agent.pool)
        return {"agent_id": agent.agent_id, "lease_seconds": self.lease_seconds, "poll_seconds": self.poll_seconds,
                "fenced": [{"run_id": r, "attempt": n} for r, n in kill]}

    def lose(self, attempt: AttemptRecord, requeued: bool) -> None:
        """A fenced attempt's run: end it Failed "agent lost" (unless re-queued), then let it leave the queue."""
        agent = self.state.agent(attempt.agent_id)
        if not requeued:
            self._lost(attempt, agent, "stopped reporting")
        self.wakeups.notify(agent.pool if agent else "")

    def _lost(self, attempt: AttemptRecord, agent: AgentRecord | None, why: str) -> None:
        message = f"agent lost: agent {_name(agent, attempt.agent_id)} {why}"
        if attempt.nodes > 1:  # the other nodes are told to cancel at their next poll: the run is terminal
            message = pools_gang.lost_message(attempt, _name(agent, attempt.agent_id), why)
        try:
            if self.store.transition(attempt.run_id, RunStatus.FAILED, detail="agent lost",
                                     error={"code": "AgentLost", "message": message}):
                self.store.end_open_children(attempt.run_id, RunStatus.FAILED)
        except RunNotFoundError:
            pass  # deleted meanwhile: nothing left to end
        self.state.finish(attempt.run_id)

    def may_retry(self, attempt: AttemptRecord) -> bool:
        """Whether the run of a lost attempt goes back to the queue: its definition allows more retries. Never
        for a node of a multi-node run (such runs are refused at enqueue when they ask for retries)."""
        try:
            run = self.store.get_run(attempt.run_id)
        except RunNotFoundError:
            return False
        live = not run.status.is_terminal and run.status != RunStatus.CANCEL_REQUESTED
        return live and attempt.nodes == 1 and wire.max_retries(run.run_definition) >= attempt.number

    def agent_for(self, principal_name: str, pools: Sequence[str], agent_id: str) -> AgentRecord:
        """The agent ``agent_id`` if the calling agent token is the one it registered with; 403/404 otherwise."""
        agent = self.state.agent(agent_id)
        if agent is None:
            raise ApiError(404, f"no agent {agent_id}: register first (POST /api/v1/agents/register)")
        if agent.pool not in pools or agent.token_name != principal_name:
            raise ApiError(403, f"token {principal_name!r} may not act for agent {agent_id} of pool {agent.pool}: "
                                "it registered with another token")
        return agent

    async def poll(self, agent: AgentRecord, running: list[RunAttempt], free_gpus: list[int] | None,
                   wait: float) -> dict[str, Any]:
        """Renew the agent's leases, then answer as soon as it has something new (assignments, cancels, fences),
        or after ``wait`` seconds (at most ``poll_seconds``)."""
        deadline = time.monotonic() + min(max(wait, 0.0), self.poll_seconds)
        await run_in_threadpool(self.state.renew, agent.agent_id, running, self.lease_seconds, self.clock())
        while True:
            since = self.wakeups.generation(agent.pool)
            answer, news = await run_in_threadpool(self._poll_once, agent, running, free_gpus)
            left = deadline - time.monotonic()
            if news or left <= 0:
                return answer
            await self.wakeups.wait(agent.pool, since, min(RECHECK_SECONDS, left))

    def _poll_once(self, agent: AgentRecord, running: list[RunAttempt],
                   free_gpus: list[int] | None) -> tuple[dict[str, Any], bool]:
        held = self.state.running(agent_id=agent.agent_id)
        live = {(a.run_id, a.number) for a in held}
        fenced = [x for x in running if x not in live]
        cancel = []
        for attempt in held:
            try:
                status = self.store.get_run(attempt.run_id).status
            except RunNotFoundError:
                status = RunStatus.CANCELED
            if status == RunStatus.CANCEL_REQUESTED or status.is_terminal:
                cancel.append((attempt.run_id, attempt.number))
        found: dict[str, RunRecord] = {}
        taken = pools_gang.claim(self.state, agent.agent_id, free_gpus, self.lease_seconds, self.clock(),
                                 self.clock() - self.lease_seconds, lambda entry: self._accept(entry, found))
        if taken:
            self.wakeups.notify(agent.pool)  # the other nodes' agents: their assignments wait for them
        taken += self.state.claim(agent.agent_id, free_gpus, self.lease_seconds, self.clock(),
                                  lambda entry: self._accept(entry, found))
        listed = set(running) | {(e.run_id, a.number) for e, a in taken}
        for attempt in pools_gang.pending(self.state, agent.agent_id, listed):
            entry = self.state.entry(attempt.run_id)
            try:
                found.setdefault(attempt.run_id, self.store.get_run(attempt.run_id))
            except RunNotFoundError:
                continue
            if entry is not None:
                taken.append((entry, attempt))
        notices = frozenset([("cancel", r, n) for r, n in cancel] + [("fenced", r, n) for r, n in fenced])
        news = bool(taken) or bool(notices - self._told.get(agent.agent_id, frozenset()))
        self._told[agent.agent_id] = notices
        return {"assignments": [{"run_id": e.run_id, "attempt": a.number, "gpus": list(a.gpus),
                                 "run": wire.run_to_json(found[e.run_id]), "enqueued": e.to_json(),
                                 **({"node": pools_gang.node_info(self.state, a)} if a.nodes > 1 else {})}
                                for e, a in taken],
                "cancel": [{"run_id": r, "attempt": n} for r, n in cancel],
                "fenced": [{"run_id": r, "attempt": n} for r, n in fenced]}, news

    def _accept(self, entry: QueueEntry, found: dict[str, RunRecord]) -> bool:
        """Whether a queued run may still be handed out (a run deleted or ended meanwhile may not)."""
        try:
            run = self.store.get_run(entry.run_id)
        except RunNotFoundError:
            return False
        if run.status == RunStatus.CANCEL_REQUESTED:
            self.store.transition(run.run_id, RunStatus.CANCELED, detail="canceled while queued")
            return False
        if run.status.is_terminal:
            return False
        found[run.run_id] = run
        return True

    def end(self, agent: AgentRecord, run_id: str, number: int, outcome: str | None = None,
            message: str | None = None) -> bool:
        """The agent ended an attempt. One that ends before its run did (its per-run agent died) puts the run
        back in the queue when the run's definition allows another try, as an expired lease does. A node of a
        multi-node run reports its job's ``outcome``: ``pools_gang`` settles the run."""
        held = next((a for a in self.state.attempts(run_id) if a.number == number and a.agent_id == agent.agent_id),
                    None)
        if held is not None and held.nodes > 1:
            return pools_gang.node_ended(self, agent, held, outcome, message)
        requeue = held is not None and held.state == "running" and self.may_retry(held)
        ended = self.state.end(agent.agent_id, run_id, number, requeue=requeue)
        if ended:
            self.wakeups.notify(agent.pool)
        return ended

    # -- fencing --------------------------------------------------------------------------------------------------
    def check_attempt(self, run_id: str, attempt: int | None, is_agent: bool) -> None:
        """409 ``fenced`` unless ``attempt`` is the run's current attempt and not fenced; an agent's write to a
        pool run must name its attempt. Runs that were never queued have no attempts and pass."""
        attempts = self.state.attempts(run_id)
        if not attempts:
            if is_agent and self.state.entry(run_id) is not None:
                raise ApiError(409, f"run {run_id} is not held by any agent now: this write comes from no current "
                                    "attempt; stop the job", code="fenced", run_id=run_id, attempt=attempt)
            return
        current = attempts[-1]
        if current.nodes > 1:  # a lost node does not silence the others: see ``pools_gang.attempt_fenced``
            current = dataclasses.replace(current, state="fenced" if pools_gang.attempt_fenced(
                [a for a in attempts if a.number == current.number]) else "running")
        if attempt is None:
            raise ApiError(400, f"run {run_id} runs in pool attempts: an agent's write to it needs the header "
                                f"X-Rundock-Attempt (its attempt number, now {current.number})")
        if attempt != current.number or current.state == "fenced":
            why = "was fenced: its lease ran out and the run was taken from it" if attempt == current.number or \
                any(a.number == attempt and a.state == "fenced" for a in attempts) else \
                f"is not the run's current attempt ({current.number})"
            raise ApiError(409, f"attempt {attempt} of run {run_id} {why}; stop the job", code="fenced",
                           run_id=run_id, attempt=attempt)


def _shown_node(attempts: list[AttemptRecord]) -> AttemptRecord:
    """The row of the current attempt that ``GET /runs/{id}/queue`` speaks of: for a multi-node run, a lost
    node, else a silent one still running, else one still running (not a node that already ended)."""
    current = [a for a in attempts if a.number == attempts[-1].number]
    return min(current, key=lambda a: (a.state != "fenced", a.state != "running" or a.silent_since is None,
                                       a.state != "running", -a.node))


def _name(agent: AgentRecord | None, agent_id: str) -> str:
    return agent.name if agent is not None else agent_id

