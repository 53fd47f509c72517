"""Liveness: ONE policy, used by every reader, decides NotResponding, lost and reaped.

Silence is never judged by comparing two processes' wall clocks.

Runs on this host (target ``local``):

- *alive*: a process holds the run directory's agent lock (``rundock.agent.runlock``); no clock involved.
- *NotResponding* (shown, never stored): alive, but silent for longer than its lease (3 × the interval
  it states), measured on this host's monotonic clock from the run directory's ``heartbeat.json``.
  A paused agent shows NotResponding and finishes normally when it resumes.
- *lost*: the lock is free and the run has not finished: an agent took the run and is gone, or no agent
  took it within ``lost_after`` seconds of its run directory's creation (monotonic), or the run
  directory never appeared within ``lost_after`` of the run's creation (the submitter died first; the
  only judgment left to the run's wall-clock creation time, since nothing else exists).

Whoever declares a run lost does it in this order, holding the agent lock so that no late agent can
start it meanwhile: ship everything the run directory's journal holds (a run whose agent recorded
its end is not lost after all); kill every process of the run and remove its container; make the
final scan of ``outputs/`` and the logs the agent did not get to make; ship again (what the job wrote
until it died, and those files); end the run Failed "agent lost"; remove its secrets file. The run's
slot frees itself: the kernel drops the slot lock with the last process of the run holding it, so a
queued run starts only once the lost one has no process left.

Runs on other hosts (SSH targets) are judged at each pull from the host's own view, by the same rules
(``rundock.agent.remote``); here their NotResponding is judged by this process's monotonic clock since
the heartbeat it last saw changed. Interactive runs and child runs have no agent and are never lost.
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

from rundock.agent import reaper, runlock
from rundock.context import rundir
from rundock.errors import RunNotFoundError
from rundock.history.artifacts import ArtifactStore
from rundock.history.records import RunRecord
from rundock.history.store import RunStore
from rundock.states import RunStatus

if TYPE_CHECKING:
    from rundock.history.sync import Syncer

log = logging.getLogger(__name__)

LEASE_FACTOR = 3.0
DEFAULT_LOST_AFTER = 60.0
ENV_LOST_AFTER = "RUNDOCK_AGENT_LOST_AFTER_SECONDS"
LOCAL_TARGET = "local"

# Statuses owned by a live agent (or, NotStarted and Starting, by a submitter about to start one).
AGENT_OWNED = frozenset({
    RunStatus.NOT_STARTED, RunStatus.STARTING, RunStatus.PROVISIONING, RunStatus.PREPARING, RunStatus.QUEUED,
    RunStatus.RUNNING, RunStatus.FINALIZING, RunStatus.CANCEL_REQUESTED,
})

# Only script runs have an agent; interactive runs and children created by a job do not beat.
AGENT_RUN_TYPE = "rundock.scriptrun"


def lost_after_seconds() -> float:
    """How long an agent may stay silent before its run ends Failed."""
    try:
        value = float(os.environ.get(ENV_LOST_AFTER, DEFAULT_LOST_AFTER))
    except ValueError:
        return DEFAULT_LOST_AFTER
    return value if value == value and value > 0 else DEFAULT_LOST_AFTER


def has_agent(run: RunRecord) -> bool:
    return run.run_type == AGENT_RUN_TYPE and run.status in AGENT_OWNED


class _Observed:
    """When this process last saw each run's heartbeat change, on its monotonic clock."""

    def __init__(self) -> None:
        self._seen: dict[str, tuple[float | None, float]] = {}
        self._lock = threading.Lock()

    def silent_for(self, run: RunRecord, now: float) -> float:
        with self._lock:
            seen = self._seen.get(run.run_id)
            if seen is None or seen[0] != run.last_heartbeat:
                self._seen[run.run_id] = (run.last_heartbeat, now)
                return 0.0
            return now - seen[1]


_OBSERVED = _Observed()

# Hook for runs on other hosts: when (time.monotonic()) this process found the run's host unreachable, or None
# while it answers. rundock.submitter.targets.live sets it; a live run whose host is unreachable shows NotResponding.
def _every_host_answers(run: RunRecord) -> float | None:
    return None


host_unreachable_since: Callable[[RunRecord], float | None] = _every_host_answers


def shown_status(run: RunRecord, clock: Callable[[], float] = time.monotonic) -> RunStatus:
    """The status to show: the stored one, or NotResponding while the agent's lease is expired."""
    if not has_agent(run) or run.status in (RunStatus.NOT_STARTED, RunStatus.STARTING):
        return run.status
    interval = run.heartbeat_interval
    if run.target == LOCAL_TARGET and run.run_dir:
        beat = runlock.read_heartbeat(run.run_dir)
        if beat is None or not beat.get("seq"):
            return run.status
        silent = runlock.silent_for(run.run_dir, clock(), beat)
        interval = float(beat.get("interval") or interval or 0)
    else:
        if host_unreachable_since(run) is not None:
            return RunStatus.NOT_RESPONDING
        if run.last_heartbeat is None:
            return run.status
        silent = _OBSERVED.silent_for(run, clock())
    if silent is not None and interval and silent > interval * LEASE_FACTOR:
        return RunStatus.NOT_RESPONDING
    return run.status


def _attempt_of(run_dir: str) -> int:
    """The attempt the run directory's journal marks belong to (0 but for a pool run's; see its job file)."""
    try:
        with open(os.path.join(run_dir, rundir.JOB_FILE), encoding="utf-8") as fh:
            attempt = json.load(fh).get("attempt", 0)
    except (OSError, ValueError, AttributeError):
        return 0
    return attempt if isinstance(attempt, int) and not isinstance(attempt, bool) and attempt > 0 else 0


