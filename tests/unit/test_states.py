from __future__ import annotations

import pytest

from rundock.states import TERMINAL, RunStatus, can_transition

S = RunStatus


@pytest.mark.parametrize("path", [
    [S.NOT_STARTED, S.STARTING, S.PREPARING, S.QUEUED, S.RUNNING, S.FINALIZING, S.COMPLETED],
    [S.NOT_STARTED, S.STARTING, S.PROVISIONING, S.PREPARING, S.QUEUED, S.RUNNING, S.FAILED],
    [S.NOT_STARTED, S.RUNNING, S.COMPLETED],  # an interactive run
    [S.STARTING, S.QUEUED, S.CANCEL_REQUESTED, S.FINALIZING, S.CANCELED],
])
def test_healthy_paths_are_allowed(path: list[RunStatus]) -> None:
    for current, target in zip(path, path[1:], strict=False):
        assert can_transition(current, target), f"{current} -> {target}"


@pytest.mark.parametrize("terminal", sorted(TERMINAL))
@pytest.mark.parametrize("late", list(RunStatus))
def test_terminal_statuses_are_sticky(terminal: RunStatus, late: RunStatus) -> None:
    assert not can_transition(terminal, late)


def test_no_status_moves_backwards() -> None:
    assert not can_transition(S.RUNNING, S.QUEUED)
    assert not can_transition(S.FINALIZING, S.RUNNING)
    assert not can_transition(S.CANCEL_REQUESTED, S.RUNNING)


def test_a_run_that_never_ran_cannot_complete() -> None:
    assert not can_transition(S.QUEUED, S.COMPLETED)
    assert can_transition(S.QUEUED, S.FAILED)
    assert can_transition(S.NOT_STARTED, S.CANCELED)


def test_not_responding_is_never_stored() -> None:
    assert not can_transition(S.RUNNING, S.NOT_RESPONDING)
    assert not can_transition(S.NOT_RESPONDING, S.RUNNING)
