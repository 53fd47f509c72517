"""The client ``Run``: a snapshot of a run in the history, with Azure ML v1's methods.

Attributes (``status``, ``tags``, ``properties``...) are read from the last
fetch; ``refresh()`` and the ``get_*`` methods read the history again. The
logging, tagging and upload methods are shared with the job side
(``RunRecorder``); here they change the history directly.
"""

from __future__ import annotations

import builtins
import os
import sys
import time
import uuid
from collections.abc import Callable, Iterable, Mapping
from typing import TYPE_CHECKING, Any, ClassVar

from rundock.context import run as job_side
from rundock.context.names import artifact_name
from rundock.context.recorder import PathOrStream, RunRecorder, child_tags
from rundock.context.records import check_run_id
from rundock.errors import RunFailedError
from rundock.history import liveness
from rundock.history.metrics import check_steps, metric_shapes
from rundock.history.records import RunRecord, iso_utc, plan_journal
from rundock.history.store import RunStore, matches
from rundock.runconfig.environment import Environment
from rundock.states import RunStatus
from rundock.submitter import follow, run_details, run_files
from rundock.submitter.model import Model, _str_tags, model_files
from rundock.submitter.snapshot import restore_zip, take_snapshot

if TYPE_CHECKING:
    from rundock.runconfig.script_run_config import ScriptRunConfig
    from rundock.submitter.experiment import Experiment
    from rundock.submitter.workspace import Workspace

RunFactory = Callable[["Experiment", RunRecord], "Run"]
LIVE_BY_COMPUTE = ("Running", "Queued")


