"""How one node of a multi-node run starts its processes (``rundock.agent.launch``, ``pool_agent.nodes.node_job``):
the launch line each node's job file gets, run for real with the node's own Python.

A ``torchrun`` node runs ``python -m torch.distributed.run`` with --nnodes/--node_rank/--nproc_per_node/
--master_addr/--master_port (a stand-in ``torch`` package records what it was given); an MPI node's processes
get Open MPI's variables; one process failing stops its siblings and the node exits with its status.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import psutil
import pytest

from rundock.agent import launch
from rundock.agent.job import MODE_JOURNAL, MODE_STORE, JobSpec
from rundock.pool_agent.nodes import node_job, read_node
from rundock.runconfig.distributed import MpiConfiguration, PyTorchConfiguration

NODE = {"rank": 1, "count": 2, "master_addr": "10.1.2.3", "master_port": 29999}
# Records its argv and environment in <folder>/<LOCAL_RANK or "torchrun">.json
RECORDER = """
import json, os, sys
name = os.environ.get("RECORD_AS") or os.environ.get("LOCAL_RANK", "torchrun")
with open(os.path.join(os.environ["RECORD_DIR"], name + ".json"), "w") as fh:
    json.dump({"argv": sys.argv[1:], "env": dict(os.environ)}, fh)
"""


def spec(tmp_path: Path, script: str = "train.py", arguments: list[str] | None = None) -> JobSpec:
    return JobSpec(run_id="run_1", experiment="exp", mode=MODE_STORE, store_uri="https://team.example",
                   artifacts_root=str(tmp_path / "artifacts"), snapshot_id="snap", script=script,
                   interpreter=sys.executable, arguments=arguments or [], environment_variables={"MINE": "kept"})


def run_node(job: JobSpec, cwd: Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    """Run a node's job as its per-run agent would: its interpreter, script and arguments, its variables."""
    return subprocess.run([job.interpreter, job.script, *job.arguments], cwd=cwd, capture_output=True, text=True,
                          timeout=60, env={**os.environ, **job.environment_variables, **env})


def records(folder: Path) -> dict[str, dict[str, Any]]:
    return {p.stem: json.loads(p.read_text()) for p in folder.glob("*.json")}


def test_the_torchrun_line_names_the_nodes_ranks_and_rendezvous(tmp_path: Path) -> None:
    run_dir, src, record = tmp_path / "run", tmp_path / "run" / "src", tmp_path / "record"
    for folder in (src, record, tmp_path / "fake" / "torch" / "distributed"):
        folder.mkdir(parents=True)
    for package in ("torch", "torch/distributed"):
        (tmp_path / "fake" / package / "__init__.py").write_text("")
    (tmp_path / "fake" / "torch" / "distributed" / "run.py").write_text(RECORDER)
    distributed = PyTorchConfiguration(node_count=2, process_count_per_node=4, launcher="torchrun").to_mapping()

    job = node_job(spec(tmp_path, arguments=["--lr", "0.1"]), NODE, distributed, str(run_dir))
    assert job.mode == MODE_JOURNAL and job.script == str(run_dir / "launch.py")
    assert read_node(str(run_dir)) == NODE  # what a restarted ``agent serve`` reads to adopt the node
    done = run_node(job, src, {"PYTHONPATH": str(tmp_path / "fake"), "RECORD_DIR": str(record),
                               "RECORD_AS": "torchrun"})
    assert done.returncode == 0, done.stderr
    seen = records(record)["torchrun"]
    assert seen["argv"] == ["--nnodes", "2", "--node_rank", "1", "--nproc_per_node", "4", "--master_addr",
                            "10.1.2.3", "--master_port", "29999", "train.py", "--lr", "0.1"]
    env = seen["env"]
    assert (env["MASTER_ADDR"], env["MASTER_PORT"], env["NODE_RANK"], env["WORLD_SIZE"]) == \
        ("10.1.2.3", "29999", "1", "8")
    assert env["AZ_BATCH_MASTER_NODE"] == "10.1.2.3:29999" and env["MINE"] == "kept"
    assert launch.torchrun_command("py", 0, 3, 2, "h", 1, "t.py", []) == [
        "py", "-m", "torch.distributed.run", "--nnodes", "3", "--node_rank", "0", "--nproc_per_node", "2",
        "--master_addr", "h", "--master_port", "1", "t.py"]


