"""The agent's lifecycle driven with a fake executor, a real SQLite history and an injected clock."""

from __future__ import annotations

import os
from pathlib import Path

from rundock.agent.job import MODE_STORE, JobSpec, request_cancel
from rundock.agent.lifecycle import Agent
from rundock.agent.prepare import Plan
from rundock.history.backends.sqlite import SqliteRunStore
from rundock.states import RunStatus


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class FakeExecutor:
    """Runs nothing: time passes only when the lifecycle waits on it."""

    pid = 0
    container_id = ""
    oom_killed = False

    def __init__(self, clock: Clock, exit_code: int | None, after: float = 0.0) -> None:
        self.clock, self.exit_code, self.after = clock, exit_code, after
        self.stopped_with: float | None = None

    def start(self) -> None:
        self.started_at = self.clock.now

    def wait(self, timeout: float) -> int | None:
        self.clock.now += timeout
        done = self.exit_code is not None and self.clock.now - self.started_at >= self.after
        return self.exit_code if done else None

    def stop(self, grace_seconds: float) -> list[int]:
        self.stopped_with = grace_seconds
        return []

    def finish_logs(self) -> list[str]:
        return []


def _agent(tmp_path: Path, executor: FakeExecutor, clock: Clock, **spec: object) -> tuple[Agent, SqliteRunStore, str]:
    store = SqliteRunStore(str(tmp_path / "history.db"))
    run_id = store.create_run("e").run_id
    run_dir = tmp_path / "runs" / run_id
    run_dir.mkdir(parents=True)
    JobSpec(run_id=run_id, experiment="e", mode=MODE_STORE, store_uri=f"sqlite:///{tmp_path / 'history.db'}",
            artifacts_root=str(tmp_path / "artifacts"), snapshot_id="s", script="train.py", interpreter="python3",
            slots_dir=str(tmp_path / "slots"), **spec).save(str(run_dir))  # type: ignore[arg-type]
    agent = Agent(str(run_dir), clock=clock, sleep=lambda s: None,
                  executor_factory=lambda plan, env, secrets: executor)
    store.transition(run_id, RunStatus.PREPARING)
    return agent, store, run_id


def test_the_time_limit_stops_the_job_and_fails_the_run(tmp_path: Path) -> None:
    clock = Clock()
    executor = FakeExecutor(clock, exit_code=None)
    agent, store, run_id = _agent(tmp_path, executor, clock, max_run_duration_seconds=10.0, cancel_grace_seconds=3.0)
    outcome = agent.finalize(agent.execute(Plan(argv=["python3", "train.py"])))
    assert outcome.status == RunStatus.FAILED and outcome.error and outcome.error["code"] == "Timeout"
    assert executor.stopped_with == 3.0
    assert 10.0 <= clock.now - 1000.0 <= 10.5  # the limit was judged by the injected clock, no real sleeping
    record = store.get_run(run_id)
    assert record.status == RunStatus.FAILED
    assert [c.status for c in store.status_history(run_id)][-3:] == [
        RunStatus.RUNNING, RunStatus.FINALIZING, RunStatus.FAILED]


def test_a_cancel_request_ends_the_run_canceled(tmp_path: Path) -> None:
    clock = Clock()
    executor = FakeExecutor(clock, exit_code=None)
    agent, store, run_id = _agent(tmp_path, executor, clock, cancel_grace_seconds=1.0)
    request_cancel(agent.run_dir)
    outcome = agent.finalize(agent.execute(Plan(argv=["python3", "train.py"])))
    assert outcome.status == RunStatus.CANCELED and executor.stopped_with == 1.0
    assert store.get_run(run_id).status == RunStatus.CANCELED


def test_an_output_that_cannot_be_stored_fails_the_run_naming_it(tmp_path: Path) -> None:
    clock = Clock()
    executor = FakeExecutor(clock, exit_code=0, after=1.0)
    agent, store, run_id = _agent(tmp_path, executor, clock)
    outcome = agent.execute(Plan(argv=["python3", "train.py"]))
    assert outcome.status == RunStatus.COMPLETED
    Path(agent.src, "outputs", "model.bin").write_bytes(b"x" * 1000)
    os.chmod(agent.artifacts.root, 0o500)  # the artifact store refuses new blobs (as a full disk does)
    try:
        if os.access(agent.artifacts.root, os.W_OK):  # root ignores modes: fill the store another way
            agent.artifacts.put_stream = _full  # type: ignore[method-assign]
        outcome = agent.finalize(outcome)
    finally:
        os.chmod(agent.artifacts.root, 0o755)
    assert outcome.status == RunStatus.FAILED
    record = store.get_run(run_id)
    assert record.status == RunStatus.FAILED and record.error
    assert "outputs could not be stored: outputs/model.bin" in record.error["message"]


def _full(stream: object) -> tuple[str, int, bool]:
    raise OSError(28, "No space left on device")
