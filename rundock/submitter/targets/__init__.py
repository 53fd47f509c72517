"""Compute targets: how a job reaches an agent (one module each)."""

from __future__ import annotations

from rundock.errors import ConfigError
from rundock.submitter.targets.local import LocalTarget
from rundock.submitter.workspace import Workspace


def get_target(workspace: Workspace, name: str) -> LocalTarget:
    """The compute target called ``name`` in ``workspace``."""
    if name in ("local", "", None):
        return LocalTarget(workspace)
    raise ConfigError(f"compute target {name!r} is not known; available targets: local", field="target")
