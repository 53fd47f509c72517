"""``rundock agent serve --docker``, end to end: a real server process, real ``agent serve --docker`` processes
(a stand-in ``nvidia-smi`` lists 4 GPUs), real per-run agents and real containers of the test image.

- what the agent asks Docker for: exactly the run's GPUs as an NVIDIA device request, with
  ``NVIDIA_VISIBLE_DEVICES`` = those host indices and ``CUDA_VISIBLE_DEVICES`` = 0..n-1 (the runtime renumbers
  them inside the container); no device request and no GPU for a run that asks for none;
- a run without GPUs runs in its container and completes; a run with GPUs on this engine (no NVIDIA runtime)
  ends Failed before it runs, saying so and how to fix it, and its GPUs are free again;
- ``agent serve`` killed with SIGKILL under a container job and started again: the run completes once, every
  value once (the fault suite's invariants I1-I5);
- ``agent serve`` and the per-run agent both killed, the container left running until the server fenced its
  attempt: the restarted ``agent serve`` removes the container;
- a cancel stops the container within the grace period and leaves nothing.
"""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from rundock.agent.executors.docker import DockerExecutor
from rundock.runconfig.environment import Environment
from rundock.runconfig.run_configuration import Resources, RunConfiguration
from rundock.runconfig.script_run_config import ScriptRunConfig
from rundock.states import RunStatus
from rundock.submitter.snapshot import take_snapshot
from tests.conftest import REPO, wait_until
from tests.faults import test_pool_faults
from tests.faults.invariants import (
    FaultContext,
    agent_pids,
    check_i1,
    check_i2,
    check_i3,
    check_i4,
    check_i5,
    run_containers,
)
from tests.faults.scenario import DOCKER_PROBE
from tests.faults.test_pool_faults import LEASE, PoolLab, history
from tests.integration.test_pool_agent import POOL, Box

pytestmark = pytest.mark.integration
pool_lab = test_pool_faults.pool_lab  # a server behind a proxy the test controls, a laptop workspace, boxes

ENV_JOB = """
import json, os
from rundock.context import Run
run = Run.get_context()
names = ("CUDA_VISIBLE_DEVICES", "NVIDIA_VISIBLE_DEVICES", "RUNDOCK_RUN_DIR")
run.tag("env", json.dumps({n: os.environ.get(n) for n in names}))
run.tag("in_container", str(os.path.exists("/.dockerenv")))
run.log("v", 1)
os.makedirs("outputs", exist_ok=True)
with open("outputs/ok.txt", "w") as fh:
    fh.write("ok")
"""


@dataclasses.dataclass
class DockerBox(Box):
    """A box whose ``agent serve`` runs with ``--docker``."""

    def start(self) -> None:
        env = {k: v for k, v in os.environ.items() if not k.startswith("RUNDOCK_")}
        env.update(PATH=f"{self.bin_dir}{os.pathsep}{os.environ['PATH']}", PYTHONPATH=str(REPO),
                   RUNDOCK_HOME=str(self.folder / "home"), RUNDOCK_HEARTBEAT_SECONDS="0.5")
        with open(self.log, "ab") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "rundock", "agent", "serve", "--server", self.server.url, "--token",
                 self.token, "--pool", POOL, "--work-dir", str(self.folder / "work"), "--docker"],
                stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True)
        wait_until(lambda: self.log.read_text(errors="replace").count("registered as agent") > self.starts,
                   timeout=60, message=f"agent serve --docker on {self.name} to register")
        self.starts += 1

    starts: int = 0


def docker_box(lab: PoolLab) -> DockerBox:
    behind = dataclasses.replace(lab.server, url=lab.proxy.url_for(lab.server.url))
    box = DockerBox(f"box{len(lab.boxes) + 1}", behind, lab.server.make_token("dbox", "agent", [POOL]),
                    lab.tmp / f"dbox{len(lab.boxes) + 1}", lab.tmp / "bin")
    box.folder.mkdir()
    lab.boxes.append(box)
    box.start()
    return box


def docker_env(image: str) -> Environment:
    env = Environment("pool-docker")
    env.docker.enabled = True
    env.docker.base_image = image
    env.docker.arguments = ["--network", "none", "-e", "CUDA_VISIBLE_DEVICES=3"]  # the job cannot pick GPUs
    env.python.user_managed_dependencies = True
    return env


