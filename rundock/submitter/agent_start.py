"""Starting a local run's agent: the warm daemon when one answers, else a new daemon, else a one-off agent.

The order, so that many cold submits at once start ONE daemon and no submit
waits on a daemon that will not come:

1. Ask this user's warm daemon of the workspace (``rundock.agent.daemon``).
2. None answers: take the start lock (an exclusive ``flock`` next to the
   socket), ask again (another submitter may have started one meanwhile),
   else start a daemon and wait for its socket, then ask it.
3. Still nothing (no private folder for the socket, the lock stayed taken,
   the daemon did not come up in time): start a one-off agent for this run.
   If a daemon still serves the request later, the second agent of the run
   finds the run directory's ``agent.lock`` taken and exits at once.

The agent gets ``agent_environment(os.environ)`` (see rundock.agent.jobenv),
never the submitter's whole environment.
"""

from __future__ import annotations

import os
import site
import subprocess
import sys

import rundock
from rundock.agent import daemon, daemon_socket
from rundock.agent.job import ENV_USER_PYTHONPATH
from rundock.agent.jobenv import agent_environment
from rundock.context import rundir
from rundock.submitter.bundle import code_version

DAEMON_START_TIMEOUT = 15.0  # a cold Python start with the agent's imports on a busy machine
START_LOCK_TIMEOUT = 30.0
DAEMON_LOG = "agent-daemon.log"


def agent_env() -> dict[str, str]:
    """The environment an agent of this submitter starts with."""
    env = agent_environment(os.environ)
    env[ENV_USER_PYTHONPATH] = os.environ.get("PYTHONPATH", "")
    # The agent needs only the standard library (watchdog and docker-py when present): it starts with -S,
    # skipping the site module's .pth processing, and finds rundock and site-packages on PYTHONPATH.
    package_parent = os.path.dirname(os.path.dirname(os.path.abspath(rundock.__file__)))
    paths = [package_parent, *site.getsitepackages(), os.environ.get("PYTHONPATH", "")]
    env["PYTHONPATH"] = os.pathsep.join(dict.fromkeys(p for p in paths if p))
    return env


def _append_log(path: str) -> int:
    return os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o600)


def _spawn(argv: list[str], cwd: str, env: dict[str, str], log: str) -> subprocess.Popen[bytes]:
    fd = _append_log(log)
    try:
        # A new session: the process keeps running when the submitter (or its terminal) goes away.
        return subprocess.Popen([sys.executable, "-S", "-m", "rundock.agent", *argv], cwd=cwd, env=env,
                                stdin=subprocess.DEVNULL, stdout=fd, stderr=subprocess.STDOUT,
                                start_new_session=True, close_fds=True)
    finally:
        os.close(fd)


def _via_new_daemon(root: str, version: str, run_dir: str, env: dict[str, str]) -> bool:
    """Under the start lock: ask again, else start the daemon and ask it; whether a daemon took the run."""
    with daemon_socket.start_lock(root, version, timeout=START_LOCK_TIMEOUT):
        if daemon.request_agent(root, version, run_dir, env) is not None:
            return True  # another submitter started it while this one waited for the lock
        proc = _spawn(["serve", root, version], root, env, os.path.join(root, DAEMON_LOG))
        if not daemon_socket.wait_for_socket(root, version, lambda: proc.poll() is None, DAEMON_START_TIMEOUT):
            return False
        return daemon.request_agent(root, version, run_dir, env, timeout=DAEMON_START_TIMEOUT) is not None


def start_agent(workspace_root: str, run_dir: str) -> None:
    """Start the agent of the run in ``run_dir`` (a run directory under ``workspace_root``, the agents' root)."""
    logs = rundir.entry(run_dir, rundir.SYSTEM_LOGS_DIR)
    os.makedirs(logs, exist_ok=True)
    version = code_version()
    env = agent_env()
    if daemon.request_agent(workspace_root, version, run_dir, env) is not None:
        return
    try:
        if _via_new_daemon(workspace_root, version, run_dir, env):
            return
    except daemon_socket.UnsafeFolderError as exc:
        sys.stderr.write(f"rundock: {exc}\n")
    except OSError:
        pass  # the lock stayed taken, or the daemon could not be started: this run does not wait on it
    _spawn(["run", run_dir], run_dir, env, os.path.join(logs, rundir.AGENT_LOG))
