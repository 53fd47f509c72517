"""A warm local agent: ``python -m rundock.agent serve ROOT VERSION`` forks one agent per run.

Starting a Python process and importing the agent costs more than the rest of
a local submit; this daemon pays it once. For each request it forks a child
that becomes that run's agent, exactly as a freshly started one: its own
session, its run directory as working directory, the environment the
submitter sent (``rundock.agent.jobenv.agent_environment``: never the
submitter's whole environment). Children outlive the daemon. It exits after
``RUNDOCK_AGENT_IDLE_SECONDS`` (default 600) without requests or runs. The
daemon stays single-threaded (one ``select`` loop), so forking it is safe.

Who may talk to whom, since the socket carries environments to a process
that runs code:

- The socket lives in ``$XDG_RUNTIME_DIR/rundock`` (when that is this user's
  private folder), else in ``<tmp>/rundock-<uid>``. Before either is used it
  is checked with ``lstat``: a real folder (not a link), owned by this user,
  mode 0700. Another local user could have created the name first; a folder
  that fails the check is never used (the submitter starts a one-off agent).
- Both ends check the other's uid with ``SO_PEERCRED``: the daemon serves
  only its own user, and a client sends nothing to a daemon of another user.
- A client that connects and sends nothing, or sends garbage, is dropped or
  answered with an error after ``CONNECTION_TIMEOUT`` seconds without
  holding up anyone else; requests are checked (a JSON object with a run
  directory of this root that holds a job file, and an environment of strings).
- One daemon per socket: it holds an exclusive ``flock`` on ``<name>.pid`` for
  its whole life (a second one exits), and submitters take an exclusive
  ``flock`` on ``<name>.lock`` while deciding to start one (``start_lock``),
  so many cold submits at once start ONE daemon. A daemon removes both files
  on its way out, while holding their locks; whoever locks one checks that it
  is still the file at its path.
- The socket appears (renamed into place) only once it listens, and on its way
  out the daemon unlinks it only if it is still the socket it bound (same
  inode), never a newer daemon's.
"""

from __future__ import annotations

import contextlib
import json
import os
import select
import signal
import socket
import sys
import time
import traceback
from typing import Any

from rundock.agent import lifecycle
from rundock.agent.daemon_socket import UnsafeFolderError, _base, _lock, _remove_held, peer_uid, socket_path
from rundock.agent.jobenv import agent_environment
from rundock.context import rundir

DEFAULT_IDLE = 600.0
CONNECTION_TIMEOUT = 5.0  # a client has this long to send its whole request
MAX_REQUEST = 1 << 20
MAX_REPLY = 1 << 16
LIFE_LOCK_WAIT = 2.0  # a daemon on its way out may still hold the lock a moment


def _reap(children: set[int]) -> None:
    for pid in list(children):
        try:
            done, _ = os.waitpid(pid, os.WNOHANG)
        except ChildProcessError:
            done = pid
        if done:
            children.discard(pid)


def _run_child(run_dir: str, env: dict[str, str]) -> None:
    """In the forked child: become the run's agent, then exit without returning to the daemon's loop."""
    code = 1
    try:
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        os.setsid()
        os.environ.clear()
        os.environ.update(agent_environment(env))
        os.chdir(run_dir)
        logs = rundir.entry(run_dir, rundir.SYSTEM_LOGS_DIR)
        os.makedirs(logs, exist_ok=True)
        fd = os.open(os.path.join(logs, rundir.AGENT_LOG), os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        for target in (1, 2):
            os.dup2(fd, target)
        null = os.open(os.devnull, os.O_RDONLY)
        os.dup2(null, 0)
        code = lifecycle.main(run_dir)
    except BaseException:
        traceback.print_exc()
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


class BadRequest(ValueError):
    """A request the daemon does not serve; its message is the answer."""


def parse_request(data: bytes, root: str) -> tuple[str, dict[str, str]]:
    """(run directory, environment) of a request, or BadRequest saying what is wrong with it."""
    try:
        request = json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, ValueError):
        raise BadRequest("the request is not JSON") from None
    if not isinstance(request, dict):
        raise BadRequest("the request is not a JSON object")
    run_dir, env = request.get("run_dir"), request.get("env")
    if not isinstance(run_dir, str) or not os.path.isabs(run_dir):
        raise BadRequest("the request has no run_dir (an absolute path)")
    if not isinstance(env, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in env.items()):
        raise BadRequest("the request has no env (an object of strings)")
    real, real_root = os.path.realpath(run_dir), os.path.realpath(root)
    if os.path.commonpath([real, real_root]) != real_root or real == real_root:
        raise BadRequest(f"{run_dir} is not a run directory of {root}")
    if not os.path.isfile(rundir.entry(real, rundir.JOB_FILE)):
        raise BadRequest(f"{run_dir} has no {rundir.JOB_FILE}")
    return real, env


def _answer(conn: socket.socket, reply: dict[str, Any]) -> None:
    """Send ``reply`` and close; what the client sent and was not read is discarded first, so that closing does not
    reset the connection before the client reads the reply."""
    try:
        conn.setblocking(True)
        conn.settimeout(1.0)
        conn.sendall(json.dumps(reply).encode())
        conn.shutdown(socket.SHUT_WR)
        conn.setblocking(False)
        for _ in range(MAX_REQUEST >> 16):
            if not conn.recv(1 << 16):
                break
    except OSError:
        pass  # the client went away, or has nothing more queued
    finally:
        conn.close()


def _unlink_if_ours(path: str, bound: tuple[int, int]) -> None:
    """Remove the socket at ``path`` only if it is the one this daemon bound (a newer daemon's stays)."""
    try:
        st = os.lstat(path)
        if (st.st_dev, st.st_ino) == bound:
            os.unlink(path)
    except OSError:
        pass


