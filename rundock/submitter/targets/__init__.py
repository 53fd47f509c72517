"""Compute targets: how a job reaches an agent (one module each).

Every target offers the same operations: ``submit``, ``sync`` (bring the
history up to date with what the agent recorded), ``cancel``, ``clean`` and
``reap_lost``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Union

from rundock.history.records import RunRecord
from rundock.submitter.targets.local import LocalTarget

if TYPE_CHECKING:
    from rundock.submitter.targets.remote import RemoteTarget
    from rundock.submitter.workspace import Workspace

Target = Union[LocalTarget, "RemoteTarget"]


def get_target(workspace: Workspace, name: str | None) -> Target:
    """The compute target called ``name`` in ``workspace`` (``local`` or an attached host)."""
    if name in ("local", "", None):
        return LocalTarget(workspace)
    from rundock.submitter.targets.remote import RemoteTarget

    return RemoteTarget(workspace, name)


def reap_lost(workspace: Workspace, run: RunRecord) -> None:
    """Kill what is left of a run whose agent was declared lost, where its target can."""
    if run.target == LocalTarget.name:
        LocalTarget(workspace).reap_lost(run)


def sync(workspace: Workspace, run: RunRecord) -> None:
    """Bring the run's history up to date with its agent (a pull for remote hosts)."""
    if run.target not in (LocalTarget.name, "sdk") and not run.status.is_terminal:
        get_target(workspace, run.target).sync(run)
