"""Faults of agent pools, with real processes: a server process, ``rundock agent serve`` processes (a stand-in
``nvidia-smi`` lists 4 GPUs) reaching the server through a TCP proxy the test controls, per-run agents and the
probe job (``probe_job.py``: it notes each start and each logged value in files outside its run).

- the box's link cut for less than the lease: the run goes on, its journal keeps every value, and once the
  link is back everything lands exactly once; the run completes;
- cut for longer than the lease: the server fences the attempt and the run ends Failed "agent lost" (or goes
  back to the queue when its definition allows a retry, and completes on the next attempt); when the link is
  back the old agent learns it was fenced and kills its job, and nothing it wrote after the fence is recorded;
- the server stopped (SIGTERM) or killed (SIGKILL) under a pool run: the run completes once, every value once,
  and the runs still queued are not lost;
- the per-run agent killed (``kill -9``): the run ends "agent lost" (or is re-queued), nothing of it survives,
  its GPUs are free in ``GET /pools`` and the next queued run gets them;
- a submit retried (the run created again with the same id, enqueued twice): one run, one execution.

The fault suite's invariants are checked where they apply (``invariants``): one terminal state by legal moves
(I1), every durable value exactly once (I2), outputs stored whole (I3), no surviving process (I4), one
execution (I5).
"""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest
import requests

from rundock.context import rundir
from rundock.runconfig.run_configuration import Resources, RunConfiguration
from rundock.runconfig.script_run_config import ScriptRunConfig
from rundock.states import RunStatus
from rundock.submitter.snapshot import take_snapshot
from rundock.submitter.workspace import Workspace
from tests.conftest import REPO, wait_until
from tests.faults.invariants import FaultContext, check_i1, check_i2, check_i3, check_i4, check_i5, run_processes
from tests.faults.probe_job import PROBE_JOB
from tests.integration.test_pool_agent import FAKE_SMI, POOL, Box
from tests.server_fixtures import ServerHandle, running_server
from tests.tcp_proxy import TcpProxy, proxy_for

pytestmark = pytest.mark.integration

LEASE = 5.0
EXPERIMENT = "pool-faults"
TERMINAL = {RunStatus.COMPLETED, RunStatus.FAILED, RunStatus.CANCELED}


