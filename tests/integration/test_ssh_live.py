"""Live reads of SSH runs, and a host that stops answering mid-run, against a real OpenSSH server.

The host is a container of the test base image running sshd on a loopback port (see tests/hosts.py);
``docker pause`` freezes it (sshd, the agent and the job alike): connections stay open and nothing
answers, which is what a host that hangs or a network that drops packets looks like. Every wait polls
with a deadline.
"""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path

import docker
import pytest

from rundock import Run
from rundock.submitter.targets import live, remote
from rundock.submitter.targets import mirror as mirrors
from rundock.submitter.targets.remote import RemoteTarget, abandon
from rundock.submitter.workspace import Workspace
from tests.conftest import wait_until
from tests.hosts import SshHost, running_ssh_host
from tests.integration.test_ssh import _remote_processes, _rundock, _statuses, _submit, attach_box


@pytest.fixture(scope="module")
def host(tmp_path_factory: pytest.TempPathFactory, docker_base_image: str) -> Iterator[SshHost]:
    with running_ssh_host(docker_base_image, tmp_path_factory.mktemp("sshd-live")) as started:
        try:
            yield started
        finally:
            container = docker.from_env().containers.get(started.container)
            if container.status == "paused":
                container.unpause()


@pytest.fixture
def box(workspace: Workspace, host: SshHost, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> RemoteTarget:
    monkeypatch.setattr(live, "ANSWER_WAIT", 1.5)  # (10 s by default) a frozen host is found out quickly here
    monkeypatch.setattr(live, "STALL_SECONDS", 2.0)
    return attach_box(workspace, host, tmp_path, monkeypatch)


class Paused:
    """The host frozen (``docker pause``) for the ``with`` block; unpaused however the block ends."""

    def __init__(self, host: SshHost) -> None:
        self.container = docker.from_env().containers.get(host.container)

    def __enter__(self) -> Paused:
        self.container.pause()
        return self

    def resume(self) -> None:
        self.container.reload()
        if self.container.status == "paused":
            self.container.unpause()

    def __exit__(self, *exc: object) -> None:
        self.resume()


class Waiter(threading.Thread):
    """``run.wait_for_completion()`` in a thread, with what it returned or raised."""

    def __init__(self, run: Run) -> None:
        super().__init__(daemon=True)
        self.run_ = run
        self.result: dict[str, object] | None = None
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            self.result = self.run_.wait_for_completion(raise_on_error=False)
        except BaseException as exc:
            self.error = exc

    def finish(self, timeout: float) -> None:
        self.join(timeout)
        assert not self.is_alive(), f"wait_for_completion() still waiting after {timeout} s"
        assert self.error is None, self.error


def _job(count: int | None) -> str:
    loop = f"range({count})" if count is not None else "range(10**6)"
    return f"""
import time
from rundock import Run
run = Run.get_context()
for i in {loop}:
    run.log("v", i)
    time.sleep(0.2)
"""


def _count(metrics: dict[str, object]) -> int:
    """How many values of "v" (get_metrics gives a lone value as it is, not as a list)."""
    value = metrics.get("v")
    return 0 if value is None else len(value) if isinstance(value, list) else 1


def _unreachable_warnings(caught: list[warnings.WarningMessage]) -> list[str]:
    return [str(w.message) for w in caught if issubclass(w.category, live.HostUnreachableWarning)]


def test_polling_metrics_sees_a_live_run_grow_with_a_bounded_number_of_pulls(
        workspace: Workspace, box: RemoteTarget, source: Callable[..., Path]) -> None:
    run = _submit(workspace, source(**{"train.py": _job(25)}))
    seen: list[int] = []
    before, started = remote.COMMANDS["pull"], time.monotonic()
    deadline = started + 60
    while time.monotonic() < deadline:
        count = _count(run.get_metrics())  # nothing else reads the run meanwhile
        if run._record.status.value == "Running" and (not seen or count != seen[-1]):
            seen.append(count)
        if run._record.status.is_terminal:
            break
        time.sleep(0.005)  # a tight loop: hundreds of reads
    elapsed = time.monotonic() - started
    pulls = remote.COMMANDS["pull"] - before
    assert run._record.status.value == "Completed"
    assert len(seen) >= 4 and seen == sorted(seen) and 0 < seen[-2] < 25, seen  # it grew while Running
    assert pulls <= elapsed / live.PULL_INTERVAL + 3, (pulls, elapsed)  # not one SSH session per read
    assert run.get_metrics() == {"v": list(range(25))}


def _logged_on_host(host: SshHost, run_dir: str) -> int:
    """How many values the job has logged, read on the host (without a pull)."""
    return int(host.sh(f"import glob; print(sum(open(p).read().count('\"metric\"') for p in "
                       f"glob.glob({run_dir!r} + '/journal/job-*.jsonl')))"))


def test_the_cli_shows_a_live_remote_run_as_it_is(workspace: Workspace, box: RemoteTarget, host: SshHost,
                                                  source: Callable[..., Path]) -> None:
    run = _submit(workspace, source(**{"train.py": _job(40)}))
    wait_until(lambda: _count(run.get_metrics()) >= 2, timeout=30, message="the first values")
    shown = json.loads(_rundock(workspace, "metrics", run.id, "--json").stdout)  # a fresh process pulls itself
    assert _count(shown) >= 2 and shown["v"] == list(range(_count(shown)))
    later = wait_until(lambda: (json.loads(_rundock(workspace, "metrics", run.id, "--json").stdout)
                                if _count(run.get_metrics()) > _count(shown) + 2 else None),
                       timeout=30, message="more values")
    assert isinstance(later, dict) and _count(later) > _count(shown)
    assert "Running" in _rundock(workspace, "show", run.id).stdout
    stored = len(workspace.store.get_metric_records(run.id))  # (reading the store itself pulls nothing)
    wait_until(lambda: _logged_on_host(host, run._record.run_dir or "") > stored + 2, timeout=30,
               message="more values on the host")
    listed = [line for line in _rundock(workspace, "runs").stdout.splitlines() if run.id in line]
    assert len(listed) == 1 and "Running" in listed[0], listed
    assert len(workspace.store.get_metric_records(run.id)) > stored + 2  # `rundock runs` pulled them
    run.cancel()
    run.wait_for_completion(raise_on_error=False)


def test_reads_of_a_frozen_host_show_what_is_stored_and_the_run_completes_once_it_answers(
        workspace: Workspace, box: RemoteTarget, host: SshHost, source: Callable[..., Path]) -> None:
    run = _submit(workspace, source(**{"train.py": _job(20)}))
    wait_until(lambda: _count(run.get_metrics()) >= 3, timeout=30, message="the first values")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        waiter = Waiter(run)
        waiter.start()
        with Paused(host) as paused:
            run.get_metrics()  # the pull it starts hangs: what is stored comes after a short wait
            wait_until(lambda: run.get_status() == "NotResponding", timeout=20, message="NotResponding")
            frozen = _count(run.get_metrics())
            started = time.monotonic()
            for _ in range(50):
                assert _count(run.get_metrics()) == frozen  # the job is frozen too: nothing new, no error
                assert "v" in run.get_metrics(recursive=True)[run.id]
                run.get_tags(), run.get_file_names(), run.get_details()
            assert time.monotonic() - started < 5  # stored data comes at once while the host is known to be out
            assert "NotResponding" in Run.get(workspace, run.id).status
            assert waiter.is_alive() and waiter.error is None  # wait_for_completion keeps waiting
            unreachable = _unreachable_warnings(caught)
            assert len(unreachable) == 1 and "target box (127.0.0.1)" in unreachable[0], unreachable
            paused.resume()
            waiter.finish(timeout=90)
    assert run.get_status() == "Completed"
    assert run.get_metrics() == {"v": list(range(20))}  # every value exactly once
    assert len(workspace.store.get_metric_records(run.id)) == 20
    assert _statuses(workspace, run).count("Running") == 1
    assert len(_unreachable_warnings(caught)) == 1


def test_a_cancel_while_the_host_is_unreachable_is_delivered_when_it_answers(
        workspace: Workspace, box: RemoteTarget, host: SshHost, source: Callable[..., Path]) -> None:
    run = _submit(workspace, source(**{"train.py": _job(None)}), cancel_grace_seconds=1)
    wait_until(lambda: _count(run.get_metrics()) >= 2, timeout=30, message="the first values")
    with warnings.catch_warnings(record=True) as caught, Paused(host) as paused:
        warnings.simplefilter("always")
        wait_until(lambda: run.get_status() == "NotResponding", timeout=20, message="NotResponding")
        run.cancel()  # recorded; it cannot reach the host
        assert "CancelRequested" in _statuses(workspace, run)
        assert mirrors.cancel_pending(box.mirror_dir(run.id))
        assert any("the cancel is recorded" in m for m in _unreachable_warnings(caught))
        assert run.get_status() == "NotResponding"
        paused.resume()
        waiter = Waiter(run)
        waiter.start()
        waiter.finish(timeout=90)
    assert run.get_status() == "Canceled"
    assert _statuses(workspace, run)[-3:] == ["CancelRequested", "Finalizing", "Canceled"]
    assert not mirrors.cancel_pending(box.mirror_dir(run.id))
    assert _remote_processes(host, run.id) == []
    values = run.get_metrics()["v"]
    assert values == list(range(len(values)))  # exactly once, up to where it was stopped


def test_an_abandoned_run_ends_now_and_its_job_is_stopped_when_the_host_answers(
        workspace: Workspace, box: RemoteTarget, host: SshHost, source: Callable[..., Path]) -> None:
    run = _submit(workspace, source(**{"train.py": _job(None)}), cancel_grace_seconds=1)
    wait_until(lambda: _count(run.get_metrics()) >= 2, timeout=30, message="the first values")
    with warnings.catch_warnings(record=True), Paused(host) as paused:
        warnings.simplefilter("always")
        wait_until(lambda: run.get_status() == "NotResponding", timeout=20, message="NotResponding")
        record = abandon(workspace, run.id)
        assert record.status.value == "Canceled" and record.status_detail == "abandoned: host unreachable"
        assert (record.error or {}).get("code") == "Abandoned"
        assert mirrors.cancel_pending(box.mirror_dir(run.id))
        paused.resume()
        wait_until(lambda: run.get_status() and not mirrors.cancel_pending(box.mirror_dir(run.id)), timeout=60,
                   interval=0.5, message="the cancel to reach the host")  # a read delivers it
    wait_until(lambda: _remote_processes(host, run.id) == [], timeout=30, message="the job to stop")
    assert run.get_status() == "Canceled"
    assert _statuses(workspace, run)[-2:] == ["CancelRequested", "Canceled"]


def test_rundock_cancel_abandon(workspace: Workspace, box: RemoteTarget, host: SshHost,
                                source: Callable[..., Path]) -> None:
    run = _submit(workspace, source(**{"train.py": _job(None)}), cancel_grace_seconds=1)
    wait_until(lambda: run.get_status() == "Running", timeout=30, message="Running")
    proc = subprocess.run([sys.executable, "-m", "rundock", "cancel", run.id, "--abandon"],
                          cwd=Path(workspace.path).parent, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert run.get_status() == "Canceled" and run._record.status_detail == "abandoned: host unreachable"
    wait_until(lambda: run.get_status() and not mirrors.cancel_pending(box.mirror_dir(run.id)), timeout=30,
               interval=0.5, message="the cancel to reach the host")
    wait_until(lambda: _remote_processes(host, run.id) == [], timeout=30, message="the job to stop")
