"""How a job's command is executed: the interface, then one module per executor (process, docker).

The lifecycle (``rundock.agent.lifecycle``) drives every executor through these primitives only, so a
fake executor can stand in for a real one in tests.
"""

from __future__ import annotations

from typing import Protocol


class Executor(Protocol):
    """How the lifecycle drives a job, whatever runs it (see rundock.agent.executors)."""

    @property
    def pid(self) -> int:
        """The job's process group on this host (0 when it runs elsewhere, e.g. in a container)."""

    @property
    def container_id(self) -> str:
        """The job's container ("" for a host process)."""

    @property
    def oom_killed(self) -> bool:
        """Whether the job was killed for running out of memory."""

    def start(self) -> None: ...
    def wait(self, timeout: float) -> int | None: ...
    def stop(self, grace_seconds: float) -> list[int]: ...
    def finish_logs(self) -> list[str]: ...