class Run(RunRecorder):
    """A run of an experiment (Azure ML's ``Run``)."""

    _type_providers: ClassVar[dict[str, RunFactory]] = {}

    def __init__(self, experiment: Experiment, run_id: str, outputs: str | None = None, **kwargs: Any) -> None:
        super().__init__()
        self.experiment = experiment
        self._id = run_id
        self._outputs = outputs
        self._record: RunRecord = kwargs.get("_record") or self._store.get_run(run_id)

    # -- construction -----------------------------------------------------------------
    @staticmethod
    def get(workspace: Workspace, run_id: str) -> Run:
        """The run with id ``run_id`` in ``workspace``."""
        from rundock.submitter.experiment import Experiment

        record = workspace.store.get_run(run_id)
        return Run._rehydrate(Experiment(workspace, record.experiment), record, True)

    @staticmethod
    def get_context(allow_offline: bool = True, used_for_context_manager: bool = False,
                    **kwargs: Any) -> job_side.Run:
        """The current run inside a job; an offline run that prints outside one."""
        return job_side.Run.get_context(allow_offline, used_for_context_manager, **kwargs)

    @staticmethod
    def get_submitted_run(**kwargs: Any) -> job_side.Run:
        """Deprecated: use ``get_context``."""
        return job_side.Run.get_context(**kwargs)

    @staticmethod
    def add_type_provider(runtype: str, run_factory: RunFactory) -> None:
        """Build runs of type ``runtype`` with ``run_factory(experiment, run_record)`` when listing."""
        Run._type_providers[runtype] = run_factory

    @staticmethod
    def _rehydrate(experiment: Experiment, record: RunRecord, rehydrate: bool) -> Run:
        factory = Run._type_providers.get(record.run_type) if rehydrate else None
        return factory(experiment, record) if factory else Run(experiment, record.run_id, _record=record)

    @staticmethod
    def list(experiment: Experiment, type: str | None = None, tags: Any = None, properties: Any = None,
             status: str | None = None, include_children: bool = False,
             _rehydrate_runs: bool = True, include_archived: bool = False) -> builtins.list[Run]:
        """Runs of ``experiment`` matching the filters, newest first; archived runs (``rundock archive``) only
        with ``include_archived``."""
        from rundock.submitter.targets import sweep

        store = experiment.workspace.store
        sweep(experiment.workspace)
        records = store.find_runs(experiment=experiment.name, run_type=type, tags=tags, properties=properties,
                                  status=status, include_children=include_children,
                                  archived=None if include_archived else False)
        return [Run._rehydrate(experiment, r, _rehydrate_runs) for r in records]

    @staticmethod
    def list_by_compute(compute: Any, type: str | None = None, tags: Any = None, properties: Any = None,
                        status: str | None = None) -> builtins.list[Run]:
        """Live runs (Running or Queued) on a compute target."""
        from rundock.submitter.experiment import Experiment

        if status is not None and status not in LIVE_BY_COMPUTE:
            raise ValueError(f"list_by_compute: status must be 'Running' or 'Queued', not {status!r}")
        workspace = compute.workspace
        records = [r for s in ([status] if status else LIVE_BY_COMPUTE)
                   for r in workspace.store.find_runs(target=compute.name, run_type=type, tags=tags,
                                                      properties=properties, status=s)]
        return [Run._rehydrate(Experiment(workspace, r.experiment), r, True) for r in records]

    # -- attributes ------------------------------------------------------------------------
    @property
    def _store(self) -> RunStore:
        return self.experiment.workspace.store

    @property
    def id(self) -> str:  # type: ignore[override]
        return self._id

    @property
    def number(self) -> int:
        return self._record.number

    @property
    def display_name(self) -> str:
        return self._record.display_name or self._id

    @display_name.setter
    def display_name(self, value: str) -> None:
        self._store.update_run(self._id, display_name=value)
        self._record.display_name = value

    @property
    def name(self) -> str:
        """Deprecated: use ``display_name``."""
        return self.display_name

    @property
    def description(self) -> str | None:
        return self._record.description

    @description.setter
    def description(self, value: str) -> None:
        self._store.update_run(self._id, description=value)
        self._record.description = value

    @property
    def status(self) -> str:
        """The status at the last fetch (``get_status()`` fetches again)."""
        return liveness.shown_status(self._record).value

    @property
    def type(self) -> str:
        return self._record.run_type

    @property
    def tags(self) -> dict[str, str | None]:
        return dict(self._record.tags)

    @property
    def properties(self) -> dict[str, str]:
        return dict(self._record.properties)

    @property
    def parent(self) -> Run | None:
        return Run(self.experiment, self._record.parent_id) if self._record.parent_id else None

    def refresh(self) -> Run:
        """Read the run again: pulled from its host, or judged by the lost-run policy (one read; see
        rundock.submitter.targets.check)."""
        from rundock.submitter.targets import check

        self._record = check(self.experiment.workspace, self._store.get_run(self._id))
        return self

    # -- recording (RunRecorder) -------------------------------------------------------------
    def _emit(self, record_type: str, /, **fields: Any) -> None:
        record = {"seq": 1, "t": time.time(), "type": record_type, **fields}
        self._store.apply_plan(self._id, plan_journal([record], 0))

    def _stage_file(self, path_or_stream: PathOrStream) -> dict[str, Any]:
        artifacts = self.experiment.workspace.artifacts
        if isinstance(path_or_stream, (str, os.PathLike)):
            digest, size, _ = artifacts.put_file(os.fspath(path_or_stream))
        else:
            digest, size, _ = artifacts.put_stream(path_or_stream)
        return {"digest": digest, "size": size}

    def _check_step(self, name: str, has_step: bool) -> None:
        check_steps(self._store.get_metric_records(self._id, name), name, 0 if has_step else None)

    def _check_properties(self, values: Mapping[str, str]) -> None:
        current = self._store.get_run(self._id).properties
        for key, val in values.items():
            if key in current and current[key] != val:
                raise ValueError(f"property {key!r} of run {self._id} is already {current[key]!r}; properties are "
                                 "immutable (use tags for values that change)")

    # -- status -------------------------------------------------------------------------------
    def get_status(self) -> str:
        """The latest status (NotResponding while the agent's heartbeat lease is expired)."""
        return self.refresh().status

    def get_detailed_status(self) -> dict[str, str]:
        """``{'status': ..., 'details': ...}`` explaining the current status (a pool run that waits: why)."""
        from rundock.submitter.targets import waiting_reason

        detailed = run_details.detailed_status(self.refresh()._record, self.status)
        reason = waiting_reason(self.experiment.workspace, self._record)
        if reason:
            detailed["details"] = reason
        return detailed

    def get_details(self) -> dict[str, Any]:
        """runId, target, status, times, properties, runDefinition, logFiles, submittedBy (and error)."""
        run = self.refresh()._record
        return run_details.details(run, self.status, self._store, self.experiment.workspace.artifacts)

    def get_details_with_logs(self) -> dict[str, Any]:
        """``get_details()`` with the content of each log file instead of its location."""
        return run_details.with_logs(self.get_details())

    def get_environment(self) -> Environment | None:
        """The environment the run used (None for a run that had none, e.g. an interactive one)."""
        data = self._record.run_definition.get("environment")
        return Environment.from_mapping(data, source=f"run {self._id}") if data else None

    def wait_for_completion(self, show_output: bool = False, wait_post_processing: bool = False,
                            raise_on_error: bool = True) -> dict[str, Any]:
        """Wait until the run ends; with ``show_output`` stream its preparation (environment builds) and its
        driver log (the job's own output), with a ``[rundock]`` line per status change, then a summary.

        Raises RunFailedError if the run ended Failed and ``raise_on_error``.
        """
        from rundock.submitter.targets import check

        workspace = self.experiment.workspace
        out = sys.stdout
        if show_output:
            out.write(f"RunId: {self._id}\nFollow it from a shell: rundock logs {self._id} --follow\n\n")
            out.flush()
            # as in Azure ML v1, the environment's build is shown while it happens (rundock submit: --verbose)
            self._record = follow.stream(self._store, self._id, out, check=lambda r: check(workspace, r),
                                         prepare_log=True)
            follow.print_summary(self._record, out, output_shown=True)
        else:
            for record, _status, _data in follow.follow(self._store, self._id, log_names=(),
                                                        check=lambda r: check(workspace, r)):
                self._record = record
        if raise_on_error and self._record.status == RunStatus.FAILED:
            raise RunFailedError(self._id, self._record.error)
        return self.get_details()

    # -- lifecycle ------------------------------------------------------------------------------
    def start(self) -> None:
        """Mark the run Running (for runs another actor created)."""
        self._store.transition(self._id, RunStatus.RUNNING, detail="started")
        self.refresh()

    def flush(self, timeout_seconds: int = 300) -> None:
        """Every call is written when it returns; nothing waits in a queue."""

    def complete(self, _set_status: bool = True) -> None:
        """Store the run's outputs folder (interactive and child runs) and mark it Completed."""
        if self._outputs and os.path.isdir(self._outputs):
            self.upload_folder("outputs", self._outputs)
        if _set_status:
            self._store.transition(self._id, RunStatus.COMPLETED, detail="completed")
        self.refresh()

    def fail(self, error_details: Any = None, error_code: str | None = None, _set_status: bool = True) -> None:
        """Mark the run Failed with ``error_details`` (a message or exception) and ``error_code``."""
        error = {"code": error_code or "UserError", "message": str(error_details or "run.fail() was called")}
        if _set_status:
            self._store.transition(self._id, RunStatus.FAILED, detail="run.fail() was called", error=error)
        self.refresh()

    def cancel(self) -> None:
        """Stop the run: its job's agent stops its processes, or (no job) it ends Canceled now. A host that cannot
        be reached gets the cancel when it answers again (see rundock.submitter.targets.remote.abandon)."""
        from rundock.submitter.targets import get_target

        record = self.refresh()._record
        if record.status.is_terminal:
            return
        if record.run_type != liveness.AGENT_RUN_TYPE:
            self._store.transition(self._id, RunStatus.CANCELED, detail="canceled")
        else:
            self._store.transition(self._id, RunStatus.CANCEL_REQUESTED, detail="cancel requested")
            get_target(self.experiment.workspace, record.target).cancel(record)
        self.refresh()

    def clean(self) -> builtins.list[str]:
        """Remove the run's files on its compute target; return what was removed."""
        from rundock.submitter.targets import get_target

        record = self.refresh()._record
        if record.run_type != liveness.AGENT_RUN_TYPE:
            return []
        if not record.status.is_terminal:
            raise RuntimeError(f"run {self._id} is {record.status.value}; clean() removes files of finished runs")
        return get_target(self.experiment.workspace, record.target).clean(record)

    # -- children -----------------------------------------------------------------------------
    def child_run(self, name: str | None = None, run_id: str | None = None, outputs: str | None = None) -> Run:
        """A started child run; its ``outputs`` folder is stored with it when it completes."""
        return self._new_child(name, run_id, outputs, {})

    def create_children(self, count: int | None = None, tag_key: str | None = None,
                        tag_values: builtins.list[Any] | None = None) -> builtins.list[Run]:
        """Several started children: ``count`` of them, or one per value of ``tag_values``."""
        return [self._new_child(None, None, None, tags) for tags in child_tags(count, tag_key, tag_values)]

    def _new_child(self, name: str | None, run_id: str | None, outputs: str | None, tags: dict[str, str]) -> Run:
        record = self._store.create_run(self.experiment.name,
                                        run_id=check_run_id(run_id or f"{self._id}_{uuid.uuid4().hex[:8]}"),
                                        parent_id=self._id, run_type="rundock.childrun", display_name=name,
                                        target=self._record.target, tags=tags)
        self._store.transition(record.run_id, RunStatus.RUNNING, detail="child run started")
        return Run(self.experiment, record.run_id, outputs=outputs)

    def submit_child(self, config: ScriptRunConfig, tags: Mapping[str, Any] | None = None, **kwargs: Any) -> Run:
        """Submit ``config`` as a job whose parent is this run; return the child run."""
        return self.experiment.submit(config, tags=tags, _parent_id=self._id, **kwargs)

    def get_children(self, recursive: bool = False, tags: Any = None, properties: Any = None,
                     type: str | None = None, status: str | None = None,
                     _rehydrate_runs: bool = True) -> builtins.list[Run]:
        """Children (all descendants when ``recursive``) matching the filters."""
        records = self._descendants() if recursive else self._store.list_runs(parent_id=self._id)
        return [Run._rehydrate(self.experiment, r, _rehydrate_runs) for r in records
                if matches(r, tags, properties) and (type is None or r.run_type == type)
                and (status is None or r.status.value == status)]

    def _descendants(self) -> builtins.list[RunRecord]:
        found, frontier = [], [self._id]
        while frontier:
            children = [c for p in frontier for c in self._store.list_runs(parent_id=p)]
            found.extend(children)
            frontier = [c.run_id for c in children]
        return found

    # -- metrics, tags, properties ------------------------------------------------------------
    def get_metrics(self, name: str | None = None, recursive: bool = False, run_type: str | None = None,
                    populate: bool = False) -> dict[str, Any]:
        """Metrics by name (as of now); ``{run_id: {...}}`` for this run and its descendants when recursive."""
        self.refresh()
        if not recursive:
            return metric_shapes(self._store.get_metric_records(self._id, name))
        return {r.run_id: metric_shapes(self._store.get_metric_records(r.run_id, name))
                for r in [self._record, *self._descendants()] if run_type is None or r.run_type == run_type}

    def get_metric_history(self, name: str) -> builtins.list[dict[str, Any]]:
        """Every value logged under ``name``, in logging order, as ``{"value", "step", "time"}`` (step: None
        when logged without one; time: ISO 8601 UTC); [] for a name never logged. ``get_metrics`` is unchanged.
        A live run is brought up to date first, as for ``get_metrics``."""
        self.refresh()
        return [{"value": r.value, "step": r.step, "time": iso_utc(r.at)}
                for r in self._store.get_metric_records(self._id, name)]

    def set_tags(self, tags: Mapping[str, Any] | str) -> None:
        super().set_tags(tags)
        self.refresh()

    def remove_tags(self, tags: Iterable[str] | str) -> dict[str, str | None]:
        """Remove tags; return the tags left."""
        self._store.remove_tags(self._id, [tags] if isinstance(tags, str) else builtins.list(tags))
        return self.refresh().tags

    def get_tags(self) -> dict[str, str | None]:
        return self.refresh().tags

    def add_properties(self, properties: Mapping[str, Any]) -> None:
        super().add_properties(properties)
        self.refresh()

    def get_properties(self) -> dict[str, str]:
        return self.refresh().properties

    def get_secret(self, name: str) -> str:
        """The value of the workspace secret ``name``."""
        return self.experiment.workspace.secrets.get_secret(name)

    def get_secrets(self, secrets: builtins.list[str]) -> dict[str, str | None]:
        """Values of the named secrets; None for each name not found."""
        return self.experiment.workspace.secrets.get_secrets(secrets)

    # -- files -----------------------------------------------------------------------------------
    def get_file_names(self) -> builtins.list[str]:
        """Names of the files stored with the run (as of now)."""
        self.refresh()
        return sorted(self._store.list_files(self._id))

    def download_file(self, name: str, output_file_path: str | None = None,
                      _validate_checksum: bool = False) -> str:
        """Copy one file of the run to ``output_file_path`` (a file or a folder); return the path."""
        return run_files.download_file(self._store, self.experiment.workspace.artifacts, self._id, name,
                                       output_file_path, _validate_checksum)

    def download_files(self, prefix: str | None = None, output_directory: str | None = None,
                       output_paths: builtins.list[str] | None = None, batch_size: int = 100,
                       append_prefix: bool = True, timeout_seconds: int | None = None) -> builtins.list[str]:
        """Download every file under ``prefix`` (all files when None); return the local paths."""
        names = [n for n in self.get_file_names() if prefix is None or n.startswith(prefix)]
        return [self.download_file(name, target)
                for name, target in run_files.targets(names, prefix, output_directory, output_paths, append_prefix)]

    def get_all_logs(self, destination: str | None = None) -> builtins.list[str]:
        """Download the run's logs (to a folder named by the run id by default)."""
        destination = destination or os.path.join(os.getcwd(), self._id)
        return [p for prefix in ("system_logs/", "logs/")
                for p in self.download_files(prefix, output_directory=destination)]

    # -- snapshots and models -------------------------------------------------------------------
    def get_snapshot_id(self) -> str | None:
        """The latest snapshot of the run."""
        return self.refresh()._record.snapshot_id

    def take_snapshot(self, file_or_folder_path: str) -> str:
        """Store a snapshot of a file or folder with the run; return its id."""
        workspace = self.experiment.workspace
        snapshot = take_snapshot(file_or_folder_path, workspace.store, workspace.artifacts, workspace.snapshot_limits)
        self._store.update_run(self._id, snapshot_id=snapshot.snapshot_id)
        self.refresh()
        return snapshot.snapshot_id

    def restore_snapshot(self, snapshot_id: str | None = None, path: str | None = None) -> str:
        """Write a snapshot (the latest by default) as ``<snapshot_id>.zip`` in folder ``path`` (default: the
        temp folder; created when missing); return the zip's path."""
        snapshot_id = snapshot_id or self.get_snapshot_id()
        if snapshot_id is None:
            raise ValueError(f"run {self._id} has no snapshot; take one with run.take_snapshot(folder)")
        manifest = self._store.get_snapshot(snapshot_id)
        return restore_zip(manifest, self.experiment.workspace.artifacts, snapshot_id, path)

    def register_model(self, model_name: str, model_path: str | None = None, tags: Mapping[str, Any] | None = None,
                       properties: Mapping[str, Any] | None = None, model_framework: str | None = None,
                       model_framework_version: str | None = None, description: str | None = None,
                       datasets: Any = None, sample_input_dataset: Any = None, sample_output_dataset: Any = None,
                       resource_configuration: Any = None, **kwargs: Any) -> Model:
        """Register a file or folder of this run as the next version of ``model_name``."""
        path = model_path or model_name
        files = model_files(self._store.list_files(self._id), path)
        record = self._store.register_model(
            model_name, run_id=self._id, path=artifact_name(path), files=files, tags=_str_tags(tags),
            properties={k: str(v) for k, v in (properties or {}).items()}, framework=model_framework,
            framework_version=model_framework_version, description=description)
        return Model(self.experiment.workspace, _record=record)

    def __repr__(self) -> str:
        return f"Run(experiment={self.experiment.name!r}, id={self._id!r}, status={self.status!r})"
