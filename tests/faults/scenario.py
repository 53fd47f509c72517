"""A small framework for fault scenarios: a lab (workspace, canaries, probe folder), the probe job,
ways to find and hit a run's agent, readers that end lost runs, and the scenario record itself.

How the tests find things (the fixers' side of the contract):

- run directory: ``RunRecord.run_dir`` (``ws.store.get_run(id).run_dir``), i.e. ``<ws>/local/runs/<id>``;
- agent pid: ``<run_dir>/processes.json`` ``agent_pid`` once the run is Running, else (and as a
  cross-check) every live process with ``rundock.agent`` in its command line whose working
  directory is the run directory (``invariants.agent_pids``);
- job processes: environment ``RUNDOCK_RUN_ID=<id>`` (``invariants.run_processes``);
- agent daemons of a workspace: command line contains ``rundock.agent``, ``serve`` and the
  workspace's ``local`` folder;
- status is observed passively with ``ws.store.get_run`` (which never declares a run lost); the
  readers under test are ``Run.get_status()``, ``Run.list()`` and ``rundock runs``.
"""

from __future__ import annotations

import dataclasses
import json
import os
import secrets
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psutil
import pytest

from rundock import Environment, Experiment, Run, RunConfiguration, ScriptRunConfig
from rundock.states import RunStatus
from rundock.submitter.workspace import Workspace
from tests.faults.invariants import (
    Canaries,
    FaultContext,
    OutsideWatch,
    agent_pids,
    history_hits,
    run_containers,
    run_processes,
)
from tests.faults.probe_job import PROBE_JOB

HEARTBEAT_S = 0.2
LOST_AFTER_S = 2.0
DOCKER_PROBE = "/rundock/run/src/probe"  # a container sees only the job's part of its run directory


def wait_for(predicate: Callable[[], Any], timeout: float, what: str, interval: float = 0.05) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:g} s waiting for {what}")
        time.sleep(interval)


def status_of(ws: Workspace, run_id: str) -> RunStatus:
    """The stored status, read without sweeping (a passive observer declares nothing lost)."""
    return ws.store.get_run(run_id).status


def history_text(ws: Workspace, run_id: str) -> str:
    return " -> ".join(f"{c.status.value}({c.detail!r})" for c in ws.store.status_history(run_id))


def wait_status(ws: Workspace, run_id: str, wanted: RunStatus | str, timeout: float = 20.0) -> None:
    want = RunStatus(wanted)
    try:
        wait_for(lambda: status_of(ws, run_id) == want or status_of(ws, run_id).is_terminal, timeout,
                 f"run {run_id} to be {want.value}", interval=0.02)
    except AssertionError as exc:
        raise AssertionError(f"{exc}; history: {history_text(ws, run_id)}") from None
    if status_of(ws, run_id) != want:
        raise AssertionError(f"run {run_id} ended before it was seen {want.value}: {history_text(ws, run_id)}")


def assert_agent_lost(ws: Workspace, run_id: str) -> None:
    rec = ws.store.get_run(run_id)
    assert rec.status == RunStatus.FAILED, f"run {run_id} ended {rec.status.value}, expected Failed (agent lost); " \
                                           f"history: {history_text(ws, run_id)}"
    assert (rec.error or {}).get("code") == "AgentLost" and rec.status_detail.startswith("agent lost"), \
        f"run {run_id} failed, but not as 'agent lost': detail {rec.status_detail!r}, error {rec.error}"


# -- readers: each call is one look at the runs by a user, which may end lost runs ---------------------
def cli(ws: Workspace, *args: str, timeout: float = 60.0, env: dict[str, str] | None = None) \
        -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "rundock.submitter.cli", *args], capture_output=True, text=True,
                          timeout=timeout, cwd=ws.path, env={**os.environ, **(env or {})})


def read_once(ws: Workspace, run_id: str, how: str) -> None:
    if how == "get_status":
        Run.get(ws, run_id).get_status()
    elif how == "list":
        Run.list(Experiment(ws, ws.store.get_run(run_id).experiment))
    elif how == "cli":
        proc = cli(ws, "runs", "-n", "500")
        assert proc.returncode == 0, f"`rundock runs` failed ({proc.returncode}): {proc.stderr[-2000:]}"
    elif how == "show":
        proc = cli(ws, "show", run_id)
        assert proc.returncode == 0, f"`rundock show` failed ({proc.returncode}): {proc.stderr[-2000:]}"
    else:
        raise ValueError(how)


