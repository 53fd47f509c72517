"""Compute targets: how a job reaches an agent (one module each).

Every target offers the same operations: ``submit``, ``sync`` (bring the
history up to date with what the agent recorded), ``cancel`` and ``clean``.
Readers bring a run up to date through ``check`` (one policy for every reader).
"""

from __future__ import annotations

import logging
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Union

from rundock.errors import RundockError
from rundock.history.liveness import AGENT_OWNED, AGENT_RUN_TYPE, Liveness
from rundock.history.records import RunRecord
from rundock.submitter.targets import mirror
from rundock.submitter.targets.local import LocalTarget

if TYPE_CHECKING:
    from rundock.submitter.targets.pool import PoolTarget
    from rundock.submitter.targets.remote import RemoteTarget
    from rundock.submitter.workspace import Workspace

Target = Union[LocalTarget, "RemoteTarget", "PoolTarget"]
log = logging.getLogger(__name__)


def get_target(workspace: Workspace, name: str | None) -> Target:
    """The compute target called ``name`` in ``workspace`` (``local``, an attached host, or a team server's pool)."""
    if name in ("local", "", None):
        return LocalTarget(workspace)
    from rundock.submitter.targets.pool import PoolTarget, is_pool

    if is_pool(workspace, name):
        return PoolTarget(workspace, name)
    from rundock.submitter.targets.remote import RemoteTarget

    return RemoteTarget(workspace, name)


def waiting_reason(workspace: Workspace, run: RunRecord) -> str | None:
    """Why a pool run waits in its queue, as the server says it (None for any other run)."""
    from rundock.submitter.targets.pool import WAITING, PoolTarget, is_pool

    if run.status not in WAITING or not is_pool(workspace, run.target):
        return None
    return PoolTarget(workspace, run.target).waiting_reason(run)


def liveness(workspace: Workspace) -> Liveness:
    """The lost-run policy over this workspace's history (see rundock.history.liveness)."""
    return Liveness(workspace.store, workspace.artifacts)


def check(workspace: Workspace, run: RunRecord) -> RunRecord:
    """The run as it is now: pulled from its host (remote targets), or judged by the lost-run policy
    (this host's runs). Every reader goes through here or ``sweep``."""
    if run.status.is_terminal and (run.target in (LocalTarget.name, "sdk") or not mirror.cancel_pending(
            mirror.mirror_path(workspace.path, run.target, run.run_id))):  # (an abandoned run's cancel waits)
        return run
    if run.target == LocalTarget.name:
        return liveness(workspace).check(run)
    from rundock.submitter.targets.pool import is_pool

    if is_pool(workspace, run.target):  # the server judges a pool run's liveness
        return run
    if run.target != "sdk":  # a pull if one is due, shared per process (rundock.submitter.targets.live)
        from rundock.submitter.targets.remote import RemoteTarget

        return RemoteTarget(workspace, run.target).refresh(run)
    from rundock.submitter.interactive import ship_orphaned

    return ship_orphaned(workspace, run)


def sweep(workspace: Workspace) -> list[str]:
    """End every run of this host whose agent is lost (return their ids), and bring the live runs of remote
    hosts up to date (each as ``check`` does; one that cannot be checked is left as stored, with a warning)."""
    lost = liveness(workspace).sweep()
    remote = [r for r in workspace.store.list_runs(statuses=[s.value for s in AGENT_OWNED], run_type=AGENT_RUN_TYPE)
              if r.target not in (LocalTarget.name, "sdk")]
    if remote:
        with ThreadPoolExecutor(max_workers=min(8, len(remote))) as pool:  # their pulls overlap
            for run, error in zip(remote, pool.map(lambda r: _quietly(workspace, r), remote), strict=True):
                if error is not None:
                    log.warning("run %s on target %s could not be brought up to date: %s", run.run_id, run.target,
                                error)
    return lost


def _quietly(workspace: Workspace, run: RunRecord) -> RundockError | None:
    try:
        check(workspace, run)
    except RundockError as exc:
        return exc
    return None
