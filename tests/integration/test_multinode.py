"""Multi-node runs on a pool, end to end: a real server, two real ``rundock agent serve`` processes on this
machine (stand-in ``nvidia-smi``, their own work folders, ``--address 127.0.0.1``), real per-run agents and jobs.

A 2-node run waits, saying why and holding no GPU, while one agent is online; with two it runs on both at once,
its nodes meet over loopback (node 0 listens on MASTER_PORT, node 1 connects: a stand-in all-reduce of their
ranks), and both nodes' metrics, logs and outputs are in the one run. Node 1's job failing stops node 0's and
ends the run Failed naming node 1.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import os
import subprocess
import sys
from typing import Any

import psutil
import pytest

from rundock.errors import ConfigError
from rundock.runconfig.distributed import MpiConfiguration, PyTorchConfiguration
from rundock.runconfig.environment import Environment
from rundock.runconfig.run_configuration import Resources, RunConfiguration
from rundock.runconfig.script_run_config import ScriptRunConfig
from rundock.states import RunStatus
from rundock.submitter.experiment import Experiment
from rundock.submitter.run import Run
from tests.conftest import REPO, wait_until
from tests.integration.test_pool_agent import POOL, Box, Team, team, wait_status
from tests.server_fixtures import ServerHandle
from tests.tcp_proxy import proxy_for

__all__ = ["team"]  # the fixture, shared with the single-node pool tests

# argv: mode ("meet", "fail", "slow", "hang", "early", "gate" or "gloo"), a folder where each process leaves its pid.
# Every process checks its variables; they meet over loopback (rank 0 listens on MASTER_PORT, every other rank
# connects and sends its rank, rank 0 sends the sum back to each: a stand-in all-reduce), then: "fail": the last rank
# exits 1 and the others wait; "slow": each logs 20 steps over about 10 s; "hang": every rank waits; "early": rank 0
# waits, the others complete; "gate": each waits for a file "go" in the folder, then logs 5 steps.
NODE = """
import os, socket, sys, time
from rundock.context import Run
run = Run.get_context()
mode, folder = sys.argv[1], sys.argv[2]
per_node = int(os.environ["AZUREML_PROCESS_COUNT_PER_NODE"])
rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
node, local = int(os.environ["NODE_RANK"]), int(os.environ["LOCAL_RANK"])
addr, port = os.environ["MASTER_ADDR"], int(os.environ["MASTER_PORT"])
assert world == 2 * per_node and rank == node * per_node + local and 0 <= local < per_node, dict(os.environ)
assert os.environ["LOCAL_WORLD_SIZE"] == str(per_node), dict(os.environ)
assert os.environ["AZ_BATCH_MASTER_NODE"] == f"{addr}:{port}" and os.environ["AZUREML_NODE_COUNT"] == "2"
with open(os.path.join(folder, f"rank-{rank}.pid"), "w") as fh:
    fh.write(str(os.getpid()))
print(f"rank {rank} of {world} (node {node}, local rank {local}) starts")
if mode == "gloo":
    import torch, torch.distributed as dist
    dist.init_process_group("gloo")
    value = torch.tensor([float(rank)])
    dist.all_reduce(value)
    total = int(value.item())
elif rank == 0:
    server = socket.create_server((addr, port), backlog=world)
    server.settimeout(120)
    peers = [server.accept()[0].makefile("rw") for _ in range(world - 1)]
    total = rank + sum(int(peer.readline()) for peer in peers)
    for peer in peers:
        peer.write(f"{total}\\n")
        peer.flush()
else:
    deadline = time.time() + 120
    while True:
        try:
            peer = socket.create_connection((addr, port), timeout=120).makefile("rw")
            break
        except OSError:
            if time.time() > deadline:
                raise
            time.sleep(0.2)
    peer.write(f"{rank}\\n")
    peer.flush()
    total = int(peer.readline())
print(f"rank {rank}: the sum of ranks is {total}")
open(os.path.join(folder, f"rank-{rank}.met"), "w").close()
if mode == "fail":
    if rank == world - 1:
        sys.exit(f"rank {rank} gives up")
    time.sleep(600)
if mode == "hang" or (mode == "early" and rank == 0):
    time.sleep(600)
if mode == "gate":
    while not os.path.exists(os.path.join(folder, "go")):
        time.sleep(0.1)
    for step in range(5):
        run.log("step", step)
if mode == "slow":
    for step in range(20):
        run.log("step", step)
        time.sleep(0.5)
run.log("rank_sum", total)
run.log("rank", rank)
if local == 0:
    os.makedirs("outputs", exist_ok=True)
    with open("outputs/result.txt", "w") as fh:
        fh.write(f"node {node}: {total}")
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


