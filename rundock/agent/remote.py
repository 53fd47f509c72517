"""The remote host's side of an SSH target: small commands the submitter runs over SSH.

``python3 -m rundock.agent.remote COMMAND ROOT [ARG]`` with the agent bundle on
PYTHONPATH; standard library only. ROOT is the host's rundock folder
(``~/.rundock``, kept 0700) with ``artifacts/``, ``runs/``, ``slots/``... Requests come on
stdin (JSON or a tar stream), answers on stdout (JSON or a gzip tar stream).
Every command may be run again after a lost connection (the submitter retries them).

- ``probe``: Python version, free disk, CPUs, Docker, GPUs.
- ``missing``: which of these blob digests the host lacks.
- ``prepare``: ``probe`` and ``missing`` in one round trip (what a submit asks first).
- ``receive``: store blobs from a tar stream (see ``rundock.agent.receive``).
- ``start RUN_ID``: write the job, its snapshot manifest and the secrets it may read (0600), start the
  agent detached. Once an agent was started for the run, a repeated ``start`` answers with it.
- ``pull RUN_ID``: what is new in the run directory since the given offsets, with the
  blobs and uploads its new journal records name, and the host's view of the run (``rundock.agent.pull``).
  The request is ``{"offsets": {...}, "cancel": bool}`` (or the offsets alone); a cancel it carries is
  left for the run's agent (as ``cancel`` does) before the run directory is read.
- ``cancel RUN_ID`` / ``clean RUN_ID`` / ``reap RUN_ID`` (a lost run: kill what is left, remove its secrets).
"""

from __future__ import annotations

import json
import os
import shutil
import stat
import subprocess
import sys
import time
from typing import Any

from rundock.agent import reaper, runlock
from rundock.agent.job import ENV_USER_PYTHONPATH, JobSpec, request_cancel
from rundock.agent.outputs import scan_for_lost_agent
from rundock.agent.pull import PULLED_DIRS, pull
from rundock.agent.receive import receive
from rundock.context import rundir
from rundock.context.records import check_run_id
from rundock.history.artifacts import ArtifactStore

__all__ = ["PULLED_DIRS", "main", "pull", "receive"]
START_WAIT_SECONDS = 10.0  # how long a repeated start waits for the first one to name its agent
OLD_SECRETS_FILE = "workspace_secrets.json"  # where earlier versions left a run's secrets
_UMASK = [0o022]  # the user's own umask, for the agent (this command runs with 077)


class HostError(Exception):
    """A request this host refuses; the message says why (it reaches the submitter on stderr)."""


def private_root(root: str) -> str:
    """The host folder, created 0700; one that others can enter is closed, one of another user refused."""
    os.makedirs(root, mode=0o700, exist_ok=True)
    st = os.stat(root)
    if st.st_uid != os.getuid():
        raise HostError(f"{root} belongs to uid {st.st_uid}, not to this user ({os.getuid()}); attach the target "
                        "with a --root of your own")
    if stat.S_IMODE(st.st_mode) & 0o077:
        os.chmod(root, 0o700)
    return root


def _artifacts(root: str) -> ArtifactStore:
    return ArtifactStore(os.path.join(root, "artifacts"))


def _run_dir(root: str, run_id: str) -> str:
    return os.path.join(root, "runs", check_run_id(run_id))


def probe(root: str) -> dict[str, Any]:
    usage = shutil.disk_usage(root)
    gpus: list[str] = []
    if shutil.which("nvidia-smi"):
        out = subprocess.run(["nvidia-smi", "--query-gpu=index", "--format=csv,noheader"], capture_output=True,
                             text=True, timeout=60)
        gpus = [line.strip() for line in out.stdout.splitlines() if line.strip()]
    docker = bool(shutil.which("docker") or os.environ.get("DOCKER_HOST") or os.path.exists("/var/run/docker.sock"))
    return {"python": sys.version.split()[0], "executable": sys.executable, "root": os.path.abspath(root),
            "free_bytes": usage.free, "cpus": os.cpu_count() or 1, "docker": docker,
            "gpus": gpus}


def missing(root: str, digests: list[str]) -> list[str]:
    store = _artifacts(root)
    store.refresh()  # every pack index once, not once per digest the host lacks
    return [d for d in digests if not store.has(d, refresh=False)]


