"""The remote host's side of an SSH target: small commands the submitter runs over SSH.

``python3 -m rundock.agent.remote COMMAND ROOT [ARG]`` with the agent bundle on
PYTHONPATH; standard library only. ROOT is the host's rundock folder
(``~/.rundock``) with ``artifacts/``, ``runs/``, ``slots/``... Requests come on
stdin (JSON or a tar stream), answers on stdout (JSON or a gzip tar stream).

- ``probe``: Python version, free disk, CPUs, Docker, GPUs.
- ``missing``: which of these blob digests the host lacks.
- ``prepare``: ``probe`` and ``missing`` in one round trip (what a submit asks first).
- ``receive``: store blobs from a tar stream (names are digests; each is verified).
- ``start RUN_ID``: write the job and its snapshot manifest, start the agent detached.
- ``pull RUN_ID``: what is new in the run directory since the given offsets, with the
  blobs and uploads its new journal records name, and whether the agent is alive.
- ``cancel RUN_ID`` / ``clean RUN_ID`` / ``reap RUN_ID``.
"""

from __future__ import annotations

import concurrent.futures
import gzip
import hashlib
import io
import json
import os
import shutil
import signal
import subprocess
import sys
import tarfile
import time
import zlib
from typing import Any

from rundock.agent.job import ENV_USER_PYTHONPATH, JOB_FILE, request_cancel
from rundock.context.journal import JOURNAL_DIR, read_from
from rundock.context.names import artifact_name
from rundock.history.artifacts import PACK_MAX_BLOB, ArtifactStore

PULLED_DIRS = (JOURNAL_DIR, "system_logs")
AGENT_PID = "agent.pid"


def _artifacts(root: str) -> ArtifactStore:
    return ArtifactStore(os.path.join(root, "artifacts"))


def probe(root: str) -> dict[str, Any]:
    os.makedirs(root, exist_ok=True)
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


def _store_loose(store: ArtifactStore, name: str, data: bytes) -> None:
    digest, _, _ = store.put_bytes(data)  # stored under the digest of what arrived: never under a wrong name
    if digest != name:
        raise ValueError(f"blob {name} arrived damaged")


def receive(root: str, stream: Any) -> int:
    """Store each member of a tar stream under its digest name (``<digest>.z``: zlib-compressed), verifying
    the content: small blobs into one pack, large ones as their own files on a few threads."""
    stored = 0
    store = _artifacts(root)
    with tarfile.open(fileobj=stream, mode="r|*") as tar, store.pack() as pack, \
            concurrent.futures.ThreadPoolExecutor(max_workers=2) as pool:
        pending: list[concurrent.futures.Future[None]] = []
        for member in tar:
            if not member.isfile():
                continue
            name, compressed = (member.name[:-2], True) if member.name.endswith(".z") else (member.name, False)
            store.path(name)  # refuse anything that is not a digest before reading it
            src = tar.extractfile(member)
            assert src is not None
            data = src.read()
            if compressed:
                data = zlib.decompress(data)
            if len(data) > PACK_MAX_BLOB:
                pending.append(pool.submit(_store_loose, store, name, data))
                if len(pending) > 4:  # bounded memory: wait for the oldest writes
                    pending.pop(0).result()
            elif hashlib.sha256(data).hexdigest() != name:
                raise ValueError(f"blob {name} arrived damaged")
            else:
                pack.add(data, name)
            stored += 1
        for future in pending:
            future.result()
    return stored