def boxes(team: Team, *names: str, server: ServerHandle | None = None) -> list[NodeBox]:
    """Boxes of ``team``; ``server``: the server as they reach it (through a proxy), if not directly."""
    made = []
    for name in names:
        box = NodeBox(name, server or team.server, team.server.make_token(name, "agent", [POOL]),
                      team.folder / name, team.folder / "bin")
        box.folder.mkdir()
        team.boxes.append(box)
        made.append(box)
    return made


def submit(team: Team, mode: str, config: Any = None) -> Run:
    (team.project / "node.py").write_text(NODE)
    pids = team.folder / f"pids-{mode}"
    pids.mkdir()
    run_config = RunConfiguration(target=POOL, resources=Resources(gpu_count=1))
    src = ScriptRunConfig(source_directory=str(team.project), script="node.py", run_config=run_config,
                          arguments=[mode, str(pids)],
                          distributed_job_config=config or PyTorchConfiguration(node_count=2))
    return Experiment(team.ws, "multinode").submit(src)


def pid_of(team: Team, mode: str, rank: int) -> int:
    path = team.folder / f"pids-{mode}" / f"rank-{rank}.pid"
    return int(str(wait_until(lambda: path.exists() and path.read_text(), timeout=120,
                              message=f"rank {rank} to start")))


def met(team: Team, mode: str, *ranks: int) -> None:
    """Until ``ranks`` have met the others (after that, no rank waits on another)."""
    folder = team.folder / f"pids-{mode}"
    wait_until(lambda: all((folder / f"rank-{r}.met").exists() for r in ranks), timeout=120,
               message=f"ranks {ranks} to meet")


def gone(pid: int) -> bool:
    return not psutil.pid_exists(pid) or psutil.Process(pid).status() == psutil.STATUS_ZOMBIE


def box_of(boxes: list[NodeBox], pid: int) -> NodeBox:
    """The box whose work folder the job process ``pid`` runs in."""
    cwd = psutil.Process(pid).cwd()
    return next(b for b in boxes if cwd.startswith(str(b.folder)))


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
    assert sorted(metrics["rank"]) == [0, 1] and metrics["rank_sum"] == [1, 1], metrics
    names = run.get_file_names()
    assert {"outputs/result.txt", "outputs/node-1/result.txt"} <= set(names), names
    assert {"system_logs/driver_log.txt", "system_logs/node-1/driver_log.txt"} <= set(names), names
    wait_until(lambda: held_gpus(team) == [], timeout=30, message="both nodes' GPUs to be free")


def test_one_node_failing_cancels_the_other_and_fails_the_run(team: Team) -> None:
    for box in boxes(team, "box-a", "box-b"):
        box.start()
    run = submit(team, "fail")
    survivor = pid_of(team, "fail", 0)  # rank 1 fails only once both met: rank 0 surely runs by then
    assert wait_status(run, {RunStatus.COMPLETED, RunStatus.FAILED, RunStatus.CANCELED}, timeout=180) == \
        RunStatus.FAILED.value
    error = run.get_details()["error"]["error"]
    assert error["code"] == "NodeFailed" and error["message"].startswith("node 1 of 2 (agent "), error
    assert "exited with code 1" in error["message"] and "rank 1 gives up" in error["message"], error
    wait_until(lambda: gone(survivor), timeout=60, message="node 0's job to be stopped")
    wait_until(lambda: held_gpus(team) == [], timeout=60, message="both nodes' GPUs to be free")


def test_two_processes_per_node_get_their_ranks_meet_and_one_failing_stops_all(team: Team) -> None:
    for box in boxes(team, "box-a", "box-b"):
        box.start()
    run = submit(team, "meet", PyTorchConfiguration(node_count=2, process_count_per_node=2))
    assert wait_status(run, {RunStatus.COMPLETED, RunStatus.FAILED}, timeout=180) == RunStatus.COMPLETED.value, \
        run.get_detailed_status()
    metrics = run.get_metrics()  # every process checked RANK, LOCAL_RANK, WORLD_SIZE=4, NODE_RANK, MASTER_*
    assert sorted(metrics["rank"]) == [0, 1, 2, 3] and metrics["rank_sum"] == [6, 6, 6, 6], metrics
    assert {"outputs/result.txt", "outputs/node-1/result.txt"} <= set(run.get_file_names())
    running = [c.detail for c in team.ws.store.status_history(run.id) if c.status == RunStatus.RUNNING]
    assert running and all(d.startswith("running node.py ") for d in running), running  # not the launcher

    failing = submit(team, "fail", PyTorchConfiguration(node_count=2, process_count_per_node=2))
    others = [pid_of(team, "fail", rank) for rank in (0, 1, 2)]  # rank 3 fails once all four met
    assert wait_status(failing, {RunStatus.COMPLETED, RunStatus.FAILED, RunStatus.CANCELED}, timeout=180) == \
        RunStatus.FAILED.value
    error = failing.get_details()["error"]["error"]
    assert error["code"] == "NodeFailed" and error["message"].startswith("node 1 of 2 (agent "), error
    assert "exited with code 1" in error["message"], error
    wait_until(lambda: all(gone(p) for p in others), timeout=60,
               message="rank 3's sibling on node 1 and both processes of node 0 to be stopped")
    wait_until(lambda: held_gpus(team) == [], timeout=60, message="both nodes' GPUs to be free")


