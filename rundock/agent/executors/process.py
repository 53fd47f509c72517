"""Run the job as a local process in its own process group."""

from __future__ import annotations

import os
import select
import subprocess

from rundock.agent.cancel import stop_tree
from rundock.agent.logpump import LogPump, merged_pipes


class ProcessExecutor:
    """Primitives the lifecycle needs: start, poll, stop, logs, exit code.

    ``inherit_fds`` stay open in the job (the run slot's lock: the slot stays taken while any process
    of the job lives, even if its agent died)."""

    container_id = ""
    oom_killed = False

    def __init__(self, argv: list[str], cwd: str, env: dict[str, str], driver_log: str,
                 secrets: list[str] | None = None, inherit_fds: list[int] | None = None) -> None:
        self.argv = argv
        self.inherit_fds = tuple(inherit_fds or ())
        self.secrets = secrets or []
        self.cwd = cwd
        self.env = env
        self.driver_log = driver_log
        self._proc: subprocess.Popen[bytes] | None = None
        self._pidfd: int | None = None
        self._pump: LogPump | None = None

    def start(self) -> None:
        self._proc = subprocess.Popen(self.argv, cwd=self.cwd, env=self.env, stdin=subprocess.DEVNULL,
                                      stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True,
                                      pass_fds=self.inherit_fds)
        try:
            self._pidfd = os.pidfd_open(self._proc.pid) if hasattr(os, "pidfd_open") else None  # novermin
        except OSError:
            self._pidfd = None
        assert self._proc.stdout is not None and self._proc.stderr is not None
        self._pump = LogPump([merged_pipes(self._proc.stdout, self._proc.stderr)], self.driver_log, self.secrets)

    @property
    def pid(self) -> int:
        assert self._proc is not None
        return self._proc.pid

    def wait(self, timeout: float) -> int | None:
        """The exit code, or None if still running after ``timeout`` seconds (sleeping, not polling,
        where the kernel offers a process file descriptor)."""
        assert self._proc is not None
        if self._pidfd is not None and self._proc.returncode is None:
            select.select([self._pidfd], [], [], timeout)
            return self._proc.poll()
        try:
            return self._proc.wait(timeout)
        except subprocess.TimeoutExpired:
            return None

    def stop(self, grace_seconds: float) -> list[int]:
        """SIGTERM the job's group and every descendant, wait, SIGKILL; return survivors."""
        pid = self._proc.pid if self._proc else None
        survivors = stop_tree(pid, grace_seconds, keep=pid)
        if self._proc is not None:
            self._proc.wait()
        return survivors

    def finish_logs(self) -> list[str]:
        """Wait for the output pipes to drain; return the tail of stderr."""
        if self._pump is None:
            return []
        self._pump.join()
        return self._pump.stderr_tail()
