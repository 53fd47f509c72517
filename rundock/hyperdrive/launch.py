"""Submitting a sweep, and starting (or restarting) its controller as a process of its own.

Submit order, so that a failing submit leaves nothing half-made: check the configuration, store the
source folder's snapshot (the trials all run this snapshot, even if the folder changes during the sweep),
create the sweep's run (type ``hyperdrive``; the sampling, policy, goal and limits in its properties, the
trials' run configuration as its run definition), make its sweep folder, then start the controller. If the
controller cannot be started the sweep ends Failed with the reason.

The controller runs in a new session (``start_new_session``): it is not a child of the notebook or shell
that submitted the sweep in any way that matters, so closing them does not stop it. It lives on this
machine, in ``<workspace>/local/sweeps/<run id>/``:

- ``agent.lock``: held (``flock``) by the sweep's one controller for its whole life; a second controller
  started by mistake finds it taken and exits. The kernel drops it when the controller dies.
- ``heartbeat.json``: the controller's beat (``rundock.agent.runlock``); written with sequence 0 when a
  controller is started, so a controller that never came is measured from then.
- ``src/``: the sweep's snapshot, materialized once; every trial is submitted from it.
- ``hyperdrive.txt``: the controller's progress log (also in the history as ``azureml-logs/hyperdrive.txt``),
  ``controller.log``: its own output (errors).

``ensure_controller`` restarts a controller that is gone (the lock is free and the heartbeat older than
its lease) for a sweep that has not ended; ``HyperDriveRun.wait_for_completion`` and ``rundock sweep``
call it while they follow a sweep, and ``rundock sweep resume`` calls it at once.
"""

from __future__ import annotations

import getpass
import os
import subprocess
import sys
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import rundock
from rundock.agent import runlock
from rundock.errors import RundockError
from rundock.history.records import RunRecord
from rundock.hyperdrive.config import RUN_TYPE, HyperDriveConfig
from rundock.runconfig.environment import Environment
from rundock.states import RunStatus
from rundock.submitter.gitinfo import git_properties
from rundock.submitter.snapshot import Progress, take_snapshot

if TYPE_CHECKING:
    from rundock.hyperdrive.run import HyperDriveRun
    from rundock.submitter.experiment import Experiment
    from rundock.submitter.workspace import Workspace

SWEEPS_DIR = "sweeps"
CONTROLLER_LOG = "controller.log"
LEASE_FACTOR = 3.0
MIN_LEASE_SECONDS = 5.0  # a cold Python start with rundock's imports on a busy machine


def sweep_dir(workspace: Workspace, run_id: str) -> str:
    return os.path.join(workspace.local_root, SWEEPS_DIR, run_id)


def submit_sweep(experiment: Experiment, config: HyperDriveConfig, tags: Mapping[str, Any] | None = None, *,
                 display_name: str | None = None, description: str | None = None,
                 progress: Progress | None = None) -> HyperDriveRun:
    """Create the sweep's run and start its controller (see the module docstring)."""
    from rundock.hyperdrive.run import HyperDriveRun

    ws = experiment.workspace
    trial = config.run_config
    trial.validate()
    if trial.run_config.environment is None and trial.run_config.target in ("local", "", None):
        trial.run_config.environment = Environment.submitting_interpreter()  # this Python, even after a restart
    snapshot = take_snapshot(trial.source_directory, ws.store, ws.artifacts, ws.snapshot_limits, progress)
    definition = {**trial.run_config.to_mapping(), "source_directory": os.path.abspath(trial.source_directory)}
    record = ws.store.create_run(
        experiment.name, run_type=RUN_TYPE, target=trial.run_config.target or "local", run_definition=definition,
        snapshot_id=snapshot.snapshot_id, submitted_by=getpass.getuser(), display_name=display_name,
        description=description, tags={k: None if v is None else str(v) for k, v in (tags or {}).items()},
        properties={**config.spec.to_properties(), "ContentSnapshotId": snapshot.snapshot_id,
                    **git_properties(trial.source_directory)})
    folder = sweep_dir(ws, record.run_id)
    try:
        os.makedirs(folder, mode=0o700)
        ws.store.update_run(record.run_id, run_dir=folder)
        ws.store.transition(record.run_id, RunStatus.STARTING, detail="starting the sweep controller")
        start_controller(ws, record.run_id)
    except (OSError, RundockError) as exc:
        ws.store.transition(record.run_id, RunStatus.FAILED, detail="the sweep controller could not be started",
                            error={"code": "SetupError", "message": f"could not start the controller of sweep "
                                                                    f"{record.run_id}: {exc}"})
        raise RundockError(f"could not start the controller of sweep {record.run_id}: {exc}") from exc
    return HyperDriveRun(experiment, record.run_id, hyperdrive_config=config)


def start_controller(workspace: Workspace, run_id: str) -> int:
    """Start a controller for the sweep in its own session; return its pid (it exits at once if another
    controller holds the sweep)."""
    folder = sweep_dir(workspace, run_id)
    os.makedirs(folder, mode=0o700, exist_ok=True)
    runlock.write_heartbeat(folder, 0, workspace.heartbeat_seconds)  # a start is measured from here
    package_parent = os.path.dirname(os.path.dirname(os.path.abspath(rundock.__file__)))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in (package_parent, os.environ.get("PYTHONPATH"))
                                                        if p)}
    fd = os.open(os.path.join(folder, CONTROLLER_LOG), os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        proc = subprocess.Popen([sys.executable, "-m", "rundock.hyperdrive.controller", workspace.path, run_id],
                                cwd=folder, env=env, stdin=subprocess.DEVNULL, stdout=fd, stderr=subprocess.STDOUT,
                                start_new_session=True, close_fds=True)
    finally:
        os.close(fd)
    return proc.pid


def controller_alive(workspace: Workspace, run_id: str) -> bool:
    """Whether a process holds the sweep's controller lock on this machine."""
    return runlock.agent_alive(sweep_dir(workspace, run_id))


def controller_gone(workspace: Workspace, record: RunRecord) -> bool:
    """Whether the sweep has not ended and its controller is gone: nobody holds the lock and the heartbeat
    is older than its lease (a controller just started has not taken the lock yet)."""
    folder = sweep_dir(workspace, record.run_id)
    if record.status.is_terminal or not os.path.isdir(folder) or runlock.agent_alive(folder):
        return False
    beat = runlock.read_heartbeat(folder)
    silent = runlock.silent_for(folder, beat=beat)
    interval = float((beat or {}).get("interval") or workspace.heartbeat_seconds)
    return silent is None or silent > max(interval * LEASE_FACTOR, MIN_LEASE_SECONDS)


def ensure_controller(workspace: Workspace, record: RunRecord, *, now: bool = False) -> bool:
    """Restart the sweep's controller if it is gone (``now``: whenever nobody holds the lock, without waiting
    for the lease); return whether one was started."""
    folder = sweep_dir(workspace, record.run_id)
    if record.status.is_terminal or record.run_type != RUN_TYPE:
        return False
    if not os.path.isdir(folder):
        if not now:
            return False  # the sweep is controlled from another machine
        os.makedirs(folder, mode=0o700, exist_ok=True)
    if now and not runlock.agent_alive(folder) or controller_gone(workspace, record):
        start_controller(workspace, record.run_id)
        return True
    return False
