"""Compute targets: how a job reaches an agent (one module each)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from rundock.errors import ConfigError
from rundock.history.records import RunRecord
from rundock.submitter.targets.local import LocalTarget

if TYPE_CHECKING:
    from rundock.submitter.workspace import Workspace


def get_target(workspace: Workspace, name: str | None) -> LocalTarget:
    """The compute target called ``name`` in ``workspace``."""
    if name in ("local", "", None):
        return LocalTarget(workspace)
    raise ConfigError(f"compute target {name!r} is not known; available targets: local", field="target")


def reap_lost(workspace: Workspace, run: RunRecord) -> None:
    """Kill what is left of a run whose agent was declared lost, where its target can."""
    if run.target == LocalTarget.name:
        LocalTarget(workspace).reap_lost(run)
