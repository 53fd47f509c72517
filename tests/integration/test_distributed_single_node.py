"""A distributed run on one box (Azure ML v1's ``PyTorchConfiguration(process_count_per_node=N)``): the agent
starts N processes of the script with the launcher's variables, on the host and in a container; a target that
is not a pool refuses more than one node at submit.

The script is standard library only: it checks its variables, and rank 0 listens on ``MASTER_PORT`` while rank 1
connects to it (the rendezvous a ``torch.distributed`` script makes), then rank 0 logs what it heard.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from rundock import Environment, Experiment, Run, RunConfiguration, ScriptRunConfig
from rundock.agent.job import MODE_STORE, JobSpec, JobSpecError
from rundock.errors import ConfigError
from rundock.runconfig.distributed import PyTorchConfiguration
from rundock.submitter.workspace import Workspace
from tests.hosts import SshHost, running_ssh_host
from tests.integration.test_pool_agent import POOL, Team, team
from tests.integration.test_ssh import attach_box

__all__ = ["team"]  # the team server fixture (a real server and ``agent serve``)

MEET = """
import os, socket, sys, time
from azureml.core import Run

rank, local_rank, world = (int(os.environ[k]) for k in ("RANK", "LOCAL_RANK", "WORLD_SIZE"))
addr, port = os.environ["MASTER_ADDR"], int(os.environ["MASTER_PORT"])
assert world == 2 and rank == local_rank and rank in (0, 1), (rank, local_rank, world)
assert addr == "127.0.0.1" and os.environ["NODE_RANK"] == "0", (addr, os.environ["NODE_RANK"])
if rank == 0:
    server = socket.socket()
    server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    server.bind((addr, port))
    server.listen(1)
    server.settimeout(120)
    conn, _ = server.accept()
    heard = conn.recv(100).decode()
    conn.sendall(b"welcome")
    Run.get_context().log("heard", heard)
    Run.get_context().log("world_size", world)
else:
    deadline = time.monotonic() + 120
    while True:
        try:
            conn = socket.create_connection((addr, port), timeout=10)
            break
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)
    conn.sendall(("rank %d of %d" % (rank, world)).encode())
    assert conn.recv(100) == b"welcome"
