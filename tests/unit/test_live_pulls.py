"""Live reads of remote runs (rundock.submitter.targets.live): rate limit, joined pulls, unreachable hosts.

The pulls here are functions the test drives (events, not sleeps); the interval comes from a fake clock.
"""

from __future__ import annotations

import threading
import uuid
import warnings
from collections.abc import Iterator

import pytest

from rundock.history import liveness
from rundock.history.records import RunRecord
from rundock.states import RunStatus
from rundock.submitter.ssh import SshError
from rundock.submitter.targets import live


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def host(monkeypatch: pytest.MonkeyPatch) -> Iterator[live.Host]:
    monkeypatch.setattr(live, "ANSWER_WAIT", 0.3)
    monkeypatch.setattr(live, "JOIN_UNREACHABLE", 0.05)
    yield live.host(f"/ws-{uuid.uuid4().hex}", "box", "target box (10.0.0.9)")


def _run_id() -> str:
    return f"run_{uuid.uuid4().hex[:8]}"


def _nothing() -> None:
    pass


def test_reads_inside_the_interval_share_one_pull(host: live.Host) -> None:
    clock, calls, run_id = Clock(), [], _run_id()
    for _ in range(50):  # a tight loop of reads
        live.read("ws", run_id, host, lambda a: calls.append(a), _nothing, clock=clock)
    assert len(calls) == 1 and live.PULLS[run_id] == 1
    clock.now += live.PULL_INTERVAL
    assert live.read("ws", run_id, host, lambda a: calls.append(a), _nothing, clock=clock) is True
    assert len(calls) == 2
    clock.now += 0.01
    assert live.read("ws", run_id, host, lambda a: calls.append(a), _nothing, force=True, clock=clock) is True
    assert len(calls) == 3  # a forced read (a cancel to deliver) does not wait for the interval


def test_a_pull_in_flight_is_joined_not_repeated(host: live.Host) -> None:
    run_id, release, started, calls = _run_id(), threading.Event(), threading.Event(), []

    def slow(attempt: live.Attempt) -> None:
        calls.append(attempt)
        started.set()
        while not release.wait(0.01):
            attempt.hear()  # the host keeps sending

    results: list[bool] = []
    readers = [threading.Thread(target=lambda: results.append(live.read("ws", run_id, host, slow, _nothing)))
               for _ in range(5)]
    for reader in readers:
        reader.start()
    assert started.wait(5)
    release.set()
    for reader in readers:
        reader.join(5)
    assert len(calls) == 1 and results.count(True) >= 1 and len(results) == 5


def test_an_unreachable_host_warns_once_per_run_and_shows_not_responding(host: live.Host) -> None:
    run_id = _run_id()
    clock = Clock()
    record = RunRecord(run_id=run_id, experiment="e", number=1, status=RunStatus.RUNNING, created_at=1.0, target="box",
                       run_type=liveness.AGENT_RUN_TYPE, last_heartbeat=1.0, heartbeat_interval=1.0)

    def refused(attempt: live.Attempt) -> None:
        raise SshError("cannot connect to root@10.0.0.9:22 (target box): connection refused", transient=True)

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert live.read("ws", run_id, host, refused, _nothing, clock=clock) is False
        assert liveness.shown_status(record) == RunStatus.NOT_RESPONDING
        for _ in range(3):
            clock.now += live.RETRY_SECONDS
            assert live.read("ws", run_id, host, refused, _nothing, clock=clock) is False
    shown = [w for w in caught if issubclass(w.category, live.HostUnreachableWarning)]
    assert len(shown) == 1 and "target box (10.0.0.9)" in str(shown[0].message) and run_id in str(shown[0].message)
    assert host.since is not None
    clock.now += live.RETRY_SECONDS
    assert live.read("ws", run_id, host, lambda a: None, _nothing, clock=clock) is True  # it answers again
    assert host.since is None and liveness.shown_status(record) == RunStatus.RUNNING


def test_a_silent_host_is_unreachable_after_the_answer_wait_and_its_stall_drops_the_connection(
        host: live.Host, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(live, "STALL_SECONDS", 0.2)
    run_id, release, dropped = _run_id(), threading.Event(), threading.Event()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert live.read("ws", run_id, host, lambda a: release.wait(10), dropped.set) is False
        assert dropped.wait(5)  # the watchdog closed the frozen connection
        assert host.since is not None
        # while the attempt hangs, reads return at once with what is stored, and warn no more
        assert live.read("ws", run_id, host, lambda a: None, _nothing) is False
    release.set()
    assert len([w for w in caught if issubclass(w.category, live.HostUnreachableWarning)]) == 1


def test_other_errors_reach_every_reader(host: live.Host) -> None:
    run_id = _run_id()

    def refused(attempt: live.Attempt) -> None:
        raise SshError("root@h refused the login")  # permanent: not an unreachable host

    with pytest.raises(SshError, match="refused the login"):
        live.read("ws", run_id, host, refused, _nothing)
    assert host.since is None
