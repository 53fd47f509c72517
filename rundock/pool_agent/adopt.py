"""What a (re)started ``agent serve`` finds in its work folder: per-run agents still running, and attempts
that ended while no ``agent serve`` was there to say so.

A per-run agent holds its run directory's ``agent.lock`` for its whole life (``rundock.agent.runlock``), so
whether it still runs is a question the kernel answers; its job file says which run and attempt it is and
which GPUs it was given. Those are reported as ``running`` when the agent registers: the server keeps their
attempts and their GPUs, and nothing is killed or started again. An attempt whose per-run agent has ended is
reported ended once (``POST .../end``) and remembered under ``<work dir>/pool/ended/``, so a restart does not
send it again.
"""

from __future__ import annotations

import dataclasses
import logging
import os

from rundock.agent import runlock
from rundock.agent.job import JobSpec, JobSpecError
from rundock.pool_agent.client import Attempt

log = logging.getLogger("rundock.pool_agent")


@dataclasses.dataclass
class Found:
    attempt: Attempt
    run_dir: str
    gpus: list[int]
    alive: bool


def gpus_of(spec: JobSpec) -> list[int]:
    """The GPUs a run was given (its job file's ``environment.docker.gpu_device_ids``)."""
    ids = ((spec.environment or {}).get("docker") or {}).get("gpu_device_ids") or []
    return [int(i) for i in ids if str(i).isdigit()]


def scan(work_dir: str, pool: str) -> list[Found]:
    """The runs of ``pool`` in ``work_dir`` whose per-run agent took them: alive, or ended and not yet reported."""
    runs = os.path.join(work_dir, "runs")
    try:
        names = sorted(os.listdir(runs))
    except FileNotFoundError:
        return []
    found = []
    for name in names:
        run_dir = os.path.join(runs, name)
        if not os.path.isfile(os.path.join(run_dir, "job.json")):
            continue
        try:
            spec = JobSpec.load(run_dir)
        except JobSpecError as exc:
            log.warning("skipping %s: %s", run_dir, exc)
            continue
        if spec.target != pool or spec.attempt < 1:
            continue
        attempt = Attempt(spec.run_id, spec.attempt)
        alive = runlock.agent_alive(run_dir)
        if alive or not is_reported(work_dir, attempt):
            found.append(Found(attempt, run_dir, gpus_of(spec), alive))
    return found


def _marker(work_dir: str, attempt: Attempt) -> str:
    return os.path.join(work_dir, "pool", "ended", f"{attempt.run_id}.{attempt.attempt}")


def is_reported(work_dir: str, attempt: Attempt) -> bool:
    return os.path.exists(_marker(work_dir, attempt))


def mark_reported(work_dir: str, attempt: Attempt) -> None:
    path = _marker(work_dir, attempt)
    os.makedirs(os.path.dirname(path), mode=0o700, exist_ok=True)
    with open(path, "a", encoding="utf-8"):
        pass
