"""The job-side run: what a training script gets from ``Run.get_context()``.

Standard library only, so that the agent can put this package on the path of
any Python >= 3.8 (a container image, a bare remote host) without installing
anything. Inside a job every call becomes one journal record that the agent
ships to the run history; outside a job the run is offline and prints.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import threading
import time
import uuid
from typing import Any, Callable

from rundock.context import rundir
from rundock.context.config import child_request
from rundock.context.journal import JournalWriter, ScalarFormatter
from rundock.context.recorder import PathOrStream, RunRecorder, child_tags
from rundock.context.records import check_run_id

ENV_RUN_ID = "RUNDOCK_RUN_ID"
ENV_RUN_DIR = "RUNDOCK_RUN_DIR"
ENV_EXPERIMENT = "RUNDOCK_EXPERIMENT"
ENV_DISPLAY_NAME = "RUNDOCK_DISPLAY_NAME"
ENV_SECRETS_FILE = "RUNDOCK_SECRETS_FILE"
ENV_WORKSPACE_NAME = "RUNDOCK_WORKSPACE_NAME"
UPLOADS_DIR = rundir.UPLOADS_DIR
FAIL_FILE = rundir.FAIL_FILE
CANCEL_FILE = rundir.JOB_CANCEL_FILE
SUBMIT_POLL_SECONDS = 0.05  # how often submit_child looks for the agent's answer
SUBMIT_TIMEOUT_SECONDS = 300.0
STATUS_POLL_SECONDS = 0.25  # how often a submitted child's wait_for_completion reads its status
TERMINAL_STATUSES = ("Completed", "Failed", "Canceled")

Emit = Callable[..., None]
_INF = float("inf")


class WorkspaceRef:
    """The workspace a job's run belongs to, as the job sees it: a name (``RUNDOCK_WORKSPACE_NAME``, else
    "local") and Azure ML v1's descriptive attributes with local values."""

    def __init__(self, name: str | None = None) -> None:
        self.name = name or os.environ.get(ENV_WORKSPACE_NAME) or "local"
        self.location = self.subscription_id = self.resource_group = "local"

    def __repr__(self) -> str:
        return f"Workspace(name={self.name!r})"


