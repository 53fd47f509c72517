"""Docker runs against a real engine: image, mounts, user, cancel, timeouts, errors, GPUs."""

from __future__ import annotations

import json
import os
import stat
from collections.abc import Callable
from pathlib import Path

import docker
import pytest

from rundock import Environment, Experiment, Run, RunConfiguration, ScriptRunConfig
from rundock.agent.executors.docker import LABEL
from rundock.submitter.workspace import Workspace
from tests.conftest import wait_until


def _env(base_image: str, **python: object) -> Environment:
    env = Environment("docker-test")
    env.docker.enabled = True
    env.docker.base_image = base_image
    env.docker.arguments = ["--network", "none"]  # the job needs no network to log anything
    env.python.user_managed_dependencies = True
    for key, value in python.items():
        setattr(env.python, key, value)
    return env


def _submit(workspace: Workspace, src: Path, env: Environment, **config: object) -> Run:
    run_config = RunConfiguration(environment=env, **config)  # type: ignore[arg-type]
    return Experiment(workspace, "docker").submit(ScriptRunConfig(str(src), "train.py", run_config=run_config))


def _containers(run_id: str) -> list[object]:
    return docker.from_env().containers.list(all=True, filters={"label": f"{LABEL}={run_id}"})


def _statuses(run: Run) -> list[str]:
    return [c.status.value for c in run.experiment.workspace.store.status_history(run.id)]


def test_a_run_in_a_container(workspace: Workspace, source: Callable[..., Path], docker_base_image: str) -> None:
    src = source(**{"train.py": """
        import os, sys, time
        from azureml.core import Run
        run = Run.get_context()
        print("inside", os.getcwd(), "as", os.getuid(), flush=True)
        run.log("python", sys.version.split()[0])
        run.log("pid1", open("/proc/1/cmdline").read().split("\\0")[0])
        os.makedirs("outputs/nested", exist_ok=True)
        open("outputs/nested/model.txt", "w").write("trained in a container")
        time.sleep(1.5)
    """})
    run = _submit(workspace, src, _env(docker_base_image))
    wait_until(lambda: run.get_status() == "Running", message="Running")
    live = wait_until(lambda: _containers(run.id), message="the run's container")
    container = live[0]  # type: ignore[index]
    attrs = container.attrs  # type: ignore[attr-defined]
    assert attrs["HostConfig"]["Init"] is True
    assert attrs["Config"]["User"] == f"{os.getuid()}:{os.getgid()}"
    assert attrs["Config"]["Labels"][LABEL] == run.id
    assert attrs["HostConfig"]["ShmSize"] == 2 * 1024 ** 3
    mounts = {m["Destination"]: m for m in attrs["Mounts"]}
    # only the job's part of the run directory is mounted (never the agent's journal or job file)
    job_mounts = {d for d in mounts if d.startswith("/rundock/run")}
    assert job_mounts == {"/rundock/run/src", "/rundock/run/journal", "/rundock/run/uploads", "/rundock/run/requests"}
    assert all(mounts[d]["RW"] for d in job_mounts) and not mounts["/rundock/lib/0"]["RW"]
    details = run.wait_for_completion()
    assert details["status"] == "Completed"
    metrics = run.get_metrics()
    assert metrics["python"].startswith("3.") and "init" in metrics["pid1"]
    log = workspace.store.read_log(run.id, "system_logs/driver_log.txt").decode()
    assert f"inside /rundock/run/src as {os.getuid()}" in log
    assert "outputs/nested/model.txt" in run.get_file_names()
    written = Path(run._record.run_dir or "") / "src/outputs/nested/model.txt"
    assert written.stat().st_uid == os.getuid() and written.stat().st_gid == os.getgid()
    assert _containers(run.id) == []


def test_packages_are_baked_into_a_cached_image(workspace: Workspace, source: Callable[..., Path],
                                                docker_base_image: str) -> None:
    client = docker.from_env()
    for image in client.images.list(filters={"label": "rundock.managed=1"}):  # start from no cached image
        client.images.remove(image.id, force=True)
    src = source(**{"train.py": "import six\nfrom rundock import Run\nRun.get_context().log('six', six.__version__)\n"})
    env = _env(docker_base_image, user_managed_dependencies=False, pip_packages=["six"])
    first = _submit(workspace, src, env)
    first.wait_for_completion()
    assert first.get_metrics()["six"].count(".") >= 1
    prepare = workspace.store.read_log(first.id, "system_logs/prepare_log.txt").decode()
    assert "building image rundock-env:" in prepare
    second = _submit(workspace, src, env)
    second.wait_for_completion()
    assert "reusing image rundock-env:" in workspace.store.read_log(second.id, "system_logs/prepare_log.txt").decode()