@dataclasses.dataclass
class PoolLab:
    """One server (behind ``proxy`` for the boxes), a laptop workspace that reaches it directly, and boxes."""

    tmp: Path
    server: ServerHandle
    proxy: TcpProxy
    ws: Workspace
    user_token: str
    boxes: list[Box] = dataclasses.field(default_factory=list)

    @property
    def project(self) -> Path:
        return self.tmp / "project"

    @property
    def probe(self) -> Path:
        return self.tmp / "probe"

    def box(self, name: str = "box1") -> Box:
        behind = dataclasses.replace(self.server, url=self.proxy.url_for(self.server.url))
        box = Box(name, behind, self.server.make_token(name, "agent", [POOL]), self.tmp / name, self.tmp / "bin")
        box.folder.mkdir()
        self.boxes.append(box)
        box.start()
        return box

    # -- submitting -------------------------------------------------------------------------------------------
    def definition(self, values: int, interval: float, gpus: int = 1, max_retries: int | None = None,
                   **probe: Any) -> tuple[dict[str, Any], str]:
        """A run definition of the probe job and the snapshot id it runs."""
        cfg = {"probe": str(self.probe), "values": values, "interval": interval,
               "outputs": {"model.bin": 48_000}, **probe}
        src = ScriptRunConfig(source_directory=str(self.project), script="job.py", arguments=[json.dumps(cfg)],
                              run_config=RunConfiguration(target=POOL, resources=Resources(
                                  gpu_count=gpus, max_retries=max_retries or 0)))
        definition = {**src.run_config.to_mapping(), "cancel_grace_seconds": 2.0}
        snapshot = take_snapshot(str(self.project), self.ws.store, self.ws.artifacts)
        return definition, snapshot.snapshot_id

    def create(self, definition: dict[str, Any], snapshot_id: str, run_id: str | None = None) -> requests.Response:
        body = {"experiment": EXPERIMENT, "target": POOL, "run_definition": definition, "snapshot_id": snapshot_id,
                **({"run_id": run_id} if run_id else {})}
        with self.server.session(self.user_token) as session:
            return session.post(self.server.api("/runs"), json=body, timeout=30)

    def enqueue(self, run_id: str, gpus: int = 1) -> requests.Response:
        body = {"pool": POOL, "requirements": {"gpus": gpus} if gpus else {}, "idempotency_key": run_id}
        with self.server.session(self.user_token) as session:
            return session.post(self.server.api(f"/runs/{run_id}/enqueue"), json=body, timeout=30)

    def submit(self, values: int, interval: float, gpus: int = 1, max_retries: int | None = None,
               **probe: Any) -> str:
        definition, snapshot_id = self.definition(values, interval, gpus, max_retries, **probe)
        created = self.create(definition, snapshot_id)
        assert created.status_code == 201, created.text
        run_id = str(created.json()["run_id"])
        queued = self.enqueue(run_id, gpus)
        assert queued.status_code == 200, queued.text
        return run_id

    # -- looking --------------------------------------------------------------------------------------------
    def status(self, run_id: str) -> RunStatus:
        return self.ws.store.get_run(run_id).status

    def wait_end(self, run_id: str, timeout: float = 120) -> RunStatus:
        wait_until(lambda: self.status(run_id) in TERMINAL, timeout=timeout, interval=0.1,
                   message=f"run {run_id} to end")
        return self.status(run_id)

    def values(self, run_id: str) -> list[Any]:
        return [m.value for m in self.ws.store.get_metric_records(run_id, "v")]

    def probe_lines(self, run_id: str, name: str) -> list[str]:
        path = self.probe / run_id / name
        return path.read_text().split("\n")[:-1] if path.exists() else []

    def wait_values(self, run_id: str, count: int, timeout: float = 90) -> None:
        wait_until(lambda: len(self.probe_lines(run_id, "values")) >= count, timeout=timeout, interval=0.05,
                   message=f"run {run_id}'s job to log {count} values")

    def queue(self, run_id: str) -> dict[str, Any]:
        with self.server.session(self.server.admin_token) as session:
            answer = session.get(self.server.api(f"/runs/{run_id}/queue"), timeout=30)
        assert answer.status_code == 200, answer.text
        return dict(answer.json())

    def gpus_used(self) -> dict[int, str | None]:
        """GPU index -> the run using it, by the server's ledger (``GET /pools``)."""
        with self.server.session(self.server.admin_token) as session:
            answer = session.get(self.server.api("/pools"), timeout=30)
        assert answer.status_code == 200, answer.text
        return {g["index"]: g["used_by"] for pool in answer.json() if pool["name"] == POOL
                for agent in pool["agents"] for g in agent["gpus"]}

    def run_dir(self, box: Box, run_id: str, attempt: int = 1) -> str:
        name = run_id if attempt <= 1 else f"{run_id}.{attempt}"
        return str(box.folder / "work" / "runs" / name)

    def context(self, box: Box, run_id: str, values: int, fault: str, attempt: int = 1) -> FaultContext:
        return FaultContext(run_dir=self.run_dir(box, run_id, attempt), probe=str(self.probe), values_total=values,
                            fault=fault)

    def restart_server(self, sig: signal.Signals, run_id: str) -> None:
        """Stop the server with ``sig``, keep it down for longer than the lease while ``run_id``'s job goes on,
        and start it again on the same port, configuration and database."""
        self.server.process.send_signal(sig)
        self.server.process.wait(60)
        stopped, logged = time.monotonic(), len(self.probe_lines(run_id, "values"))
        wait_until(lambda: time.monotonic() - stopped > LEASE * 1.2 and
                   len(self.probe_lines(run_id, "values")) > logged + 5, timeout=LEASE * 4, interval=0.1,
                   message="the server to stay down for longer than the lease while the job goes on")
        env = {k: v for k, v in os.environ.items() if not k.startswith("RUNDOCK_SERVER_")}
        env["PYTHONPATH"] = str(REPO)
        with open(self.server.log_path, "ab") as log:
            process = subprocess.Popen(
                [sys.executable, "-m", "rundock.server", "--config", str(self.server.config_path), "--host",
                 "127.0.0.1", "--port", self.server.url.rsplit(":", 1)[1], "--lease-seconds", str(LEASE)],
                stdout=log, stderr=subprocess.STDOUT, env=env, cwd=str(self.server.config_path.parent))
        self.server = dataclasses.replace(self.server, process=process)

        def ready() -> bool:
            try:
                return requests.get(f"{self.server.url}/readyz", timeout=2).status_code == 200
            except requests.RequestException:
                return False

        wait_until(ready, timeout=60, message="the server to start again")


