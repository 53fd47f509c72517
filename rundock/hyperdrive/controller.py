"""The sweep controller: one process per sweep that starts trials, stops them early and ends the sweep.

``python -m rundock.hyperdrive.controller WORKSPACE RUN_ID`` (started by rundock.hyperdrive.launch). It keeps
no state of its own: each round it reads the sweep and its children from the run history, so a controller
that is killed and started again goes on where the first one stopped.

Each round (about every 0.25 s, at most every second):

1. beat (``heartbeat.json`` of the sweep folder; the history's heartbeat of the sweep run);
2. bring each live trial up to date through ``rundock.submitter.targets.check`` (a pull for SSH hosts, the
   lost-run policy for this machine's runs) and rebuild the trials (index, hyperparameters, status, primary
   metric values) from the children; a trial left CancelRequested by a controller killed before it told the
   trial's target is told now;
3. the sweep was canceled: cancel the live trials, wait for them to end, end the sweep Canceled;
   ``max_duration_minutes`` passed: the same, and the sweep ends Completed;
4. a trial logged a new value of the primary metric: ask the policy which running trials to stop, and cancel
   each through the normal cancel path (CancelRequested with the policy's reason, the target's cancel);
5. start trials while fewer than ``max_concurrent_runs`` are live and fewer than ``max_total_runs`` exist:
   first the runs of ``resume_child_runs``, then what the sampler suggests (given the trials of
   ``resume_from`` sweeps too); none left to suggest (a grid used up) means no more trials;
6. no trial live and none to start: end the sweep with its summary (Failed when every trial failed).

A trial is never started twice: its index is in the tags its run is created with, the controller's lock
allows one controller per sweep, and a restarted controller counts the children the history holds (a child
whose start was cut short is adopted as it is: the lost-run policy ends it Failed if no agent ever took it).
"""

from __future__ import annotations

import copy
import json
import os
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from typing import Any

from rundock.agent import runlock
from rundock.agent.materialize import materialize
from rundock.errors import RundockError, StoreUnavailableError
from rundock.history.records import RunRecord
from rundock.hyperdrive.config import SweepSpec, option_name, trial_run_config
from rundock.hyperdrive.goal import Trial
from rundock.hyperdrive.launch import sweep_dir
from rundock.hyperdrive.sweeplog import SweepLog
from rundock.hyperdrive.trials import (
    HYPERPARAMETERS_TAG,
    RESUMED_FROM_TAG,
    STOP_REASON_TAG,
    TRIAL_INDEX_TAG,
    as_trial,
    hyperparameters,
    summarize,
    trial_children,
    trial_index,
)
from rundock.runconfig.script_run_config import ScriptRunConfig
from rundock.states import RunStatus
from rundock.submitter.workspace import Workspace

MAX_SUBMIT_FAILURES = 3  # in a row, with no run created: the target cannot take trials
MAX_ROUND_ERRORS = 30  # in a row: exit (a reader restarts the controller later)
STOP_WAIT_SECONDS = 60.0  # beyond the trials' grace period, for canceled trials to end