def test_dockerfile_environments_and_build_failures(workspace: Workspace, source: Callable[..., Path],
                                                    docker_base_image: str) -> None:
    src = source(**{"train.py": "print(open('/built.txt').read().strip())\n"})
    good = Environment.from_dockerfile("from-dockerfile", f"FROM {docker_base_image}\nRUN echo baked > /built.txt\n")
    good.docker.arguments = ["--network", "none"]
    good.python.user_managed_dependencies = True
    run = _submit(workspace, src, good)
    run.wait_for_completion()
    assert workspace.store.read_log(run.id, "system_logs/driver_log.txt") == b"baked\n"
    bad = Environment.from_dockerfile("broken", f"FROM {docker_base_image}\nRUN echo nope && exit 3\n")
    bad.python.user_managed_dependencies = True
    failed = _submit(workspace, src, bad)
    details = failed.wait_for_completion(raise_on_error=False)
    assert details["error"]["error"]["code"] == "SetupError"
    assert "building the image failed" in details["error"]["error"]["message"]
    assert "Running" not in _statuses(failed) and _containers(failed.id) == []


@pytest.mark.parametrize("how", ["cancel", "timeout"])
def test_cancel_and_time_limit_stop_and_remove_the_container(workspace: Workspace, source: Callable[..., Path],
                                                             docker_base_image: str, how: str) -> None:
    src = source(**{"train.py": """
        import os, signal, subprocess, sys, time
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        os.makedirs("outputs", exist_ok=True)
        open("outputs/before.txt", "w").write("kept")
        subprocess.Popen([sys.executable, "-c", "import time; time.sleep(300)"])
        print("ready", flush=True)
        time.sleep(300)
    """})
    limit = {"max_run_duration_seconds": 4} if how == "timeout" else {}
    run = _submit(workspace, src, _env(docker_base_image), cancel_grace_seconds=1, **limit)
    wait_until(lambda: b"ready" in workspace.store.read_log(run.id, "system_logs/driver_log.txt"), message="ready")
    if how == "cancel":
        run.cancel()
    details = run.wait_for_completion(raise_on_error=False)
    if how == "cancel":
        assert details["status"] == "Canceled" and _statuses(run)[-3:] == ["CancelRequested", "Finalizing",
                                                                            "Canceled"]
    else:
        assert details["status"] == "Failed" and details["error"]["error"]["code"] == "Timeout"
    assert "outputs/before.txt" in run.get_file_names()
    assert _containers(run.id) == []


def test_unreachable_engine_and_missing_image_fail_in_preparing(workspace: Workspace, source: Callable[..., Path],
                                                                docker_base_image: str,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    src = source(**{"train.py": "print(1)\n"})
    missing = _submit(workspace, src, _env("127.0.0.1:9/rundock/no-such-image:1"))
    details = missing.wait_for_completion(raise_on_error=False)
    message = details["error"]["error"]["message"]
    assert "could not be pulled" in message and "docker pull 127.0.0.1:9/rundock/no-such-image:1" in message
    assert "Running" not in _statuses(missing)
    monkeypatch.setenv("DOCKER_HOST", "unix:///nonexistent/docker.sock")
    no_engine = _submit(workspace, src, _env(docker_base_image))
    details = no_engine.wait_for_completion(raise_on_error=False)
    assert "cannot reach a Docker engine" in details["error"]["error"]["message"]
    assert _statuses(no_engine)[-2:] == ["Finalizing", "Failed"] and "Running" not in _statuses(no_engine)


def test_gpu_request_on_a_host_without_gpus_fails_clearly(workspace: Workspace, source: Callable[..., Path],
                                                          docker_base_image: str) -> None:
    if os.path.exists("/dev/nvidia0"):
        pytest.skip("this host has a GPU")
    env = _env(docker_base_image)
    env.docker.gpu_count = 1
    run = _submit(workspace, source(**{"train.py": "print(1)\n"}), env)
    details = run.wait_for_completion(raise_on_error=False)
    assert "this host has none" in details["error"]["error"]["message"]
    assert "Running" not in _statuses(run)


def test_secrets_reach_a_container_through_the_mount(workspace: Workspace, source: Callable[..., Path],
                                                     docker_base_image: str) -> None:
    workspace.set_secret("token", "container-secret-value")
    run = _submit(workspace, source(**{"train.py": """
        from rundock import Run
        print("token is", Run.get_context().get_secret("token"), flush=True)
    """}), _env(docker_base_image))
    run.wait_for_completion()
    assert workspace.store.read_log(run.id, "system_logs/driver_log.txt") == b"token is ***\n"
    assert stat.S_IMODE(os.stat(workspace.secrets.path).st_mode) == 0o600


def test_the_engine_api_version_is_remembered_and_asked_again_when_it_no_longer_fits(
        tmp_path: Path, docker_base_image: str, monkeypatch: pytest.MonkeyPatch) -> None:
    from rundock.agent import images
    from rundock.agent.environments import PrepareError

    cache = tmp_path / "images" / "engine-api.json"
    first = images.connect(str(tmp_path / "images"))
    remembered = json.loads(cache.read_text())
    assert remembered == {"default": first.api.api_version} == {"default": first.version()["ApiVersion"]}
    cache.write_text(json.dumps({"default": "9.99"}))  # an engine downgraded since: the ping refuses it
    again = images.connect(str(tmp_path / "images"))
    assert again.images.get(docker_base_image).id and json.loads(cache.read_text()) == remembered
    monkeypatch.setenv("DOCKER_HOST", "unix:///nonexistent/docker.sock")
    with pytest.raises(PrepareError, match="cannot reach a Docker engine"):
        images.connect(str(tmp_path / "images"))
