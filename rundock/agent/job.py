"""The job description an agent runs: ``<run_dir>/job.json`` (standard library only).

One typed request for every path (local process, Docker, an SSH host): the
submitter builds a ``JobSpec``, writes it with ``save`` (or sends ``to_dict``
to a host, whose ``start`` writes it), and the agent reads it with ``load``,
which checks every field's type and refuses unknown modes and non-finite
numbers with an error naming the field.
"""

from __future__ import annotations

import dataclasses
import errno
import json
import math
import os
from typing import Any

from rundock.context import rundir

JOB_FILE = rundir.JOB_FILE
# The PYTHONPATH the user had, for the job: an agent's own PYTHONPATH (rundock, its packages) is not the job's.
ENV_USER_PYTHONPATH = "RUNDOCK_USER_PYTHONPATH"

# How the agent reaches the run history.
MODE_STORE = "store"  # it writes the history at ``store_uri`` itself (local and Docker runs)
MODE_JOURNAL = "journal"  # it keeps everything in the run directory for the submitter to pull (SSH hosts)
MODES = (MODE_STORE, MODE_JOURNAL)
# ``JobSpec.distributed``: the processes the agent starts on this one node (``rundock.agent.launch``).
DISTRIBUTED_KINDS = ("pytorch", "mpi")
DISTRIBUTED_LAUNCHERS = ("per-process", "torchrun")
DISTRIBUTED_KEYS = ("kind", "process_count_per_node", "launcher")


class JobSpecError(ValueError):
    """A job file is missing, unreadable or has a field of the wrong kind."""


