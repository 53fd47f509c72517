"""GPU boxes and pools, end to end: a real server process, real ``rundock agent serve`` processes (with a
stand-in ``nvidia-smi`` that lists 4 GPUs), real per-run agents and jobs.

A run submitted to pool ``a100`` completes with its metrics and outputs on the server and sees exactly its
assigned GPUs; two runs of 2 GPUs each on a 4-GPU box get disjoint GPUs while a third waits, saying why;
a cancel reaches the job within about a second and leaves no process; ``agent serve`` killed with SIGKILL and
started again adopts the running job, which completes once.
"""

from __future__ import annotations

import dataclasses
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest

from rundock.runconfig.run_configuration import Resources, RunConfiguration
from rundock.runconfig.script_run_config import ScriptRunConfig
from rundock.states import RunStatus
from rundock.submitter.experiment import Experiment
from rundock.submitter.run import Run
from rundock.submitter.workspace import Workspace
from tests.conftest import REPO, wait_until
from tests.server_fixtures import ServerHandle, running_server

POOL = "a100"
FAKE_SMI = """#!/bin/sh
case "$*" in
  *memory.total*) printf '0, Fake A100-SXM4-80GB, 81920\\n1, Fake A100-SXM4-80GB, 81920\\n2, Fake A100-SXM4-80GB, \
81920\\n3, Fake A100-SXM4-80GB, 81920\\n' ;;
  *) printf '0\\n1\\n2\\n3\\n' ;;
esac
"""
# argv: steps, seconds per step, a file each start of the job appends a line to (one execution = one line)
TRAIN = """
import os, subprocess, sys, time
from rundock.context import Run
run = Run.get_context()
with open(sys.argv[3], "a") as fh:
    fh.write(f"{os.getpid()}\\n")
child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
run.tag("cuda", os.environ.get("CUDA_VISIBLE_DEVICES", "<unset>"))
run.tag("mlflow", os.environ.get("MLFLOW_RUN_ID", "") + " " + os.environ.get("MLFLOW_TRACKING_TOKEN", "")[:7])
run.tag("pids", f"{os.getpid()},{child.pid}")
for i in range(int(sys.argv[1])):
    run.log("step", i)
    time.sleep(float(sys.argv[2]))
os.makedirs("outputs", exist_ok=True)
with open("outputs/model.bin", "wb") as fh:
    fh.write(bytes(range(256)) * 64)
child.kill()
"""


@dataclasses.dataclass
class Box:
    """A GPU box: its ``agent serve`` process, work folder and log."""

    name: str
    server: ServerHandle
    token: str
    folder: Path
    bin_dir: Path
    process: subprocess.Popen[bytes] | None = None

    @property
    def log(self) -> Path:
        return self.folder / "serve.log"

    def start(self) -> None:
        env = {k: v for k, v in os.environ.items() if not k.startswith("RUNDOCK_")}
        env.update(PATH=f"{self.bin_dir}{os.pathsep}{os.environ['PATH']}", PYTHONPATH=str(REPO),
                   RUNDOCK_HOME=str(self.folder / "home"), RUNDOCK_HEARTBEAT_SECONDS="0.5")
        with open(self.log, "ab") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "rundock", "agent", "serve", "--server", self.server.url, "--token",
                 self.token, "--pool", POOL, "--work-dir", str(self.folder / "work")],
                stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True)
        wait_until(lambda: "registered as agent" in self.log.read_text(errors="replace"), timeout=60,
                   message=f"agent serve on {self.name} to register")

    def kill(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)
            self.process.wait()

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(30)
            except subprocess.TimeoutExpired:
                self.kill()


@dataclasses.dataclass
class Team:
    server: ServerHandle
    ws: Workspace
    project: Path
    boxes: list[Box]
    folder: Path

    def box(self, name: str) -> Box:
        box = Box(name, self.server, self.server.make_token(name, "agent", [POOL]), self.folder / name,
                  self.folder / "bin")
        box.folder.mkdir()
        self.boxes.append(box)
        return box

    def submit(self, steps: int, seconds: float, gpus: int, tag: str) -> Run:
        config = RunConfiguration(target=POOL, resources=Resources(gpu_count=gpus))
        src = ScriptRunConfig(source_directory=str(self.project), script="train.py", run_config=config,
                              arguments=[str(steps), str(seconds), str(self.folder / f"starts-{tag}.txt")])
        return Experiment(self.ws, "pool").submit(src)

    def starts(self, tag: str) -> list[str]:
        path = self.folder / f"starts-{tag}.txt"
        return path.read_text().split() if path.exists() else []

    def pools(self) -> list[dict[str, Any]]:
        with self.server.session(self.server.admin_token) as session:
            answer = session.get(self.server.api("/pools"), timeout=30)
        answer.raise_for_status()
        return list(answer.json())

    def rundock(self, *args: str) -> subprocess.CompletedProcess[str]:
        env = {k: v for k, v in os.environ.items() if k != "RUNDOCK_TOKEN"}
        env.update(PYTHONPATH=str(REPO), RUNDOCK_HOME=str(self.folder / "laptop-home"))
        done = subprocess.run([sys.executable, "-m", "rundock", *args], cwd=self.project, capture_output=True,
                              text=True, timeout=120, env=env)
        assert done.returncode == 0, f"rundock {' '.join(args)}: {done.stdout}\n{done.stderr}"
        return done


