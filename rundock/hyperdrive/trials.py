"""A sweep's trials as the run history holds them, and the summary a finished sweep keeps.

Each trial is an ordinary child run of the sweep. Its tags, written when the run is created (before its
job starts), carry what the controller needs to rebuild the sweep after a restart: ``hyperdrive.trial_index``
(0, 1, 2 … in order of creation) and ``hyperparameters`` (the sampled values as JSON, v1's form, e.g.
``{"--lr": 0.001, "--batch": 32}``). As in v1, the sweep's own tags also map each child's run id to that
JSON (``HyperDriveRun.get_hyperparameters``). A trial an early-termination policy stopped carries the
policy's reason in ``hyperdrive.stop_reason``.
"""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Sequence
from typing import Any

from rundock.history.records import RunRecord
from rundock.history.store import RunStore
from rundock.hyperdrive.goal import PrimaryMetricGoal, Trial

TRIAL_INDEX_TAG = "hyperdrive.trial_index"
HYPERPARAMETERS_TAG = "hyperparameters"
STOP_REASON_TAG = "hyperdrive.stop_reason"
RESUMED_FROM_TAG = "hyperdrive.resumed_from"


def trial_index(record: RunRecord) -> int | None:
    """The trial index a child run was created for (None: not a trial of a sweep)."""
    raw = record.tags.get(TRIAL_INDEX_TAG)
    try:
        return int(raw) if raw is not None else None
    except ValueError:
        return None


def hyperparameters(record: RunRecord) -> dict[str, Any]:
    try:
        value = json.loads(record.tags.get(HYPERPARAMETERS_TAG) or "{}")
    except ValueError:
        return {}
    return value if isinstance(value, dict) else {}


def metric_values(store: RunStore, run_id: str, name: str) -> tuple[float, ...]:
    """The scalar values logged under ``name``, in logging order (anything not a finite number is left out)."""
    values = []
    for rec in store.get_metric_records(run_id, name):
        if rec.kind == "scalar" and isinstance(rec.value, (int, float)) and not isinstance(rec.value, bool) \
                and math.isfinite(rec.value):
            values.append(float(rec.value))
    return tuple(values)


def trial_children(store: RunStore, parent_id: str) -> list[RunRecord]:
    """The sweep's trial runs in index order (children without a trial index are left out)."""
    children = [c for c in store.list_runs(parent_id=parent_id) if trial_index(c) is not None]
    return sorted(children, key=lambda c: (trial_index(c), c.created_at))


def as_trial(store: RunStore, record: RunRecord, metric: str, index: int | None = None) -> Trial:
    """The trial ``record`` ran (``index``: instead of its own, e.g. for an earlier sweep's trial)."""
    return Trial(index=(trial_index(record) or 0) if index is None else index, params=hyperparameters(record),
                 status=record.status.value, values=metric_values(store, record.run_id, metric))


@dataclasses.dataclass(frozen=True)
class Summary:
    """How a sweep went: its best trial and how many trials ended each way."""

    metric: str
    goal: PrimaryMetricGoal
    best_run_id: str | None
    best_index: int | None
    best_value: float | None
    completed: int
    failed: int
    canceled: int

    @property
    def total(self) -> int:
        return self.completed + self.failed + self.canceled

    def text(self) -> str:
        best = (f"best {self.metric} {self.best_value:g} by trial {self.best_index} (run {self.best_run_id})"
                if self.best_run_id is not None and self.best_value is not None else f"no trial logged {self.metric}")
        return (f"{best}; trials: {self.completed} completed, {self.failed} failed, {self.canceled} canceled")

    def properties(self) -> dict[str, str]:
        props = {"hyperdrive.trials_completed": str(self.completed), "hyperdrive.trials_failed": str(self.failed),
                 "hyperdrive.trials_canceled": str(self.canceled)}
        if self.best_run_id is not None and self.best_value is not None:
            props.update({"best_child_run_id": self.best_run_id, "best_primary_metric": repr(self.best_value)})
        return props


def summarize(runs: Sequence[tuple[RunRecord, Trial]], metric: str, goal: PrimaryMetricGoal) -> Summary:
    """The summary of ``runs`` (each child with its trial); the best is the first to reach the best value."""
    best: tuple[RunRecord, Trial, float] | None = None
    for record, trial in runs:
        score = trial.score(goal)
        if score is not None and (best is None or goal.is_better(score, best[2])):
            best = (record, trial, score)
    statuses = [record.status.value for record, _ in runs]
    return Summary(metric=metric, goal=goal, best_run_id=best[0].run_id if best else None,
                   best_index=best[1].index if best else None, best_value=best[2] if best else None,
                   completed=statuses.count("Completed"), failed=statuses.count("Failed"),
                   canceled=statuses.count("Canceled"))