def _idle_seconds() -> float:
    try:
        value = float(os.environ.get("RUNDOCK_AGENT_IDLE_SECONDS", DEFAULT_IDLE))
    except ValueError:
        return DEFAULT_IDLE
    return value if value == value and value >= 0 else DEFAULT_IDLE  # nan is not a duration


def _on_sigterm(signum: int, frame: Any) -> None:
    raise SystemExit(0)


def serve(root: str, version: str) -> int:
    idle = _idle_seconds()
    try:
        base = _base(root, version)
    except (UnsafeFolderError, ValueError) as exc:
        print(f"rundock agent serve: {exc}", file=sys.stderr)
        return 1
    path = base + ".sock"
    life_lock = _lock(base + ".pid", LIFE_LOCK_WAIT)
    if life_lock is None:
        return 0  # another daemon serves this root and version
    os.ftruncate(life_lock, 0)
    os.write(life_lock, f"{os.getpid()}\n".encode())
    signal.signal(signal.SIGTERM, _on_sigterm)
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    bound: tuple[int, int] = (-1, -1)
    try:
        staging = f"{base}.{os.getpid()}.new"
        with contextlib.suppress(FileNotFoundError):
            os.unlink(staging)
        listener.bind(staging)
        os.chmod(staging, 0o600)
        listener.listen(64)
        os.rename(staging, path)  # replaces a dead daemon's socket; only a listening socket is ever there
        st = os.lstat(path)
        bound = (st.st_dev, st.st_ino)
        listener.setblocking(False)
        _loop(listener, root, path, bound, idle, life_lock)
        return 0
    finally:
        _unlink_if_ours(path, bound)
        listener.close()
        starting = _lock(base + ".lock", 0)  # a submitter deciding to start a daemon keeps its lock file
        if starting is not None:
            _remove_held(base + ".lock", starting)
        _remove_held(base + ".pid", life_lock)


def _loop(listener: socket.socket, root: str, path: str, bound: tuple[int, int], idle: float,
          life_lock: int) -> None:
    uid = os.getuid()
    children: set[int] = set()
    pending: dict[socket.socket, tuple[bytearray, float]] = {}
    last = time.monotonic()
    closing = False
    while True:
        now = time.monotonic()
        wait = min([1.0] + [max(0.0, deadline - now) for _, deadline in pending.values()])
        ready, _, _ = select.select([listener, *pending], [], [], wait)
        _reap(children)
        now = time.monotonic()
        for sock in ready:
            if sock is listener:
                try:
                    conn, _ = listener.accept()
                except (BlockingIOError, InterruptedError):
                    continue
                last = now
                if peer_uid(conn) != uid:
                    _answer(conn, {"error": "this agent serves only its own user"})
                    continue
                conn.setblocking(False)
                pending[conn] = (bytearray(), now + CONNECTION_TIMEOUT)
                continue
            buffer, deadline = pending[sock]
            try:
                chunk = sock.recv(1 << 16)
            except (BlockingIOError, InterruptedError):
                continue
            except OSError:
                del pending[sock]
                sock.close()
                continue
            if chunk:
                buffer += chunk
                if len(buffer) > MAX_REQUEST:
                    del pending[sock]
                    _answer(sock, {"error": f"the request is larger than {MAX_REQUEST} bytes"})
                continue
            del pending[sock]  # the client is done sending: serve it
            try:
                run_dir, env = parse_request(bytes(buffer), root)
            except BadRequest as exc:
                _answer(sock, {"error": str(exc)})
                continue
            pid = os.fork()
            if pid == 0:
                listener.close()
                for other in [sock, *pending]:
                    other.close()
                os.close(life_lock)  # a run's agent must not keep this daemon's lock after the daemon is gone
                _run_child(run_dir, env)
            children.add(pid)
            _answer(sock, {"agent_pid": pid})
        for sock, (_, deadline) in list(pending.items()):
            if now >= deadline:
                del pending[sock]
                _answer(sock, {"error": f"no complete request within {CONNECTION_TIMEOUT:.0f} s"})
        if closing and not ready and not pending:
            return
        if not closing and not ready and not pending and not children and now - last > idle:
            _unlink_if_ours(path, bound)  # no new clients; serve those already queued, then go
            closing = True


def _receive(conn: socket.socket, limit: int, deadline: float) -> bytes:
    data = bytearray()
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            raise socket.timeout("no complete reply in time")
        conn.settimeout(left)
        chunk = conn.recv(1 << 16)
        if not chunk:
            return bytes(data)
        data += chunk
        if len(data) > limit:
            raise ValueError("the reply is too large")


def request_agent(root: str, version: str, run_dir: str, env: dict[str, str], timeout: float = 5.0) -> int | None:
    """Ask this user's running daemon for an agent; its pid, or None when no daemon of this user answers."""
    try:
        path = socket_path(root, version)
    except (OSError, ValueError):
        return None
    if not os.path.exists(path):
        return None
    deadline = time.monotonic() + timeout
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as conn:
            conn.settimeout(timeout)
            conn.connect(path)
            if peer_uid(conn) != os.getuid():
                return None  # not this user's daemon: it gets nothing, not even the run directory
            conn.sendall(json.dumps({"run_dir": run_dir, "env": agent_environment(env)}).encode())
            conn.shutdown(socket.SHUT_WR)
            reply = json.loads(_receive(conn, MAX_REPLY, deadline))
            return int(reply["agent_pid"])
    except (OSError, ValueError, KeyError, TypeError):
        return None