@dataclasses.dataclass
class JobSpec:
    """Everything the agent needs, flattened so that it imports no config code."""

    run_id: str
    experiment: str
    mode: str
    store_uri: str
    artifacts_root: str
    snapshot_id: str
    script: str
    interpreter: str
    arguments: list[str] = dataclasses.field(default_factory=list)
    environment_variables: dict[str, str] = dataclasses.field(default_factory=dict)
    display_name: str | None = None
    attempt: int = 0
    max_run_duration_seconds: float = 30 * 24 * 3600
    cancel_grace_seconds: float = 10.0
    heartbeat_seconds: float = 2.0
    slots_dir: str | None = None
    max_concurrent_runs: int = 1
    target: str = "local"
    submitted_at: float = 0.0
    secrets_file: str | None = None  # where the submitter left the secrets this run may read (removed at the end)
    environment: dict[str, Any] = dataclasses.field(default_factory=dict)
    run_as: str = ""  # uid:gid of the submitting user, for containers
    workspace_name: str = ""  # what ``run.experiment.workspace.name`` says inside the job
    workspace_path: str = ""  # the submitting workspace (local runs): where the job's submit_child requests go
    shown_script: str = ""  # the user's script when ``script`` is a launcher that starts it (multi-node runs)
    # {"kind", "process_count_per_node", "launcher"} of a distributed run on this one node: the agent starts the
    # script through ``rundock.agent.launch`` as node 0 of 1 (None: the script runs as it is)
    distributed: dict[str, Any] | None = None

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        """Raise JobSpecError naming the first field that is not what the agent expects."""
        for name in ("run_id", "experiment", "mode", "store_uri", "artifacts_root", "snapshot_id", "script",
                     "interpreter", "target", "run_as", "workspace_name", "workspace_path", "shown_script"):
            if not isinstance(getattr(self, name), str):
                raise JobSpecError(f"job field {name!r} must be a string, got {getattr(self, name)!r}")
        if self.mode not in MODES:
            raise JobSpecError(f"job field 'mode' must be one of {', '.join(MODES)}, got {self.mode!r}")
        if self.mode == MODE_STORE and not self.store_uri:
            raise JobSpecError("job field 'store_uri' is empty, but mode 'store' writes the run history there")
        for name in ("max_run_duration_seconds", "cancel_grace_seconds", "heartbeat_seconds", "submitted_at"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) \
                    or value < 0:
                raise JobSpecError(f"job field {name!r} must be a finite number >= 0, got {value!r}")
        if self.heartbeat_seconds <= 0:
            raise JobSpecError(f"job field 'heartbeat_seconds' must be above 0, got {self.heartbeat_seconds!r}")
        for name in ("attempt", "max_concurrent_runs"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise JobSpecError(f"job field {name!r} must be a whole number >= 0, got {value!r}")
        if not isinstance(self.arguments, list) or not all(isinstance(a, str) for a in self.arguments):
            raise JobSpecError("job field 'arguments' must be a list of strings")
        if not isinstance(self.environment_variables, dict) or not all(
                isinstance(k, str) and isinstance(v, str) for k, v in self.environment_variables.items()):
            raise JobSpecError("job field 'environment_variables' must map strings to strings")
        if not isinstance(self.environment, dict):
            raise JobSpecError("job field 'environment' must be an object")
        if self.distributed is not None:
            _validate_distributed(self.distributed)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def save(self, run_dir: str) -> str:
        path = os.path.join(run_dir, JOB_FILE)
        tmp = path + ".tmp"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            json.dump(self.to_dict(), fh, indent=2)
        os.replace(tmp, path)
        return path

    @classmethod
    def from_dict(cls, data: Any, source: str = "the job") -> JobSpec:
        if not isinstance(data, dict):
            raise JobSpecError(f"{source} must be a JSON object")
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise JobSpecError(f"{source} has unknown fields {', '.join(unknown)} (an agent of another version?)")
        try:
            return cls(**data)
        except TypeError as exc:
            raise JobSpecError(f"{source} is incomplete: {exc}") from None

    @classmethod
    def load(cls, run_dir: str) -> JobSpec:
        path = os.path.join(run_dir, JOB_FILE)
        try:
            with open(path, encoding="utf-8") as fh:
                data = json.load(fh)
        except (OSError, ValueError) as exc:
            raise JobSpecError(f"cannot read the job file {path}: {exc}") from None
        return cls.from_dict(data, source=path)


def _validate_distributed(value: Any) -> None:
    if not isinstance(value, dict) or sorted(value) != sorted(DISTRIBUTED_KEYS):
        raise JobSpecError(f"job field 'distributed' must be null or an object with exactly the keys "
                           f"{', '.join(DISTRIBUTED_KEYS)}, got {value!r}")
    if value["kind"] not in DISTRIBUTED_KINDS:
        raise JobSpecError(f"job field 'distributed.kind' must be one of {', '.join(DISTRIBUTED_KINDS)}, "
                           f"got {value['kind']!r}")
    count = value["process_count_per_node"]
    if isinstance(count, bool) or not isinstance(count, int) or count < 1:
        raise JobSpecError(f"job field 'distributed.process_count_per_node' must be a whole number >= 1, "
                           f"got {count!r}")
    if value["launcher"] not in DISTRIBUTED_LAUNCHERS:
        raise JobSpecError(f"job field 'distributed.launcher' must be one of {', '.join(DISTRIBUTED_LAUNCHERS)}, "
                           f"got {value['launcher']!r}")


def request_cancel(run_dir: str) -> None:
    """Leave the cancel request where the run's agent looks for it (the run directory itself, which the
    job cannot write in a container; created without following a link, so a job cannot make this write
    elsewhere)."""
    flags = os.O_WRONLY | os.O_CREAT | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0)
    try:
        os.close(os.open(os.path.join(run_dir, rundir.CANCEL_FILE), flags, 0o600))
    except OSError as exc:
        if exc.errno != errno.ELOOP:  # a link put there: the request exists already, as a name
            raise


def cancel_requested(run_dir: str) -> bool:
    """Whether the submitter or the job asked to cancel (a link counts as a request; it is never followed)."""
    return any(os.path.lexists(os.path.join(run_dir, name)) for name in (rundir.CANCEL_FILE, rundir.JOB_CANCEL_FILE))
