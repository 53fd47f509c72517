"""The client ``Run``: a snapshot of a run in the history, with Azure ML v1's methods.

Attributes (``status``, ``tags``, ``properties``...) are read from the last
fetch; ``refresh()`` and the ``get_*`` methods read the history again.
"""

from __future__ import annotations

import builtins
import os
import sys
import time
from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Any

from rundock.context import run as job_side
from rundock.context.names import artifact_name
from rundock.errors import RunFailedError
from rundock.history import liveness
from rundock.history.artifacts import sha256_file
from rundock.history.metrics import check_steps, metric_shapes
from rundock.history.records import MetricRecord, RunRecord, iso_utc
from rundock.history.store import RunStore
from rundock.states import RunStatus
from rundock.submitter import follow
from rundock.submitter.snapshot import write_zip

if TYPE_CHECKING:
    from rundock.submitter.experiment import Experiment
    from rundock.submitter.workspace import Workspace


class Run:
    """A run of an experiment (Azure ML's ``Run``)."""

    def __init__(self, experiment: Experiment, run_id: str, outputs: Any = None, **kwargs: Any) -> None:
        self.experiment = experiment
        self._id = run_id
        self._record: RunRecord = kwargs.get("_record") or self._store.get_run(run_id)

    # -- construction -----------------------------------------------------------------
    @staticmethod
    def get(workspace: Workspace, run_id: str) -> Run:
        """The run with id ``run_id`` in ``workspace``."""
        from rundock.submitter.experiment import Experiment

        record = workspace.store.get_run(run_id)
        return Run(Experiment(workspace, record.experiment), run_id, _record=record)

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
    def list(experiment: Experiment, type: str | None = None, tags: Any = None, properties: Any = None,
             status: str | None = None, include_children: bool = False,
             _rehydrate_runs: bool = True) -> builtins.list[Run]:
        """Runs of ``experiment`` matching the filters, newest first."""
        store = experiment.workspace.store
        store.sweep_lost()
        records = store.find_runs(experiment=experiment.name, run_type=type, tags=tags, properties=properties,
                                  status=status, include_children=include_children)
        return [Run(experiment, r.run_id, _record=r) for r in records]

    # -- attributes ------------------------------------------------------------------------
    @property
    def _store(self) -> RunStore:
        return self.experiment.workspace.store

    @property
    def id(self) -> str:
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
        return liveness.effective_status(self._record, time.time()).value

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
        """Read the run again from the history."""
        from rundock.submitter.targets import get_target

        target = get_target(self.experiment.workspace, self._record.target) if self._record.target == "local" else None
        self._store.sweep_lost(on_lost=target.reap_lost if target else None)
        self._record = self._store.get_run(self._id)
        return self

    # -- status -------------------------------------------------------------------------------
    def get_status(self) -> str:
        """The latest status (NotResponding while the agent's heartbeat lease is expired)."""
        return self.refresh().status

    def get_detailed_status(self) -> dict[str, str]:
        """``{'status': ..., 'details': ...}`` explaining the current status."""
        run = self.refresh()._record
        status = run.status.value if self.status != RunStatus.NOT_RESPONDING.value else self.status
        details = run.status_detail
        if status == RunStatus.NOT_RESPONDING.value and run.last_heartbeat:
            details = (f"no heartbeat from the agent for {time.time() - run.last_heartbeat:.0f} s "
                       f"(it beats every {run.heartbeat_interval:g} s); last status {run.status.value}: {details}")
        elif run.error:
            details = f"{details}: {run.error.get('message', '')}"
        return {"status": status, "details": details}

    def get_details(self) -> dict[str, Any]:
        """runId, target, status, times, properties, runDefinition, logFiles, submittedBy (and error)."""
        run = self.refresh()._record
        details: dict[str, Any] = {"runId": run.run_id, "target": run.target, "status": self.status}
        if run.start_at:
            details["startTimeUtc"] = iso_utc(run.start_at)
        if run.status.is_terminal:
            details["endTimeUtc"] = iso_utc(run.end_at)
        details.update({
            "properties": dict(run.properties), "inputDatasets": [], "outputDatasets": [],
            "runDefinition": run.run_definition,
            "logFiles": {name: self.experiment.workspace.artifacts.path(f.digest)
                         for name, f in self._store.list_files(run.run_id).items()
                         if name.startswith(("system_logs/", "logs/"))},
            "submittedBy": run.submitted_by})
        if run.error:
            details["error"] = {"error": dict(run.error)}
        return details

    def get_details_with_logs(self) -> dict[str, Any]:
        """``get_details()`` with the content of each log file instead of its location."""
        details = self.get_details()
        logs = {}
        for name, path in details["logFiles"].items():
            with open(path, encoding="utf-8", errors="replace") as fh:
                logs[name] = fh.read()
        details["logFiles"] = logs
        return details

    def wait_for_completion(self, show_output: bool = False, wait_post_processing: bool = False,
                            raise_on_error: bool = True) -> dict[str, Any]:
        """Wait until the run ends; with ``show_output`` stream its driver log, then a summary.

        Raises RunFailedError if the run ended Failed and ``raise_on_error``.
        """
        out = sys.stdout
        if show_output:
            out.write(f"RunId: {self._id}\nFollow it from a shell: rundock logs {self._id} --follow\n\n"
                      f"Streaming {follow.DRIVER_LOG}\n{'=' * (10 + len(follow.DRIVER_LOG))}\n\n")
            out.flush()
        shown = None
        from rundock.submitter.targets import get_target

        target = get_target(self.experiment.workspace, self._record.target)
        for record, status, data in follow.follow(self._store, self._id, on_lost=target.reap_lost):
            self._record = record
            if show_output:
                if status != shown and not status.is_terminal and status != RunStatus.RUNNING:
                    out.write(f"[rundock] {status.value}: {record.status_detail}\n")
                shown = status
                if data:
                    out.write(data.decode("utf-8", errors="replace"))
                out.flush()
        if show_output:
            follow.print_summary(self._record, out)
        if raise_on_error and self._record.status == RunStatus.FAILED:
            raise RunFailedError(self._id, self._record.error)
        return self.get_details()

    def cancel(self) -> None:
        """Ask the run's agent to stop it; the run ends Canceled. A finished run is left as it is."""
        from rundock.submitter.targets import get_target

        record = self.refresh()._record
        if record.status.is_terminal:
            return
        self._store.transition(self._id, RunStatus.CANCEL_REQUESTED, detail="cancel requested")
        get_target(self.experiment.workspace, record.target).cancel(record)
        self.refresh()

    # -- metrics ---------------------------------------------------------------------------------
    def get_metrics(self, name: str | None = None, recursive: bool = False, run_type: str | None = None,
                    populate: bool = False) -> dict[str, Any]:
        """Metrics by name; ``{run_id: {...}}`` for this run and its descendants when recursive."""
        if not recursive:
            return metric_shapes(self._store.get_metric_records(self._id, name))
        result = {}
        for run_id in [self._id, *(r.run_id for r in self._descendants())]:
            record = self._store.get_run(run_id)
            if run_type is None or record.run_type == run_type:
                result[run_id] = metric_shapes(self._store.get_metric_records(run_id, name))
        return result

    def _descendants(self) -> builtins.list[RunRecord]:
        found, frontier = [], [self._id]
        while frontier:
            children = [c for p in frontier for c in self._store.list_runs(parent_id=p)]
            found.extend(children)
            frontier = [c.run_id for c in children]
        return found

    def _log(self, name: str, kind: str, value: Any, description: str = "", step: int | None = None) -> None:
        if kind == "scalar":
            check_steps(self._store.get_metric_records(self._id, name), name, step)
        self._store.log_metrics(self._id, [MetricRecord(name, kind, value, step, description, time.time())])

    def log(self, name: str, value: Any, description: str = "", step: int | None = None) -> None:
        """Log a scalar; the same name again builds a list."""
        self._log(name, "scalar", value, description, step)

    def log_list(self, name: str, value: Iterable[Any], description: str = "") -> None:
        self._log(name, "list", list(value), description)

    def log_row(self, name: str, description: str | None = None, **kwargs: Any) -> None:
        self._log(name, "row", dict(kwargs), description or "")

    def log_table(self, name: str, value: Mapping[str, builtins.list[Any]], description: str = "") -> None:
        self._log(name, "table", {k: list(v) for k, v in value.items()}, description)

    # -- tags and properties -----------------------------------------------------------------------
    def tag(self, key: str, value: str | None = None) -> None:
        self.set_tags({key: value})

    def set_tags(self, tags: Mapping[str, Any] | str) -> None:
        values = {tags: None} if isinstance(tags, str) else dict(tags)
        self._store.set_tags(self._id, {k: None if v is None else str(v) for k, v in values.items()})
        self.refresh()

    def remove_tags(self, tags: Iterable[str] | str) -> None:
        self._store.remove_tags(self._id, [tags] if isinstance(tags, str) else list(tags))
        self.refresh()

    def get_tags(self) -> dict[str, str | None]:
        return self.refresh().tags

    def add_properties(self, properties: Mapping[str, Any]) -> None:
        self._store.add_properties(self._id, {k: str(v) for k, v in properties.items()})
        self.refresh()

    def get_properties(self) -> dict[str, str]:
        return self.refresh().properties

    # -- files ---------------------------------------------------------------------------------------
    def get_file_names(self) -> builtins.list[str]:
        """Names of the files stored with the run."""
        return sorted(self._store.list_files(self._id))

    def download_file(self, name: str, output_file_path: str | None = None,
                      _validate_checksum: bool = False) -> str:
        """Copy one file of the run to ``output_file_path`` (a file or a folder); return the path."""
        name = artifact_name(name)
        files = self._store.list_files(self._id)
        if name not in files:
            raise FileNotFoundError(f"run {self._id} has no file {name!r}; its files: "
                                    f"{', '.join(sorted(files)) or 'none'}")
        target = output_file_path or os.path.basename(name)
        if os.path.isdir(target):
            target = os.path.join(target, os.path.basename(name))
        self.experiment.workspace.artifacts.copy_to(files[name].digest, target)
        if _validate_checksum and sha256_file(target)[0] != files[name].digest:
            raise OSError(f"checksum mismatch for {name!r} downloaded to {target}")
        return target

    def download_files(self, prefix: str | None = None, output_directory: str | None = None,
                       output_paths: builtins.list[str] | None = None, batch_size: int = 100,
                       append_prefix: bool = True, timeout_seconds: int | None = None) -> builtins.list[str]:
        """Download every file under ``prefix`` (all files when None); return the local paths."""
        names = [n for n in self.get_file_names() if prefix is None or n.startswith(prefix)]
        if output_paths is not None and len(output_paths) != len(names):
            raise ValueError(f"output_paths has {len(output_paths)} entries for {len(names)} files")
        out = []
        for i, name in enumerate(names):
            if output_paths is not None:
                target = output_paths[i]
            else:
                rel = name if append_prefix or not prefix else name[len(prefix):].lstrip("/")
                target = os.path.join(output_directory or ".", rel)
            out.append(self.download_file(name, target))
        return out

    def get_all_logs(self, destination: str | None = None) -> builtins.list[str]:
        """Download the run's logs (to a folder named by the run id by default)."""
        destination = destination or os.path.join(os.getcwd(), self._id)
        return [p for prefix in ("system_logs/", "logs/")
                for p in self.download_files(prefix, output_directory=destination)]

    def upload_file(self, name: str, path_or_stream: Any, datastore_name: str | None = None) -> None:
        """Store a local file (or binary stream) with the run under ``name``."""
        artifacts = self.experiment.workspace.artifacts
        name = artifact_name(name)
        if isinstance(path_or_stream, (str, os.PathLike)):
            digest, size, _ = artifacts.put_file(os.fspath(path_or_stream))
        else:
            digest, size, _ = artifacts.put_stream(path_or_stream)
        self._store.add_file(self._id, name, digest, size)

    # -- snapshots ------------------------------------------------------------------------------------
    def get_snapshot_id(self) -> str | None:
        return self._record.snapshot_id

    def restore_snapshot(self, snapshot_id: str | None = None, path: str | None = None) -> str:
        """Write the snapshot as a zip file; return its path."""
        snapshot_id = snapshot_id or self._record.snapshot_id
        if snapshot_id is None:
            raise ValueError(f"run {self._id} has no snapshot")
        manifest = self._store.get_snapshot(snapshot_id)
        target = path or os.path.join(os.getcwd(), f"{snapshot_id}.zip")
        if os.path.isdir(target):
            target = os.path.join(target, f"{snapshot_id}.zip")
        return write_zip(manifest, self.experiment.workspace.artifacts, target)

    def __repr__(self) -> str:
        return f"Run(experiment={self.experiment.name!r}, id={self._id!r}, status={self.status!r})"