class Liveness:
    """Judges runs of this host and carries out the lost-run policy (see the module docstring)."""

    def __init__(self, store: RunStore, artifacts: ArtifactStore, lost_after: float | None = None,
                 clock: Callable[[], float] = time.monotonic, wall: Callable[[], float] = time.time) -> None:
        self.store = store
        self.artifacts = artifacts
        self.lost_after = lost_after_seconds() if lost_after is None else lost_after
        self.clock = clock
        self.wall = wall

    def is_lost(self, run: RunRecord) -> bool:
        """Whether this local run's agent is gone (or never came); False for runs this host cannot judge."""
        if not has_agent(run) or run.target != LOCAL_TARGET:
            return False
        if not run.run_dir or not os.path.isdir(run.run_dir):
            return self.wall() - run.created_at > self.lost_after  # the submitter died before making it
        if runlock.agent_alive(run.run_dir):
            return False
        if runlock.agent_started(run.run_dir):
            return True
        silent = runlock.silent_for(run.run_dir, self.clock())
        if silent is None:  # a run directory from before heartbeat files: judge by its job file's age
            try:
                silent = self.wall() - os.path.getmtime(os.path.join(run.run_dir, rundir.JOB_FILE))
            except OSError:
                silent = self.wall() - run.created_at
        return silent > self.lost_after

    def check(self, run: RunRecord) -> RunRecord:
        """The run as it is now, after ending it Failed "agent lost" if it is lost."""
        if self.is_lost(run):
            self.declare_lost(run)
            return self.store.get_run(run.run_id)
        return run

    def sweep(self) -> list[str]:
        """Check every unfinished run of this host; return the ids of those declared lost."""
        lost = []
        for run in self.store.list_runs(statuses=[s.value for s in AGENT_OWNED], target=LOCAL_TARGET):
            if self.is_lost(run) and self.declare_lost(run):
                lost.append(run.run_id)
        return lost

    def declare_lost(self, run: RunRecord) -> bool:
        """Ship, end, reap (in that order); False if the run turned out to be alive or finished."""
        lock = runlock.AgentLock(run.run_dir) if run.run_dir and os.path.isdir(run.run_dir) else None
        if lock is not None and not lock.acquire(wait=0):
            return False  # an agent has just taken it
        try:
            syncer = self._syncer(run) if lock is not None else None
            self._ship(run, syncer)
            self._reap(run)
            if syncer is not None and run.run_dir:
                self._scan_outputs(run)
            self._ship(run, syncer)  # what the job wrote until it was killed, and its outputs
            try:
                current = self.store.get_run(run.run_id)
            except RunNotFoundError:
                return False
            ended = False
            if not current.status.is_terminal:
                error = {"code": "AgentLost", "message": self._reason(current)}
                ended = self.store.transition(run.run_id, RunStatus.FAILED, detail="agent lost", error=error)
                if ended:
                    self.store.end_open_children(run.run_id, RunStatus.FAILED)
            self._remove_secrets(run)
            return ended
        finally:
            if lock is not None:
                lock.release()

    def _syncer(self, run: RunRecord) -> Syncer:
        from rundock.history.sync import Syncer  # the policy ships with the same syncer as agents

        assert run.run_dir is not None
        return Syncer(run.run_dir, run.run_id, self.store, self.artifacts, _attempt_of(run.run_dir))

    def _ship(self, run: RunRecord, syncer: Syncer | None) -> None:
        if syncer is None:
            return
        try:
            syncer.sync_once()
        except Exception as exc:  # what cannot be shipped stays in the journal; the run is still lost
            log.warning("run %s: its journal could not be shipped before ending it: %s", run.run_id, exc)

    def _scan_outputs(self, run: RunRecord) -> None:
        from rundock.agent.outputs import scan_for_lost_agent

        assert run.run_dir is not None
        try:
            failures = scan_for_lost_agent(run.run_dir, self.artifacts)
        except OSError as exc:
            log.warning("run %s: its outputs could not be stored after its agent was lost: %s", run.run_id, exc)
            return
        for name, reason in failures:
            log.warning("run %s: output %s could not be stored after its agent was lost: %s", run.run_id, name,
                        reason)

    def _reason(self, run: RunRecord) -> str:
        if not run.run_dir or not os.path.isdir(run.run_dir):
            return (f"agent lost: the run was never handed to an agent (the submitting process ended before "
                    f"starting one; limit {self.lost_after:.0f} s)")
        if not runlock.agent_started(run.run_dir):
            return f"agent lost: no agent took the run within {self.lost_after:.0f} s of its submission"
        return "agent lost: the run's agent process is gone (it was killed or crashed)"

    def _reap(self, run: RunRecord) -> None:
        container = None
        if run.run_dir:
            try:
                with open(os.path.join(run.run_dir, rundir.PROCESSES_FILE), encoding="utf-8") as fh:
                    container = json.load(fh).get("container")
            except (OSError, ValueError, AttributeError):
                container = None
        docker = ((run.run_definition.get("environment") or {}).get("docker") or {}).get("enabled")
        survivors = reaper.reap(run.run_id, run.run_dir, containers=bool(container or docker))
        if survivors:
            log.warning("run %s: processes %s would not die", run.run_id, survivors)

    @staticmethod
    def _remove_secrets(run: RunRecord) -> None:
        secrets = os.path.join(run.run_dir or "", rundir.SECRETS_FILE)
        if run.run_dir and os.path.exists(secrets):
            os.unlink(secrets)
