"""``HyperDriveRun``: a sweep's run, with Azure ML v1's methods over its trials (its child runs).

A sweep's run is an ordinary run of type ``hyperdrive`` whose children are the trials; ``Run.get`` and
``Experiment.get_runs`` give a ``HyperDriveRun`` for it. The best trial is the one with the best value of
the primary metric that it logged (the largest for MAXIMIZE, the smallest for MINIMIZE), as in v1.
"""

from __future__ import annotations

import builtins
import os
import sys
from typing import TYPE_CHECKING, Any

from rundock.errors import RundockError, RunFailedError
from rundock.history.records import RunRecord
from rundock.hyperdrive.config import RUN_TYPE, HyperDriveConfig, SweepSpec
from rundock.hyperdrive.launch import controller_alive, ensure_controller, start_controller, sweep_dir
from rundock.hyperdrive.sweeplog import LOG_NAME
from rundock.hyperdrive.trials import HYPERPARAMETERS_TAG, as_trial, metric_values, summarize, trial_children
from rundock.states import RunStatus
from rundock.submitter import follow
from rundock.submitter.run import Run

if TYPE_CHECKING:
    from rundock.submitter.experiment import Experiment


class HyperDriveRun(Run):
    """A submitted sweep (Azure ML v1's ``HyperDriveRun``)."""

    RUN_TYPE = RUN_TYPE

    def __init__(self, experiment: Experiment, run_id: str, hyperdrive_config: HyperDriveConfig | None = None,
                 **kwargs: Any) -> None:
        super().__init__(experiment, run_id, **kwargs)
        if self._record.run_type != RUN_TYPE:
            raise RundockError(f"run {run_id} is not a sweep (its type is {self._record.run_type!r}); use Run")
        self._config = hyperdrive_config
        self._spec = hyperdrive_config.spec if hyperdrive_config is not None else SweepSpec.from_record(self._record)

    @property
    def hyperdrive_config(self) -> HyperDriveConfig | None:
        """The configuration this object was submitted with (None for a sweep read back from the history)."""
        return self._config

    @property
    def spec(self) -> SweepSpec:
        """The sweep as stored: sampling, policy, primary metric and goal, limits."""
        return self._spec

    # -- trials -----------------------------------------------------------------------------------
    def _trial_records(self, include_resume_from_runs: bool = False) -> builtins.list[RunRecord]:
        records = trial_children(self._store, self._id)
        if include_resume_from_runs:
            for parent in self._spec.resume_from:
                records += trial_children(self._store, parent)
        return records

    def get_hyperparameters(self) -> dict[str, str]:
        """``{child run id: its hyperparameters as JSON}`` (v1's shape: the JSON text, e.g. ``'{"--lr": 0.01}'``)."""
        found = {r.run_id: r.tags.get(HYPERPARAMETERS_TAG) or "{}" for r in self._trial_records()}
        for key, value in self.refresh().tags.items():  # v1 kept them in the sweep's tags: the same map
            if key.startswith(f"{self._id}_") and value is not None:
                found.setdefault(key, value)
        return found

    def get_children_sorted_by_primary_metric(self, top: int = 0, reverse: bool = False,
                                              discard_no_metric: bool = False) -> builtins.list[dict[str, Any]]:
        """The trials by their best primary metric, best first (``reverse``: worst first), as dicts with
        ``run_id``, ``hyperparameters`` (JSON text), ``best_primary_metric`` and ``status``; trials without the
        metric come last (or not at all with ``discard_no_metric``); ``top``: only the first ``top``."""
        if isinstance(top, bool) or not isinstance(top, int) or top < 0:
            raise ValueError(f"top must be 0 (every trial) or a positive number, not {top!r}")
        return self._sorted(self._trial_records(), top, reverse, discard_no_metric)

    def _sorted(self, records: builtins.list[RunRecord], top: int, reverse: bool,
                discard_no_metric: bool) -> builtins.list[dict[str, Any]]:
        from rundock.submitter.targets import check

        goal, name = self._spec.goal, self._spec.primary_metric_name
        scored: builtins.list[dict[str, Any]] = []
        unscored: builtins.list[dict[str, Any]] = []
        for record in records:
            record = check(self.experiment.workspace, record)
            values = metric_values(self._store, record.run_id, name)
            entry = {"run_id": record.run_id, "hyperparameters": record.tags.get(HYPERPARAMETERS_TAG),
                     "best_primary_metric": goal.best(values) if values else None,
                     "status": record.status.value}
            (scored if values else unscored).append(entry)
        maximize = goal.value == "MAXIMIZE"
        scored.sort(key=lambda e: e["best_primary_metric"], reverse=maximize != reverse)  # stable: ties by index
        ordered = scored + ([] if discard_no_metric else unscored)
        return ordered[:top] if top else ordered

    def get_best_run_by_primary_metric(self, include_failed: bool = True, include_canceled: bool = True,
                                       include_resume_from_runs: bool = True) -> Run | None:
        """The trial with the best value of the primary metric (None when no trial logged it)."""
        records = self._trial_records(include_resume_from_runs)
        for entry in self._sorted(records, 0, False, True):
            if (entry["status"] == "Failed" and not include_failed) or \
                    (entry["status"] == "Canceled" and not include_canceled):
                continue
            return Run.get(self.experiment.workspace, entry["run_id"])
        return None

    def get_metrics(self, name: str | None = None, recursive: bool = False, run_type: str | None = None,
                    populate: bool = False) -> dict[str, Any]:
        """The trials' metrics: ``{child run id: {name: value(s)}}`` (v1: the sweep's children, not the sweep)."""
        from rundock.history.metrics import metric_shapes

        return {r.run_id: metric_shapes(self._store.get_metric_records(r.run_id, name))
                for r in self._trial_records()}

    def summary(self) -> str:
        """One line: the best trial so far and how many trials ended each way."""
        records = self._trial_records()
        runs = [(r, as_trial(self._store, r, self._spec.primary_metric_name)) for r in records]
        return summarize(runs, self._spec.primary_metric_name, self._spec.goal).text()

    # -- lifecycle ----------------------------------------------------------------------------------
    def cancel(self) -> bool:  # type: ignore[override]
        """Cancel the sweep and its live trials (v1 returns True once the cancel is recorded). Its controller
        ends it Canceled, with its summary, once the trials have stopped; a controller that is gone is started
        again for that (when this machine drives the sweep; else the sweep ends Canceled now)."""
        record = self.refresh()._record
        if record.status.is_terminal:
            return False
        self._store.transition(self._id, RunStatus.CANCEL_REQUESTED, detail="cancel requested")
        for child in trial_children(self._store, self._id):
            if not child.status.is_terminal:
                Run(self.experiment, child.run_id, _record=child).cancel()
        workspace = self.experiment.workspace
        if not controller_alive(workspace, self._id):
            try:  # a controller ends the sweep once its trials have stopped, with their summary
                started = os.path.isdir(sweep_dir(workspace, self._id)) and start_controller(workspace, self._id) > 0
            except OSError:
                started = False
            if not started:  # (the sweep is driven from another machine, or no controller can start here)
                self._store.transition(self._id, RunStatus.CANCELED, detail=f"canceled; {self.summary()}")
        self.refresh()
        return True

    def fail(self, error_details: Any = None, error_code: str | None = None, _set_status: bool = True) -> None:
        """Not for sweeps (as in v1): a sweep ends by itself, or with ``cancel()``."""
        raise RundockError("fail() is not supported for a sweep; use cancel()")

    def wait_for_completion(self, show_output: bool = False, wait_post_processing: bool = False,
                            raise_on_error: bool = True) -> dict[str, Any]:
        """Wait until the sweep ends; with ``show_output`` print its progress (trials started, ended and
        stopped, the best so far) as it happens, then a summary. A controller that is gone (its machine's
        process was killed) is started again. Raises RunFailedError if the sweep ended Failed and
        ``raise_on_error``."""
        workspace = self.experiment.workspace
        out = sys.stdout

        def check(record: RunRecord) -> RunRecord:
            return self._store.get_run(self._id) if ensure_controller(workspace, record) else record

        if show_output:
            out.write(f"RunId: {self._id}\nFollow it from a shell: rundock sweep resume {self._id} --follow\n\n")
            out.flush()
        for record, _status, data in follow.follow(self._store, self._id, log_names=(LOG_NAME,), check=check):
            self._record = record
            if show_output and data:
                out.write(data.decode("utf-8", errors="replace"))
                out.flush()
        if show_output:
            follow.print_summary(self._record, out)
        if raise_on_error and self._record.status == RunStatus.FAILED:
            raise RunFailedError(self._id, self._record.error)
        return self.get_details()

    def __repr__(self) -> str:
        return f"HyperDriveRun(experiment={self.experiment.name!r}, id={self._id!r}, status={self.status!r})"

