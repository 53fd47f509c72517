"""Host-process runs on a real NVIDIA GPU (skipped where there is none; RUNDOCK_REQUIRE_GPU=1 makes that fail).

The job sees exactly the GPUs it asked for through ``CUDA_VISIBLE_DEVICES``, can compute on them, and a
request the host cannot meet fails in Preparing before anything runs.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Callable
from pathlib import Path

import pytest

from rundock import Environment, Experiment, ScriptRunConfig
from rundock.agent.environments import host_gpus
from rundock.submitter.workspace import Workspace
from tests.conftest import require_service

JOB = """
import os, subprocess, sys
from rundock import Run
run = Run.get_context()
visible = os.environ.get("CUDA_VISIBLE_DEVICES", "")
run.log("visible", visible)
try:
    import torch
except ImportError:
    torch = None
if torch is not None:
    run.log("device_count", torch.cuda.device_count())
    run.log("device_name", torch.cuda.get_device_name(0))
    x = torch.arange(1024, device="cuda", dtype=torch.float32)
    run.log("sum_on_gpu", float(x.sum().item()))
else:
    names = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True).stdout.splitlines()
    run.log("device_count", len([v for v in visible.split(",") if v]))
    run.log("device_name", names[int(visible.split(",")[0])] if names else "")
"""


@pytest.fixture
def gpus() -> list[str]:
    found = host_gpus()
    if not found:
        require_service("GPU", "this host has no NVIDIA GPU (nvidia-smi lists none)")
    return found


def _env(**request: object) -> Environment:
    env = Environment.submitting_interpreter()
    for key, value in request.items():
        setattr(env.docker, key, value)
    return env


def test_a_run_gets_the_gpu_it_asks_for_and_computes_on_it(workspace: Workspace, source: Callable[..., Path],
                                                          gpus: list[str]) -> None:
    src = source(**{"train.py": JOB})
    for request in ({"gpu_count": 1}, {"gpu_device_ids": [gpus[-1]]}):
        run = Experiment(workspace, "gpu").submit(ScriptRunConfig(str(src), "train.py", environment=_env(**request)))
        run.wait_for_completion(raise_on_error=True)
        metrics = run.get_metrics()
        expected = gpus[0] if "gpu_count" in request else gpus[-1]
        assert metrics["visible"] == expected and metrics["device_count"] == 1
        assert metrics["device_name"]
        if importlib.util.find_spec("torch") is not None:  # the job runs on this interpreter: it computes too
            assert metrics["sum_on_gpu"] == sum(range(1024))
        assert f"GPUs for this run: {expected}" in workspace.store.read_log(
            run.id, "system_logs/prepare_log.txt").decode()


def test_a_request_the_host_cannot_meet_fails_in_preparing(workspace: Workspace, source: Callable[..., Path],
                                                           gpus: list[str]) -> None:
    src = source(**{"train.py": "print('must not run')\n"})
    too_many = Experiment(workspace, "gpu").submit(
        ScriptRunConfig(str(src), "train.py", environment=_env(gpu_count=len(gpus) + 1)))
    details = too_many.wait_for_completion(raise_on_error=False)
    assert details["status"] == "Failed"
    assert f"asks for {len(gpus) + 1} GPUs; this host has {len(gpus)}" in details["error"]["error"]["message"]
    absent = Experiment(workspace, "gpu").submit(
        ScriptRunConfig(str(src), "train.py", environment=_env(gpu_device_ids=["97"])))
    details = absent.wait_for_completion(raise_on_error=False)
    assert "GPUs 97 are not on this host" in details["error"]["error"]["message"]
    for run in (too_many, absent):
        assert "Running" not in [s.status.value for s in workspace.store.status_history(run.id)]
        assert workspace.store.read_log(run.id, "system_logs/driver_log.txt") == b""