class Controller:
    """Runs one sweep to its end (see the module docstring)."""

    def __init__(self, workspace: Workspace, run_id: str, *, sleep: Callable[[float], None] = time.sleep,
                 clock: Callable[[], float] = time.time) -> None:
        """``clock``: the wall clock that ``max_duration_minutes`` is measured on (from the sweep's start)."""
        self.ws = workspace
        self.store = workspace.store
        self.run_id = run_id
        self.folder = sweep_dir(workspace, run_id)
        self.sleep = sleep
        self.clock = clock
        self.beats = 0
        self.last_store_beat = 0.0
        self.seen: dict[str, str] = {}  # child run id -> status last reported
        self.evaluated: dict[int, int] = {}  # trial index -> values the policy has seen
        self.stopped: set[int] = set()
        self.cancels_sent: set[str] = set()  # child run ids whose target this controller has told to cancel
        self.best: tuple[float, int] | None = None
        self.submit_failures = 0
        self.exhausted = False

    # -- the process ----------------------------------------------------------------------------
    def run(self) -> int:
        """Hold the sweep's lock and drive it to its end; 0 when done or when another controller has it."""
        os.makedirs(self.folder, mode=0o700, exist_ok=True)
        lock = runlock.AgentLock(self.folder)
        if not lock.acquire(wait=0):
            print(f"another controller drives sweep {self.run_id}; this one exits", flush=True)
            return 0
        try:
            return self._drive()
        finally:
            lock.release()

    def _drive(self) -> int:
        record = self.store.get_run(self.run_id)
        if record.status.is_terminal:
            return 0
        self.beat()
        self.log = SweepLog(self.store, self.run_id, self.folder)
        try:
            self._set_up(record)
        except StoreUnavailableError:
            raise  # the history is busy or away: exit; a reader starts the controller again later
        except (RundockError, OSError, ValueError, KeyError) as exc:
            self.log.write(f"Sweep ended Failed: the controller could not set up the sweep: {exc}")
            self.store.transition(self.run_id, RunStatus.FAILED, detail="the sweep controller could not start",
                                  error={"code": "SetupError", "message": f"could not set up sweep {self.run_id}: "
                                                                          f"{exc}"})
            return 1
        restarted = record.status not in (RunStatus.NOT_STARTED, RunStatus.STARTING)
        self.store.transition(self.run_id, RunStatus.RUNNING,
                              detail="sweep controller started" if not restarted else "sweep controller restarted")
        self.started_at = self.store.get_run(self.run_id).start_at or self.clock()
        spec = self.spec
        self.log.write(f"{'Restarted' if restarted else 'Started'} sweep {self.run_id}: "
                       f"{type(spec.sampling).__name__}, policy {type(spec.policy).__name__}, primary metric "
                       f"{spec.primary_metric_name} ({spec.goal.value}), max_total_runs {spec.max_total_runs}, "
                       f"max_concurrent_runs {spec.max_concurrent_runs}")
        if self.prior:
            self.log.write(f"Warm start: {len(self.prior)} finished trials of earlier sweeps")
        errors = 0
        began = time.monotonic()
        while True:
            try:
                if self._round():
                    return 0
                errors = 0
            except _SubmitFailed as exc:
                self.log.write(f"Sweep ended Failed: {exc}")
                self.store.transition(self.run_id, RunStatus.FAILED, detail="trials could not be started",
                                      error={"code": "SubmitError", "message": str(exc)})
                return 1
            except (RundockError, OSError) as exc:
                errors += 1
                self.log.write(f"Error (round {errors} in a row): {exc}")
                if errors >= MAX_ROUND_ERRORS:
                    return 1
                self.sleep(min(0.5 * errors, 5.0))
                continue
            self.sleep(min(0.25 + (time.monotonic() - began) / 240, 1.0))

    # -- one round --------------------------------------------------------------------------------
    def _round(self) -> bool:
        """One look at the sweep (see the module docstring); True when the sweep has ended."""
        self.beat()
        record = self.store.get_run(self.run_id)
        children = self._children()
        self._resend_cancels(children)
        if record.status.is_terminal:  # ended from outside (a plain Run's cancel): its trials end too
            for child in children:
                if not child.status.is_terminal and child.status != RunStatus.CANCEL_REQUESTED:
                    self._cancel(child, f"the sweep ended {record.status.value}")
            return True
        trials = [as_trial(self.store, c, self.spec.primary_metric_name) for c in children]
        self._report(children, trials)
        if record.status == RunStatus.CANCEL_REQUESTED:
            self._stop_all(children, "the sweep was canceled")
            return self._finish(RunStatus.CANCELED, "canceled")
        if self.started_at and self.clock() - self.started_at > self.spec.max_duration_minutes * 60:
            self._stop_all(children, f"the sweep reached max_duration_minutes ({self.spec.max_duration_minutes})")
            return self._finish(None, f"stopped after max_duration_minutes ({self.spec.max_duration_minutes})")
        self._apply_policy(children, trials)
        live = [c for c in children if not c.status.is_terminal]
        room = min(self.spec.max_concurrent_runs - len(live), self.spec.max_total_runs - len(children))
        if room > 0 and not self.exhausted:
            self._start_trials(children, trials, room)
            return False
        if not live and (self.exhausted or len(children) >= self.spec.max_total_runs):
            return self._finish(None, "every trial has ended")
        return False

    def beat(self) -> None:
        self.beats += 1
        runlock.write_heartbeat(self.folder, self.beats, self.ws.heartbeat_seconds)
        if time.monotonic() - self.last_store_beat >= self.ws.heartbeat_seconds:
            self.store.heartbeat(self.run_id, self.ws.heartbeat_seconds)
            self.last_store_beat = time.monotonic()

    def _children(self) -> list[RunRecord]:
        """The trials' runs, each brought up to date (a pull, or the lost-run policy)."""
        from rundock.submitter.targets import check

        out = []
        for child in trial_children(self.store, self.run_id):
            if not child.status.is_terminal:
                child = check(self.ws, child)
            out.append(child)
        return out

    # -- reporting --------------------------------------------------------------------------------
    def _report(self, children: Sequence[RunRecord], trials: Sequence[Trial]) -> None:
        """Progress lines: a trial started or ended; a better value of the primary metric."""
        parent_tags = self.store.get_run(self.run_id).tags
        for child, trial in zip(children, trials, strict=True):
            if child.run_id not in parent_tags:  # v1: the sweep's tags map each child to its hyperparameters
                self.store.set_tags(self.run_id, {child.run_id: child.tags.get(HYPERPARAMETERS_TAG) or "{}"})
            before = self.seen.get(child.run_id)
            now = child.status.value
            if child.status.is_terminal and before != now:
                score = trial.score(self.spec.goal)
                value = f"; best {self.spec.primary_metric_name} {score:g}" if score is not None else ""
                reason = f" ({child.tags[STOP_REASON_TAG]})" if child.tags.get(STOP_REASON_TAG) else ""
                why = f": {(child.error or {}).get('message', '')}" if child.status == RunStatus.FAILED else ""
                self.log.write(f"Trial {trial.index} ended {now}{reason}{why}{value} (run {child.run_id})")
            self.seen[child.run_id] = now
            score = trial.score(self.spec.goal)
            if score is not None and (self.best is None or self.spec.goal.is_better(score, self.best[0])):
                self.best = (score, trial.index)
                self.log.write(f"Best so far: {self.spec.primary_metric_name} {score:g} by trial {trial.index} "
                               f"(run {child.run_id})")

    # -- early termination --------------------------------------------------------------------------
    def _apply_policy(self, children: Sequence[RunRecord], trials: Sequence[Trial]) -> None:
        counts = {t.index: len(t.values) for t in trials}
        if all(self.evaluated.get(i) == n for i, n in counts.items()):
            return  # no trial logged the primary metric since the last evaluation
        self.evaluated = counts
        by_index = {trial_index(c): c for c in children}
        for index, reason in self.spec.policy.to_stop(trials, self.spec.goal, metric=self.spec.primary_metric_name):
            child = by_index.get(index)
            if child is None or index in self.stopped or child.status != RunStatus.RUNNING:
                continue
            self.stopped.add(index)
            if self._cancel(child, reason, tag=True):
                self.log.write(f"Trial {index} stopped: {reason} (run {child.run_id})")

    def _cancel(self, child: RunRecord, reason: str, *, tag: bool = False) -> bool:
        """Cancel a trial the way ``Run.cancel`` does, with ``reason`` as the request's detail."""
        from rundock.submitter.targets import get_target

        if not self.store.transition(child.run_id, RunStatus.CANCEL_REQUESTED, detail=reason):
            return False
        if tag:
            self.store.set_tags(child.run_id, {STOP_REASON_TAG: reason})
        self.cancels_sent.add(child.run_id)
        get_target(self.ws, child.target).cancel(self.store.get_run(child.run_id))
        return True

    def _resend_cancels(self, children: Sequence[RunRecord]) -> None:
        """Tell the target again of each cancel this controller has not sent itself: a controller killed
        between recording a trial's CancelRequested and telling its target left a request nobody carries out
        (the target's cancel is idempotent)."""
        from rundock.submitter.targets import get_target

        for child in children:
            if child.status == RunStatus.CANCEL_REQUESTED and child.run_id not in self.cancels_sent:
                get_target(self.ws, child.target).cancel(child)
                self.cancels_sent.add(child.run_id)

    def _stop_all(self, children: Sequence[RunRecord], reason: str) -> None:
        """Cancel every live trial and wait (bounded) until each has ended."""
        live = [c for c in children if not c.status.is_terminal]
        for child in live:
            if child.status != RunStatus.CANCEL_REQUESTED:
                self._cancel(child, reason)
        if live:
            self.log.write(f"Canceling {len(live)} live trials: {reason}")
        grace = max((c.run_definition.get("cancel_grace_seconds") or 10.0 for c in live), default=0.0)
        deadline = time.monotonic() + float(grace) + STOP_WAIT_SECONDS
        while live and time.monotonic() < deadline:
            self.beat()
            self.sleep(0.25)
            live = [c for c in self._children() if not c.status.is_terminal]
        children = self._children()
        self._report(children, [as_trial(self.store, c, self.spec.primary_metric_name) for c in children])

    # -- starting trials --------------------------------------------------------------------------------
    def _start_trials(self, children: Sequence[RunRecord], trials: Sequence[Trial], room: int) -> None:
        next_index = max((t.index for t in trials), default=-1) + 1
        picks: list[tuple[dict[str, Any], str | None]]
        if next_index < len(self.resumed):
            picks = [(hyperparameters(r), r.run_id) for r in self.resumed[next_index:next_index + room]]
        else:
            suggested = self.spec.sampling.suggest([*self.prior, *trials], room, self.spec.goal)
            picks = [(p, None) for p in suggested]
        for offset, (params, resumed_from) in enumerate(picks):
            if not self._submit(next_index + offset, params, resumed_from):
                return
        if next_index >= len(self.resumed) and len(picks) < room:
            self.exhausted = True
            self.log.write(f"The parameter space is used up after {next_index + len(picks)} trials")

    def _submit(self, index: int, params: dict[str, Any], resumed_from: str | None) -> bool:
        """Start trial ``index``; False when it could not be started (the round ends there)."""
        from rundock.submitter.experiment import Experiment

        run_config = copy.deepcopy(self.trial_config)
        run_config.arguments = [*run_config.arguments,
                                *(item for name, value in params.items() for item in (option_name(name), value))]
        tags = {HYPERPARAMETERS_TAG: json.dumps(params), TRIAL_INDEX_TAG: str(index)}
        if resumed_from:
            tags[RESUMED_FROM_TAG] = resumed_from
        try:
            run = Experiment(self.ws, self.experiment).submit(ScriptRunConfig(self.source, run_config=run_config),
                                                              tags=tags, _parent_id=self.run_id)
        except (RundockError, OSError, ValueError) as exc:
            made = [c for c in trial_children(self.store, self.run_id) if trial_index(c) == index]
            self.log.write(f"Trial {index} could not be started: {exc}")
            if made:  # the run exists and ended Failed: a failed trial like any other
                self.submit_failures = 0
                return False
            self.submit_failures += 1
            if self.submit_failures >= MAX_SUBMIT_FAILURES:
                raise _SubmitFailed(index, exc) from exc
            self.sleep(min(2.0 * self.submit_failures, 10.0))
            return False
        self.submit_failures = 0
        self.store.set_tags(self.run_id, {run.id: tags[HYPERPARAMETERS_TAG]})
        self.log.write(f"Trial {index} started: run {run.id} with {json.dumps(params)}")
        return True

    # -- the end ----------------------------------------------------------------------------------------
    def _finish(self, status: RunStatus | None, note: str) -> bool:
        """End the sweep with its summary (``status`` None: Completed, or Failed when every trial failed)."""
        children = trial_children(self.store, self.run_id)
        runs = [(c, as_trial(self.store, c, self.spec.primary_metric_name)) for c in children]
        summary = summarize(runs, self.spec.primary_metric_name, self.spec.goal)
        error = None
        if status is None:
            status = RunStatus.COMPLETED
            if summary.total and summary.failed == summary.total:
                status = RunStatus.FAILED
                first = next(c for c in children if c.status == RunStatus.FAILED)
                error = {"code": "AllTrialsFailed",
                         "message": f"every trial failed ({summary.failed} of {summary.total}); the first, run "
                                    f"{first.run_id}: {(first.error or {}).get('message', 'no details')}"}
        try:
            self.store.add_properties(self.run_id, summary.properties())
        except ValueError:
            pass  # written by a controller that stopped before ending the sweep: the same trials, the same values
        detail = f"{note}; {summary.text()}"
        self.log.write(f"Sweep ended {status.value}: {detail}")
        self.store.transition(self.run_id, status, detail=detail, error=error)
        return True

    # -- set-up ----------------------------------------------------------------------------------------
    def _set_up(self, record: RunRecord) -> None:
        self.spec = SweepSpec.from_record(record)
        self.experiment = record.experiment
        self.source = self._source(record)
        self.trial_config = trial_run_config(record.run_definition, source=f"sweep {self.run_id}")
        self.prior = self._prior_trials()
        self.resumed = self._resumed_children()

    def _source(self, record: RunRecord) -> str:
        """The sweep's snapshot as a folder (materialized once): the source of every trial."""
        src = os.path.join(self.folder, "src")
        if os.path.isdir(src):
            return src
        if not record.snapshot_id:
            return str(record.run_definition.get("source_directory") or ".")
        staging = tempfile.mkdtemp(dir=self.folder, prefix=".src-")
        materialize(self.store.get_snapshot(record.snapshot_id), self.ws.artifacts, staging)
        os.rename(staging, src)
        return src

    def _prior_trials(self) -> list[Trial]:
        """The finished trials of the sweeps this one warm-starts from, with negative indexes."""
        parents = list(self.spec.resume_from)
        for run_id in self.spec.resume_child_runs:
            parent = self.store.get_run(run_id).parent_id
            if parent and parent not in parents:
                parents.append(parent)
        found: list[Trial] = []
        for parent in parents:
            for child in trial_children(self.store, parent):
                if child.status.is_terminal:
                    found.append(as_trial(self.store, child, self.spec.primary_metric_name, index=-1 - len(found)))
        return found

    def _resumed_children(self) -> list[RunRecord]:
        return [self.store.get_run(run_id) for run_id in self.spec.resume_child_runs]


class _SubmitFailed(RundockError):
    """Trials cannot be started on the sweep's target."""

    def __init__(self, index: int, cause: Exception) -> None:
        super().__init__(f"trial {index} could not be started {MAX_SUBMIT_FAILURES} times in a row: {cause}")


def controller_main(argv: list[str] | None = None) -> int:
    """``python -m rundock.hyperdrive.controller WORKSPACE RUN_ID``."""
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 2:
        print("usage: python -m rundock.hyperdrive.controller WORKSPACE RUN_ID", file=sys.stderr)
        return 2
    workspace = Workspace(args[0])
    try:
        return Controller(workspace, args[1]).run()
    finally:
        workspace.close()


if __name__ == "__main__":
    sys.exit(controller_main())
