"""Run the job in a container of the local Docker engine.

The job's part of the run directory (``src``, ``journal``, ``uploads``,
``requests``: ``rundock.context.rundir.JOB_WRITABLE``) is bind-mounted under
``/rundock/run``, and the run's secrets file read-only; the agent's own files
(its journal, job file, process list) are never visible to the job. The
snapshot is the working directory; outputs, logs and the journal land on the
host exactly as for a local process; rundock's job-side package is mounted read-only at
``/rundock/lib``, the container runs as the submitting user with ``--init`` so
signals reach the script, and it is labelled with the run id and attempt
(``rundock.run_id``, ``rundock.attempt``: a pool agent finds an attempt's
container by them). Stop is ``docker stop`` with the grace period (SIGTERM,
then SIGKILL); the container is removed when the run ends, whatever the outcome.

GPUs (``gpu_settings``): exactly the run's GPUs are asked for as an NVIDIA
device request; the NVIDIA runtime then exposes only those, renumbered from 0
inside the container, so the job gets ``NVIDIA_VISIBLE_DEVICES`` = the host
indices and ``CUDA_VISIBLE_DEVICES`` = 0..n-1. A run without GPUs gets no
device request and ``NVIDIA_VISIBLE_DEVICES=void`` (an image such as
``nvidia/cuda`` says ``all``, which an engine whose default runtime is
``nvidia`` would honour). An engine without the NVIDIA runtime fails the run
with a PrepareError that names the cause and the fix.
"""

from __future__ import annotations

import math
import os
import socket
import time
from typing import Any

import docker
import docker.errors
import docker.types

from rundock.agent.environments import PrepareError
from rundock.agent.lifecycle import LIB_MOUNT, RUN_MOUNT
from rundock.agent.logpump import LogPump, tagged
from rundock.context import rundir

LABEL = "rundock.run_id"
ATTEMPT_LABEL = "rundock.attempt"
NO_GPU_DRIVER = "could not select device driver"  # the engine's answer when no NVIDIA runtime is installed


def gpu_settings(gpus: list[str]) -> tuple[list[docker.types.DeviceRequest], dict[str, str]]:
    """The device requests and environment variables that give a container exactly ``gpus`` (host indices)."""
    if not gpus:
        return [], {"NVIDIA_VISIBLE_DEVICES": "void", "CUDA_VISIBLE_DEVICES": ""}
    request = docker.types.DeviceRequest(driver="nvidia", device_ids=[str(g) for g in gpus], capabilities=[["gpu"]])
    return [request], {"NVIDIA_VISIBLE_DEVICES": ",".join(str(g) for g in gpus),
                       "CUDA_VISIBLE_DEVICES": ",".join(str(i) for i in range(len(gpus)))}


def container_name(run_id: str, attempt: int) -> str:
    """``rundock-<run id>``, and ``rundock-<run id>.<n>`` for a pool run's later attempts (one container each)."""
    return f"rundock-{run_id}" if attempt <= 1 else f"rundock-{run_id}.{attempt}"


def start_error(exc: docker.errors.APIError, gpus: list[str]) -> PrepareError:
    """What to tell the user when the engine would not create or start the container."""
    explanation = str(exc.explanation or exc)
    if gpus and NO_GPU_DRIVER in explanation:
        host = socket.gethostname()
        return PrepareError(f"the Docker engine on {host} has no NVIDIA runtime (nvidia-container-toolkit), so it "
                            f"cannot give the run's container GPUs {', '.join(gpus)}; install it on {host}, or submit "
                            "the run without Docker (environment.docker.enabled = False) to run it on its GPUs as a "
                            f"host process. The engine said: {explanation}")
    hint = " (GPUs need the NVIDIA container toolkit on this host)" if gpus else ""
    return PrepareError(f"the Docker engine could not start the run's container: {explanation}{hint}")


def container_paths(lib_paths: list[str]) -> list[str]:
    return [f"{LIB_MOUNT}/{i}" for i in range(len(lib_paths))]


