"""The job-side run: what a training script gets from ``Run.get_context()``.

Standard library only, so that the agent can put this package on the path of
any Python >= 3.8 (a container image, a bare remote host) without installing
anything. Inside a job every call becomes one journal record that the agent
ships to the run history; outside a job the run is offline and prints.
"""

from __future__ import annotations

import io
import json
import os
import shutil
import sys
import threading
import uuid
from typing import IO, Any, Callable

from rundock.context.journal import JournalWriter
from rundock.context.names import artifact_name, metric_name

ENV_RUN_ID = "RUNDOCK_RUN_ID"
ENV_RUN_DIR = "RUNDOCK_RUN_DIR"
ENV_EXPERIMENT = "RUNDOCK_EXPERIMENT"
ENV_DISPLAY_NAME = "RUNDOCK_DISPLAY_NAME"
UPLOADS_DIR = "uploads"
FAIL_FILE = "fail_requested.json"

_SCALARS = (int, float, bool, str)
Emit = Callable[..., None]


class ExperimentRef:
    """The experiment a job belongs to, as the job sees it (a name)."""

    def __init__(self, name: str) -> None:
        self.name = name

    def __str__(self) -> str:
        return self.name

    def __repr__(self) -> str:
        return f"Experiment(name={self.name!r})"


class Run:
    """A run seen from inside its own job (Azure ML's ``Run.get_context()``)."""

    _context: Run | None = None
    _context_lock = threading.Lock()

    def __init__(self, run_id: str, experiment: str, emit: Emit, *, run_dir: str | None = None,
                 display_name: str | None = None) -> None:
        self.id = run_id
        self.experiment = ExperimentRef(experiment)
        self.display_name = display_name or run_id
        self.run_dir = run_dir
        self._emit = emit
        self._steps: dict[str, bool] = {}
        self._tags: dict[str, str | None] = {}
        self._properties: dict[str, str] = {}

    # -- construction ---------------------------------------------------------
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

    # -- metrics --------------------------------------------------------------
    def log(self, name: str, value: Any, description: str = "", step: int | None = None) -> None:
        """Log a scalar; calling again with the same name builds a list."""
        metric_name(name)
        if not isinstance(value, _SCALARS) and value is not None:
            raise TypeError(f"metric {name!r}: log() takes a number, bool or string, not {type(value).__name__}; "
                            "use log_list or log_table for collections")
        has_step = step is not None
        if self._steps.setdefault(name, has_step) != has_step:
            raise ValueError(f"metric {name!r}: give 'step' for every value of a metric or for none")
        fields: dict[str, Any] = {"name": name, "kind": "scalar", "value": value}
        if has_step:
            fields["step"] = int(step)  # type: ignore[arg-type]
        if description:
            fields["description"] = description
        self._emit("metric", **fields)

    def log_list(self, name: str, value: list[Any], description: str = "") -> None:
        """Log a list of values as one metric."""
        metric_name(name)
        values = list(value)
        if any(not isinstance(v, _SCALARS) and v is not None for v in values):
            raise TypeError(f"metric {name!r}: log_list takes a list of numbers, bools or strings")
        self._emit("metric", name=name, kind="list", value=values, description=description)

    def log_row(self, name: str, description: str | None = None, **kwargs: Any) -> None:
        """Log one row of a table metric; each keyword is a column."""
        metric_name(name)
        if not kwargs:
            raise ValueError(f"metric {name!r}: log_row needs at least one column, e.g. log_row(name, x=1)")
        self._emit("metric", name=name, kind="row", value=dict(kwargs), description=description or "")

    def log_table(self, name: str, value: dict[str, list[Any]], description: str = "") -> None:
        """Log a table: a dict of columns (lists of equal length)."""
        metric_name(name)
        if not isinstance(value, dict) or not all(isinstance(c, (list, tuple)) for c in value.values()):
            raise TypeError(f"metric {name!r}: log_table takes a dict of columns, e.g. {{'x': [1, 2]}}")
        lengths = {len(c) for c in value.values()}
        if len(lengths) > 1:
            raise ValueError(f"metric {name!r}: table columns have different lengths {sorted(lengths)}")
        self._emit("metric", name=name, kind="table", value={k: list(v) for k, v in value.items()},
                   description=description)

    # -- tags and properties ----------------------------------------------------
    def tag(self, key: str, value: str | None = None) -> None:
        """Set one mutable tag."""
        self.set_tags({key: value})

    def set_tags(self, tags: dict[str, Any] | str) -> None:
        """Add or change tags; a string is a tag with value None."""
        values = {tags: None} if isinstance(tags, str) else dict(tags)
        values = {str(k): (None if v is None else str(v)) for k, v in values.items()}
        self._tags.update(values)
        self._emit("tags", values=values)

    def get_tags(self) -> dict[str, str | None]:
        """The tags this process has set."""
        return dict(self._tags)

    def add_properties(self, properties: dict[str, Any]) -> None:
        """Add immutable properties (an existing key cannot get a new value)."""
        values = {str(k): str(v) for k, v in properties.items()}
        for key, val in values.items():
            if key in self._properties and self._properties[key] != val:
                raise ValueError(f"property {key!r} is already {self._properties[key]!r}; properties are immutable")
        self._properties.update(values)
        self._emit("properties", values=values)

    # -- files ----------------------------------------------------------------
    def upload_file(self, name: str, path_or_stream: str | os.PathLike[str] | IO[bytes],
                    datastore_name: str | None = None) -> None:
        """Store a local file (or a binary stream) with the run under ``name``."""
        clean = artifact_name(name)
        if self.run_dir is None:
            self._emit("file", name=clean, path=str(path_or_stream))
            return
        staged = os.path.join(UPLOADS_DIR, uuid.uuid4().hex)
        target = os.path.join(self.run_dir, staged)
        os.makedirs(os.path.dirname(target), exist_ok=True)
        if isinstance(path_or_stream, (str, os.PathLike)):
            shutil.copyfile(path_or_stream, target)
        else:
            with open(target, "wb") as out:
                shutil.copyfileobj(path_or_stream, out)
        self._emit("file", name=clean, path=staged)

    # -- lifecycle --------------------------------------------------------------
    def flush(self, timeout_seconds: int = 300) -> None:
        """Records are durable when written; nothing waits in a queue."""

    def complete(self, _set_status: bool = True) -> None:
        """Inside a job the agent marks the run Completed when the script exits 0."""
        self.flush()

    def fail(self, error_details: Any = None, error_code: str | None = None, _set_status: bool = True) -> None:
        """Ask for the run to end Failed with these details, even if the script exits 0."""
        self._emit("fail", message=str(error_details or "run.fail() was called"), code=error_code or "UserError")

    def get_status(self) -> str:
        return "Running"

    def __enter__(self) -> Run:
        return self

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        if exc is not None:
            self.fail(error_details=repr(exc))
        self.complete()

    def __repr__(self) -> str:
        return f"Run(id={self.id!r}, experiment={self.experiment.name!r})"


