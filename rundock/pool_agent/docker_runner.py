"""The containers of ``agent serve --docker``: found and removed by run id and attempt.

A run whose environment enables Docker runs in a container that its per-run agent creates
(``rundock.agent.executors.docker``: exactly the attempt's GPUs as an NVIDIA device request, the matching
``NVIDIA_VISIBLE_DEVICES``/``CUDA_VISIBLE_DEVICES``). The container is labelled ``rundock.run_id`` and
``rundock.attempt`` and named ``rundock-<run id>`` (``rundock-<run id>.<n>`` for later attempts), so two
attempts of one run on one box never share or collide on a container.

The container belongs to the engine, not to any process of rundock: when ``agent serve`` is killed the
per-run agent and its container go on and a restarted ``agent serve`` adopts them (``adopt``). When the
per-run agent is gone too, what is left of the attempt is ended here: a container whose attempt the server
fenced, or whose run goes back to the queue, is removed (by its attempt label, never by run id alone: a
later attempt of the same run may run on this box), so it can never run beside the next execution.
"""

from __future__ import annotations

import logging
from typing import Any

from rundock.agent.executors.docker import ATTEMPT_LABEL, LABEL
from rundock.pool_agent.client import Attempt

log = logging.getLogger("rundock.pool_agent")

ENGINE_TIMEOUT_SECONDS = 30


class DockerEngineError(ValueError):
    """``agent serve --docker`` cannot reach a Docker engine on this box."""


def connect() -> Any:
    """A client of this box's Docker engine; DockerEngineError says why there is none and what to do."""
    try:
        import docker
        import docker.errors
    except ImportError:  # pragma: no cover - docker-py is a dependency of rundock
        raise DockerEngineError("agent serve --docker needs the Python package `docker`") from None
    try:
        client = docker.from_env(timeout=ENGINE_TIMEOUT_SECONDS)
        client.ping()
    except docker.errors.DockerException as exc:
        raise DockerEngineError(f"agent serve --docker: no Docker engine answers on this box ({exc}); start "
                                "Docker (and give this user access to its socket), or run the agent without "
                                "--docker") from None
    return client


def _filters(attempt: Attempt) -> dict[str, Any]:
    return {"label": [f"{LABEL}={attempt.run_id}", f"{ATTEMPT_LABEL}={attempt.attempt}"]}


def attempt_containers(client: Any, attempt: Attempt) -> list[Any]:
    """The containers of one attempt, running or not."""
    return list(client.containers.list(all=True, filters=_filters(attempt)))


def describe(client: Any, attempt: Attempt) -> str:
    """``container NAME (running)`` for each of the attempt's containers, or ``no container``."""
    import docker.errors

    try:
        found = attempt_containers(client, attempt)
    except docker.errors.DockerException as exc:
        return f"its container cannot be listed: {exc}"
    return ", ".join(f"container {c.name} ({c.status})" for c in found) or "no container"


def remove_attempt_containers(attempt: Attempt) -> int:
    """Kill and remove the containers of ``attempt``; return how many there were (0 where no engine answers)."""
    import docker.errors

    try:
        client = connect()
        found = attempt_containers(client, attempt)
    except (DockerEngineError, docker.errors.DockerException) as exc:
        log.error("run %s (attempt %d): cannot look for its containers: %s", attempt.run_id, attempt.attempt, exc)
        return 0
    for container in found:
        try:
            container.remove(force=True)
            log.info("run %s (attempt %d): removed its container %s", attempt.run_id, attempt.attempt,
                     container.name)
        except docker.errors.NotFound:
            pass
        except docker.errors.DockerException as exc:
            log.error("run %s (attempt %d): could not remove container %s: %s", attempt.run_id, attempt.attempt,
                      container.name, exc)
    return len(found)