@pytest.fixture()
def team(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, request: pytest.FixtureRequest) -> Iterator[Team]:
    """A server with 8-second leases (a test may ask for others: ``parametrize("team", [60], indirect=True)``)."""
    lease = getattr(request, "param", 8)
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    smi = bin_dir / "nvidia-smi"
    smi.write_text(FAKE_SMI)
    smi.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")  # the test's own prepare checks
    with running_server(tmp_path, extra_args=["--lease-seconds", str(lease)]) as server:
        project = tmp_path / "project"
        project.mkdir()
        (project / "train.py").write_text(TRAIN)
        team = Team(server, None, project, [], tmp_path)  # type: ignore[arg-type]
        home = tmp_path / "laptop-home"
        team.rundock("init")
        team.rundock("login", server.url, "--token", server.make_token("alice"))
        monkeypatch.setenv("RUNDOCK_HOME", str(home))
        monkeypatch.delenv("RUNDOCK_TOKEN", raising=False)
        team.ws = Workspace(str(project / ".rundock"))
        try:
            yield team
        finally:
            for box in team.boxes:
                box.stop()
            for box in team.boxes:  # whatever a failed test left running
                for proc in psutil.process_iter(["cmdline"]):
                    if any(str(box.folder) in part for part in proc.info["cmdline"] or []):
                        proc.kill()


def wait_status(run: Run, statuses: set[RunStatus], timeout: float = 90) -> str:
    return str(wait_until(lambda: (s := run.get_status()) in {x.value for x in statuses} and s, timeout=timeout,
                          message=f"run {run.id} to reach {sorted(x.value for x in statuses)}"))


def alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def pids_of(run: Run) -> list[int]:
    tags = wait_until(lambda: run.refresh().get_tags().get("pids"), timeout=60, message=f"run {run.id}'s pids")
    return [int(p) for p in str(tags).split(",")]


def test_a_pool_run_completes_with_its_records_on_its_gpus(team: Team) -> None:
    team.box("box1").start()
    run = team.submit(steps=5, seconds=0.05, gpus=2, tag="one")
    assert run.get_details()["target"] == POOL
    assert wait_status(run, {RunStatus.COMPLETED, RunStatus.FAILED}) == RunStatus.COMPLETED.value, \
        run.get_detailed_status()
    assert run.get_metrics() == {"step": [0, 1, 2, 3, 4]}
    assert "outputs/model.bin" in run.get_file_names()
    assert run.get_tags()["mlflow"] == f"{run.id} rdkrun_"  # MLflow's variables, with a run token, as on local runs
    cuda = run.get_tags()["cuda"]
    assert cuda is not None and len(cuda.split(",")) == 2 and set(cuda.split(",")) <= {"0", "1", "2", "3"}
    assert b"GPUs for this run: " + ", ".join(cuda.split(",")).encode() in \
        team.ws.store.read_log(run.id, "system_logs/prepare_log.txt")
    assert team.starts("one") and len(team.starts("one")) == 1


