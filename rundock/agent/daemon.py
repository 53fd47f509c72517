"""A warm local agent: ``python -m rundock.agent serve ROOT`` forks one agent per run.

Starting a Python process and importing the agent costs more than the rest of
a local submit; this daemon pays it once. It listens on a Unix socket named by
the agent root and the code's content hash (changed code never reuses an old
daemon), in a folder only its user can enter, and for each request forks a child that becomes that run's agent,
exactly as a freshly started one: its own session, its run directory as
working directory, the submitter's environment. Children outlive the daemon.
It exits after ``RUNDOCK_AGENT_IDLE_SECONDS`` (default 600) without requests or
runs. The daemon stays single-threaded, so forking it is safe.
"""

from __future__ import annotations

import hashlib
import json
import os
import select
import socket
import tempfile
import time
from typing import Any

from rundock.agent import lifecycle

DEFAULT_IDLE = 600.0


def socket_path(root: str, version: str) -> str:
    """A short path (Unix sockets allow about 100 characters) in a folder only this user can enter."""
    folder = os.path.join(tempfile.gettempdir(), f"rundock-{os.getuid()}")
    os.makedirs(folder, mode=0o700, exist_ok=True)
    key = hashlib.sha256(os.path.abspath(root).encode()).hexdigest()[:16]
    return os.path.join(folder, f"{key}-{version}.sock")


def _reap(children: set[int]) -> None:
    for pid in list(children):
        try:
            done, _ = os.waitpid(pid, os.WNOHANG)
        except ChildProcessError:
            done = pid
        if done:
            children.discard(pid)


def _run_child(request: dict[str, Any]) -> None:
    """In the forked child: become the run's agent, then exit without returning to the daemon's loop."""
    code = 1
    try:
        os.setsid()
        os.environ.clear()
        os.environ.update(request["env"])
        run_dir = request["run_dir"]
        os.chdir(run_dir)
        fd = os.open(os.path.join(run_dir, "system_logs", "agent_log.txt"), os.O_WRONLY | os.O_APPEND | os.O_CREAT)
        for target in (1, 2):
            os.dup2(fd, target)
        null = os.open(os.devnull, os.O_RDONLY)
        os.dup2(null, 0)
        code = lifecycle.main(run_dir)
    finally:
        os._exit(code)


def preload() -> None:
    """Import now what every forked agent would otherwise import on its own (optional packages too)."""
    for name in ("rundock.history.backends.sqlite", "watchdog.observers", "watchdog.events", "docker", "netrc",
                 "rundock.agent.images", "rundock.agent.executors.docker"):
        try:
            __import__(name)
        except ImportError:
            pass


def serve(root: str, version: str) -> int:
    idle = float(os.environ.get("RUNDOCK_AGENT_IDLE_SECONDS", DEFAULT_IDLE))
    path = socket_path(root, version)
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass
    listener.bind(path)
    listener.listen(16)
    children: set[int] = set()
    last = time.monotonic()
    try:
        while True:
            ready, _, _ = select.select([listener], [], [], 1.0)
            _reap(children)
            if not ready:
                if not children and time.monotonic() - last > idle:
                    return 0
                continue
            conn, _ = listener.accept()
            last = time.monotonic()
            with conn:
                request = json.loads(_receive(conn))
                pid = os.fork()
                if pid == 0:
                    listener.close()
                    conn.close()
                    _run_child(request)
                children.add(pid)
                conn.sendall(json.dumps({"agent_pid": pid}).encode())
    finally:
        try:
            if os.path.exists(path):
                os.unlink(path)
        finally:
            listener.close()


def _receive(conn: socket.socket) -> bytes:
    data = bytearray()
    while chunk := conn.recv(1 << 16):
        data += chunk
    return bytes(data)


def request_agent(root: str, version: str, run_dir: str, env: dict[str, str], timeout: float = 5.0) -> int | None:
    """Ask a running daemon for an agent; its pid, or None when no daemon answers."""
    path = socket_path(root, version)
    if not os.path.exists(path):
        return None
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as conn:
            conn.settimeout(timeout)
            conn.connect(path)
            conn.sendall(json.dumps({"run_dir": run_dir, "env": env}).encode())
            conn.shutdown(socket.SHUT_WR)
            return int(json.loads(_receive(conn))["agent_pid"])
    except (OSError, ValueError, KeyError):
        return None