# -- start -------------------------------------------------------------------------------------
def start(root: str, run_id: str, request: dict[str, Any]) -> dict[str, Any]:
    """Start the run's agent once; a repeated start (a retry after a lost connection) answers with it."""
    run_dir = _run_dir(root, run_id)
    os.makedirs(os.path.join(root, "runs"), mode=0o700, exist_ok=True)
    os.makedirs(run_dir, mode=0o700, exist_ok=True)
    claim = rundir.entry(run_dir, rundir.AGENT_PID)
    try:
        fd = os.open(claim, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        pid = _wait_for_pid(claim)
        if pid is not None:
            return {"run_dir": run_dir, "agent_pid": pid, "already_started": True,
                    "agent_alive": _agent_alive(run_dir)}
        # the first start ended before it started an agent; a second agent could not run the job twice
        # anyway (the run directory's agent lock), so this one starts it
        fd = os.open(claim, os.O_WRONLY | os.O_TRUNC)
    with os.fdopen(fd, "w", encoding="utf-8") as pid_file:
        try:
            spec = _write_job(run_dir, request)
            runlock.write_heartbeat(run_dir, 0, spec.heartbeat_seconds)  # silence is measured from here
            pid = _spawn_agent(run_dir)
        except BaseException:
            _remove_secrets(run_dir)
            os.unlink(claim)
            raise
        pid_file.write(str(pid))
    return {"run_dir": run_dir, "agent_pid": pid, "already_started": False, "agent_alive": True}


def _wait_for_pid(claim: str) -> int | None:
    deadline = time.monotonic() + START_WAIT_SECONDS
    while True:
        try:
            with open(claim, encoding="utf-8") as fh:
                return int(fh.read().strip())
        except (OSError, ValueError):
            if time.monotonic() > deadline:
                return None
            time.sleep(0.05)


def _write_job(run_dir: str, request: dict[str, Any]) -> JobSpec:
    spec = JobSpec.from_dict(request.get("job"), source="the job sent by the submitter")
    with open(rundir.entry(run_dir, rundir.MANIFEST_FILE), "w", encoding="utf-8") as fh:
        json.dump(request.get("manifest") or [], fh)
    secrets = request.get("secrets") or {}
    if not isinstance(secrets, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in secrets.items()):
        raise HostError("the secrets sent with the job must map names to strings")
    spec.secrets_file = None
    if secrets:
        spec.secrets_file = rundir.entry(run_dir, rundir.SECRETS_FILE)
        fd = os.open(spec.secrets_file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        os.fchmod(fd, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            json.dump(secrets, fh)
    spec.save(run_dir)
    return spec


def _spawn_agent(run_dir: str) -> int:
    env = dict(os.environ)
    env[ENV_USER_PYTHONPATH] = ""  # PYTHONPATH here is the agent bundle, set for this command only
    logs = rundir.entry(run_dir, rundir.SYSTEM_LOGS_DIR)
    os.makedirs(logs, mode=0o700, exist_ok=True)
    with open(os.path.join(logs, rundir.AGENT_LOG), "ab") as log:
        agent = subprocess.Popen([sys.executable, "-m", "rundock.agent", "run", run_dir], cwd=run_dir, env=env,
                                 stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                                 start_new_session=True, close_fds=True, preexec_fn=_user_umask)
    return agent.pid


def _user_umask() -> None:
    os.umask(_UMASK[0])


def _agent_alive(run_dir: str) -> bool:
    """Whether a process holds the run's agent lock (the agent holds it for its whole life)."""
    return runlock.agent_alive(run_dir)


# -- ending ------------------------------------------------------------------------------------
def _remove_secrets(run_dir: str) -> bool:
    removed = False
    for name in (rundir.SECRETS_FILE, OLD_SECRETS_FILE):
        try:
            os.unlink(rundir.entry(run_dir, name))
            removed = True
        except FileNotFoundError:
            pass
    return removed


def reap(root: str, run_id: str) -> dict[str, Any]:
    """End what is left of a run whose agent is gone: its processes and containers, and its secrets.

    Nothing is done while an agent holds the run; a late agent finds a cancel request and runs nothing.
    """
    run_dir = _run_dir(root, run_id)
    lock = runlock.AgentLock(run_dir) if os.path.isdir(run_dir) else None
    if lock is not None and not lock.acquire(wait=0):
        return {"agent_alive": True, "killed": False, "survivors": [], "secrets_removed": False}
    try:
        if lock is not None:
            request_cancel(run_dir)
        removed = _remove_secrets(run_dir) if lock is not None else False
        if os.path.exists(rundir.entry(run_dir, rundir.PROCESSES_FILE)):
            reaper.remove_run_containers(run_id)
        found = reaper.run_processes(run_id, run_dir)
        survivors = reaper.kill_run_processes(run_id, run_dir) if found else []
        if lock is not None and runlock.agent_started(run_dir):  # the final scan its agent did not make
            scan_for_lost_agent(run_dir, _artifacts(root))
        return {"agent_alive": False, "killed": bool(found), "survivors": survivors, "secrets_removed": removed}
    finally:
        if lock is not None:
            lock.release()


def clean(root: str, run_id: str) -> list[str]:
    run_dir = _run_dir(root, run_id)
    _remove_secrets(run_dir)
    removed = sorted(os.path.relpath(os.path.join(d, f), run_dir) for d, _, fs in os.walk(run_dir) for f in fs)
    shutil.rmtree(run_dir, ignore_errors=True)
    return removed


def main(argv: list[str]) -> int:
    command, root = argv[0], os.path.expanduser(argv[1])
    arg = argv[2] if len(argv) > 2 else ""
    _UMASK[0] = os.umask(0o077)  # everything this command creates is private to the user
    private_root(root)
    stdin, stdout = sys.stdin.buffer, sys.stdout.buffer
    if command == "probe":
        result: Any = probe(root)
    elif command == "missing":
        result = missing(root, json.load(stdin))
    elif command == "prepare":
        result = {"host": probe(root), "missing": missing(root, json.load(stdin))}
    elif command == "receive":
        result = {"stored": receive(root, stdin)}
    elif command == "start":
        result = start(root, arg, json.load(stdin))
    elif command == "pull":
        run_dir, request = _run_dir(root, arg), json.load(stdin)
        offsets = request.get("offsets") if isinstance(request, dict) and "offsets" in request else request
        if isinstance(request, dict) and request.get("cancel") is True and os.path.isdir(run_dir):
            request_cancel(run_dir)
        pull(run_dir, _artifacts(root), offsets, stdout)
        return 0
    elif command == "cancel":
        run_dir = _run_dir(root, arg)
        if os.path.isdir(run_dir):
            request_cancel(run_dir)
        result = {"requested": os.path.isdir(run_dir)}
    elif command == "clean":
        result = clean(root, arg)
    elif command == "reap":
        result = reap(root, arg)
    else:
        print(f"unknown command {command!r}", file=sys.stderr)
        return 2
    stdout.write(json.dumps(result).encode())
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main(sys.argv[1:]))
    except (HostError, ValueError) as exc:  # a refused request: its reason, without a traceback
        print(f"{type(exc).__name__}: {exc}", file=sys.stderr)
        sys.exit(1)
