"""The SSH compute target: runs go to an agent on a remote host that owns them.

Submit order (nothing half-created on failure): validate, snapshot locally,
connect (host key verified), install the agent bundle if the host lacks it,
check the host (Python, disk, Docker, GPUs), send the snapshot's missing blobs
as one gzip stream on one channel, then create the run and start the remote
agent detached. From then on the host owns the run: the submitter may exit.

Sync is pull-based: the new bytes of the remote run directory's journal and
logs (and the blobs they name) arrive in one gzip stream, are appended to a
local mirror of the run directory, and the same ``Syncer`` as local runs ships
the mirror to the history, so records apply exactly once however often a
pull is repeated or interrupted.
"""

from __future__ import annotations

import getpass
import io
import json
import os
import shlex
import tarfile
import threading
import zlib
from collections.abc import Iterator, Mapping
from typing import Any

from rundock.agent.job import MODE_JOURNAL, JobSpec
from rundock.context.names import artifact_name
from rundock.errors import ConfigError, RundockError
from rundock.history import liveness
from rundock.history.records import RunRecord
from rundock.history.sync import Syncer
from rundock.runconfig.environment import Environment, PythonSection
from rundock.runconfig.script_run_config import ScriptRunConfig
from rundock.states import RunStatus
from rundock.submitter.bundle import UNPACK, agent_bundle
from rundock.submitter.compute import ComputeTarget, RemoteCompute
from rundock.submitter.gitinfo import git_properties
from rundock.submitter.snapshot import Progress, take_snapshot
from rundock.submitter.ssh import SshConnection, SshError, SshTarget
from rundock.submitter.workspace import Workspace

