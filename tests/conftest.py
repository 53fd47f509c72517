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

# The session's one headless Chromium (``browser``), shared by every test module that draws pages.
pytest_plugins = ["tests.ui_fixtures"]


@pytest.fixture
def workspace(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Workspace]:
    """A workspace in a temporary folder, with a fast heartbeat so liveness tests stay short."""
    monkeypatch.setenv("RUNDOCK_HEARTBEAT_SECONDS", "0.2")
    monkeypatch.setenv("RUNDOCK_AGENT_IDLE_SECONDS", "10")  # warm agents of test workspaces go away soon
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


def require_service(name: str, reason: str) -> None:
    """Skip with ``reason`` on a developer machine; fail when ``RUNDOCK_REQUIRE_<NAME>=1`` (CI)."""
    if os.environ.get(f"RUNDOCK_REQUIRE_{name}") == "1":
        pytest.fail(f"{reason} (RUNDOCK_REQUIRE_{name}=1, so this cannot be skipped)")
    pytest.skip(reason)


@pytest.fixture(scope="session")
def docker_base_image() -> str:
    """A local image with Python (and pip) for Docker tests; built by .ci/services.sh."""
    import docker
    import docker.errors

    image = os.environ.get("RUNDOCK_TEST_BASE_IMAGE", "rundock-test-base:3")
    try:
        client = docker.from_env(timeout=30)
        client.ping()
    except docker.errors.DockerException as exc:
        require_service("DOCKER", f"no Docker engine reachable ({exc}); run .ci/services.sh to start one")
    try:
        client.images.get(image)
    except docker.errors.ImageNotFound:
        require_service("DOCKER", f"the test base image {image} is missing; .ci/services.sh builds it")
    return image