def start(root: str, run_id: str, request: dict[str, Any]) -> dict[str, Any]:
    run_dir = os.path.join(root, "runs", artifact_name(run_id))
    os.makedirs(os.path.join(run_dir, "system_logs"), exist_ok=True)
    with open(os.path.join(run_dir, "manifest.json"), "w", encoding="utf-8") as fh:
        json.dump(request["manifest"], fh)
    if request.get("secrets"):
        fd = os.open(os.path.join(run_dir, "workspace_secrets.json"), os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            json.dump(request["secrets"], fh)
    with open(os.path.join(run_dir, JOB_FILE), "w", encoding="utf-8") as fh:
        json.dump(request["job"], fh)
    env = dict(os.environ)
    env[ENV_USER_PYTHONPATH] = ""  # PYTHONPATH here is the agent bundle, set for this command only
    with open(os.path.join(run_dir, "system_logs", "agent_log.txt"), "ab") as log:
        agent = subprocess.Popen([sys.executable, "-m", "rundock.agent", "run", run_dir], cwd=run_dir, env=env,
                                 stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                                 start_new_session=True, close_fds=True)
    with open(os.path.join(run_dir, AGENT_PID), "w", encoding="utf-8") as fh:
        fh.write(str(agent.pid))
    return {"run_dir": run_dir, "agent_pid": agent.pid}


def _agent_alive(run_dir: str) -> bool:
    try:
        with open(os.path.join(run_dir, AGENT_PID), encoding="utf-8") as fh:
            pid = int(fh.read().strip())
        with open(f"/proc/{pid}/cmdline", "rb") as cmd:
            return b"rundock.agent" in cmd.read() and not _is_zombie(pid)
    except (OSError, ValueError):
        return False


def _is_zombie(pid: int) -> bool:
    with open(f"/proc/{pid}/stat", "rb") as fh:
        stat = fh.read()
    return stat[stat.rfind(b")") + 2:].split()[0] == b"Z"


def pull(root: str, run_id: str, offsets: dict[str, int], out: Any) -> None:
    """Write a gzip tar: ``state.json``, then ``data/<file>`` (bytes after its offset), ``blobs/<digest>``."""
    run_dir = os.path.join(root, "runs", artifact_name(run_id))
    alive = _agent_alive(run_dir)  # before reading: anything the agent wrote before it died is read below
    files: dict[str, dict[str, int]] = {}
    payload: list[tuple[str, bytes]] = []
    blobs: list[str] = []
    uploads: list[str] = []
    for folder in PULLED_DIRS:
        directory = os.path.join(run_dir, folder)
        for name in sorted(os.listdir(directory)) if os.path.isdir(directory) else []:
            rel = f"{folder}/{name}"
            offset = int(offsets.get(rel, 0))
            data = read_from(os.path.join(directory, name), offset)
            if folder == JOURNAL_DIR:
                data = data[: data.rfind(b"\n") + 1]  # whole records only
                for line in data.splitlines():
                    try:
                        rec = json.loads(line)
                    except ValueError:
                        continue
                    if rec.get("type") == "file":
                        (blobs if "digest" in rec else uploads).append(rec.get("digest") or rec.get("path", ""))
            if data:
                files[rel] = {"offset": offset, "size": len(data)}
                payload.append((f"data/{rel}", data))
    state = {"agent_alive": alive, "now": time.time(), "files": files, "run_dir": run_dir}
    with gzip.GzipFile(fileobj=out, mode="wb", compresslevel=1) as zipped, \
            tarfile.open(fileobj=zipped, mode="w|") as tar:
        _add(tar, "state.json", json.dumps(state).encode())
        for name, data in payload:
            _add(tar, name, data)
        for path in uploads:
            full = os.path.join(run_dir, artifact_name(path))
            if os.path.isfile(full):
                tar.add(full, arcname=f"data/{artifact_name(path)}")
        store = _artifacts(root)
        for digest in dict.fromkeys(blobs):
            if store.has(digest):
                info = tarfile.TarInfo(f"blobs/{digest}")
                info.size = store.size(digest)
                with store.open(digest) as blob:
                    tar.addfile(info, blob)


def _add(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    tar.addfile(info, io.BytesIO(data))


def reap(root: str, run_id: str) -> bool:
    """Kill what is left of a run whose agent died: its job's process group."""
    run_dir = os.path.join(root, "runs", artifact_name(run_id))
    try:
        with open(os.path.join(run_dir, "processes.json"), encoding="utf-8") as fh:
            pgid = int(json.load(fh).get("job_pgid") or 0)
        with open(f"/proc/{pgid}/environ", "rb") as env:
            if f"RUNDOCK_RUN_ID={run_id}".encode() not in env.read().split(b"\0"):
                return False
        os.killpg(pgid, signal.SIGKILL)
        return True
    except (OSError, ValueError):
        return False


def clean(root: str, run_id: str) -> list[str]:
    run_dir = os.path.join(root, "runs", artifact_name(run_id))
    removed = sorted(os.path.relpath(os.path.join(d, f), run_dir) for d, _, fs in os.walk(run_dir) for f in fs)
    shutil.rmtree(run_dir, ignore_errors=True)
    return removed


def main(argv: list[str]) -> int:
    command, root = argv[0], os.path.expanduser(argv[1])
    arg = argv[2] if len(argv) > 2 else ""
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
        pull(root, arg, json.load(stdin), stdout)
        return 0
    elif command == "cancel":
        run_dir = os.path.join(root, "runs", artifact_name(arg))
        if os.path.isdir(run_dir):
            request_cancel(run_dir)
        result = {"requested": os.path.isdir(run_dir)}
    elif command == "clean":
        result = clean(root, arg)
    elif command == "reap":
        result = {"killed": reap(root, arg)}
    else:
        print(f"unknown command {command!r}", file=sys.stderr)
        return 2
    stdout.write(json.dumps(result).encode())
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