_CONNECTIONS: dict[tuple[str, str], SshConnection] = {}
_SYNCERS: dict[tuple[str, str], Syncer] = {}  # kept per run so each pull reads only what is new
_ROOTS: dict[tuple[str, str, str, str], tuple[SshConnection, str]] = {}  # the host's folder, per connection
_LOCK = threading.Lock()
NO_AGENT = 75  # exit status of the host check when this version of the agent is not installed there
DISK_MARGIN = 64 * 1024 * 1024


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
        key = (self.workspace.path, self.name)
        with _LOCK:
            conn = _CONNECTIONS.get(key)
            transport = conn.client.get_transport() if conn else None
            if conn is None or transport is None or not transport.is_active():
                conn = _CONNECTIONS[key] = SshConnection(self.ssh_target(), self.known_hosts)
            return conn

    def _agent_command(self, conn: SshConnection, command: str, *args: str) -> str:
        digest, _ = agent_bundle()
        root = self.root(conn)
        return (f"PYTHONPATH={shlex.quote(f'{root}/agent/{digest}')} {shlex.quote(self.config.python)} "
                f"-m rundock.agent.remote {command} {shlex.quote(root)} {' '.join(shlex.quote(a) for a in args)}")

    def _remote(self, conn: SshConnection, command: str, *args: str, stdin: Any = b"") -> bytes:
        code, out, err = conn.run(self._agent_command(conn, command, *args), stdin=stdin)
        if code != 0:
            raise RundockError(f"`{command}` failed on {conn.where}: {err.decode(errors='replace').strip()[-2000:]}")
        return out

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

    def ensure_agent(self, conn: SshConnection) -> dict[str, Any]:
        """Install the agent bundle if the host lacks this version; return what the host has."""
        return self._prepare_host(conn, [])[0]

    def _prepare_host(self, conn: SshConnection, digests: list[str]) -> tuple[dict[str, Any], list[str]]:
        """What the host has and which of ``digests`` it lacks, in one round trip while the agent is installed."""
        agent_dir = f"{self.root(conn)}/agent/{agent_bundle()[0]}"
        line = f"test -f {shlex.quote(agent_dir)}/.complete || exit {NO_AGENT}; {self._agent_command(conn, 'prepare')}"
        for attempt in (1, 2):
            code, out, err = conn.run(line, stdin=json.dumps(digests).encode())
            if code == NO_AGENT and attempt == 1:
                self._install_agent(conn, agent_dir)
                continue
            if code != 0:
                raise RundockError(f"checking {conn.where} failed: {err.decode(errors='replace').strip()[-2000:]}")
            answer = json.loads(out)
            return dict(answer["host"]), list(answer["missing"])
        raise RundockError(f"rundock's agent on {conn.where} is still missing after installing it in {agent_dir}")

    def _install_agent(self, conn: SshConnection, agent_dir: str) -> None:
        _, bundle = agent_bundle()
        code, _, err = conn.run(f"mkdir -p {shlex.quote(os.path.dirname(agent_dir))} && "
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
        env = config.environment or Environment(name="rundock-remote-python", python=PythonSection(
            user_managed_dependencies=True, interpreter_path="python3"))
        snapshot = take_snapshot(config.source_directory, ws.store, ws.artifacts, ws.snapshot_limits)
        conn = self.connect()
        host, lacking = self._prepare_host(conn, list(dict.fromkeys(e["digest"] for e in snapshot.manifest)))
        self._check_host(conn, host, env, snapshot.total_bytes)
        self._send(conn, lacking, progress)
        run_definition = {**config.run_config.to_mapping(), "environment": env.to_mapping(),
                          "source_directory": os.path.abspath(config.source_directory)}
        record = ws.store.create_run(
            experiment, target=self.name, run_definition=run_definition, snapshot_id=snapshot.snapshot_id,
            submitted_by=getpass.getuser(), display_name=display_name, description=description, parent_id=parent_id,
            tags={k: None if v is None else str(v) for k, v in (tags or {}).items()},
            properties={"ContentSnapshotId": snapshot.snapshot_id, **git_properties(config.source_directory)})
        root = self.root(conn)
        try:
            job = JobSpec(
                run_id=record.run_id, experiment=experiment, mode=MODE_JOURNAL, store_uri="",
                artifacts_root=f"{root}/artifacts", snapshot_id=snapshot.snapshot_id,
                script=config.run_config.script or "", interpreter=env.python.interpreter_path,
                arguments=[str(a) for a in config.run_config.arguments], display_name=display_name,
                max_run_duration_seconds=config.run_config.max_run_duration_seconds,
                cancel_grace_seconds=config.run_config.cancel_grace_seconds,
                heartbeat_seconds=ws.heartbeat_seconds, slots_dir=f"{root}/slots",
                max_concurrent_runs=self.config.max_concurrent_runs or host["cpus"], target=self.name,
                submitted_at=record.created_at, environment=env.to_mapping(),
                secrets_file=f"{root}/runs/{record.run_id}/workspace_secrets.json")
            request = {"job": job.to_dict(), "manifest": snapshot.manifest, "secrets": ws.secrets.get_secrets(
                [s["name"] for s in ws.secrets.list_secrets()])}
            started = json.loads(self._remote(conn, "start", record.run_id, stdin=json.dumps(request).encode()))
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

    def send_blobs(self, conn: SshConnection, digests: list[str], progress: Progress | None = None) -> int:
        """Send the blobs the host lacks as one gzip tar stream; return the bytes read from disk."""
        wanted = list(dict.fromkeys(digests))
        return self._send(conn, json.loads(self._remote(conn, "missing", stdin=json.dumps(wanted).encode())),
                          progress)

    def _send(self, conn: SshConnection, lacking: list[str], progress: Progress | None) -> int:
        if not lacking:
            return 0
        total = sum(self.workspace.artifacts.size(d) for d in lacking)
        self._remote(conn, "receive", stdin=_tar_stream(self.workspace, lacking, total, progress))
        return total

    # -- following a run ------------------------------------------------------------------------
    def mirror_dir(self, run_id: str) -> str:
        return os.path.join(self.workspace.path, "remote", self.name, "runs", run_id)

    def sync(self, run: RunRecord) -> None:
        """Pull what is new in the run's remote directory into the history (exactly once)."""
        if run.status.is_terminal:
            return
        conn = self.connect()
        mirror = self.mirror_dir(run.run_id)
        offsets = {f"{folder}/{name}": os.path.getsize(os.path.join(mirror, folder, name))
                   for folder in ("journal", "system_logs") if os.path.isdir(os.path.join(mirror, folder))
                   for name in os.listdir(os.path.join(mirror, folder))}
        raw = self._remote(conn, "pull", run.run_id, stdin=json.dumps(offsets).encode())
        state = _apply_pull(raw, mirror, self.workspace)
        key = (self.workspace.path, run.run_id)
        with _LOCK:
            syncer = _SYNCERS.get(key) or Syncer(mirror, run.run_id, self.workspace.store, self.workspace.artifacts)
            _SYNCERS[key] = syncer
        syncer.sync_once()
        self._judge(conn, run.run_id, state)

    def _judge(self, conn: SshConnection, run_id: str, state: dict[str, Any]) -> None:
        store = self.workspace.store
        record = store.get_run(run_id)
        if record.status.is_terminal:
            store.end_open_children(run_id, record.status)
            return
        silent = state["now"] - (record.last_heartbeat or record.created_at)
        if not state["agent_alive"] and silent > liveness.lost_after_seconds():
            error = {"code": "AgentLost", "message": f"agent lost: the agent on {conn.where} is gone and sent no "
                                                     f"heartbeat for {silent:.0f} s"}
            if store.transition(run_id, RunStatus.FAILED, detail="agent lost", error=error):
                self._remote(conn, "reap", run_id)
                store.end_open_children(run_id, RunStatus.FAILED)

    def cancel(self, run: RunRecord) -> None:
        self._remote(self.connect(), "cancel", run.run_id)

    def clean(self, run: RunRecord) -> list[str]:
        return list(json.loads(self._remote(self.connect(), "clean", run.run_id)))

    def reap_lost(self, run: RunRecord) -> None:
        """Remote liveness is judged by ``sync`` (which can see the host); nothing to do here."""


COMPRESS_LIMIT = 8 * 1024 * 1024  # larger blobs (checkpoints, data) go as they are
SAMPLE = 4096  # enough to tell text from random bytes


def _compressed(data: bytes) -> bytes | None:
    """The zlib-compressed bytes of a blob worth compressing, or None to send it as it is."""
    if len(zlib.compress(data[:SAMPLE], 1)) > 0.9 * min(len(data), SAMPLE):
        return None  # random-looking content: compressing it costs time and saves nothing
    return zlib.compress(data, 1)


def _member(ws: Workspace, digest: str) -> tuple[str, bytes | str, int]:
    """(tar name, bytes to send or the path of a large loose blob, size in the store) of one blob."""
    size = ws.artifacts.size(digest)
    loose = ws.artifacts.loose_path(digest)
    if loose and size > COMPRESS_LIMIT:
        return digest, loose, size
    data = ws.artifacts.read(digest)
    packed = _compressed(data)
    return (digest, data, size) if packed is None else (digest + ".z", packed, size)


def _tar_stream(ws: Workspace, digests: list[str], total: int, progress: Progress | None) -> Iterator[bytes]:
    """A tar of blobs, produced in pieces while it is sent; each compressible blob is zlib-compressed (``.z``)."""
    buffer = _Drain()
    done = 0
    with tarfile.open(fileobj=buffer, mode="w|") as tar:
        for digest in digests:
            name, body, size = _member(ws, digest)
            if isinstance(body, str):
                tar.add(body, arcname=name)
            else:
                info = tarfile.TarInfo(name)
                info.size = len(body)
                tar.addfile(info, io.BytesIO(body))
            done += size
            if progress is not None:
                progress(done, total)
            yield buffer.take()
    yield buffer.take()


class _Drain(io.RawIOBase):
    def __init__(self) -> None:
        self.data = bytearray()

    def writable(self) -> bool:
        return True

    def write(self, b: Any) -> int:
        self.data += bytes(b)
        return len(b)

    def take(self) -> bytes:
        out, self.data = bytes(self.data), bytearray()
        return out


def _apply_pull(raw: bytes, mirror: str, ws: Workspace) -> dict[str, Any]:
    """Append the pulled bytes to the mirror and store the pulled blobs; return the host's state."""
    state: dict[str, Any] = {}
    with tarfile.open(fileobj=io.BytesIO(raw), mode="r:gz") as tar:
        for member in tar:
            handle = tar.extractfile(member)
            if handle is None:
                continue
            if member.name == "state.json":
                state = json.loads(handle.read())
            elif member.name.startswith("blobs/"):
                digest, _, _ = ws.artifacts.put_stream(handle)
                if digest != member.name[len("blobs/"):]:
                    raise RundockError(f"a file pulled from the host arrived damaged ({member.name})")
            elif member.name.startswith("data/"):
                rel = member.name[len("data/"):]
                path = os.path.join(mirror, artifact_name(rel))
                os.makedirs(os.path.dirname(path), exist_ok=True)
                offset = state.get("files", {}).get(rel, {}).get("offset", 0)
                with open(path, "r+b" if os.path.exists(path) else "wb") as out:
                    out.seek(offset)
                    out.write(handle.read())
                    out.truncate()
    return state