def submit(lab: PoolLab, image: str, gpus: int, script: str = "job.py", max_retries: int = 0,
           **probe: Any) -> str:
    cfg = {"probe": DOCKER_PROBE, "outputs": {"model.bin": 48_000}, **probe}
    src = ScriptRunConfig(source_directory=str(lab.project), script=script, arguments=[json.dumps(cfg)],
                          run_config=RunConfiguration(target=POOL, environment=docker_env(image), resources=Resources(
                              gpu_count=gpus, max_retries=max_retries)))
    definition = {**src.run_config.to_mapping(), "cancel_grace_seconds": 2.0}
    snapshot = take_snapshot(str(lab.project), lab.ws.store, lab.ws.artifacts)
    created = lab.create(definition, snapshot.snapshot_id)
    assert created.status_code == 201, created.text
    run_id = str(created.json()["run_id"])
    queued = lab.enqueue(run_id, gpus)
    assert queued.status_code == 200, queued.text
    return run_id


def context(lab: PoolLab, box: Box, run_id: str, values: int, fault: str) -> FaultContext:
    run_dir = lab.run_dir(box, run_id)
    return FaultContext(run_dir=run_dir, probe=os.path.join(run_dir, "src", "probe"), values_total=values,
                        docker=True, fault=fault)


def wait_values(ctx: FaultContext, run_id: str, count: int) -> None:
    wait_until(lambda: len(ctx.probe_lines(run_id, "values")) >= count, timeout=180, interval=0.1,
               message=f"run {run_id}'s container to log {count} values")


# -- what is asked of Docker --------------------------------------------------------------------------------
def _executor(client: Any, image: str, tmp_path: Path, gpus: list[str], attempt: int) -> DockerExecutor:
    return DockerExecutor(client, image, ["true"], "pool_docker_args", str(tmp_path), [], {"A": "1"},
                          str(tmp_path / "driver.txt"), [], {"environment": {"CUDA_VISIBLE_DEVICES": "3"}},
                          "0:0", gpus, attempt=attempt)


def test_docker_is_asked_for_exactly_the_runs_gpus(docker_base_image: str, tmp_path: Path) -> None:
    import docker

    client = docker.from_env(timeout=30)
    created = []
    try:
        for gpus, attempt in ((["1", "3"], 2), ([], 1)):
            arguments = _executor(client, docker_base_image, tmp_path, gpus, attempt).create_arguments()
            container = client.containers.create(docker_base_image, **arguments)  # created, not started
            created.append(container)
            host = container.attrs["HostConfig"]
            env = dict(e.split("=", 1) for e in container.attrs["Config"]["Env"])
            labels = container.attrs["Config"]["Labels"]
            assert labels["rundock.run_id"] == "pool_docker_args" and labels["rundock.attempt"] == str(attempt)
            if gpus:
                assert container.name == "rundock-pool_docker_args.2"
                assert host["DeviceRequests"] == [{"Driver": "nvidia", "Count": 0, "DeviceIDs": ["1", "3"],
                                                   "Capabilities": [["gpu"]], "Options": {}}]
                # Inside, the runtime shows host GPUs 1 and 3 as 0 and 1; the job's own setting does not win.
                assert (env["NVIDIA_VISIBLE_DEVICES"], env["CUDA_VISIBLE_DEVICES"]) == ("1,3", "0,1")
            else:
                assert container.name == "rundock-pool_docker_args"
                assert not host.get("DeviceRequests")
                assert (env["NVIDIA_VISIBLE_DEVICES"], env["CUDA_VISIBLE_DEVICES"]) == ("void", "")
            assert env["A"] == "1"
    finally:
        for container in created:
            container.remove(force=True)


# -- runs of a --docker box -----------------------------------------------------------------------------------
def test_a_run_without_gpus_runs_in_its_container_and_one_with_gpus_fails_naming_the_missing_runtime(
        pool_lab: PoolLab, docker_base_image: str) -> None:
    (pool_lab.project / "env.py").write_text(ENV_JOB)
    box = docker_box(pool_lab)
    plain = submit(pool_lab, docker_base_image, gpus=0, script="env.py")
    assert pool_lab.wait_end(plain, timeout=240) == RunStatus.COMPLETED, \
        f"{history(pool_lab, plain)}: {pool_lab.ws.store.get_run(plain).error}"
    tags = pool_lab.ws.store.get_run(plain).tags
    assert tags["in_container"] == "True"
    assert json.loads(str(tags["env"])) == {"CUDA_VISIBLE_DEVICES": "", "NVIDIA_VISIBLE_DEVICES": "void",
                                       "RUNDOCK_RUN_DIR": "/rundock/run"}
    assert pool_lab.values(plain) == [1]
    assert "outputs/ok.txt" in pool_lab.ws.store.list_files(plain)
    assert run_containers(plain, required=True) == []

    gpu_run = submit(pool_lab, docker_base_image, gpus=2, values=3, interval=0.01)
    assert pool_lab.wait_end(gpu_run, timeout=240) == RunStatus.FAILED, history(pool_lab, gpu_run)
    error = pool_lab.ws.store.get_run(gpu_run).error or {}
    message = str(error.get("message"))
    assert "has no NVIDIA runtime (nvidia-container-toolkit)" in message, error
    assert "install it on " in message and "environment.docker.enabled = False" in message, error
    assert RunStatus.RUNNING not in [c.status for c in pool_lab.ws.store.status_history(gpu_run)]
    assert not os.path.exists(os.path.join(pool_lab.run_dir(box, gpu_run), "src", "probe", gpu_run, "starts"))
    wait_until(lambda: not any(pool_lab.gpus_used().values()), timeout=30, message="the failed run's GPUs")
    assert run_containers(gpu_run, required=True) == []


