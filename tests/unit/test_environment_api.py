from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from rundock import CondaDependencies, Environment
from rundock.agent.environments import PrepareError, pick_gpus, pip_requirements
from rundock.agent.executors.docker import DockerExecutor
from rundock.errors import ConfigError
from rundock.runconfig.docker_args import parse_docker_arguments
from rundock.submitter.workspace import Workspace


def test_conda_dependencies_and_requirements_files(tmp_path: Path) -> None:
    env = Environment("train")
    env.python.conda_dependencies = CondaDependencies.create(conda_packages=["python=3.11", "numpy=1.26"],
                                                             pip_packages=["six"])
    deps = env.python.conda_dependencies
    deps.add_pip_package("tqdm")
    env.python.conda_dependencies = deps
    assert env.python.pip_packages == ["six", "tqdm"]
    assert pip_requirements(env.to_mapping()["python"]) == ["six", "tqdm", "numpy==1.26"]
    reqs = tmp_path / "requirements.txt"
    reqs.write_text("# pinned\nsix==1.16.0\n\nrich>=13  # ui\n")
    from_file = Environment.from_pip_requirements("reqs", str(reqs))
    assert from_file.python.pip_packages == ["six==1.16.0", "rich>=13"]
    assert not from_file.python.user_managed_dependencies
    with pytest.raises(ConfigError, match="requirements file not found"):
        Environment.from_pip_requirements("x", str(tmp_path / "nope.txt"))


def test_dockerfile_environments_save_and_load(tmp_path: Path) -> None:
    env = Environment.from_dockerfile("img", "FROM python:3.11-slim\nRUN echo hi\n")
    assert env.docker.enabled and env.docker.base_image is None
    env.environment_variables = {"SEED": "7"}
    env.save_to_directory(str(tmp_path / "env"))
    assert (tmp_path / "env" / "Dockerfile").read_text() == "FROM python:3.11-slim\nRUN echo hi\n"
    assert Environment.load_from_directory(str(tmp_path / "env")) == env
    with pytest.raises(FileExistsError):
        env.save_to_directory(str(tmp_path / "env"))
    env.save_to_directory(str(tmp_path / "env"), overwrite=True)


def test_registered_environments_have_versions(tmp_path: Path) -> None:
    ws = Workspace.create(str(tmp_path))
    env = Environment("team-env")
    env.python.pip_packages = ["six"]
    assert env.register(ws).version == "1"
    env.python.pip_packages = ["six", "rich"]
    assert env.register(ws).version == "2"
    assert Environment.get(ws, "team-env").python.pip_packages == ["six", "rich"]
    assert Environment.get(ws, "team-env", version="1").python.pip_packages == ["six"]
    assert list(Environment.list(ws)) == ["team-env"]
    with pytest.raises(KeyError, match="no environment 'other'"):
        Environment.get(ws, "other")


def test_docker_arguments() -> None:
    assert parse_docker_arguments(["--network", "none", "--cpus=1.5", "-e", "A=1", "--memory", "2g"]) == {
        "network_mode": "none", "nano_cpus": 1_500_000_000, "environment": {"A": "1"}, "mem_limit": "2g"}
    with pytest.raises(ConfigError, match="unsupported option '--privileged'"):
        parse_docker_arguments(["--privileged"])
    with pytest.raises(ConfigError, match="--network needs a value"):
        parse_docker_arguments(["--network"])


def test_gpu_selection() -> None:
    assert pick_gpus(0, [], []) == []
    assert pick_gpus(2, [], ["0", "1", "2"]) == ["0", "1"]
    assert pick_gpus(0, ["2"], ["0", "1", "2"]) == ["2"]
    with pytest.raises(PrepareError, match="this host has none"):
        pick_gpus(1, [], [])
    with pytest.raises(PrepareError, match="GPUs 5 are not on this host; it has 0, 1"):
        pick_gpus(0, ["5"], ["0", "1"])
    with pytest.raises(PrepareError, match="asks for 3 GPUs; this host has 2"):
        pick_gpus(3, [], ["0", "1"])


class _Recorder:
    """Stands in for docker-py's client: records what the executor asks the engine for."""

    def __init__(self) -> None:
        self.kwargs: dict[str, Any] = {}
        self.containers = self

    def create(self, image: str, **kwargs: Any) -> Any:
        self.kwargs = kwargs
        raise RuntimeError("recorded")


def test_a_gpu_request_becomes_a_device_request_for_exactly_those_devices(tmp_path: Path) -> None:
    client = _Recorder()
    executor = DockerExecutor(client, "img", ["python3", "t.py"], "r1", str(tmp_path), [str(tmp_path)], {},
                              str(tmp_path / "log"), [], {}, "1000:1000", ["1", "3"])
    with pytest.raises(RuntimeError, match="recorded"):
        executor.start()
    (request,) = client.kwargs["device_requests"]
    assert request["DeviceIDs"] == ["1", "3"] and request["Capabilities"] == [["gpu"]]
    assert request["Count"] == 0  # exactly the ids asked for, not "any N" (and never --gpus all, which is -1)
