"""Multi-node runs on a pool, end to end: a real server, two real ``rundock agent serve`` processes on this
machine (stand-in ``nvidia-smi``, their own work folders, ``--address 127.0.0.1``), real per-run agents and jobs.

A 2-node run waits, saying why and holding no GPU, while one agent is online; with two it runs on both at once,
its nodes meet over loopback (node 0 listens on MASTER_PORT, node 1 connects: a stand-in all-reduce of their
ranks), and both nodes' metrics, logs and outputs are in the one run. Node 1's job failing stops node 0's and
ends the run Failed naming node 1.
"""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from typing import Any

import psutil
import pytest

from rundock.runconfig.distributed import PyTorchConfiguration
from rundock.runconfig.run_configuration import Resources, RunConfiguration
from rundock.runconfig.script_run_config import ScriptRunConfig
from rundock.states import RunStatus
from rundock.submitter.experiment import Experiment
from rundock.submitter.run import Run
from tests.conftest import REPO, wait_until
from tests.integration.test_pool_agent import POOL, Box, Team, team, wait_status

__all__ = ["team"]  # the fixture, shared with the single-node pool tests

# argv: mode ("meet", "fail" or "gloo"), a folder where each node leaves its pid
NODE = """
import os, socket, sys, time
from rundock.context import Run
run = Run.get_context()
rank, world = int(os.environ["NODE_RANK"]), int(os.environ["WORLD_SIZE"])
addr, port = os.environ["MASTER_ADDR"], int(os.environ["MASTER_PORT"])
assert world == 2 and os.environ["RANK"] == str(rank) and os.environ["LOCAL_RANK"] == "0", dict(os.environ)
assert os.environ["AZ_BATCH_MASTER_NODE"] == f"{addr}:{port}" and os.environ["AZUREML_NODE_COUNT"] == "2"
with open(os.path.join(sys.argv[2], f"node-{rank}.pid"), "w") as fh:
    fh.write(str(os.getpid()))
print(f"node {rank} of {world} starts")
if sys.argv[1] == "fail":
    if rank == 1:
        sys.exit("node 1 gives up")
    time.sleep(600)
if sys.argv[1] == "gloo":
    import torch, torch.distributed as dist
    dist.init_process_group("gloo")
    value = torch.tensor([float(rank)])
    dist.all_reduce(value)
    total = int(value.item())
elif rank == 0:
    server = socket.create_server((addr, port))
    server.settimeout(120)
    conn, _ = server.accept()
    other = int(conn.recv(16))
    conn.sendall(str(rank).encode())
    total = rank + other
else:
    deadline = time.time() + 120
    while True:
        try:
            conn = socket.create_connection((addr, port), timeout=5)
            break
        except OSError:
            if time.time() > deadline:
                raise
            time.sleep(0.2)
    conn.sendall(str(rank).encode())
    total = rank + int(conn.recv(16))
run.log("rank_sum", total)
run.log("node_rank", rank)
os.makedirs("outputs", exist_ok=True)
with open("outputs/result.txt", "w") as fh:
    fh.write(f"node {rank}: {total}")
print(f"node {rank}: the sum of ranks is {total}")
"""


class NodeBox(Box):
    """A box whose ``agent serve`` says other nodes reach it at 127.0.0.1."""

    def start(self) -> None:
        env = {k: v for k, v in os.environ.items() if not k.startswith("RUNDOCK_")}
        env.update(PATH=f"{self.bin_dir}{os.pathsep}{os.environ['PATH']}", PYTHONPATH=str(REPO),
                   RUNDOCK_HOME=str(self.folder / "home"), RUNDOCK_HEARTBEAT_SECONDS="0.5")
        with open(self.log, "ab") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "rundock", "agent", "serve", "--server", self.server.url, "--token",
                 self.token, "--pool", POOL, "--work-dir", str(self.folder / "work"), "--address", "127.0.0.1"],
                stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True)
        wait_until(lambda: "registered as agent" in self.log.read_text(errors="replace"), timeout=60,
                   message=f"agent serve on {self.name} to register")