def test_a_lost_node_fails_the_run_naming_it_and_stops_the_other(team: Team) -> None:
    made = boxes(team, "box-a", "box-b")
    for box in made:
        box.start()
    run = submit(team, "hang")
    survivor, victim = pid_of(team, "hang", 0), pid_of(team, "hang", 1)
    met(team, "hang", 0, 1)
    dead = box_of(made, victim)
    dead.kill()  # the box dies: its agent serve, its per-run agent and its job, all at once
    for proc in psutil.process_iter(["cmdline"]):
        if proc.pid == victim or any(str(dead.folder) in part for part in proc.info["cmdline"] or []):
            proc.kill()
    assert wait_status(run, {RunStatus.COMPLETED, RunStatus.FAILED, RunStatus.CANCELED}, timeout=60) == \
        RunStatus.FAILED.value  # once node 1's lease (8 s) ran out
    error = run.get_details()["error"]["error"]
    assert error["code"] == "AgentLost" and error["message"].startswith("node 1 of 2 (agent "), error
    assert " was lost: " in error["message"] and "stopped reporting" in error["message"], error
    wait_until(lambda: gone(survivor), timeout=60, message="node 0's job to be stopped")
    wait_until(lambda: held_gpus(team) == [], timeout=60, message="both nodes' GPUs to be free")


def test_a_node_lost_after_the_other_completed_fails_the_run_naming_it(team: Team) -> None:
    made = boxes(team, "box-a", "box-b")
    for box in made:
        box.start()
    run = submit(team, "early")
    head, early = pid_of(team, "early", 0), pid_of(team, "early", 1)
    dead = box_of(made, head)
    met(team, "early", 0, 1)
    wait_until(lambda: gone(early) and len(held_gpus(team)) == 1, timeout=120,
               message="node 1 to complete and free its GPU while node 0 runs on")
    # Node 0's states reach the history at its next shipment (under load, after node 1 has ended): the run
    # shows live, never ended, while node 0 runs on.
    wait_until(lambda: run.get_status() in {RunStatus.RUNNING.value, RunStatus.NOT_RESPONDING.value}, timeout=60,
               message="the run to show live while node 0 runs on")
    dead.kill()  # node 0's box dies: its agent serve, its per-run agent and its job, all at once
    for proc in psutil.process_iter(["cmdline"]):
        if proc.pid == head or any(str(dead.folder) in part for part in proc.info["cmdline"] or []):
            proc.kill()
    assert wait_status(run, {RunStatus.COMPLETED, RunStatus.FAILED, RunStatus.CANCELED}, timeout=60) == \
        RunStatus.FAILED.value  # once node 0's lease (8 s) ran out
    error = run.get_details()["error"]["error"]
    assert error["code"] == "AgentLost" and error["message"].startswith("node 0 of 2 (agent "), error
    assert " was lost: " in error["message"] and "stopped reporting" in error["message"], error
    wait_until(lambda: held_gpus(team) == [], timeout=60, message="both nodes' GPUs to be free")