@pytest.fixture()
def pool_lab(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[PoolLab]:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    smi = bin_dir / "nvidia-smi"
    smi.write_text(FAKE_SMI)
    smi.chmod(0o755)
    project = tmp_path / "project"
    project.mkdir()
    (project / "job.py").write_text(PROBE_JOB)
    (tmp_path / "probe").mkdir()
    server = running_server(tmp_path, extra_args=["--lease-seconds", str(LEASE)])
    lab: PoolLab | None = None
    try:
        with proxy_for(server.url) as proxy:
            home = tmp_path / "laptop-home"
            env = {k: v for k, v in os.environ.items() if k != "RUNDOCK_TOKEN"}
            env.update(PYTHONPATH=str(REPO), RUNDOCK_HOME=str(home))
            token = server.make_token("alice")
            for args in (["init"], ["login", server.url, "--token", token]):
                done = subprocess.run([sys.executable, "-m", "rundock", *args], cwd=project, capture_output=True,
                                      text=True, timeout=120, env=env)
                assert done.returncode == 0, f"rundock {args[0]}: {done.stdout}\n{done.stderr}"
            monkeypatch.setenv("RUNDOCK_HOME", str(home))
            monkeypatch.delenv("RUNDOCK_TOKEN", raising=False)
            lab = PoolLab(tmp_path, server, proxy, Workspace(str(project / ".rundock")), token)
            yield lab
    finally:
        boxes = lab.boxes if lab is not None else []
        for box in boxes:
            box.stop()
        for proc in psutil.process_iter(["cmdline"]):  # whatever a failed test left running
            if any(str(tmp_path) in part for part in proc.info["cmdline"] or []):
                proc.kill()
        (lab.server if lab is not None else server).stop()


def alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def no_survivors(run_id: str, run_dirs: list[str], timeout: float = 30) -> None:
    wait_until(lambda: not any(run_processes(run_id, d) for d in run_dirs), timeout=timeout, interval=0.1,
               message=f"every process of run {run_id} to end: "
                       f"{[p for d in run_dirs for p in run_processes(run_id, d)]}")


def history(lab: PoolLab, run_id: str) -> str:
    return " -> ".join(f"{c.status.value}({c.detail!r})" for c in lab.ws.store.status_history(run_id))


def assert_completed_once(lab: PoolLab, box: Box, run_id: str, values: int, fault: str) -> None:
    """I1-I5 on a run that must have completed on its first attempt."""
    assert lab.wait_end(run_id) == RunStatus.COMPLETED, f"{history(lab, run_id)}: " \
        f"{lab.ws.store.get_run(run_id).error}"
    ctx = lab.context(box, run_id, values, fault)
    for check in (check_i1, check_i2, check_i3, check_i4, check_i5):
        check(lab.ws, run_id, ctx)
    assert lab.values(run_id) == list(range(values))


def assert_retried_values(stored: list[Any], total: int) -> None:
    """A run completed on its second attempt: every value of that attempt once, and of the lost first attempt
    what it had shipped, a first stretch 0..k-1, each once."""
    complete, got = Counter(range(total)), Counter(stored)
    assert not complete - got, f"values missing: {sorted(complete - got)[:20]}"
    extra = got - complete
    assert sorted(extra.elements()) == list(range(len(extra))), f"values stored more than once: {sorted(extra)[:20]}"


# -- 1 and 2: the box's link to the server cut -------------------------------------------------------------
def test_a_link_cut_for_less_than_the_lease_loses_and_repeats_nothing(pool_lab: PoolLab) -> None:
    box = pool_lab.box()
    run_id = pool_lab.submit(values=60, interval=0.1)
    pool_lab.wait_values(run_id, 5)
    pool_lab.proxy.cut()
    cut_at = time.monotonic()
    logged = len(pool_lab.probe_lines(run_id, "values"))
    wait_until(lambda: len(pool_lab.probe_lines(run_id, "values")) >= logged + 5 and
               time.monotonic() - cut_at >= LEASE * 0.4, timeout=LEASE * 0.6, interval=0.05,
               message="the job to keep logging while the link is down for 40% of the lease")
    stored_during = len(pool_lab.values(run_id))
    assert time.monotonic() - cut_at < LEASE * 0.7
    pool_lab.proxy.restore()
    assert stored_during < len(pool_lab.probe_lines(run_id, "values"))  # the values waited in the journal
    assert_completed_once(pool_lab, box, run_id, 60, "link cut for less than the lease")
    assert pool_lab.queue(run_id)["attempt"] == 1
    assert "fenced" not in box.log.read_text()


def _cut_past_the_lease(lab: PoolLab, max_retries: int | None) -> tuple[Box, str, list[Any]]:
    """Run a job, cut its box off until the server has fenced the attempt, then restore the link once the run
    ended (or went back to the queue). Returns the box, the run and the values stored when it was fenced."""
    box = lab.box()
    run_id = lab.submit(values=400, interval=0.05, max_retries=max_retries)
    lab.wait_values(run_id, 5)
    lab.proxy.cut()
    wait_until(lambda: any(a.state == "fenced" for a in _attempts(lab, run_id)), timeout=LEASE * 4, interval=0.1,
               message=f"the server to fence attempt 1 of run {run_id}")
    stored_at_fence = lab.values(run_id)
    job_pid = int(lab.probe_lines(run_id, "starts")[0])
    assert alive(job_pid), "the job must still run while its box is cut off"
    lab.proxy.restore()
    return box, run_id, stored_at_fence


def _attempts(lab: PoolLab, run_id: str) -> list[Any]:
    from rundock.server.pools_state import PoolsState
    from rundock.server.state import open_state

    state = open_state(lab.server.store_uri)
    try:
        return PoolsState(state).attempts(run_id)
    finally:
        state.close()


def test_a_link_cut_for_longer_than_the_lease_fences_the_attempt_and_the_run_is_lost(pool_lab: PoolLab) -> None:
    box, run_id, stored_at_fence = _cut_past_the_lease(pool_lab, max_retries=None)
    assert pool_lab.wait_end(run_id, timeout=30) == RunStatus.FAILED
    record = pool_lab.ws.store.get_run(run_id)
    assert "agent lost" in f"{record.status_detail} {record.error}", history(pool_lab, run_id)
    run_dir = pool_lab.run_dir(box, run_id)
    no_survivors(run_id, [run_dir])  # the old agent learnt it was fenced and killed its job
    agent_log = Path(run_dir) / rundir.SYSTEM_LOGS_DIR / rundir.AGENT_LOG
    assert "was fenced by the server" in box.log.read_text() or "refused a write of a fenced attempt" in \
        agent_log.read_text(errors="replace")
    logged = pool_lab.probe_lines(run_id, "values")
    assert len(logged) > len(stored_at_fence)  # the job logged on after the fence ...
    assert pool_lab.values(run_id) == stored_at_fence  # ... and none of it was recorded
    assert pool_lab.status(run_id) == RunStatus.FAILED
    ctx = pool_lab.context(box, run_id, 400, "link cut for longer than the lease")
    for check in (check_i1, check_i4, check_i5):
        check(pool_lab.ws, run_id, ctx)
    wait_until(lambda: not any(pool_lab.gpus_used().values()), timeout=30, message="the fenced attempt's GPU")


def test_a_link_cut_for_longer_than_the_lease_requeues_a_run_that_may_retry(pool_lab: PoolLab) -> None:
    box, run_id, stored_at_fence = _cut_past_the_lease(pool_lab, max_retries=1)
    assert pool_lab.wait_end(run_id, timeout=120) == RunStatus.COMPLETED, history(pool_lab, run_id)
    wait_until(lambda: [(a.number, a.state) for a in _attempts(pool_lab, run_id)] == [(1, "fenced"), (2, "ended")],
               timeout=30, message=f"attempt 1 of run {run_id} fenced, attempt 2 ended: {_attempts(pool_lab, run_id)}")
    dirs = [pool_lab.run_dir(box, run_id, 1), pool_lab.run_dir(box, run_id, 2)]
    no_survivors(run_id, dirs)
    # Two executions, one per attempt. The history keeps what attempt 1 wrote before it was fenced, nothing
    # it wrote after, and every value of attempt 2 once.
    assert len(pool_lab.probe_lines(run_id, "starts")) == 2
    assert sorted(pool_lab.values(run_id)) == sorted(stored_at_fence + list(range(400)))
    assert_retried_values(pool_lab.values(run_id), 400)
    ctx = pool_lab.context(box, run_id, 400, "link cut past the lease, re-queued", attempt=2)
    check_i1(pool_lab.ws, run_id, ctx)
    check_i3(pool_lab.ws, run_id, ctx)
    for run_dir in dirs:
        check_i4(pool_lab.ws, run_id, dataclasses.replace(ctx, run_dir=run_dir))


# -- 3: the server restarted under a pool run ------------------------------------------------------------
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGKILL], ids=["sigterm", "sigkill"])
def test_a_server_restarted_under_a_pool_run_loses_and_repeats_nothing(pool_lab: PoolLab,
                                                                      sig: signal.Signals) -> None:
    box = pool_lab.box()
    first = pool_lab.submit(values=200, interval=0.05, gpus=4)
    waiting = pool_lab.submit(values=5, interval=0.01, gpus=4)  # no GPU left for it until the first ends
    pool_lab.wait_values(first, 10)
    assert pool_lab.queue(waiting)["state"] == "queued"
    pool_lab.restart_server(sig, first)
    assert pool_lab.queue(waiting)["state"] in ("queued", "assigned", "done")
    assert_completed_once(pool_lab, box, first, 200, f"server down past the lease ({sig.name})")
    assert pool_lab.queue(first)["attempt"] == 1
    assert_completed_once(pool_lab, box, waiting, 5, f"queued across a server restart ({sig.name})")


