"""System-managed environments without Docker: a cached virtual environment per package set."""

from __future__ import annotations

import os
import stat
from collections.abc import Callable
from pathlib import Path

import pytest

from rundock import Environment, Experiment, Run, ScriptRunConfig
from rundock.states import RunStatus
from rundock.submitter.workspace import Workspace


def _preparing_seconds(workspace: Workspace, run: Run) -> float:
    history = workspace.store.status_history(run.id)
    start = next(c.at for c in history if c.status == RunStatus.PREPARING)
    end = next(c.at for c in history if c.status == RunStatus.QUEUED)
    return end - start


def test_packages_build_a_cached_virtual_environment(workspace: Workspace, source: Callable[..., Path],
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    src = source(**{"train.py": "import sys, six\nfrom rundock import Run\n"
                                "Run.get_context().log('prefix', sys.prefix)\nprint('six', six.__version__)\n"})
    env = Environment("with-six")
    env.python.pip_packages = ["six"]
    exp = Experiment(workspace, "envs")
    first = exp.submit(ScriptRunConfig(str(src), "train.py", environment=env))
    first.wait_for_completion(show_output=True)
    out = capsys.readouterr().out
    assert "building environment" in out and "six" in out  # the build is shown while it happens
    prefix = first.get_metrics()["prefix"]
    assert prefix.startswith(os.path.join(workspace.local_root, "envs"))
    second = exp.submit(ScriptRunConfig(str(src), "train.py", environment=env))
    second.wait_for_completion()
    assert second.get_metrics()["prefix"] == prefix
    assert "reusing cached environment" in workspace.store.read_log(second.id, "system_logs/prepare_log.txt").decode()
    assert _preparing_seconds(workspace, second) < 1.0


def test_a_package_that_cannot_be_installed_fails_in_preparing(workspace: Workspace,
                                                               source: Callable[..., Path]) -> None:
    env = Environment("broken")
    env.python.pip_packages = ["rundock-no-such-package-zz==9.9.9"]
    run = Experiment(workspace, "envs").submit(ScriptRunConfig(str(source(**{"train.py": "print(1)"})), "train.py",
                                                               environment=env))
    details = run.wait_for_completion(raise_on_error=False)
    error = details["error"]["error"]
    assert error["code"] == "SetupError" and "rundock-no-such-package-zz" in error["message"]
    assert "No matching distribution" in error["message"] or "Could not find" in error["message"]
    statuses = [c.status.value for c in workspace.store.status_history(run.id)]
    assert "Running" not in statuses
    envs = Path(workspace.local_root) / "envs"
    assert [p.name for p in envs.iterdir() if p.is_dir()] == []  # nothing half-built is left


def test_gpu_request_for_a_host_process_sets_cuda_visible_devices(workspace: Workspace, source: Callable[..., Path],
                                                                  tmp_path: Path,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    fake = tmp_path / "bin" / "nvidia-smi"  # stands in for the driver's tool: this host has no GPU
    fake.parent.mkdir()
    fake.write_text("#!/bin/sh\nprintf '0\\n1\\n2\\n'\n")
    fake.chmod(fake.stat().st_mode | stat.S_IEXEC)
    monkeypatch.setenv("PATH", f"{fake.parent}{os.pathsep}{os.environ['PATH']}")
    env = Environment.submitting_interpreter()
    env.docker.gpu_device_ids = ["2"]
    src = source(**{"train.py": "import os\nprint(os.environ['CUDA_VISIBLE_DEVICES'])\n"})
    run = Experiment(workspace, "gpus").submit(ScriptRunConfig(str(src), "train.py", environment=env))
    run.wait_for_completion()
    assert workspace.store.read_log(run.id, "system_logs/driver_log.txt") == b"2\n"