def boxes(team: Team, *names: str) -> list[NodeBox]:
    made = []
    for name in names:
        box = NodeBox(name, team.server, team.server.make_token(name, "agent", [POOL]), team.folder / name,
                      team.folder / "bin")
        box.folder.mkdir()
        team.boxes.append(box)
        made.append(box)
    return made


def submit(team: Team, mode: str) -> Run:
    (team.project / "node.py").write_text(NODE)
    pids = team.folder / f"pids-{mode}"
    pids.mkdir()
    config = RunConfiguration(target=POOL, resources=Resources(gpu_count=1))
    src = ScriptRunConfig(source_directory=str(team.project), script="node.py", run_config=config,
                          arguments=[mode, str(pids)], distributed_job_config=PyTorchConfiguration(node_count=2))
    return Experiment(team.ws, "multinode").submit(src)


def queue(team: Team, run: Run) -> dict[str, Any]:
    with team.server.session(team.server.admin_token) as session:
        answer = session.get(team.server.api(f"/runs/{run.id}/queue"), timeout=30)
    answer.raise_for_status()
    return dict(answer.json())


def held_gpus(team: Team) -> list[str]:
    return [str(g["used_by"]) for pool in team.pools() for a in pool["agents"] for g in a["gpus"] if g["used_by"]]


def test_a_two_node_run_waits_for_two_agents_then_meets_over_loopback(team: Team) -> None:
    first, second = boxes(team, "box-a", "box-b")
    first.start()
    run = submit(team, "meet")
    wait_until(lambda: "needs 2 agents" in queue(team, run)["reason"], timeout=30, message="the waiting reason")
    assert queue(team, run)["reason"] == f"needs 2 agents of pool {POOL} at once; 1 is online"
    assert run.get_status() == RunStatus.QUEUED.value and held_gpus(team) == []  # nothing held while it waits

    second.start()
    assert wait_status(run, {RunStatus.COMPLETED, RunStatus.FAILED}, timeout=180) == RunStatus.COMPLETED.value, \
        run.get_detailed_status()
    metrics = run.get_metrics()
    assert sorted(metrics["node_rank"]) == [0, 1] and metrics["rank_sum"] == [1, 1], metrics
    names = run.get_file_names()
    assert {"outputs/result.txt", "outputs/node-1/result.txt"} <= set(names), names
    assert {"system_logs/driver_log.txt", "system_logs/node-1/driver_log.txt"} <= set(names), names
    wait_until(lambda: held_gpus(team) == [], timeout=30, message="both nodes' GPUs to be free")


def test_one_node_failing_cancels_the_other_and_fails_the_run(team: Team) -> None:
    for box in boxes(team, "box-a", "box-b"):
        box.start()
    run = submit(team, "fail")
    assert wait_status(run, {RunStatus.COMPLETED, RunStatus.FAILED, RunStatus.CANCELED}, timeout=180) == \
        RunStatus.FAILED.value
    error = run.get_details()["error"]["error"]
    assert error["code"] == "NodeFailed" and error["message"].startswith("node 1 of 2 (agent "), error
    assert "exited with code 1" in error["message"] and "node 1 gives up" in error["message"], error
    pid = int((team.folder / "pids-fail" / "node-0.pid").read_text())
    wait_until(lambda: not psutil.pid_exists(pid) or psutil.Process(pid).status() == psutil.STATUS_ZOMBIE,
               timeout=60, message="node 0's job to be stopped")
    wait_until(lambda: held_gpus(team) == [], timeout=60, message="both nodes' GPUs to be free")


@pytest.mark.skipif(importlib.util.find_spec("torch") is None,
                    reason="torch is not installed here: the gloo all-reduce test needs it (pip install torch)")
def test_a_two_node_torch_gloo_all_reduce(team: Team) -> None:
    for box in boxes(team, "box-a", "box-b"):
        box.start()
    run = submit(team, "gloo")
    assert wait_status(run, {RunStatus.COMPLETED, RunStatus.FAILED}, timeout=300) == RunStatus.COMPLETED.value, \
        run.get_detailed_status()
    assert run.get_metrics()["rank_sum"] == [1, 1]

