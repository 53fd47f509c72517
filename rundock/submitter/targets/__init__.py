"""Compute targets: how a job reaches an agent (one module each).

Every target offers the same operations: ``submit``, ``sync`` (bring the
history up to date with what the agent recorded), ``cancel`` and ``clean``.
Readers bring a run up to date through ``check`` (one policy for every reader).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Union

from rundock.history.liveness import Liveness
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


def liveness(workspace: Workspace) -> Liveness:
    """The lost-run policy over this workspace's history (see rundock.history.liveness)."""
    return Liveness(workspace.store, workspace.artifacts)


def check(workspace: Workspace, run: RunRecord) -> RunRecord:
    """The run as it is now: pulled from its host (remote targets), or judged by the lost-run policy
    (this host's runs). Every reader goes through here or ``sweep``."""
    if run.status.is_terminal:
        return run
    if run.target == LocalTarget.name:
        return liveness(workspace).check(run)
    if run.target != "sdk":
        get_target(workspace, run.target).sync(run)
        return workspace.store.get_run(run.run_id)
    from rundock.submitter.interactive import ship_orphaned

    return ship_orphaned(workspace, run)


def sweep(workspace: Workspace) -> list[str]:
    """End every run of this host whose agent is lost; return their ids."""
    return liveness(workspace).sweep()