# -- 4: the per-run agent killed -------------------------------------------------------------------------
@pytest.mark.parametrize("max_retries", [None, 1], ids=["lost", "requeued"])
def test_a_killed_per_run_agent_loses_its_run_and_frees_its_gpus(pool_lab: PoolLab, max_retries: int | None) -> None:
    box = pool_lab.box()
    run_id = pool_lab.submit(values=400, interval=0.05, gpus=4, max_retries=max_retries)
    waiting = pool_lab.submit(values=5, interval=0.01, gpus=4)
    pool_lab.wait_values(run_id, 5)
    run_dir = pool_lab.run_dir(box, run_id)
    from tests.faults.invariants import agent_pids

    agents = agent_pids(run_dir)
    assert len(agents) == 1, agents
    os.kill(agents[0], signal.SIGKILL)
    if max_retries is None:
        assert pool_lab.wait_end(run_id, timeout=60) == RunStatus.FAILED
        record = pool_lab.ws.store.get_run(run_id)
        assert "agent lost" in f"{record.status_detail} {record.error}".lower(), history(pool_lab, run_id)
        no_survivors(run_id, [run_dir])
        ctx = pool_lab.context(box, run_id, 400, "per-run agent killed")
        for check in (check_i1, check_i4, check_i5):
            check(pool_lab.ws, run_id, ctx)
        # Its GPUs went to the run that waited for them.
        assert_completed_once(pool_lab, box, waiting, 5, "queued behind a lost run")
    else:
        assert pool_lab.wait_end(run_id, timeout=120) == RunStatus.COMPLETED, history(pool_lab, run_id)
        assert_retried_values(pool_lab.values(run_id), 400)
        assert len(pool_lab.probe_lines(run_id, "starts")) == 2  # one execution per attempt
        no_survivors(run_id, [run_dir, pool_lab.run_dir(box, run_id, 2)])
        assert pool_lab.wait_end(waiting) == RunStatus.COMPLETED
    wait_until(lambda: not any(pool_lab.gpus_used().values()), timeout=30, message="every GPU to be free")


