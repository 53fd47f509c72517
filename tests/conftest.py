"""Shared fixtures: a fresh workspace per test, small source folders, polling helpers."""

from __future__ import annotations

import os
import textwrap
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from rundock.submitter.workspace import Workspace

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture
def workspace(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Workspace]:
    """A workspace in a temporary folder, with a fast heartbeat so liveness tests stay short."""
    monkeypatch.setenv("RUNDOCK_HEARTBEAT_SECONDS", "0.2")
    monkeypatch.delenv("RUNDOCK_MAX_CONCURRENT_RUNS", raising=False)
    monkeypatch.delenv("RUNDOCK_AGENT_LOST_AFTER_SECONDS", raising=False)
    monkeypatch.chdir(tmp_path)
    ws = Workspace.create(str(tmp_path / "project"))
    yield ws
    ws.close()


@pytest.fixture
def source(tmp_path: Path) -> Callable[..., Path]:
    """Write a source folder: ``source(train='print(1)', **{'sub/x.txt': 'data'})``."""

    def make(name: str = "src", **files: str) -> Path:
        root = tmp_path / name
        for rel, text in files.items():
            path = root / rel.replace("__", "/") if "/" not in rel else root / rel
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(textwrap.dedent(text))
        root.mkdir(parents=True, exist_ok=True)
        return root

    return make


def wait_until(predicate: Callable[[], object], timeout: float = 20.0, interval: float = 0.05,
               message: str = "condition") -> object:
    """Poll ``predicate`` until it is truthy; fail the test after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout} s waiting for {message}")
        time.sleep(interval)


def processes_of_run(run_id: str) -> list[int]:
    """Pids of live processes whose environment says they belong to ``run_id``."""
    import psutil

    found = []
    for proc in psutil.process_iter(["pid"]):
        try:
            if proc.environ().get("RUNDOCK_RUN_ID") == run_id and proc.status() != psutil.STATUS_ZOMBIE:
                found.append(proc.pid)
        except (psutil.Error, OSError):
            continue
    return found


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        if "integration" in str(item.fspath):
            item.add_marker(pytest.mark.integration)


os.environ.setdefault("PYTHONDONTWRITEBYTECODE", "1")