def test_gpus_are_shared_out_disjoint_a_third_run_waits_and_cancel_leaves_nothing(team: Team) -> None:
    team.box("box1").start()
    first = team.submit(steps=400, seconds=0.05, gpus=2, tag="first")
    second = team.submit(steps=400, seconds=0.05, gpus=2, tag="second")
    pids = {run.id: pids_of(run) for run in (first, second)}
    cuda = {run.id: set(str(run.get_tags()["cuda"]).split(",")) for run in (first, second)}
    assert not cuda[first.id] & cuda[second.id] and all(len(c) == 2 for c in cuda.values()), cuda
    listed = team.pools()
    gpus = [g for pool in listed if pool["name"] == POOL for agent in pool["agents"] for g in agent["gpus"]]
    for run in (first, second):  # each sees exactly the GPUs the server assigned it
        assert {str(g["index"]) for g in gpus if g["used_by"] == run.id} == cuda[run.id]

    third = team.submit(steps=3, seconds=0.05, gpus=2, tag="third")
    detailed = third.get_detailed_status()
    assert detailed["status"] == RunStatus.QUEUED.value
    assert f"all 4 GPUs of pool {POOL} are busy" in detailed["details"], detailed
    shown = team.rundock("show", third.id).stdout
    assert f"all 4 GPUs of pool {POOL} are busy" in shown
    table = team.rundock("pools").stdout
    assert POOL in table and "0 free / 4 (80 GB)" in table and first.id in table and second.id in table

    started = time.monotonic()
    first.cancel()
    wait_until(lambda: not any(alive(p) for p in pids[first.id]), timeout=10, interval=0.02,
               message="the canceled job's processes to end")
    assert time.monotonic() - started < 3.0  # the server pushes the cancel to the agent at once
    assert wait_status(first, {RunStatus.CANCELED, RunStatus.FAILED, RunStatus.COMPLETED}) == \
        RunStatus.CANCELED.value
    assert wait_status(third, {RunStatus.COMPLETED, RunStatus.FAILED}) == RunStatus.COMPLETED.value
    assert set(str(third.get_tags()["cuda"]).split(",")) == cuda[first.id]  # the GPUs the cancel freed
    second.cancel()
    wait_status(second, {RunStatus.CANCELED})
    assert not any(alive(p) for p in pids[first.id] + pids[second.id])


def test_a_killed_agent_serve_restarted_adopts_its_running_job(team: Team) -> None:
    box = team.box("box1")
    box.start()
    run = team.submit(steps=60, seconds=0.1, gpus=1, tag="adopt")
    pids = pids_of(run)
    wait_until(lambda: len(run.get_metrics().get("step") or []) >= 5, timeout=60, message="the first steps")
    box.kill()
    time.sleep(1.0)
    assert all(alive(p) for p in pids)  # SIGKILL of agent serve kills no job
    box.start()
    assert wait_status(run, {RunStatus.COMPLETED, RunStatus.FAILED}) == RunStatus.COMPLETED.value, \
        run.get_detailed_status()
    assert "adopted run " + run.id in box.log.read_text()
    assert run.get_metrics() == {"step": list(range(60))}  # every value exactly once
    assert len(team.starts("adopt")) == 1  # one execution
    assert not any(alive(p) for p in pids)
    with team.server.session(team.server.admin_token) as session:
        queue = session.get(team.server.api(f"/runs/{run.id}/queue"), timeout=30).json()
    assert queue.get("attempt") in (None, 1), queue


def test_a_job_whose_agent_serve_stays_away_past_its_lease_is_fenced_and_stopped(team: Team) -> None:
    box = team.box("box1")
    box.start()
    run = team.submit(steps=600, seconds=0.1, gpus=1, tag="fenced")
    pids = pids_of(run)
    box.kill()  # nobody renews the attempt's lease (8 s) from now on
    status = wait_status(run, {RunStatus.FAILED, RunStatus.COMPLETED, RunStatus.CANCELED}, timeout=60)
    assert status == RunStatus.FAILED.value
    assert "agent lost" in run.get_detailed_status()["details"]
    # The per-run agent's next write meets 409 fenced: it stops the job and writes nothing more.
    wait_until(lambda: not any(alive(p) for p in pids), timeout=30, message="the fenced job's processes to end")
    steps = len(run.get_metrics().get("step") or [])
    time.sleep(1.0)
    assert len(run.get_metrics().get("step") or []) == steps
    assert run.get_status() == RunStatus.FAILED.value


def test_two_boxes_share_a_pool_and_never_take_the_same_run(team: Team) -> None:
    boxes = [team.box("box1"), team.box("box2")]
    for box in boxes:
        box.start()
    runs = [team.submit(steps=30, seconds=0.1, gpus=4, tag=f"whole-{i}") for i in range(2)]
    for run in runs:
        pids_of(run)  # both run at once: each box has 4 GPUs, each run takes all of them
    agents = [a for pool in team.pools() if pool["name"] == POOL for a in pool["agents"]]
    assert sorted(r for a in agents for r in a["running"]) == sorted(r.id for r in runs)
    assert all(len(a["running"]) == 1 for a in agents)
    for run in runs:
        assert wait_status(run, {RunStatus.COMPLETED, RunStatus.FAILED}) == RunStatus.COMPLETED.value
        assert run.get_metrics() == {"step": list(range(30))}
    logs = [box.log.read_text() for box in boxes]
    for i, run in enumerate(runs):
        assert sum(f"run {run.id} (attempt 1): starting" in log for log in logs) == 1
        assert len(team.starts(f"whole-{i}")) == 1
