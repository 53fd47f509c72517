"""The SSH compute target: runs go to an agent on a remote host that owns them.

Submit order (nothing half-created on failure): validate, snapshot locally,
connect (host key verified), install the agent bundle if the host lacks it,
check the host (Python, disk, Docker, GPUs), send the snapshot's missing blobs
as one tar stream on one channel, then create the run and start the remote
agent detached. From then on the host owns the run: the submitter may exit.

Only the secrets the run configuration names (``secrets``) travel to the host,
into a 0600 file of the run directory that the agent removes when the run ends
(and ``reap``/``clean`` when it does not).

Transient SSH failures (a connection reset or refused while sshd restarts, a
channel closed under load, a handshake cut short) are retried with a bounded
backoff on a new connection; permanent ones (a refused login, an unknown or
changed host key, no Python) are reported at once. Every host command is safe
to repeat: ``receive`` stores by digest, and a repeated ``start`` answers with
the agent the first one started.

Sync is pull-based (``rundock.submitter.targets.remote_sync``): the submitter
pulls what is new in the remote run directory into a local mirror and ships it
with the same ``Syncer`` as local runs, exactly once however often a pull is
repeated. Readers pull through ``refresh`` (``rundock.submitter.targets.check``):
at most one pull per run at a time and per interval in a process, and a host that
cannot be reached shows what is stored (``rundock.submitter.targets.live``).
A cancel is left in the run's mirror and goes to the host with the next pull: at
once, or when an unreachable host answers again; ``abandon`` ends such a run now.
"""

from __future__ import annotations

import getpass
import json
import os
import shlex
import threading
import warnings
from collections import Counter
from collections.abc import Callable, Iterable, Mapping
from typing import IO, Any, TypeVar

from rundock.agent.job import MODE_JOURNAL, JobSpec
from rundock.context import rundir
from rundock.errors import ConfigError, RundockError
from rundock.history import liveness
from rundock.history.records import RunRecord
from rundock.runconfig.distributed import job_distributed, single_node_problem
from rundock.runconfig.environment import Environment, PythonSection
from rundock.runconfig.script_run_config import ScriptRunConfig
from rundock.states import RunStatus
from rundock.submitter.bundle import UNPACK, agent_bundle
from rundock.submitter.compute import ComputeTarget, RemoteCompute
from rundock.submitter.gitinfo import git_properties
from rundock.submitter.mlflow_env import mlflow_environment
from rundock.submitter.secrets import SecretStore
from rundock.submitter.snapshot import Progress, take_snapshot
from rundock.submitter.ssh import SshConnection, SshError, SshTarget, retrying
from rundock.submitter.targets import live, remote_sync
from rundock.submitter.targets import mirror as mirrors
from rundock.submitter.targets.blobs import tar_stream
from rundock.submitter.targets.remote_sync import RemoteSyncError
from rundock.submitter.workspace import Workspace

T = TypeVar("T")
_CONNECTIONS: dict[tuple[str, str], SshConnection] = {}
_ROOTS: dict[tuple[str, str, str, str], tuple[SshConnection, str]] = {}  # the host's folder, per connection
_LOCK = threading.Lock()
NO_AGENT = 75  # exit status of the host check when this version of the agent is not installed there
DISK_MARGIN = 64 * 1024 * 1024
ABANDONED_PATIENCE = 2.0  # seconds a read of an abandoned run waits for its host to take the cancel
COMMANDS: Counter[str] = Counter()  # host commands run by this process (one SSH session each), by name
Stdin = bytes | Callable[[], Iterable[bytes]]


def _alive(conn: SshConnection) -> bool:
    transport = conn.client.get_transport()
    return transport is not None and transport.is_active()