def drive_to_end(ws: Workspace, run_id: str, how: str = "get_status", timeout: float = 30.0) -> RunStatus:
    """Look at the run with reader ``how`` until it is terminal; fail with its history after ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        read_once(ws, run_id, how)
        status = status_of(ws, run_id)
        if status.is_terminal:
            return status
        if time.monotonic() > deadline:
            raise AssertionError(f"run {run_id} is still {status.value} after {timeout:g} s of reader {how!r} "
                                 f"(lost-after {os.environ.get('RUNDOCK_AGENT_LOST_AFTER_SECONDS')} s); "
                                 f"history: {history_text(ws, run_id)}")
        time.sleep(0.1)


# -- hitting the agent -------------------------------------------------------------------------------------
def find_agent(run_dir: str) -> list[int]:
    """The run's agent: processes.json's ``agent_pid`` when it is the agent, and every process with
    ``rundock.agent`` in its command line working in the run directory."""
    pids = set(agent_pids(run_dir))
    try:
        with open(os.path.join(run_dir, "processes.json"), encoding="utf-8") as fh:
            listed = int(json.load(fh)["agent_pid"])
        if any("rundock.agent" in part for part in psutil.Process(listed).cmdline()):
            pids.add(listed)
    except (OSError, ValueError, KeyError, psutil.Error):
        pass
    return sorted(pids)


def signal_agent(run_dir: str, sig: int) -> list[int]:
    pids = find_agent(run_dir)
    assert pids, f"no agent process found for {run_dir} (processes.json and a process scan found none)"
    for pid in pids:
        os.kill(pid, sig)
    if sig == signal.SIGKILL:
        wait_for(lambda: not [p for p in pids if psutil.pid_exists(p) and psutil.Process(p).status() != "zombie"],
                 5, f"the agent {pids} to die")
    return pids


# -- the lab: a workspace, canaries, a probe folder ----------------------------------------------------------
class Lab:
    """One test's world: temporary folder, fake home with a secret, an outside secret, a probe folder."""

    def __init__(self, tmp: Path, monkeypatch: pytest.MonkeyPatch) -> None:
        self.tmp = tmp
        self.monkeypatch = monkeypatch
        token = secrets.token_hex(8)
        self.home = tmp / "home"
        self.outside = tmp / "outside"
        self.probe = tmp / "probe"
        self.downloads = tmp / "downloads"
        for folder in (self.home / ".ssh", self.outside, self.probe, self.downloads):
            folder.mkdir(parents=True, exist_ok=True)
        self.secret = self.outside / "secret.txt"
        markers = [f"CANARY-OUTSIDE-{token}".encode(), f"CANARY-HOME-{token}".encode()]
        for path, marker in ((self.secret, markers[0]), (self.home / ".ssh" / "id_rsa", markers[1])):
            path.write_bytes(b"secret: " + marker + b"\n")
            path.chmod(0o600)
        self.canaries = Canaries([str(self.secret), str(self.home / ".ssh" / "id_rsa")], markers)
        monkeypatch.setenv("RUNDOCK_HEARTBEAT_SECONDS", str(HEARTBEAT_S))
        monkeypatch.setenv("RUNDOCK_AGENT_LOST_AFTER_SECONDS", str(LOST_AFTER_S))
        monkeypatch.setenv("RUNDOCK_AGENT_IDLE_SECONDS", "10")
        monkeypatch.setenv("HOME", str(self.home))
        monkeypatch.delenv("RUNDOCK_MAX_CONCURRENT_RUNS", raising=False)
        monkeypatch.chdir(tmp)
        self.workspaces: list[Workspace] = []
        self.mounts: list[str] = []
        self.src = tmp / "src"
        self.src.mkdir(exist_ok=True)
        (self.src / "job.py").write_text(PROBE_JOB)

    # -- workspaces and runs --------------------------------------------------------------------------
    def workspace(self, name: str = "project") -> Workspace:
        ws = Workspace.create(str(self.tmp / name))
        self.workspaces.append(ws)
        return ws

    def allowed_in(self, ws: Workspace) -> list[str]:
        """What the product may write in a workspace (everything else there counts as outside)."""
        local = ws.local_root
        return [os.path.join(ws.path, n) for n in ("history.db", "history.db-wal", "history.db-shm",
                                                    "history.db-journal", "artifacts", "secrets.json")] + \
            [os.path.join(local, n) for n in ("runs", "slots", "lib", "interpreters", "envs", "images",
                                              "agent-daemon.log")]

    def watch(self, *workspaces: Workspace) -> OutsideWatch:
        allowed = [str(self.probe), str(self.downloads)]
        for ws in workspaces or self.workspaces:
            allowed += self.allowed_in(ws)
        watch = OutsideWatch([str(self.tmp)], allowed,
                             [os.path.join(ws.path, "artifacts") for ws in workspaces or self.workspaces])
        for ws in workspaces or self.workspaces:
            watch.db_hits_before |= history_hits(ws.path, self.canaries.markers)
        return watch

    def submit(self, ws: Workspace, cfg: dict[str, Any], *, experiment: str = "faults",
               environment: Environment | None = None, docker: bool = False, **run_config: Any) -> Run:
        cfg = {"probe": DOCKER_PROBE if docker else str(self.probe), "canary": str(self.secret), **cfg}
        config = RunConfiguration(arguments=[json.dumps(cfg)], environment=environment, **run_config)
        return Experiment(ws, experiment).submit(ScriptRunConfig(str(self.src), "job.py", run_config=config))

    def context(self, ws: Workspace, run_id: str, cfg: dict[str, Any] | None = None, *, docker: bool = False,
                watch: OutsideWatch | None = None, fault: str = "none") -> FaultContext:
        run_dir = ws.store.get_run(run_id).run_dir or ""
        return FaultContext(run_dir=run_dir, probe=os.path.join(run_dir, "src", "probe") if docker else str(self.probe),
                            canaries=self.canaries, outside=watch,
                            values_total=(cfg or {}).get("values"), docker=docker, fault=fault)

    def docker_env(self, image: str) -> Environment:
        env = Environment("fault-docker")
        env.docker.enabled = True
        env.docker.base_image = image
        env.docker.arguments = ["--network", "none"]
        env.python.user_managed_dependencies = True
        return env

    # -- mounts ---------------------------------------------------------------------------------------------
    def mount_tmpfs(self, path: str, size: str) -> None:
        os.makedirs(path, exist_ok=True)
        proc = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size},mode=0700", "tmpfs", path],
                              capture_output=True, text=True)
        if proc.returncode != 0:
            pytest.skip(f"cannot mount a tmpfs on {path} here (needs root/CAP_SYS_ADMIN): {proc.stderr.strip()}")
        self.mounts.append(path)

    # -- teardown -------------------------------------------------------------------------------------------
    def cleanup(self) -> None:
        """Kill what this test's runs left behind (by pid; only processes of this test's workspaces)."""
        for ws in self.workspaces:
            runs_root = os.path.join(ws.local_root, "runs")
            run_ids = os.listdir(runs_root) if os.path.isdir(runs_root) else []
            victims = set()
            for run_id in run_ids:
                victims.update(run_processes(run_id, os.path.join(runs_root, run_id)))
            for proc in psutil.process_iter(["pid", "cmdline"]):
                try:
                    cmd = " ".join(proc.info["cmdline"] or [])
                    if "rundock.agent" in cmd and (ws.local_root in cmd or proc.cwd().startswith(ws.local_root)):
                        victims.add(proc.pid)
                except (psutil.Error, OSError):
                    continue
            for pid in victims:
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            for run_id in run_ids:
                try:
                    for name in run_containers(run_id):
                        cid = name.split("(")[1].split(",")[0]
                        subprocess.run(["docker", "rm", "-f", cid], capture_output=True, timeout=60)
                except Exception:  # no engine: nothing to remove
                    pass
            ws.close()
        for path in reversed(self.mounts):
            subprocess.run(["umount", "-l", path], capture_output=True)


