"""Heartbeat leases: the agent states its interval, the reader decides liveness.

A live run whose lease has expired reads as NotResponding; one whose agent has
been silent past the lost-after limit is ended Failed ("agent lost") by
``RunStore.sweep_lost``. Time comes in as an argument so tests inject it.
"""

from __future__ import annotations

import os

from rundock.history.records import RunRecord
from rundock.states import RunStatus

LEASE_FACTOR = 3.0
DEFAULT_LOST_AFTER = 60.0
ENV_LOST_AFTER = "RUNDOCK_AGENT_LOST_AFTER_SECONDS"

# Statuses owned by a live agent; NotStarted runs are interactive or not yet picked up.
AGENT_OWNED = frozenset({
    RunStatus.STARTING, RunStatus.PROVISIONING, RunStatus.PREPARING, RunStatus.QUEUED,
    RunStatus.RUNNING, RunStatus.FINALIZING, RunStatus.CANCEL_REQUESTED,
})


def lost_after_seconds() -> float:
    """How long an agent may stay silent before its run ends Failed."""
    try:
        return float(os.environ.get(ENV_LOST_AFTER, DEFAULT_LOST_AFTER))
    except ValueError:
        return DEFAULT_LOST_AFTER


# Only script runs have an agent; interactive runs and children created by a job do not beat.
AGENT_RUN_TYPE = "rundock.scriptrun"


def _silent_for(run: RunRecord, now: float) -> float | None:
    if run.status not in AGENT_OWNED or run.run_type != AGENT_RUN_TYPE:
        return None
    last = run.last_heartbeat if run.last_heartbeat is not None else run.created_at
    return now - last


def effective_status(run: RunRecord, now: float) -> RunStatus:
    """The status to show: the stored one, or NotResponding while the lease is expired."""
    silent = _silent_for(run, now)
    if silent is None or run.last_heartbeat is None or run.heartbeat_interval is None:
        return run.status
    return RunStatus.NOT_RESPONDING if silent > run.heartbeat_interval * LEASE_FACTOR else run.status


def is_lost(run: RunRecord, now: float, lost_after: float) -> bool:
    """Whether the run's agent has been silent (or never spoke) for longer than ``lost_after``.

    Only for agents on this machine: silence from a remote host may only mean the
    submitter cannot reach it, so its runs are judged by a pull (the SSH target).
    """
    silent = _silent_for(run, now)
    return run.target == "local" and silent is not None and silent > lost_after