def test_each_mpi_process_gets_its_open_mpi_variables(tmp_path: Path) -> None:
    run_dir, record = tmp_path / "run", tmp_path / "record"
    record.mkdir()
    run_dir.mkdir()
    (tmp_path / "recorder.py").write_text(RECORDER)
    distributed = MpiConfiguration(process_count_per_node=2, node_count=2).to_mapping()
    job = node_job(spec(tmp_path, script=str(tmp_path / "recorder.py")), NODE, distributed, str(run_dir))
    done = run_node(job, tmp_path, {"RECORD_DIR": str(record)})
    assert done.returncode == 0, done.stderr
    seen = {name: r["env"] for name, r in records(record).items()}
    assert sorted(seen) == ["0", "1"]
    for local in (0, 1):
        env = seen[str(local)]
        assert (env["OMPI_COMM_WORLD_RANK"], env["RANK"]) == (str(2 + local), str(2 + local))
        assert (env["OMPI_COMM_WORLD_LOCAL_RANK"], env["LOCAL_RANK"]) == (str(local), str(local))
        assert (env["OMPI_COMM_WORLD_SIZE"], env["OMPI_COMM_WORLD_LOCAL_SIZE"], env["WORLD_SIZE"]) == ("4", "2", "4")
        assert env["OMPI_COMM_WORLD_NODE_RANK"] == env["NODE_RANK"] == "1"

    one = node_job(spec(tmp_path), NODE, MpiConfiguration(node_count=2).to_mapping(), str(run_dir))
    assert one.script == "train.py"  # one process per node: the job itself is that process
    assert {k: one.environment_variables[k] for k in ("OMPI_COMM_WORLD_RANK", "OMPI_COMM_WORLD_SIZE",
                                                      "OMPI_COMM_WORLD_LOCAL_RANK", "RANK", "LOCAL_RANK")} == \
        {"OMPI_COMM_WORLD_RANK": "1", "OMPI_COMM_WORLD_SIZE": "2", "OMPI_COMM_WORLD_LOCAL_RANK": "0", "RANK": "1",
         "LOCAL_RANK": "0"}


SIBLINGS = """
import os, sys, time
local = int(os.environ["LOCAL_RANK"])
with open(os.path.join(sys.argv[1], f"{local}.pid"), "w") as fh:
    fh.write(str(os.getpid()))
if local == int(sys.argv[2]):
    while len(os.listdir(sys.argv[1])) < int(os.environ["LOCAL_WORLD_SIZE"]):
        time.sleep(0.05)
    sys.exit(3)
time.sleep(120)
"""


@pytest.mark.parametrize("failing", [0, 2])
def test_one_process_failing_stops_its_siblings_and_the_node_exits_with_its_status(tmp_path: Path,
                                                                                   failing: int) -> None:
    pids = tmp_path / "pids"
    pids.mkdir()
    (tmp_path / "siblings.py").write_text(SIBLINGS)
    done = subprocess.run([sys.executable, launch.__file__, "--processes", "3", "--node-rank", "0", "--nodes", "1",
                           "--", str(tmp_path / "siblings.py"), str(pids), str(failing)],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 3, done.stderr
    for path in pids.iterdir():  # every sibling was stopped (SIGTERM) before the launcher returned
        assert not psutil.pid_exists(int(path.read_text())), path.name


def test_a_process_killed_by_a_signal_makes_the_node_exit_128_plus_the_signal(tmp_path: Path) -> None:
    (tmp_path / "die.py").write_text("import os, signal\nos.kill(os.getpid(), signal.SIGKILL)\n")
    done = subprocess.run([sys.executable, launch.__file__, "--processes", "2", "--node-rank", "0", "--nodes", "1",
                           "--", str(tmp_path / "die.py")], capture_output=True, text=True, timeout=60)
    assert done.returncode == 128 + signal.SIGKILL, done.stderr
