"""Run statuses and the one transition table every writer goes through.

Standard library only: the agent and the job side import it too.
"""

from __future__ import annotations

import enum


class RunStatus(str, enum.Enum):
    """The status of a run, with Azure ML v1's names."""

    NOT_STARTED = "NotStarted"
    STARTING = "Starting"
    PROVISIONING = "Provisioning"
    PREPARING = "Preparing"
    QUEUED = "Queued"
    RUNNING = "Running"
    FINALIZING = "Finalizing"
    CANCEL_REQUESTED = "CancelRequested"
    COMPLETED = "Completed"
    FAILED = "Failed"
    CANCELED = "Canceled"
    NOT_RESPONDING = "NotResponding"

    def __str__(self) -> str:
        return self.value

    @property
    def is_terminal(self) -> bool:
        return self in TERMINAL


TERMINAL = frozenset({RunStatus.COMPLETED, RunStatus.FAILED, RunStatus.CANCELED})

# The forward path of a healthy run; a run may skip steps (start_logging goes
# straight from NotStarted to Running) but never moves backwards.
_FORWARD = (
    RunStatus.NOT_STARTED,
    RunStatus.STARTING,
    RunStatus.PROVISIONING,
    RunStatus.PREPARING,
    RunStatus.QUEUED,
    RunStatus.RUNNING,
    RunStatus.FINALIZING,
)

# Which statuses may end in Completed: a run that never ran cannot complete.
_MAY_COMPLETE = frozenset({RunStatus.RUNNING, RunStatus.FINALIZING, RunStatus.CANCEL_REQUESTED})


def can_transition(current: RunStatus | str, target: RunStatus | str) -> bool:
    """Whether a run in ``current`` may move to ``target``.

    Terminal statuses are sticky; NotResponding is never stored (it is derived
    from an expired heartbeat lease when a run is read).
    """
    cur, tgt = RunStatus(current), RunStatus(target)
    if cur in TERMINAL or cur == tgt or RunStatus.NOT_RESPONDING in (cur, tgt):
        return False
    if tgt == RunStatus.COMPLETED:
        return cur in _MAY_COMPLETE
    if tgt in TERMINAL or tgt == RunStatus.CANCEL_REQUESTED:
        return True
    if cur == RunStatus.CANCEL_REQUESTED:
        return tgt == RunStatus.FINALIZING
    return _FORWARD.index(tgt) > _FORWARD.index(cur)
