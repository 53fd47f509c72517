"""Sweeps under faults: a controller killed mid-action, two resumes at once, a sweep canceled while its
controller is dead, odd values of the primary metric, hostile parameter names, the time limit, Docker.

A controller killed at an exact point is recreated here by killing it (SIGKILL) while its trials run and
then leaving in the history what it had done up to that point (a trial's run created but never handed to
an agent; a stop recorded but never sent to the target); the resumed controller must carry on from there.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from rundock.hyperdrive import BanditPolicy, GridParameterSampling, HyperDriveRun, RandomParameterSampling, choice
from rundock.hyperdrive import launch as sweep_launch
from rundock.hyperdrive.controller import Controller
from rundock.hyperdrive.sweeplog import LOG_NAME
from rundock.hyperdrive.trials import HYPERPARAMETERS_TAG, TRIAL_INDEX_TAG
from rundock.runconfig.environment import Environment
from rundock.runconfig.run_configuration import RunConfiguration
from rundock.runconfig.script_run_config import ScriptRunConfig
from rundock.states import RunStatus
from rundock.submitter.run import Run
from rundock.submitter.workspace import Workspace
from tests.conftest import wait_until
from tests.integration.test_sweeps import _locked, children, controller_pid, indexes, max_overlap, submit
from tests.integration.test_sweeps import src as src  # noqa: F401  (the fixture)

ODD = """
import argparse, json, sys
from azureml.core import Run

parser = argparse.ArgumentParser()
parser.add_argument("--mode")
args, _ = parser.parse_known_args()
run = Run.get_context()
run.log("argv", json.dumps(sys.argv[1:]))
value = {"ok": [0.5, 0.7], "nan": [float("nan")], "inf": [float("inf")], "ninf": [float("-inf")],
         "text": ["high"], "none": []}.get(args.mode or "ok", [0.25])
for v in value:
    run.log("accuracy", v)