class ExperimentRef:
    """The experiment a job belongs to, as the job sees it (a name, and ``workspace``: a WorkspaceRef)."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.workspace = WorkspaceRef()

    def __str__(self) -> str:
        return self.name

    def __repr__(self) -> str:
        return f"Experiment(name={self.name!r})"


class Run(RunRecorder):
    """A run seen from inside its own job (Azure ML's ``Run.get_context()``)."""

    _context: Run | None = None
    _context_lock = threading.Lock()

    def __init__(self, run_id: str, experiment: str, emit: Emit, *, run_dir: str | None = None,
                 display_name: str | None = None, parent: Run | None = None,
                 outputs: str | None = None) -> None:
        super().__init__()
        self.id = run_id
        self.experiment = ExperimentRef(experiment)
        self.display_name = display_name or run_id
        self.run_dir = run_dir
        self.parent = parent
        self._outputs = outputs
        self._write = emit

    # -- construction ---------------------------------------------------------------------
    @classmethod
    def get_context(cls, allow_offline: bool = True, used_for_context_manager: bool = False,
                    **kwargs: Any) -> Run:
        """The current run inside a job; an offline run that prints outside one."""
        with cls._context_lock:
            if cls._context is None or cls._context._stale():
                cls._context = _from_environment(allow_offline)
            return cls._context

    @classmethod
    def get_submitted_run(cls, **kwargs: Any) -> Run:
        """Deprecated: use ``get_context``."""
        return cls.get_context(**kwargs)

    def _stale(self) -> bool:
        return False

    @property
    def name(self) -> str:
        """Deprecated: use ``display_name``."""
        return self.display_name

    # -- recording ----------------------------------------------------------------------------
    def _emit(self, record_type: str, /, **fields: Any) -> None:
        self._write(record_type, **fields)

    def _stage_file(self, path_or_stream: PathOrStream) -> dict[str, Any]:
        if self.run_dir is None:  # offline: nothing to keep
            return {"path": str(path_or_stream)}
        staged = os.path.join(UPLOADS_DIR, uuid.uuid4().hex)
        target = os.path.join(self.run_dir, staged)
        os.makedirs(os.path.dirname(target), exist_ok=True)
        if isinstance(path_or_stream, (str, os.PathLike)):
            shutil.copyfile(path_or_stream, target)
        else:
            with open(target, "wb") as out:
                shutil.copyfileobj(path_or_stream, out)
        return {"path": staged}

    def get_tags(self) -> dict[str, str | None]:
        """The tags set from this process."""
        return dict(self._tags)

    def get_properties(self) -> dict[str, str]:
        """The properties set from this process."""
        return dict(self._properties)

    # -- child runs ------------------------------------------------------------------------------
    def child_run(self, name: str | None = None, run_id: str | None = None,
                  outputs: str | None = None) -> Run:
        """A started child run; its ``outputs`` folder is stored with it when it completes."""
        return self._new_child(name, run_id, outputs, {})

    def create_children(self, count: int | None = None, tag_key: str | None = None,
                        tag_values: list[str] | None = None) -> list[Run]:
        """Several started children: ``count`` of them, or one per value of ``tag_values``."""
        return [self._new_child(None, None, None, tags) for tags in child_tags(count, tag_key, tag_values)]

    def _new_child(self, name: str | None, run_id: str | None, outputs: str | None,
                   tags: dict[str, str]) -> Run:
        child_id = run_id or f"{self.id}_{uuid.uuid4().hex[:8]}"
        check_run_id(child_id)
        parent_write = self._write

        def write(record_type: str, /, **fields: Any) -> None:
            parent_write(record_type, **{"run": child_id, **fields})

        write("child", parent=self.id, name=name, tags=tags)
        child = Run(child_id, self.experiment.name, write, run_dir=self.run_dir, display_name=name, parent=self,
                    outputs=outputs)
        child._tags.update(tags)
        return child

    def submit_child(self, config: Any, tags: dict[str, str] | None = None, **kwargs: Any) -> Run:
        """Submit a child job (``config``: a ScriptRunConfig whose ``source_directory`` is inside this job's
        working directory) through the job's agent; return the child, a run with ``get_status()`` and
        ``wait_for_completion()``. It runs on ``config``'s compute target (default: this run's), in this
        run's environment (``config.environment`` is not used)."""
        if self.run_dir is None or self.parent is not None:
            where = "an offline run (outside a rundock job)" if self.run_dir is None else "a child run"
            raise RuntimeError(f"submit_child() is not available on {where}; call it on the job's own run "
                               "(Run.get_context() inside a job), or from the submitting side call "
                               f"Run.get(workspace, run_id).submit_child(config)")
        request = child_request(config, tags)
        requests = os.path.join(self.run_dir, rundir.REQUESTS_DIR)
        os.makedirs(requests, exist_ok=True)
        path = os.path.join(requests, f"{rundir.SUBMIT_PREFIX}{uuid.uuid4().hex}")
        with open(path + ".json.tmp", "w", encoding="utf-8") as fh:
            json.dump(request, fh)
        os.replace(path + ".json.tmp", path + ".json")
        answer = _wait_for_answer(path + rundir.ANSWER_SUFFIX)
        if not isinstance(answer.get("run_id"), str):
            raise RuntimeError(f"submit_child() failed: {answer.get('error') or 'the agent gave no run id'}")
        return _SubmittedRun(answer["run_id"], self)

    # -- lifecycle ------------------------------------------------------------------------------
    def start(self) -> None:
        """Mark the run Running (a job's own run already is: its agent says so)."""
        if self.parent is not None:
            self._emit("state", status="Running", detail="started")

    def flush(self, timeout_seconds: int = 300) -> None:
        """Records are durable when written; nothing waits in a queue."""

    def complete(self, _set_status: bool = True) -> None:
        """A child: store its outputs folder and mark it Completed. The job's own run ends when the script exits."""
        if self.parent is None:
            return
        if self._outputs and os.path.isdir(self._outputs):
            self.upload_folder("outputs", self._outputs)
        if _set_status:
            self._emit("state", status="Completed", detail="child run completed")

    def fail(self, error_details: Any = None, error_code: str | None = None, _set_status: bool = True) -> None:
        """Mark the run Failed with these details (the job's own run: once the script exits)."""
        error = {"code": error_code or "UserError", "message": str(error_details or "run.fail() was called")}
        if self.parent is None and self.run_dir is not None:  # the agent ends the run after storing outputs
            path = os.path.join(self.run_dir, FAIL_FILE)
            os.makedirs(os.path.dirname(path), exist_ok=True)
            with open(path + ".tmp", "w", encoding="utf-8") as fh:
                json.dump(error, fh)
            os.replace(path + ".tmp", path)
        elif _set_status:
            self._emit("state", status="Failed", detail="run.fail() was called", error=error)

    def cancel(self) -> None:
        """Cancel this run: a child at once; the job's own run through its agent."""
        if self.parent is not None:
            self._emit("state", status="Canceled", detail="canceled by its job")
        elif self.run_dir is not None:
            path = os.path.join(self.run_dir, CANCEL_FILE)
            os.makedirs(os.path.dirname(path), exist_ok=True)
            with open(path, "a", encoding="utf-8"):
                pass

    def get_status(self) -> str:
        return "Running"

    # -- secrets --------------------------------------------------------------------------------
    def get_secret(self, name: str) -> str:
        """The value of the workspace secret ``name``."""
        value = self.get_secrets([name])[name]
        if value is None:
            raise KeyError(f"secret {name!r} is not available to this run: add it to the workspace with "
                           f"`rundock secret set {name}` and, for a run on another host, list it in the run "
                           f"configuration's `secrets` (only the secrets named there travel to a remote host)")
        return value

    def get_secrets(self, secrets: list[str]) -> dict[str, str | None]:
        """Values of the named secrets; None for each name not found."""
        path = os.environ.get(ENV_SECRETS_FILE)
        known: dict[str, str] = {}
        if path and os.path.exists(path):
            with open(path, encoding="utf-8") as fh:
                known = json.load(fh)
        elif self.run_dir is None:  # offline: secrets come from the environment
            known = {name: os.environ[name] for name in secrets if name in os.environ}
        return {name: known.get(name) for name in secrets}

    def __repr__(self) -> str:
        return f"Run(id={self.id!r}, experiment={self.experiment.name!r})"


class _LiveRun(Run):
    """The job's own run; a forked child process writes its own journal file."""

    def __init__(self, run_id: str, experiment: str, run_dir: str, display_name: str | None) -> None:
        self._pid = os.getpid()
        self._writer = JournalWriter(run_dir, rundir.job_source(self._pid))
        self._scalars = ScalarFormatter()
        super().__init__(run_id, experiment, self._journal, run_dir=run_dir, display_name=display_name)

    def _stale(self) -> bool:
        return self._pid != os.getpid()

    def _log_scalar(self, name: str, value: Any) -> bool:
        if self._pid != os.getpid():
            return False
        self._writer.append_raw("metric", self._scalars.body(name, value))
        return True

    def _journal(self, record_type: str, /, **fields: Any) -> None:
        if self._pid != os.getpid():
            self._pid = os.getpid()
            self._writer = JournalWriter(self.run_dir or ".", rundir.job_source(self._pid))
        self._writer.append(record_type, **fields)


class _SubmittedRun(Run):
    """A child job submitted by this job: its status is what the agent last wrote to
    ``requests/children/<id>.json``; it records nothing from here (it is a job of its own)."""

    def __init__(self, run_id: str, parent: Run) -> None:
        super().__init__(run_id, parent.experiment.name, _refuse_records, run_dir=parent.run_dir, parent=parent)
        self._status_path = os.path.join(parent.run_dir or ".", rundir.CHILDREN_DIR, f"{run_id}.json")
        self._snapshot: dict[str, Any] = {"status": "NotStarted", "error": None}

    def _read(self) -> dict[str, Any]:
        try:
            with open(self._status_path, encoding="utf-8") as fh:
                data = json.load(fh)
            if isinstance(data, dict) and isinstance(data.get("status"), str):
                self._snapshot = data
        except (OSError, ValueError):
            pass  # not written yet: the last status read stands
        return self._snapshot

    def get_status(self) -> str:
        return str(self._read()["status"])

    def wait_for_completion(self, show_output: bool = False, wait_post_processing: bool = False,
                            raise_on_error: bool = True) -> dict[str, Any]:
        """Wait until the child job ends; raise RuntimeError if it failed (when ``raise_on_error``)."""
        seen = None
        while True:
            snapshot = self._read()
            status = snapshot["status"]
            if show_output and status != seen:
                sys.stdout.write(f"RunId: {self.id} Status: {status}\n")
            seen = status
            if status in TERMINAL_STATUSES:
                break
            time.sleep(STATUS_POLL_SECONDS)
        if status == "Failed" and raise_on_error:
            raise RuntimeError(f"child run {self.id} failed: {snapshot.get('error')}")
        return {"runId": self.id, "status": status, "error": snapshot.get("error")}

    def __repr__(self) -> str:
        return f"Run(id={self.id!r}, experiment={self.experiment.name!r}, submitted)"


def _refuse_records(record_type: str, /, **fields: Any) -> None:
    raise RuntimeError("a child job submitted with submit_child() records from its own script, not from its "
                       "parent's; and it ends when its script does")


def _wait_for_answer(path: str) -> dict[str, Any]:
    deadline = time.monotonic() + SUBMIT_TIMEOUT_SECONDS
    while True:
        try:
            with open(path, encoding="utf-8") as fh:
                answer = json.load(fh)
            if isinstance(answer, dict):
                return answer
        except (OSError, ValueError):
            pass  # not there yet, or still being written
        if time.monotonic() > deadline:
            raise RuntimeError(f"submit_child(): the run's agent did not answer within {SUBMIT_TIMEOUT_SECONDS:g} s "
                               f"(no {path}); is the agent still running?")
        time.sleep(SUBMIT_POLL_SECONDS)


def _print_record(record_type: str, /, **fields: Any) -> None:
    if record_type == "metric":
        text = f"Attempted to log {fields['kind']} metric {fields['name']}:\n{fields['value']}"
    elif record_type == "file":
        text = f"Attempted to upload file {fields.get('path')} as {fields['name']}"
    elif record_type == "child":
        text = f"Attempted to create child run {fields.get('run')}"
    else:
        text = f"Attempted to set {record_type}: {fields.get('values', fields)}"
    sys.stdout.write(text + "\n")


def _from_environment(allow_offline: bool) -> Run:
    run_id, run_dir = os.environ.get(ENV_RUN_ID), os.environ.get(ENV_RUN_DIR)
    if run_id and run_dir:
        return _LiveRun(run_id, os.environ.get(ENV_EXPERIMENT, ""), run_dir, os.environ.get(ENV_DISPLAY_NAME))
    if not allow_offline:
        raise RuntimeError("Run.get_context(allow_offline=False) was called outside a rundock job "
                           f"({ENV_RUN_ID} and {ENV_RUN_DIR} are not set)")
    return Run(f"OfflineRun_{uuid.uuid4()}", "offline", _print_record)