class _LiveRun(Run):
    """A run inside a job; reopens its journal in forked children."""

    def _stale(self) -> bool:
        return self._pid != os.getpid()

    def __init__(self, run_id: str, experiment: str, run_dir: str, display_name: str | None) -> None:
        self._pid = os.getpid()
        self._writer = JournalWriter(run_dir, f"job-{self._pid}")
        super().__init__(run_id, experiment, self._write, run_dir=run_dir, display_name=display_name)

    def _write(self, record_type: str, /, **fields: Any) -> None:
        if self._pid != os.getpid():  # a forked child writes its own journal file
            self._pid = os.getpid()
            self._writer = JournalWriter(self.run_dir or ".", f"job-{self._pid}")
        if record_type == "fail":  # the agent reads this when the script exits
            path = os.path.join(self.run_dir or ".", FAIL_FILE)
            with open(path + ".tmp", "w", encoding="utf-8") as fh:
                json.dump({"code": fields["code"], "message": fields["message"]}, fh)
            os.replace(path + ".tmp", path)
        self._writer.append(record_type, **fields)


def _print_record(record_type: str, /, **fields: Any) -> None:
    out = io.StringIO()
    if record_type == "metric":
        print(f"Attempted to log {fields['kind']} metric {fields['name']}:\n{fields['value']}", file=out)
    elif record_type == "file":
        print(f"Attempted to upload file {fields['path']} as {fields['name']}", file=out)
    else:
        print(f"Attempted to set {record_type}: {fields.get('values', fields)}", file=out)
    sys.stdout.write(out.getvalue())


def _from_environment(allow_offline: bool) -> Run:
    run_id, run_dir = os.environ.get(ENV_RUN_ID), os.environ.get(ENV_RUN_DIR)
    if run_id and run_dir:
        return _LiveRun(run_id, os.environ.get(ENV_EXPERIMENT, ""), run_dir, os.environ.get(ENV_DISPLAY_NAME))
    if not allow_offline:
        raise RuntimeError("Run.get_context(allow_offline=False) was called outside a rundock job "
                           f"({ENV_RUN_ID} and {ENV_RUN_DIR} are not set)")
    return Run(f"OfflineRun_{uuid.uuid4()}", "offline", _print_record)