@pytest.mark.parametrize("team", [90], indirect=True)  # leases outlast the outage: no node is lost
def test_a_server_unreachable_when_the_nodes_finish_loses_nothing(team: Team) -> None:
    with proxy_for(team.server.url) as proxy:
        behind = dataclasses.replace(team.server, url=proxy.url_for(team.server.url))
        made = boxes(team, "box-a", "box-b", server=behind)
        for box in made:
            box.start()
        run = submit(team, "gate")
        jobs = [pid_of(team, "gate", rank) for rank in (0, 1)]
        met(team, "gate", 0, 1)
        wait_until(lambda: run.get_status() == RunStatus.RUNNING.value, timeout=60, message="the run to be Running")
        proxy.cut()  # the boxes' link to the server is down as the nodes finish, longer than a request's retries
        (team.folder / "pids-gate" / "go").touch()
        wait_until(lambda: all(gone(p) for p in jobs), timeout=60, message="both nodes' jobs to end")
        wait_until(lambda: any("could not ship its last records" in b.log.read_text(errors="replace") for b in made),
                   timeout=120, interval=1.0, message="a node's last records to fail to ship (after 30 s of retries)")
        # nothing reaches the server: the run looks NotResponding (no heartbeats), but nothing ended it
        assert run.get_status() in {RunStatus.RUNNING.value, RunStatus.NOT_RESPONDING.value}, run.get_detailed_status()
        proxy.restore()
        assert wait_status(run, {RunStatus.COMPLETED, RunStatus.FAILED, RunStatus.CANCELED}, timeout=120) == \
            RunStatus.COMPLETED.value, (run.get_detailed_status(), run.get_details().get("error"))
    metrics = run.get_metrics()
    assert sorted(metrics["step"]) == sorted(list(range(5)) * 2), metrics  # both nodes' last values, each once
    assert sorted(metrics["rank"]) == [0, 1] and metrics["rank_sum"] == [1, 1], metrics
    assert {"outputs/result.txt", "outputs/node-1/result.txt"} <= set(run.get_file_names())
    wait_until(lambda: held_gpus(team) == [], timeout=30, message="both nodes' GPUs to be free")


def test_a_restarted_agent_serve_adopts_its_node_and_the_run_completes(team: Team) -> None:
    made = boxes(team, "box-a", "box-b")
    for box in made:
        box.start()
    run = submit(team, "slow")
    restarted = box_of(made, pid_of(team, "slow", 1))
    met(team, "slow", 0, 1)
    restarted.kill()  # only agent serve: node 1's per-run agent and job go on
    restarted.start()
    assert wait_status(run, {RunStatus.COMPLETED, RunStatus.FAILED, RunStatus.CANCELED}, timeout=180) == \
        RunStatus.COMPLETED.value, run.get_detailed_status()
    assert f"adopted run {run.id}" in restarted.log.read_text()
    metrics = run.get_metrics()
    assert sorted(metrics["step"]) == sorted(list(range(20)) * 2), metrics  # both nodes, every value once
    assert metrics["rank_sum"] == [1, 1], metrics
    assert {"outputs/result.txt", "outputs/node-1/result.txt"} <= set(run.get_file_names())
    wait_until(lambda: held_gpus(team) == [], timeout=30, message="both nodes' GPUs to be free")


def test_retries_and_docker_are_refused_for_a_multi_node_run(team: Team) -> None:
    (team.project / "node.py").write_text(NODE)
    config = RunConfiguration(target=POOL, resources=Resources(gpu_count=1, max_retries=2))
    src = ScriptRunConfig(source_directory=str(team.project), script="node.py", run_config=config,
                          distributed_job_config=MpiConfiguration(node_count=2))
    with pytest.raises(ConfigError, match=r"max_retries=2: a multi-node run \(node_count=2\) is not retried"):
        Experiment(team.ws, "multinode").submit(src)
    docker = Environment("in-a-container")
    docker.docker.enabled = True
    src = ScriptRunConfig(source_directory=str(team.project), script="node.py", environment=docker,
                          run_config=RunConfiguration(target=POOL),
                          distributed_job_config=PyTorchConfiguration(node_count=2))
    with pytest.raises(ConfigError, match="not in a Docker container: use an environment without Docker"):
        Experiment(team.ws, "multinode").submit(src)
    assert Experiment(team.ws, "multinode").get_runs() == []  # refused before anything was made

    # The server refuses it as well, whoever enqueues it.
    store = team.ws.store
    record = store.create_run("multinode", target=POOL, run_definition={
        "distributed": {"kind": "pytorch", "node_count": 2}, "resources": {"max_retries": 1}})
    with team.server.session(team.server.admin_token) as session:
        answer = session.post(team.server.api(f"/runs/{record.run_id}/enqueue"), timeout=30,
                              json={"pool": POOL, "requirements": {"nodes": 2}})
    assert answer.status_code == 400 and "is not retried" in answer.text, answer.text
    assert store.get_run(record.run_id).status == RunStatus.NOT_STARTED


@pytest.mark.skipif(importlib.util.find_spec("torch") is None,
                    reason="torch is not installed here: the gloo all-reduce test needs it (pip install torch)")
def test_a_two_node_torch_gloo_all_reduce(team: Team) -> None:
    for box in boxes(team, "box-a", "box-b"):
        box.start()
    run = submit(team, "gloo")
    assert wait_status(run, {RunStatus.COMPLETED, RunStatus.FAILED}, timeout=300) == RunStatus.COMPLETED.value, \
        run.get_detailed_status()
    assert run.get_metrics()["rank_sum"] == [1, 1]