def test_agent_serve_killed_under_a_container_job_adopts_it_and_the_run_completes_once(
        pool_lab: PoolLab, docker_base_image: str) -> None:
    box = docker_box(pool_lab)
    run_id = submit(pool_lab, docker_base_image, gpus=0, values=120, interval=0.05)
    ctx = context(pool_lab, box, run_id, 120, "agent serve SIGKILLed under a container job")
    wait_values(ctx, run_id, 10)
    assert len(run_containers(run_id, required=True)) == 1
    box.kill()
    box.start()
    assert f"adopted run {run_id} (attempt 1" in box.log.read_text()
    assert f"container rundock-{run_id} (running)" in box.log.read_text()
    assert pool_lab.wait_end(run_id, timeout=180) == RunStatus.COMPLETED, history(pool_lab, run_id)
    for check in (check_i1, check_i2, check_i3, check_i4, check_i5):
        check(pool_lab.ws, run_id, ctx)
    assert [int(v) for v in pool_lab.values(run_id)] == list(range(120))
    assert pool_lab.queue(run_id)["attempt"] == 1


def test_a_container_whose_attempt_was_fenced_while_nothing_watched_it_is_removed_on_adoption(
        pool_lab: PoolLab, docker_base_image: str) -> None:
    box = docker_box(pool_lab)
    run_id = submit(pool_lab, docker_base_image, gpus=0, values=4000, interval=0.05)
    ctx = context(pool_lab, box, run_id, 4000, "agent serve and per-run agent SIGKILLed, attempt fenced")
    wait_values(ctx, run_id, 5)
    box.kill()
    agents = agent_pids(ctx.run_dir)
    assert len(agents) == 1, agents
    os.kill(agents[0], signal.SIGKILL)
    # Nobody watches the container now; it goes on until the server fences the attempt (the run is lost).
    assert pool_lab.wait_end(run_id, timeout=LEASE * 6) == RunStatus.FAILED
    record = pool_lab.ws.store.get_run(run_id)
    assert "agent lost" in f"{record.status_detail} {record.error}".lower(), history(pool_lab, run_id)
    logged = len(ctx.probe_lines(run_id, "values"))
    wait_until(lambda: len(ctx.probe_lines(run_id, "values")) > logged, timeout=30,
               message="the orphaned container to go on logging")
    assert len(run_containers(run_id, required=True)) == 1
    box.start()
    wait_until(lambda: not run_containers(run_id, required=True), timeout=60,
               message=f"the restarted agent to remove run {run_id}'s container")
    assert f"run {run_id} (attempt 1): removed its container rundock-{run_id}" in box.log.read_text()
    for check in (check_i1, check_i4, check_i5):
        check(pool_lab.ws, run_id, ctx)
    assert pool_lab.status(run_id) == RunStatus.FAILED


def test_cancel_stops_the_container_within_the_grace_and_leaves_nothing(pool_lab: PoolLab,
                                                                        docker_base_image: str) -> None:
    box = docker_box(pool_lab)
    run_id = submit(pool_lab, docker_base_image, gpus=0, values=4000, interval=0.05, setsid_child=True)
    ctx = context(pool_lab, box, run_id, 4000, "canceled")
    wait_values(ctx, run_id, 5)
    assert len(run_containers(run_id, required=True)) == 1
    started = time.monotonic()
    pool_lab.ws.store.transition(run_id, RunStatus.CANCEL_REQUESTED, detail="cancel requested")
    wait_until(lambda: not run_containers(run_id, required=True), timeout=60, interval=0.1,
               message=f"run {run_id}'s container to be stopped")
    stopped = time.monotonic() - started
    assert pool_lab.wait_end(run_id, timeout=60) == RunStatus.CANCELED, history(pool_lab, run_id)
    for check in (check_i1, check_i4, check_i5):
        check(pool_lab.ws, run_id, ctx)
    # Left alone the job would log for 200 s; the grace is 2 s. The bound is loose: this machine is shared.
    assert stopped < 45, stopped