run.log("loss", 1.0)
"""


def kill_controller(workspace: Workspace, hd: HyperDriveRun) -> None:
    os.kill(controller_pid(workspace, hd.id), signal.SIGKILL)
    wait_until(lambda: not _locked(workspace, hd.id), timeout=30, message="the killed controller's lock to go")


def running(hd: HyperDriveRun, count: int) -> None:
    wait_until(lambda: sum(c.get_status() == "Running" for c in hd.get_children()) >= count, timeout=120,
               message=f"{count} trials running")


def rundock(project: Path, *args: str) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, "-m", "rundock", *args], cwd=project, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)


def log_of(workspace: Workspace, hd: HyperDriveRun) -> str:
    return workspace.store.read_log(hd.id, LOG_NAME).decode()


# -- a controller killed mid-action ----------------------------------------------------------------
def test_a_stop_cut_short_by_a_crash_is_carried_out_by_the_resumed_controller(workspace: Workspace,
                                                                               src: Path) -> None:
    hd = submit(workspace, src, RandomParameterSampling({"--q": choice(0.5)}, seed=1), steps=400,
                max_total_runs=2, max_concurrent_runs=2)
    running(hd, 2)
    kill_controller(workspace, hd)
    victim = children(hd)[0]
    # killed inside its cancel: the request is in the history, the target was never told
    reason = "BanditPolicy: accuracy 0.2 at interval 3 is outside slack_factor 0.1 of the best 0.4 (limit 0.36)"
    assert workspace.store.transition(victim.id, RunStatus.CANCEL_REQUESTED, detail=reason)
    subprocess.run([sys.executable, "-m", "rundock", "sweep", "resume", hd.id], cwd=Path(workspace.path).parent,
                   check=True, capture_output=True, timeout=120)
    wait_until(lambda: victim.refresh()._record.status.is_terminal, timeout=60, message="the stopped trial to end")
    assert victim.get_status() == "Canceled"
    assert len(victim.get_metric_history("accuracy")) < 400  # stopped, not run to its end
    assert workspace.store.status_history(victim.id)[-1].detail == f"canceled on request: {reason}"
    hd.cancel()
    hd.wait_for_completion(raise_on_error=False)
    assert hd.get_status() == "Canceled"


def test_a_trial_created_but_never_started_counts_once_and_holds_its_slot(workspace: Workspace, src: Path,
                                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RUNDOCK_AGENT_LOST_AFTER_SECONDS", "5")
    hd = submit(workspace, src, RandomParameterSampling({"--q": choice(0.5)}, seed=2), steps=40,
                max_total_runs=4, max_concurrent_runs=2)
    running(hd, 2)
    kill_controller(workspace, hd)
    first, second = children(hd)
    Run(hd.experiment, first.id).cancel()
    wait_until(lambda: first.refresh()._record.status.is_terminal, timeout=60, message="trial 0 to end")
    # killed between creating trial 2's run and handing it to the target: a run no agent ever took
    orphan = workspace.store.create_run(
        "tune", parent_id=hd.id, target="local", run_definition=second._record.run_definition,
        tags={TRIAL_INDEX_TAG: "2", HYPERPARAMETERS_TAG: json.dumps({"--q": 0.5})})
    Run.get(workspace, hd.id).wait_for_completion(raise_on_error=False)  # restarts the controller
    assert hd.refresh().get_status() == "Completed", hd.get_detailed_status()
    assert indexes(hd) == [0, 1, 2, 3]  # max_total_runs trials, each index once
    trials = children(hd)
    assert trials[2].id == orphan.run_id and trials[2].get_status() == "Failed"
    assert [t.get_status() for t in trials] == ["Canceled", "Completed", "Failed", "Completed"]
    # the orphan and trial 1 held both slots: trial 3 was created only once one of them had ended
    ends = [t._record.end_at or 0.0 for t in trials[1:3]]
    assert trials[3]._record.created_at >= min(ends)
    assert max_overlap(trials) <= 2
    assert hd.get_details()["properties"]["hyperdrive.trials_failed"] == "1"


def test_two_resumes_at_once_start_one_controller(workspace: Workspace, src: Path) -> None:
    hd = submit(workspace, src, RandomParameterSampling({"--q": choice(0.5)}, seed=3), steps=20,
                max_total_runs=4, max_concurrent_runs=2)
    running(hd, 2)
    kill_controller(workspace, hd)
    project = Path(workspace.path).parent
    resumes = [rundock(project, "sweep", "resume", hd.id) for _ in range(2)]
    outputs = [p.communicate(timeout=120)[0] for p in resumes]
    assert [p.returncode for p in resumes] == [0, 0], outputs
    hd.wait_for_completion()
    assert indexes(hd) == [0, 1, 2, 3]
    assert log_of(workspace, hd).count("Restarted sweep") == 1
    assert max_overlap(children(hd)) <= 2


def test_a_sweep_canceled_while_its_controller_is_dead_ends_with_its_summary(workspace: Workspace,
                                                                            src: Path) -> None:
    hd = submit(workspace, src, RandomParameterSampling({"--q": choice(0.5)}, seed=4), steps=400,
                max_total_runs=5, max_concurrent_runs=2)
    running(hd, 2)
    kill_controller(workspace, hd)
    project = Path(workspace.path).parent
    done = subprocess.run([sys.executable, "-m", "rundock", "cancel", hd.id], cwd=project, capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr
    wait_until(lambda: hd.refresh()._record.status.is_terminal, timeout=120, message="the sweep to end")
    assert hd.get_status() == "Canceled"
    trials = children(hd)
    assert [t.get_status() for t in trials] == ["Canceled", "Canceled"]  # ended, and no trial after the cancel
    assert "2 canceled" in hd.get_detailed_status()["details"]
    assert hd.get_details()["properties"]["hyperdrive.trials_canceled"] == "2"
    again = subprocess.run([sys.executable, "-m", "rundock", "sweep", "resume", hd.id], cwd=project,
                           capture_output=True, text=True, timeout=120)
    assert again.returncode == 0 and "already ended Canceled" in again.stderr
    assert len(hd.get_children()) == 2


# -- what trials log, what they are given ----------------------------------------------------------
def test_trials_without_a_usable_primary_metric_never_win(workspace: Workspace, source: Callable[..., Path]) -> None:
    folder = source("odd", **{"train.py": ODD})
    modes = ["none", "nan", "ok", "inf", "ninf", "text"]
    hd = submit(workspace, folder, GridParameterSampling({"--mode": choice(*modes)}), steps=5,
                policy=BanditPolicy(evaluation_interval=1, slack_factor=0.1), max_total_runs=6,
                max_concurrent_runs=3)
    hd.wait_for_completion()
    trials = children(hd)
    assert all(t.get_status() == "Completed" for t in trials)
    ok = trials[modes.index("ok")]
    best = hd.get_best_run_by_primary_metric()
    assert best is not None and best.id == ok.id
    assert [e["run_id"] for e in hd.get_children_sorted_by_primary_metric(discard_no_metric=True)] == [ok.id]
    ranked = hd.get_children_sorted_by_primary_metric()
    assert ranked[0] == {"run_id": ok.id, "hyperparameters": json.dumps({"--mode": "ok"}),
                         "best_primary_metric": 0.7, "status": "Completed"}
    assert sorted(e["run_id"] for e in ranked[1:]) == sorted(t.id for t in trials if t.id != ok.id)
    assert all(e["best_primary_metric"] is None for e in ranked[1:])
    props = hd.get_details()["properties"]
    assert props["best_child_run_id"] == ok.id and props["best_primary_metric"] == "0.7"
    assert "best accuracy 0.7 by trial 2" in hd.get_detailed_status()["details"]
    assert set(hd.get_metrics()) == {t.id for t in trials}


HOSTILE = {"--lr; rm -rf /": choice(0.1), "my param": choice("a b"), "--q'\"$(touch pwned)": choice("x;`touch pwned`")}
HOSTILE_ARGV = ["--lr; rm -rf /", "0.1", "--my param", "a b", "--q'\"$(touch pwned)", "x;`touch pwned`"]


def _pairs(argv: list[str]) -> set[tuple[str, str]]:
    return set(zip(argv[::2], argv[1::2], strict=True))


def test_hostile_parameter_names_reach_the_script_as_argv_items(workspace: Workspace,
                                                                source: Callable[..., Path]) -> None:
    folder = source("hostile", **{"train.py": ODD})
    hd = submit(workspace, folder, GridParameterSampling(HOSTILE), steps=5, max_total_runs=1)
    hd.wait_for_completion()
    (trial,) = hd.get_children()
    assert trial.get_status() == "Completed"
    argv = json.loads(trial.get_metrics()["argv"])
    assert argv[:2] == ["--steps", "5"] and _pairs(argv[2:]) == _pairs(HOSTILE_ARGV)
    assert not list(Path(workspace.path).parent.rglob("pwned"))  # no shell ever saw them
    assert json.loads(hd.get_hyperparameters()[trial.id]) == {"--lr; rm -rf /": 0.1, "my param": "a b",
                                                              "--q'\"$(touch pwned)": "x;`touch pwned`"}


# -- max_duration_minutes ------------------------------------------------------------------------------
def test_max_duration_cancels_the_live_trials_and_ends_the_sweep(workspace: Workspace, src: Path,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sweep_launch, "start_controller", lambda ws, run_id: 0)  # this test drives it, below
    hd = submit(workspace, src, RandomParameterSampling({"--q": choice(0.5)}, seed=5), steps=400,
                max_total_runs=5, max_concurrent_runs=2, max_duration_minutes=1)
    later = [0.0]
    controller_ws = Workspace(workspace.path)
    controller = Controller(controller_ws, hd.id, clock=lambda: time.time() + later[0])
    result: list[int] = []
    thread = threading.Thread(target=lambda: result.append(controller.run()), daemon=True)
    thread.start()
    try:
        running(hd, 2)
        later[0] = 61.0  # the clock passes the sweep's minute
        thread.join(timeout=180)
    finally:
        controller_ws.close()
    assert result == [0]
    assert hd.refresh().get_status() == "Completed"
    reason = "the sweep reached max_duration_minutes (1)"
    trials = children(hd)
    assert [t.get_status() for t in trials] == ["Canceled", "Canceled"]  # and no trial after the limit
    for trial in trials:
        assert workspace.store.status_history(trial.id)[-1].detail == f"canceled on request: {reason}"
    details = hd.get_detailed_status()["details"]
    assert details.startswith("stopped after max_duration_minutes (1); ") and "2 canceled" in details
    assert hd.get_details()["properties"]["hyperdrive.trials_canceled"] == "2"
    assert f"Canceling 2 live trials: {reason}" in log_of(workspace, hd)


# -- the Docker target ---------------------------------------------------------------------------------
def test_a_sweep_on_the_docker_engine(workspace: Workspace, source: Callable[..., Path],
                                      docker_base_image: str) -> None:
    from rundock.hyperdrive import HyperDriveConfig
    from rundock.submitter.experiment import Experiment

    script = ODD.replace('run.log("loss", 1.0)', 'run.log("cwd", __import__("os").getcwd())')
    folder = source("in-docker", **{"train.py": script})
    env = Environment("sweep-docker")
    env.docker.enabled = True
    env.docker.base_image = docker_base_image
    env.docker.arguments = ["--network", "none"]
    env.python.user_managed_dependencies = True
    trial = ScriptRunConfig(str(folder), "train.py", run_config=RunConfiguration(environment=env))
    sampling = GridParameterSampling({**HOSTILE, "--mode": choice("ok", "nan")})
    hd = Experiment(workspace, "docker-sweep").submit(HyperDriveConfig(
        run_config=trial, hyperparameter_sampling=sampling, primary_metric_name="accuracy",
        primary_metric_goal="maximize", max_total_runs=2, max_concurrent_runs=2))
    assert isinstance(hd, HyperDriveRun)
    hd.wait_for_completion()
    trials = children(hd)
    assert [t.get_status() for t in trials] == ["Completed", "Completed"]
    for t in trials:
        metrics = t.get_metrics()
        assert metrics["cwd"] == "/rundock/run/src"  # it ran in a container
        argv = json.loads(metrics["argv"])
        assert _pairs(argv) - {("--mode", "ok"), ("--mode", "nan")} == _pairs(HOSTILE_ARGV)
    best = hd.get_best_run_by_primary_metric()
    assert best is not None and json.loads(best.get_tags()["hyperparameters"] or "{}")["--mode"] == "ok"
    assert not list(Path(workspace.path).parent.rglob("pwned"))