# -- 5: a submit retried ---------------------------------------------------------------------------------
def test_a_retried_submit_makes_one_run_that_runs_once(pool_lab: PoolLab) -> None:
    definition, snapshot_id = pool_lab.definition(values=10, interval=0.01)
    run_id = f"{EXPERIMENT}_retried_1"
    first = pool_lab.create(definition, snapshot_id, run_id)
    assert first.status_code == 201, first.text
    again = pool_lab.create(definition, snapshot_id, run_id)  # the answer was lost: the client sends it again
    assert again.status_code in (200, 201, 409), again.text
    positions = [pool_lab.enqueue(run_id) for _ in range(2)]
    assert [p.status_code for p in positions] == [200, 200], [p.text for p in positions]
    assert positions[0].json() == positions[1].json() == {"position": 1}
    box = pool_lab.box()
    assert_completed_once(pool_lab, box, run_id, 10, "submit retried")
    again = pool_lab.enqueue(run_id)  # a retry that arrives after the run ended changes nothing
    assert again.status_code == 200 and again.json() == {"position": 0}, again.text
    assert [r.run_id for r in pool_lab.ws.store.list_runs(experiment=EXPERIMENT)] == [run_id]
    assert len(_attempts(pool_lab, run_id)) == 1
    assert box.log.read_text().count(f"run {run_id} (attempt 1): starting") == 1
    assert len(pool_lab.probe_lines(run_id, "starts")) == 1