def daemons_of(ws: Workspace) -> list[int]:
    """Live ``rundock.agent serve`` daemons of this workspace. A daemon forks each run's agent, and the
    fork keeps the daemon's command line: a ``serve`` process whose parent is one too is an agent."""
    serving = {}
    for proc in psutil.process_iter(["pid", "ppid", "cmdline"]):
        try:
            cmd = proc.info["cmdline"] or []
            if any("rundock.agent" in c for c in cmd) and "serve" in cmd and ws.local_root in cmd \
                    and proc.status() != psutil.STATUS_ZOMBIE:
                serving[proc.pid] = proc.info["ppid"]
        except (psutil.Error, OSError):
            continue
    return sorted(pid for pid, parent in serving.items() if parent not in serving)


@dataclasses.dataclass
class Scenario:
    """A job, a fault applied at a chosen moment, and the statuses the run may end in."""

    name: str
    job: dict[str, Any]
    fault: str = "none"  # none | kill_agent | stop_cont | cancel | sweep
    fault_after_values: int = 0  # apply the fault once the probe lists this many values
    fault_delay_s: float = 0.0   # ... and this much later
    expected: frozenset[str] = frozenset({"Completed"})
    docker: bool = False
    run_config: dict[str, Any] = dataclasses.field(default_factory=dict)
