from __future__ import annotations

from rundock.history.liveness import effective_status, is_lost
from rundock.history.records import RunRecord
from rundock.states import RunStatus


def _run(status: RunStatus = RunStatus.RUNNING, beat: float | None = 100.0) -> RunRecord:
    return RunRecord(run_id="e_1_abc", experiment="e", number=1, status=status, created_at=90.0,
                     last_heartbeat=beat, heartbeat_interval=2.0)


def test_a_live_lease_shows_the_stored_status() -> None:
    assert effective_status(_run(), now=105.0) == RunStatus.RUNNING


def test_an_expired_lease_shows_not_responding_and_recovers_when_beats_resume() -> None:
    run = _run()
    assert effective_status(run, now=107.0) == RunStatus.NOT_RESPONDING
    run.last_heartbeat = 106.5
    assert effective_status(run, now=107.0) == RunStatus.RUNNING


def test_finished_runs_never_show_not_responding() -> None:
    assert effective_status(_run(RunStatus.COMPLETED), now=10_000.0) == RunStatus.COMPLETED


def test_lost_after_the_limit_counting_from_creation_when_no_beat_came() -> None:
    assert not is_lost(_run(), now=150.0, lost_after=60.0)
    assert is_lost(_run(), now=161.0, lost_after=60.0)
    assert is_lost(_run(RunStatus.STARTING, beat=None), now=151.0, lost_after=60.0)
    assert not is_lost(_run(RunStatus.NOT_STARTED, beat=None), now=10_000.0, lost_after=60.0)