os.write(1, ("rank %d met its peer\\n" % rank).encode())  # one write: the two processes share the log
"""


@pytest.fixture(scope="module")
def ssh_host(tmp_path_factory: pytest.TempPathFactory, docker_base_image: str) -> Iterator[SshHost]:
    with running_ssh_host(docker_base_image, tmp_path_factory.mktemp("sshd")) as host:
        yield host


def _submit(workspace: Workspace, src: Path, config: PyTorchConfiguration, env: Environment | None = None,
            target: str = "local") -> Run:
    run_config = RunConfiguration(environment=env) if env is not None else None
    return Experiment(workspace, "ddp").submit(ScriptRunConfig(str(src), "train.py", run_config=run_config,
                                                               compute_target=target, distributed_job_config=config))


def _check_met(workspace: Workspace, run: Run) -> None:
    details = run.wait_for_completion(raise_on_error=False)
    log = workspace.store.read_log(run.id, "system_logs/driver_log.txt").decode()
    assert details["status"] == "Completed", (details, log)
    assert run.get_metrics() == {"heard": "rank 1 of 2", "world_size": 2}
    assert "rank 0 met its peer" in log and "rank 1 met its peer" in log
    running = [c.detail for c in workspace.store.status_history(run.id) if c.status.value == "Running"]
    assert running and running[0].startswith("running train.py (2 processes"), running


def test_two_processes_on_this_machine_meet(workspace: Workspace, source: Callable[..., Path]) -> None:
    run = _submit(workspace, source(**{"train.py": MEET}), PyTorchConfiguration(process_count_per_node=2))
    _check_met(workspace, run)


def test_two_processes_in_a_container_meet(workspace: Workspace, source: Callable[..., Path],
                                          docker_base_image: str) -> None:
    env = Environment("ddp-docker")
    env.docker.enabled = True
    env.docker.base_image = docker_base_image
    env.docker.arguments = ["--network", "none"]  # the rendezvous is the container's own loopback
    env.python.user_managed_dependencies = True
    run = _submit(workspace, source(**{"train.py": MEET}), PyTorchConfiguration(process_count=2), env)
    _check_met(workspace, run)


def test_two_processes_on_an_ssh_host_meet(workspace: Workspace, source: Callable[..., Path], ssh_host: SshHost,
                                           tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    attach_box(workspace, ssh_host, tmp_path, monkeypatch)
    run = _submit(workspace, source(**{"train.py": MEET}), PyTorchConfiguration(process_count_per_node=2),
                  target="box")
    _check_met(workspace, run)


def test_two_processes_on_a_pool_box_meet(team: Team) -> None:
    team.box("box1").start()
    (team.project / "train.py").write_text(MEET)
    run = _submit(team.ws, team.project, PyTorchConfiguration(process_count_per_node=2), target=POOL)
    _check_met(team.ws, run)


def test_one_process_gets_rank_zero_of_one(workspace: Workspace, source: Callable[..., Path]) -> None:
    src = source(**{"train.py": """
        import os
        from azureml.core import Run
        run = Run.get_context()
        for name in ("RANK", "LOCAL_RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"):
            run.log(name, os.environ[name])
    """})
    run = _submit(workspace, src, PyTorchConfiguration())
    assert run.wait_for_completion(raise_on_error=False)["status"] == "Completed"
    metrics = run.get_metrics()
    assert {k: metrics[k] for k in ("RANK", "LOCAL_RANK", "WORLD_SIZE", "MASTER_ADDR")} == {
        "RANK": "0", "LOCAL_RANK": "0", "WORLD_SIZE": "1", "MASTER_ADDR": "127.0.0.1"}
    assert 0 < int(metrics["MASTER_PORT"]) < 65536


def test_more_than_one_node_is_refused_off_a_pool(workspace: Workspace, source: Callable[..., Path]) -> None:
    src = source(**{"train.py": "print('never runs')"})
    with pytest.raises(ConfigError, match=r"node_count=2, but target 'local' .*multi-node runs need a pool of the "
                                          r"team server: --target <pool>"):
        _submit(workspace, src, PyTorchConfiguration(node_count=2, process_count_per_node=2))
    assert workspace.store.list_runs() == []  # nothing half-made


def test_more_than_one_node_is_refused_by_an_ssh_host_before_it_is_reached(
        workspace: Workspace, source: Callable[..., Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from rundock import ComputeTarget, RemoteCompute

    monkeypatch.setenv("HOME", str(tmp_path / "home"))  # nothing listens there: the refusal comes first
    ComputeTarget.attach(workspace, "far", RemoteCompute.attach_configuration(
        address="127.0.0.1", ssh_port=9, username="root", private_key_file=str(tmp_path / "no-key")))
    with pytest.raises(ConfigError, match=r"node_count=3, but target 'far' .*--target <pool>"):
        _submit(workspace, source(**{"train.py": "print('never runs')"}), PyTorchConfiguration(node_count=3),
                target="far")
    assert workspace.store.list_runs() == []


@pytest.mark.parametrize("distributed, field", [
    ({"kind": "tensorflow", "process_count_per_node": 2, "launcher": "per-process"}, "distributed.kind"),
    ({"kind": "pytorch", "process_count_per_node": 0, "launcher": "per-process"}, "process_count_per_node"),
    ({"kind": "pytorch", "process_count_per_node": 2, "launcher": "mpirun"}, "distributed.launcher"),
    ({"kind": "pytorch", "process_count_per_node": 2}, "exactly the keys"),
])
def test_a_job_file_with_a_bad_distributed_part_is_refused(tmp_path: Path, distributed: dict[str, object],
                                                          field: str) -> None:
    job = {"run_id": "run_1", "experiment": "e", "mode": MODE_STORE, "store_uri": "sqlite:///x",
           "artifacts_root": str(tmp_path), "snapshot_id": "s", "script": "train.py", "interpreter": "python3",
           "distributed": distributed}
    with pytest.raises(JobSpecError, match=field):
        JobSpec.from_dict(job)
