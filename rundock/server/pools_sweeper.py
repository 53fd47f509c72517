"""The lease sweeper: the one place that judges pool attempts whose agent stopped renewing them.

``sweep(now)`` is one pass, with the time given (tests pass their own); ``run`` calls it in the background of
the server every ``interval`` seconds until stopped. Each pass, in this order:

1. an attempt not renewed for half its lease is marked silent: ``GET /runs/{id}/queue`` shows its run as
   NotResponding (a renewal clears the mark);
2. an attempt whose lease has expired is **fenced** (not during the first lease after the server started: a
   server that was down longer than a lease gives its agents one lease to reach it again): from then on every
   write of that attempt is refused (409 ``fenced``) and its agent is told to kill it. Its run goes back to
   the queue in the same transaction when its definition allows another try (``max_retries``), else
3. the run ends Failed "agent lost: agent <name> stopped reporting" and leaves the queue. This step also
   finishes what a server that stopped between 2 and 3 left undone, so no lost run stays Running.

Several servers sharing one database may sweep at once: fencing is a conditional update (only one wins, and a
lease renewed meanwhile is not fenced), and ending a run Failed twice changes nothing (terminal is sticky).
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging

from starlette.concurrency import run_in_threadpool

from rundock.errors import StoreError
from rundock.server.pools import Pools
from rundock.server.pools_state import AttemptRecord

log = logging.getLogger("rundock.server")


@dataclasses.dataclass
class SweepReport:
    """What one pass did (for tests and the server's log)."""

    silent: list[AttemptRecord] = dataclasses.field(default_factory=list)
    requeued: list[AttemptRecord] = dataclasses.field(default_factory=list)
    lost: list[AttemptRecord] = dataclasses.field(default_factory=list)


class Sweeper:
    """Sweeps the leases of one server's pools."""

    def __init__(self, pools: Pools, interval: float | None = None) -> None:
        self.pools = pools
        self.interval = interval if interval is not None else min(2.0, max(0.1, pools.lease_seconds / 8))
        # Leases that ran out while this server was down are not the agents' fault: they get one lease from
        # now to reach the server again before anything is fenced.
        self.fence_from = pools.clock() + pools.lease_seconds

    def sweep(self, now: float) -> SweepReport:
        """One pass at time ``now`` (the server's ``time.time()`` scale)."""
        state, lease = self.pools.state, self.pools.lease_seconds
        report = SweepReport(silent=state.mark_silent(now, lease / 2))
        for attempt in state.expired(now) if now >= self.fence_from else []:
            requeue = self.pools.may_retry(attempt)
            if state.fence(attempt, now, requeue) and requeue:
                report.requeued.append(attempt)
                self.pools.lose(attempt, requeued=True)
        for attempt in state.lost():
            self.pools.lose(attempt, requeued=False)
            report.lost.append(attempt)
        for attempt in report.requeued + report.lost:
            log.warning("pool attempt %s of run %s on agent %s: lease expired, %s", attempt.number, attempt.run_id,
                        attempt.agent_id, "re-queued" if attempt in report.requeued else "run ended Failed")
        return report

    async def run(self, stop: asyncio.Event) -> None:
        """Sweep every ``interval`` seconds until ``stop`` is set; a database that does not answer is tried again
        at the next pass."""
        while not stop.is_set():
            try:
                await run_in_threadpool(self.sweep, self.pools.clock())
            except StoreError as exc:
                log.warning("lease sweep failed (%s: %s); trying again in %.1f s", type(exc).__name__, exc,
                            self.interval)
            except Exception:
                log.exception("lease sweep failed; trying again in %.1f s", self.interval)
            try:
                await asyncio.wait_for(stop.wait(), self.interval)
            except asyncio.TimeoutError:
                pass
