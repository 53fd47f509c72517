"""The job description an agent runs: ``<run_dir>/job.json`` (standard library only)."""

from __future__ import annotations

import dataclasses
import json
import os
from typing import Any

from rundock.context.run import CANCEL_FILE

JOB_FILE = "job.json"
# The PYTHONPATH the user had, for the job: an agent's own PYTHONPATH (rundock, its packages) is not the job's.
ENV_USER_PYTHONPATH = "RUNDOCK_USER_PYTHONPATH"


@dataclasses.dataclass
class JobSpec:
    """Everything the agent needs, flattened so that it imports no config code."""

    run_id: str
    experiment: str
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
    secrets_file: str | None = None
    environment: dict[str, Any] = dataclasses.field(default_factory=dict)
    run_as: str = ""  # uid:gid of the submitting user, for containers

    def save(self, run_dir: str) -> str:
        path = os.path.join(run_dir, JOB_FILE)
        tmp = path + ".tmp"
        with open(tmp, "w", encoding="utf-8") as fh:
            json.dump(dataclasses.asdict(self), fh, indent=2)
        os.replace(tmp, path)
        return path

    @classmethod
    def load(cls, run_dir: str) -> JobSpec:
        with open(os.path.join(run_dir, JOB_FILE), encoding="utf-8") as fh:
            data: dict[str, Any] = json.load(fh)
        known = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})


def request_cancel(run_dir: str) -> None:
    """Leave the cancel request where the run's agent looks for it."""
    with open(os.path.join(run_dir, CANCEL_FILE), "a", encoding="utf-8"):
        pass


def cancel_requested(run_dir: str) -> bool:
    return os.path.exists(os.path.join(run_dir, CANCEL_FILE))