class RemoteTarget:
    """A host reached over SSH, its agent installed by the submitter."""

    def __init__(self, workspace: Workspace, name: str) -> None:
        self.workspace = workspace
        self.name = name
        self.compute: RemoteCompute = ComputeTarget(workspace, name)
        self.config = self.compute.config
        self.known_hosts = os.path.join(workspace.path, "known_hosts")

    # -- connection ------------------------------------------------------------------------
    def ssh_target(self) -> SshTarget:
        password, passphrase = self.compute.credentials()
        return SshTarget(self.name, self.config.address, self.config.ssh_port, self.config.username,
                         self.config.private_key_file, password, passphrase)

    def connect(self) -> SshConnection:
        """The cached connection, or a new one (transient failures to connect are retried)."""
        return retrying(self._connection)

    def _connection(self) -> SshConnection:
        key = (self.workspace.path, self.name)
        with _LOCK:
            conn = _CONNECTIONS.get(key)
        if conn is not None and _alive(conn):
            return conn
        fresh = SshConnection(self.ssh_target(), self.known_hosts)  # outside the lock: it takes a while
        with _LOCK:
            current = _CONNECTIONS.get(key)
            keep = current if current is not None and current is not conn and _alive(current) else fresh
            _CONNECTIONS[key] = keep
        if keep is not fresh:  # another thread connected meanwhile: use its connection
            fresh.close()
        elif conn is not None:  # the dead one it replaces
            conn.close()
        return keep

    def _forget(self, conn: SshConnection) -> None:
        """Close a connection that failed; the next attempt starts a new one."""
        key = (self.workspace.path, self.name)
        with _LOCK:
            if _CONNECTIONS.get(key) is conn:
                del _CONNECTIONS[key]
        conn.close()

    def _retrying(self, action: Callable[[SshConnection], T]) -> T:
        """``action`` on a connection, tried again on a new one after a transient failure (safe actions only)."""
        used: list[SshConnection] = []

        def attempt() -> T:
            used.append(self._connection())
            return action(used[-1])

        return retrying(attempt, on_retry=lambda _: self._forget(used[-1]) if used else None)

    def _agent_dir(self, conn: SshConnection) -> str:
        return f"{self.root(conn)}/agent/{agent_bundle()[0]}"

    def _agent_command(self, conn: SshConnection, command: str, *args: str) -> str:
        """The host command, which exits ``NO_AGENT`` when this version of the agent is not installed there (a
        run submitted before rundock was upgraded here is followed with the new agent, installed on demand)."""
        agent_dir, root = self._agent_dir(conn), self.root(conn)
        return (f"test -f {shlex.quote(agent_dir)}/.complete || exit {NO_AGENT}; "
                f"PYTHONPATH={shlex.quote(agent_dir)} {shlex.quote(self.config.python)} "
                f"-m rundock.agent.remote {command} {shlex.quote(root)} {' '.join(shlex.quote(a) for a in args)}")

    def _remote(self, command: str, *args: str, stdin: Stdin = b"", sink: IO[bytes] | None = None,
                heard: Callable[[], None] | None = None) -> bytes:
        """Run a host command (every one is safe to repeat: see rundock.agent.remote); its stdout.
        ``heard`` is called when the host has answered."""
        def run_once(conn: SshConnection) -> tuple[int, bytes, bytes]:
            if sink is not None:
                sink.seek(0)
                sink.truncate()
            return conn.run(self._agent_command(conn, command, *args),
                            stdin=stdin if isinstance(stdin, bytes) else stdin(), sink=sink)

        def attempt(conn: SshConnection) -> bytes:
            COMMANDS[command] += 1
            code, out, err = run_once(conn)
            if code == NO_AGENT:  # this version's agent is not there yet: install it, then ask again
                self._install_agent(conn, self._agent_dir(conn))
                code, out, err = run_once(conn)
            if heard is not None:
                heard()
            if code != 0:
                raise RundockError(f"`{command}` failed on {conn.where}: "
                                   f"{err.decode(errors='replace').strip()[-2000:]}")
            return out

        return self._retrying(attempt)

    def root(self, conn: SshConnection) -> str:
        """The host's rundock folder, asked once per connection (its Python is checked on the way)."""
        key = (self.workspace.path, self.name, self.config.root, self.config.python)
        with _LOCK:
            known = _ROOTS.get(key)
        if known is not None and known[0] is conn:
            return known[1]
        script = ("import os, sys; print(sys.version_info >= (3, 8)); "
                  f"print(os.path.expanduser({self.config.root!r}))")
        code, out, err = conn.run(f"{shlex.quote(self.config.python)} -c {shlex.quote(script)}")
        if code != 0:
            raise SshError(f"no usable Python on {conn.where}: `{self.config.python}` failed "
                           f"({err.decode(errors='replace').strip()[-300:]}); install Python >= 3.8 there or "
                           f"point the target at one (`rundock target attach {self.name} --python PATH`)")
        modern, root = out.decode().split()
        if modern != "True":
            raise SshError(f"{conn.where} has a Python older than 3.8 at `{self.config.python}`; rundock's "
                           "agent needs 3.8 or newer")
        with _LOCK:
            _ROOTS[key] = (conn, root)
        return root

    def ensure_agent(self, conn: SshConnection | None = None) -> dict[str, Any]:
        """Install the agent bundle if the host lacks this version; return what the host has."""
        return self._prepare_host([])[0]

    def _prepare_host(self, digests: list[str]) -> tuple[dict[str, Any], list[str]]:
        """What the host has and which of ``digests`` it lacks, in one round trip while the agent is installed."""
        request = json.dumps(digests).encode()

        def attempt(conn: SshConnection) -> tuple[dict[str, Any], list[str]]:
            agent_dir = self._agent_dir(conn)
            line = self._agent_command(conn, "prepare")
            for tried in (1, 2):
                code, out, err = conn.run(line, stdin=request)
                if code == NO_AGENT and tried == 1:
                    self._install_agent(conn, agent_dir)
                    continue
                if code != 0:
                    raise RundockError(f"checking {conn.where} failed: {err.decode(errors='replace').strip()[-2000:]}")
                answer = json.loads(out)
                return dict(answer["host"]), list(answer["missing"])
            raise RundockError(f"rundock's agent on {conn.where} is still missing after installing it in {agent_dir}")

        return self._retrying(attempt)

    def _install_agent(self, conn: SshConnection, agent_dir: str) -> None:
        _, bundle = agent_bundle()
        code, _, err = conn.run(f"umask 077 && mkdir -p {shlex.quote(os.path.dirname(agent_dir))} && "
                                f"{shlex.quote(self.config.python)} -c {shlex.quote(UNPACK)} {shlex.quote(agent_dir)}",
                                stdin=bundle)
        if code != 0:
            detail = err.decode(errors="replace").strip()
            if "No space left on device" in detail:
                raise SshError(f"{conn.where} has no space left under {self.root(conn)} for rundock's agent "
                               f"(about {len(bundle) * 5 / 1e6:.0f} MB unpacked); free some space there or attach "
                               "the target with another --root")
            raise SshError(f"installing the rundock agent on {conn.where} failed: {detail[-500:]}")

    # -- submit ------------------------------------------------------------------------------
    def submit(self, experiment: str, config: ScriptRunConfig, *, tags: Mapping[str, Any] | None = None,
               display_name: str | None = None, description: str | None = None,
               progress: Progress | None = None, parent_id: str | None = None) -> RunRecord:
        ws = self.workspace
        config.validate()
        problem = single_node_problem(config.run_config.to_mapping(), self.name)
        if problem:
            raise ConfigError(problem, source="distributed_job_config", field="node_count")
        env = config.job_environment(lambda: Environment(name="rundock-remote-python", python=PythonSection(
            user_managed_dependencies=True, interpreter_path="python3")))
        names = getattr(config.run_config, "secrets", None)
        vault = ws.secrets
        # This workspace's own secrets are checked before anything is made; a team server's exist for a run only.
        secrets = vault.for_run(names, remote=True) if isinstance(vault, SecretStore) else {}
        snapshot = take_snapshot(config.source_directory, ws.store, ws.artifacts, ws.snapshot_limits)
        conn = self.connect()
        host, lacking = self._prepare_host(list(dict.fromkeys(e["digest"] for e in snapshot.manifest)))
        self._check_host(conn, host, env, snapshot.total_bytes)
        self._send(lacking, progress)
        run_definition = {**config.run_config.to_mapping(), "environment": env.to_mapping(),
                          "source_directory": os.path.abspath(config.source_directory)}
        record = ws.store.create_run(
            experiment, target=self.name, run_definition=run_definition, snapshot_id=snapshot.snapshot_id,
            submitted_by=getpass.getuser(), display_name=display_name, description=description, parent_id=parent_id,
            tags={k: None if v is None else str(v) for k, v in (tags or {}).items()},
            properties={"ContentSnapshotId": snapshot.snapshot_id, **git_properties(config.source_directory)})
        try:
            if not isinstance(vault, SecretStore):
                secrets = vault.for_run(names, remote=True, run_id=record.run_id)
            root = self._retrying(self.root)
            run_dir = f"{root}/runs/{record.run_id}"
            # A team server's MLflow variables, as for a local run (a certificate file of this machine stays here).
            mlflow_env = {k: v for k, v in mlflow_environment(ws, record.run_id, experiment).items()
                          if k != "MLFLOW_TRACKING_SERVER_CERT_PATH"}
            job = JobSpec(
                run_id=record.run_id, experiment=experiment, mode=MODE_JOURNAL, store_uri="",
                artifacts_root=f"{root}/artifacts", snapshot_id=snapshot.snapshot_id,
                script=config.run_config.script or "", interpreter=env.python.interpreter_path,
                arguments=[str(a) for a in config.run_config.arguments], display_name=display_name,
                environment_variables=mlflow_env, max_run_duration_seconds=config.run_config.max_run_duration_seconds,
                cancel_grace_seconds=config.run_config.cancel_grace_seconds,
                heartbeat_seconds=ws.heartbeat_seconds, slots_dir=f"{root}/slots",
                max_concurrent_runs=self.config.max_concurrent_runs or host["cpus"], target=self.name,
                submitted_at=record.created_at, environment=env.to_mapping(),
                secrets_file=f"{run_dir}/{rundir.SECRETS_FILE}" if secrets else None, workspace_name=ws.name,
                distributed=job_distributed(run_definition))
            request = {"job": job.to_dict(), "manifest": snapshot.manifest, "secrets": secrets}
            started = json.loads(self._remote("start", record.run_id, stdin=json.dumps(request).encode()))
            ws.store.update_run(record.run_id, run_dir=started["run_dir"])
            ws.store.transition(record.run_id, RunStatus.STARTING, detail=f"agent started on {conn.where}")
        except RundockError as exc:
            ws.store.transition(record.run_id, RunStatus.FAILED, detail="the remote agent could not be started",
                                error={"code": "SetupError", "message": str(exc)})
            raise
        return ws.store.get_run(record.run_id)

    def _check_host(self, conn: SshConnection, host: dict[str, Any], env: Environment, snapshot_bytes: int) -> None:
        needed = snapshot_bytes * 2 + DISK_MARGIN
        if host["free_bytes"] < needed:
            raise SshError(f"{conn.where} has {host['free_bytes'] / 1e6:.0f} MB free under {host['root']}, and this "
                           f"run needs about {needed / 1e6:.0f} MB; free some space there (old runs: "
                           f"`rundock runs -e ...` then run.clean()) or attach the target with another --root")
        if env.docker.enabled and not host["docker"]:
            raise ConfigError(f"{conn.where} has no Docker engine (no docker command, DOCKER_HOST or "
                              "/var/run/docker.sock); install Docker there or set environment.docker.enabled = False",
                              field="environment.docker.enabled")

    def send_blobs(self, conn: SshConnection | None, digests: list[str], progress: Progress | None = None) -> int:
        """Send the blobs the host lacks as one tar stream; return the bytes read from disk."""
        wanted = list(dict.fromkeys(digests))
        return self._send(json.loads(self._remote("missing", stdin=json.dumps(wanted).encode())), progress)

    def _send(self, lacking: list[str], progress: Progress | None) -> int:
        if not lacking:
            return 0
        ws = self.workspace
        total = sum(ws.artifacts.size(d) for d in lacking)
        self._remote("receive", stdin=lambda: tar_stream(ws, lacking, total, progress))
        return total

    # -- following a run ------------------------------------------------------------------------
    @property
    def where(self) -> str:
        return f"target {self.name} ({self.config.address})"

    def mirror_dir(self, run_id: str) -> str:
        return mirrors.mirror_path(self.workspace.path, self.name, run_id)

    def sync(self, run: RunRecord, attempt: live.Attempt | None = None) -> None:
        """Pull what is new in the run's remote directory into the history now (see remote_sync.sync)."""
        remote_sync.sync(self, run.run_id, attempt)

    def refresh(self, run: RunRecord, force: bool = False) -> RunRecord:
        """The run as it is now: pulled from its host if a pull is due (rate limited and shared per process; a
        host that cannot be reached leaves it as stored, with a warning: see rundock.submitter.targets.live).
        A child run comes with its parent's pull. ``force``: pull now (a cancel waits in the mirror)."""
        store = self.workspace.store
        root = run
        while root.run_type != liveness.AGENT_RUN_TYPE and root.parent_id:
            root = store.get_run(root.parent_id)
        if root.run_type == liveness.AGENT_RUN_TYPE and (
                not root.status.is_terminal or mirrors.cancel_pending(self.mirror_dir(root.run_id))):
            found = live.host(self.workspace.path, self.name, self.where)
            patience = ABANDONED_PATIENCE if root.status.is_terminal else None
            live.read(self.workspace.path, root.run_id, found, lambda attempt: self.sync(root, attempt),
                      self._drop_connection, force=force, patience=patience)
        return store.get_run(run.run_id)

    def _drop_connection(self) -> None:
        """Close the cached connection (a frozen host never does): the retry starts a new one."""
        with _LOCK:
            conn = _CONNECTIONS.pop((self.workspace.path, self.name), None)
        if conn is not None:
            conn.close()

    def cancel(self, run: RunRecord) -> bool:
        """Deliver a cancel with a pull now (True), or leave it in the mirror for the first pull after the host
        answers again (False, with a warning)."""
        mirror = self.mirror_dir(run.run_id)
        mirrors.request_cancel(mirror)
        try:
            self.refresh(run, force=True)
        except RemoteSyncError:
            if mirrors.cancel_pending(mirror):
                raise
        if not mirrors.cancel_pending(mirror):
            return True
        warnings.warn(f"run {run.run_id}: the cancel is recorded, and {self.where} cannot be reached: its job is "
                      f"stopped when the host answers again (`rundock cancel {run.run_id} --abandon` ends the run "
                      "now)", live.HostUnreachableWarning, stacklevel=3)
        return False

    def clean(self, run: RunRecord) -> list[str]:
        return list(json.loads(self._remote("clean", run.run_id)))

    def reap_lost(self, run: RunRecord) -> None:
        """Remote liveness is judged by ``sync`` (which can see the host); nothing to do here."""


def abandon(workspace: Workspace, run_id: str) -> RunRecord:
    """Give up on a live run whose host cannot be reached: it ends Canceled now, reason "abandoned: host
    unreachable", and its cancel waits in the run's mirror: the job is stopped when the host answers again."""
    record = workspace.store.get_run(run_id)
    if record.target in ("local", "sdk"):
        raise RundockError(f"run {run_id} runs on this machine: cancel it (`rundock cancel {run_id}`)")
    root = record
    while root.run_type != liveness.AGENT_RUN_TYPE and root.parent_id:
        root = workspace.store.get_run(root.parent_id)
    remote_sync.abandon(RemoteTarget(workspace, record.target), root.run_id)
    return workspace.store.get_run(run_id)