class DockerExecutor:
    """Primitives the lifecycle needs: start, wait, stop, logs, exit code."""

    def __init__(self, client: docker.DockerClient, image: str, argv: list[str], run_id: str, run_dir: str,
                 lib_paths: list[str], env: dict[str, str], driver_log: str, secrets: list[str],
                 settings: dict[str, Any], user: str, gpus: list[str], attempt: int = 0) -> None:
        self.client = client
        self.image = image
        self.argv = argv
        self.run_id = run_id
        self.run_dir = run_dir
        self.lib_paths = lib_paths
        self.env = env
        self.driver_log = driver_log
        self.secrets = secrets
        self.settings = settings
        self.user = user
        self.gpus = gpus
        self.attempt = attempt
        self.container: Any = None
        self._oom_killed = False
        self._pump: LogPump | None = None

    def create_arguments(self) -> dict[str, Any]:
        """The keyword arguments of ``containers.create`` (the image is the first positional one)."""
        volumes = {os.path.join(self.run_dir, name): {"bind": f"{RUN_MOUNT}/{name}", "mode": "rw"}
                   for name in rundir.JOB_WRITABLE}
        secrets = os.path.join(self.run_dir, rundir.SECRETS_FILE)
        if os.path.exists(secrets):
            volumes[secrets] = {"bind": f"{RUN_MOUNT}/{rundir.SECRETS_FILE}", "mode": "ro"}
        volumes.update({host: {"bind": inside, "mode": "ro"}
                        for host, inside in zip(self.lib_paths, container_paths(self.lib_paths))})
        settings = dict(self.settings)
        device_requests, gpu_env = gpu_settings(self.gpus)
        environment = {**self.env, **settings.pop("environment", {}), **gpu_env}  # the GPUs are not the job's choice
        labels = {LABEL: self.run_id, **({ATTEMPT_LABEL: str(self.attempt)} if self.attempt else {})}
        return dict(command=self.argv, working_dir=f"{RUN_MOUNT}/src", volumes=volumes, environment=environment,
                    init=True, labels=labels, user=settings.pop("user", self.user), detach=True,
                    name=container_name(self.run_id, self.attempt), device_requests=device_requests or None,
                    **settings)

    def start(self) -> None:
        try:
            self.container = self.client.containers.create(self.image, **self.create_arguments())
            self.container.start()
        except docker.errors.APIError as exc:
            if self.container is not None:
                self.remove()
            raise start_error(exc, self.gpus) from None
        # Log streams replay from the container's start, so nothing written before they open is lost.
        stdout = self.container.logs(stream=True, follow=True, stdout=True, stderr=False)
        stderr = self.container.logs(stream=True, follow=True, stdout=False, stderr=True)
        self._pump = LogPump([tagged(stdout, False), tagged(stderr, True)], self.driver_log, self.secrets)

    @property
    def pid(self) -> int:
        return 0

    @property
    def oom_killed(self) -> bool:
        return self._oom_killed

    @property
    def container_id(self) -> str:
        return str(self.container.id) if self.container is not None else ""

    def wait(self, timeout: float) -> int | None:
        """The exit code, or None if still running after ``timeout`` seconds."""
        deadline = time.monotonic() + timeout
        while True:
            self.container.reload()
            state = self.container.attrs["State"]
            if state["Status"] in ("exited", "dead"):
                self._oom_killed = bool(state.get("OOMKilled"))
                return int(state["ExitCode"])
            if time.monotonic() >= deadline:
                return None
            time.sleep(min(0.05, max(0.0, deadline - time.monotonic())))

    def stop(self, grace_seconds: float) -> list[int]:
        """``docker stop`` with the grace period, then remove the container."""
        if self.container is None:
            return []
        try:
            self.container.stop(timeout=math.ceil(grace_seconds))
        except docker.errors.NotFound:
            pass
        self.remove()
        return []

    def remove(self) -> None:
        try:
            self.container.remove(force=True)
        except docker.errors.NotFound:
            pass

    def finish_logs(self) -> list[str]:
        if self._pump is None:
            return []
        self._pump.join()
        return self._pump.stderr_tail()
