"""Experiment: a named group of runs in a workspace; ``submit`` starts one."""

from __future__ import annotations

import getpass
import os
import re
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from rundock.errors import ConfigError
from rundock.history.records import RunRecord
from rundock.runconfig.script_run_config import ScriptRunConfig
from rundock.states import RunStatus
from rundock.submitter.run import Run
from rundock.submitter.snapshot import Progress
from rundock.submitter.targets import get_target
from rundock.submitter.workspace import Workspace

if TYPE_CHECKING:
    from rundock.hyperdrive.config import HyperDriveConfig  # (imported when submit is called)

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,254}$")


class Experiment:
    """Azure ML's ``Experiment(workspace, name)``."""

    def __init__(self, workspace: Workspace, name: str, **kwargs: Any) -> None:
        if not isinstance(name, str) or not _NAME.match(name):
            raise ConfigError(f"experiment name {name!r} must be 1-255 letters, digits, '-' or '_', starting with "
                              "a letter or digit", field="name")
        self.workspace = workspace
        self.name = name

    def submit(self, config: ScriptRunConfig | HyperDriveConfig, tags: Mapping[str, Any] | None = None, *,
               progress: Progress | None = None, **kwargs: Any) -> Run:
        """Package the source folder, create the run and hand it to its compute target; a HyperDriveConfig
        starts a sweep (rundock.hyperdrive) and gives its HyperDriveRun."""
        from rundock.hyperdrive.config import HyperDriveConfig

        if isinstance(config, HyperDriveConfig):
            from rundock.hyperdrive.launch import submit_sweep

            return submit_sweep(self, config, tags, display_name=kwargs.get("display_name"),
                                description=kwargs.get("description"), progress=progress)
        if not isinstance(config, ScriptRunConfig):
            raise ConfigError(f"submit() takes a ScriptRunConfig or a HyperDriveConfig, not {type(config).__name__}",
                              field="config")
        target = get_target(self.workspace, config.run_config.target)
        record = target.submit(self.name, config, tags=tags, display_name=kwargs.get("display_name"),
                               description=kwargs.get("description"), progress=progress,
                               parent_id=kwargs.get("_parent_id"))
        return Run(self, record.run_id, _record=record)

    def start_logging(self, *args: Any, outputs: str | None = None, snapshot_directory: str | None = None,
                      display_name: str | None = None, tags: Mapping[str, Any] | None = None,
                      **kwargs: Any) -> Run:
        """An interactive run (a notebook, no job): Running now, completed with ``run.complete()``.

        ``run.log()`` costs what it costs in a job (a journal append); values reach the history in the
        background, and at ``flush()``, ``complete()`` and every read of the run's metrics.

        The ``outputs`` folder (default ``./outputs``) is stored when the run completes;
        ``snapshot_directory`` is stored as the run's snapshot.
        """
        store = self.workspace.store
        from rundock.submitter.interactive import INTERACTIVE_TYPE, InteractiveRun

        record = store.create_run(self.name, run_type=INTERACTIVE_TYPE, target="sdk", display_name=display_name,
                                  submitted_by=getpass.getuser(),
                                  tags={k: None if v is None else str(v) for k, v in (tags or {}).items()})
        store.transition(record.run_id, RunStatus.RUNNING, detail="interactive run started")
        run = InteractiveRun(self, record.run_id, outputs=outputs or os.path.join(os.getcwd(), "outputs"))
        if snapshot_directory is not None:
            run.take_snapshot(snapshot_directory)
        return run

    def get_runs(self, type: str | None = None, tags: Any = None, properties: Any = None,
                 include_children: bool = False) -> list[Run]:
        """The experiment's runs, newest first."""
        return Run.list(self, type=type, tags=tags, properties=properties, include_children=include_children)

    def __repr__(self) -> str:
        return f"Experiment(name={self.name!r}, workspace={self.workspace.name!r})"


def _sweep_run(experiment: Experiment, record: RunRecord) -> Run:
    from rundock.hyperdrive.run import HyperDriveRun

    return HyperDriveRun(experiment, record.run_id, _record=record)


Run.add_type_provider("hyperdrive", _sweep_run)  # Run.get, get_runs and get_children give a HyperDriveRun
