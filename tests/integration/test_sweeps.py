"""Sweeps end to end: real controller processes, real trials on the local target, an SSH host and a pool.

The trial script's curve is a function of its arguments only: at step i it logs
``accuracy = q * (1 - 1 / (i + 1))``. A trial with ``q >= 0.9`` logs its values at once; a weaker one
sleeps 0.1 s per step, so an early-termination policy has time to stop it. With ``max_concurrent_runs=1``
and the grid ``q = 0.9, 0.95, 1.0, 0.5`` each policy must stop trial 3 (q 0.5) and no other.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from rundock.errors import ConfigError, RunFailedError
from rundock.hyperdrive import (
    BanditPolicy,
    BayesianParameterSampling,
    EarlyTerminationPolicy,
    GridParameterSampling,
    HyperDriveConfig,
    HyperDriveRun,
    MedianStoppingPolicy,
    PrimaryMetricGoal,
    RandomParameterSampling,
    TruncationSelectionPolicy,
    choice,
    uniform,
)
from rundock.hyperdrive.launch import start_controller, sweep_dir
from rundock.hyperdrive.sweeplog import LOG_NAME
from rundock.runconfig.run_configuration import RunConfiguration
from rundock.runconfig.script_run_config import ScriptRunConfig
from rundock.submitter.experiment import Experiment
from rundock.submitter.run import Run
from rundock.submitter.workspace import Workspace
from tests.conftest import wait_until
from tests.integration.test_pool_agent import POOL, Team, team  # noqa: F401  (the team fixture: a server, pools)

TRAIN = """
import argparse, time
from azureml.core import Run
from azureml.train.hyperdrive import PrimaryMetricGoal  # the job-side shim imports

parser = argparse.ArgumentParser()
parser.add_argument("--q", type=float, default=1.0)
parser.add_argument("--fail", type=int, default=0)
parser.add_argument("--steps", type=int, default=5)
args = parser.parse_args()
run = Run.get_context()
if args.fail:
    raise SystemExit("this trial fails on purpose")
for i in range(1, args.steps + 1):
    run.log("accuracy", args.q * (1 - 1 / (i + 1)))
    if args.q < 0.9:
        time.sleep(0.1)
"""


@pytest.fixture
def src(source: Callable[..., Path]) -> Path:
    return source(**{"train.py": TRAIN})


def submit(workspace: Workspace, src: Path, sampling: Any, *, steps: int = 5, target: str = "local",
           **config: Any) -> HyperDriveRun:
    fixed = [] if "--steps" in sampling.parameter_space and steps == 5 else ["--steps", steps]
    run_config = ScriptRunConfig(str(src), "train.py", arguments=fixed, compute_target=target)
    settings: dict[str, Any] = {"primary_metric_name": "accuracy",
                                "primary_metric_goal": PrimaryMetricGoal.MAXIMIZE, **config}
    hd = HyperDriveConfig(run_config=run_config, hyperparameter_sampling=sampling, **settings)
    run = Experiment(workspace, "tune").submit(hd)
    assert isinstance(run, HyperDriveRun)
    return run


def children(run: HyperDriveRun) -> list[Run]:
    return sorted(run.get_children(), key=lambda c: int(c.get_tags()["hyperdrive.trial_index"] or -1))


def indexes(run: HyperDriveRun) -> list[int]:
    return sorted(int(c.get_tags()["hyperdrive.trial_index"] or -1) for c in run.get_children())


def params(child: Run) -> dict[str, Any]:
    value = json.loads(child.get_tags()["hyperparameters"] or "{}")
    assert isinstance(value, dict)
    return value


def controller_pid(workspace: Workspace, run_id: str) -> int:
    def pid() -> int:
        try:
            return int(Path(sweep_dir(workspace, run_id), "agent.lock").read_text() or 0)
        except (OSError, ValueError):
            return 0

    return int(str(wait_until(pid, timeout=60, message="the sweep controller to take its lock")))


def max_overlap(runs: list[Run]) -> int:
    spans = [(r._record.start_at or 0.0, r._record.end_at or 0.0) for r in runs if r._record.start_at]
    return max((sum(1 for s, e in spans if s <= start < e) for start, _ in spans), default=0)


# -- configuration (no runs) --------------------------------------------------------------------------
def test_the_configuration_is_checked_with_clear_errors(src: Path) -> None:
    sampling = RandomParameterSampling({"--q": uniform(0.5, 1.0)}, seed=1)
    trial = ScriptRunConfig(str(src), "train.py")
    base: dict[str, Any] = {"hyperparameter_sampling": sampling, "primary_metric_name": "accuracy",
                            "primary_metric_goal": "maximize", "max_total_runs": 4}
    with pytest.raises(ConfigError, match="estimators are not supported: describe the trial with run_config"):
        HyperDriveConfig(**base, estimator=object())
    with pytest.raises(ConfigError, match="give run_config=ScriptRunConfig"):
        HyperDriveConfig(**base)
    with pytest.raises(ConfigError, match="field 'max_concurrent_runs'.*at least 1, got 0"):
        HyperDriveConfig(**base, run_config=trial, max_concurrent_runs=0)
    with pytest.raises(ConfigError, match="not a goal"):
        HyperDriveConfig(**{**base, "primary_metric_goal": "upwards"}, run_config=trial)
    with pytest.raises(ConfigError, match="BayesianParameterSampling does not support early termination"):
        HyperDriveConfig(**{**base, "hyperparameter_sampling": BayesianParameterSampling(
            {"--q": uniform(0.5, 1.0)}, seed=1)}, run_config=trial, policy=BanditPolicy(slack_factor=0.1))
    with pytest.warns(UserWarning, match="--q, which the sweep samples"):
        config = HyperDriveConfig(**base, run_config=ScriptRunConfig(str(src), "train.py",
                                                                    arguments=["--q", 3, "--steps", 2]))
    assert config.run_config.arguments == ["--steps", 2]
    assert config.max_concurrent_runs == 4  # None: max_total_runs, as in v1
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert HyperDriveConfig(**base, run_config=trial, max_concurrent_runs=2).max_concurrent_runs == 2


# -- the local target -----------------------------------------------------------------------------------
def test_a_random_sweep_runs_its_trials_with_v1_shapes(workspace: Workspace, src: Path,
                                                      capsys: pytest.CaptureFixture[str]) -> None:
    sampling = RandomParameterSampling({"--q": uniform(0.9, 1.0), "--steps": choice(3, 4)}, seed=11)
    with pytest.warns(UserWarning, match="--steps, which the sweep samples"):  # the sampled value wins
        hd = submit(workspace, src, sampling, steps=6, max_total_runs=4, max_concurrent_runs=2)
    details = hd.wait_for_completion(show_output=True)
    shown = capsys.readouterr().out
    assert details["status"] == "Completed"
    trials = children(hd)
    assert [int(c.get_tags()["hyperdrive.trial_index"] or -1) for c in trials] == [0, 1, 2, 3]
    assert all(c.get_status() == "Completed" and c.type == "rundock.scriptrun" for c in trials)
    assert max_overlap(trials) <= 2
    for child in trials:  # the sampled values reach the script as v1 passed them: appended to its arguments
        p = params(child)
        arguments = child.get_details()["runDefinition"]["arguments"]
        assert arguments == ["--q", p["--q"], "--steps", p["--steps"]]
        assert len(child.get_metrics()["accuracy"]) == p["--steps"]
    best = hd.get_best_run_by_primary_metric()
    assert best is not None
    values = {c.id: max(c.get_metrics()["accuracy"]) for c in trials}
    assert best.id == max(values, key=lambda k: values[k])
    ranked = hd.get_children_sorted_by_primary_metric(top=2)
    assert [e["run_id"] for e in ranked] == sorted(values, key=lambda k: -values[k])[:2]
    assert set(ranked[0]) == {"run_id", "hyperparameters", "best_primary_metric", "status"}
    assert json.loads(ranked[0]["hyperparameters"]) == params(best)
    assert hd.get_hyperparameters() == {c.id: json.dumps(params(c)) for c in trials}
    assert set(hd.get_metrics()) == {c.id for c in trials}
    props = hd.get_details()["properties"]
    assert props["best_child_run_id"] == best.id and props["hyperdrive.trials_completed"] == "4"
    assert "best accuracy" in hd.get_detailed_status()["details"]
    again = Run.get(workspace, hd.id)  # read back from the history: a HyperDriveRun with the same answers
    assert isinstance(again, HyperDriveRun) and again.spec.max_concurrent_runs == 2
    assert again.get_best_run_by_primary_metric() is not None
    assert f"Trial 3 started: run {trials[3].id}" in shown and "Sweep ended Completed" in shown
    assert "Best so far: accuracy" in shown


def test_a_grid_sweep_tries_every_combination_once(workspace: Workspace, src: Path) -> None:
    sampling = GridParameterSampling({"--q": choice(0.9, 1.0), "--steps": choice(2, 3)})
    hd = submit(workspace, src, sampling, max_total_runs=10, max_concurrent_runs=3)
    hd.wait_for_completion()
    combos = sorted((p["--q"], p["--steps"]) for p in map(params, hd.get_children()))
    assert combos == [(0.9, 2), (0.9, 3), (1.0, 2), (1.0, 3)]
    assert hd.get_status() == "Completed"
    assert "The parameter space is used up after 4 trials" in workspace.store.read_log(hd.id, LOG_NAME).decode()


@pytest.mark.parametrize("policy, name", [
    (BanditPolicy(evaluation_interval=1, slack_factor=0.1, delay_evaluation=2), "BanditPolicy"),
    (MedianStoppingPolicy(evaluation_interval=1, delay_evaluation=2), "MedianStoppingPolicy"),
    (TruncationSelectionPolicy(truncation_percentage=50, evaluation_interval=1, delay_evaluation=2),
     "TruncationSelectionPolicy"),
], ids=["bandit", "median", "truncation"])
def test_each_policy_stops_the_weak_trial_with_its_reason(workspace: Workspace, src: Path,
                                                          policy: EarlyTerminationPolicy, name: str) -> None:
    sampling = GridParameterSampling({"--q": choice(0.9, 0.95, 1.0, 0.5)})
    hd = submit(workspace, src, sampling, steps=50, policy=policy, max_total_runs=4, max_concurrent_runs=1)
    hd.wait_for_completion()
    trials = children(hd)
    assert [c.get_status() for c in trials] == ["Completed", "Completed", "Completed", "Canceled"]
    weak = trials[3]
    reason = weak.get_tags()["hyperdrive.stop_reason"] or ""
    assert reason.startswith(f"{name}: ") and "accuracy" in reason
    history = workspace.store.status_history(weak.id)
    assert any(c.status.value == "CancelRequested" and c.detail == reason for c in history)
    assert history[-1].status.value == "Canceled" and history[-1].detail == f"canceled on request: {reason}"
    assert len(weak.get_metric_history("accuracy")) < 50  # stopped early, not at its end
    assert hd.get_details()["properties"]["hyperdrive.trials_canceled"] == "1"
    assert f"Trial 3 stopped: {reason}" in workspace.store.read_log(hd.id, LOG_NAME).decode()


def test_a_bayesian_sweep_warm_starts_from_an_earlier_sweep(workspace: Workspace, src: Path) -> None:
    first = submit(workspace, src, RandomParameterSampling({"--q": uniform(0.9, 1.0)}, seed=6), max_total_runs=2)
    first.wait_for_completion()
    best_before = first.get_best_run_by_primary_metric()
    assert best_before is not None
    with pytest.warns(UserWarning, match="Bayesian sampling works best"):
        second = submit(workspace, src, BayesianParameterSampling({"--q": uniform(0.9, 1.0)}, seed=6),
                        max_total_runs=3, max_concurrent_runs=1, resume_from=first, resume_child_runs=[best_before])
    second.wait_for_completion()
    trials = children(second)
    assert len(trials) == 3 and all(c.get_status() == "Completed" for c in trials)
    assert trials[0].get_tags()["hyperdrive.resumed_from"] == best_before.id  # resumed first, same values
    assert params(trials[0]) == params(best_before)
    assert "Warm start: 2 finished trials of earlier sweeps" in workspace.store.read_log(second.id, LOG_NAME).decode()
    values = {c.id: max(c.get_metric_history("accuracy"), key=lambda m: m["value"])["value"]
              for c in [*trials, *first.get_children()]}
    overall = second.get_best_run_by_primary_metric(include_resume_from_runs=True)
    assert overall is not None and values[overall.id] == max(values.values())
    with pytest.raises(ConfigError, match="is Running: warm starts take Completed or Canceled sweeps"):
        running = submit(workspace, src, RandomParameterSampling({"--q": choice(0.5)}, seed=1), steps=100,
                         max_total_runs=1)
        try:
            wait_until(lambda: running.get_status() == "Running", message="the sweep to run")
            submit(workspace, src, RandomParameterSampling({"--q": choice(0.5)}), max_total_runs=1,
                   resume_from=[running])
        finally:
            running.cancel()


def test_a_failed_trial_counts_and_the_sweep_goes_on(workspace: Workspace, src: Path) -> None:
    sampling = GridParameterSampling({"--fail": choice(0, 1, 0)})
    hd = submit(workspace, src, sampling, max_total_runs=3, max_concurrent_runs=2)
    hd.wait_for_completion()
    assert hd.get_status() == "Completed"
    assert sorted(c.get_status() for c in hd.get_children()) == ["Completed", "Completed", "Failed"]
    props = hd.get_details()["properties"]
    assert (props["hyperdrive.trials_completed"], props["hyperdrive.trials_failed"]) == ("2", "1")
    best = hd.get_best_run_by_primary_metric(include_failed=False)
    assert best is not None and best.get_status() == "Completed"


def test_a_sweep_whose_every_trial_fails_ends_failed(workspace: Workspace, src: Path) -> None:
    hd = submit(workspace, src, RandomParameterSampling({"--fail": choice(1)}, seed=2), max_total_runs=2)
    with pytest.raises(RunFailedError, match=r"(?s)every trial failed \(2 of 2\).*fails on purpose"):
        hd.wait_for_completion()
    assert hd.get_status() == "Failed"
    assert hd.get_details()["error"]["error"]["code"] == "AllTrialsFailed"
    assert hd.get_best_run_by_primary_metric() is None


def test_canceling_the_sweep_cancels_its_live_trials(workspace: Workspace, src: Path) -> None:
    hd = submit(workspace, src, RandomParameterSampling({"--q": choice(0.5)}, seed=3), steps=100,
                max_total_runs=5, max_concurrent_runs=2)
    wait_until(lambda: sum(c.get_status() == "Running" for c in hd.get_children()) == 2, timeout=90,
               message="two trials running")
    assert hd.cancel() is True
    hd.wait_for_completion(raise_on_error=False)
    assert hd.get_status() == "Canceled"
    assert [c.get_status() for c in hd.get_children()] == ["Canceled", "Canceled"]  # and no trial after it
    assert all(len(c.get_metric_history("accuracy")) < 100 for c in hd.get_children())


def test_a_killed_controller_resumes_without_repeating_a_trial(workspace: Workspace, src: Path,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    from rundock.submitter.cli import main

    monkeypatch.setenv("RUNDOCK_AGENT_LOST_AFTER_SECONDS", "5")  # a trial whose start was cut short ends soon
    hd = submit(workspace, src, RandomParameterSampling({"--q": choice(0.5, 0.6)}, seed=4), steps=15,
                max_total_runs=6, max_concurrent_runs=2)
    start_controller(workspace, hd.id)  # a second controller started by mistake leaves at once
    wait_until(lambda: "another controller drives sweep" in Path(sweep_dir(workspace, hd.id), "controller.log")
               .read_text(), timeout=60, message="the second controller to leave")
    for started in (2, 4):  # kill it twice: resumed by `rundock sweep resume`, then by wait_for_completion
        wait_until(lambda: len(hd.get_children()) >= started, timeout=90,  # noqa: B023  (used at once)
                   message=f"{started} trials started")
        os.kill(controller_pid(workspace, hd.id), signal.SIGKILL)
        wait_until(lambda: not _locked(workspace, hd.id), timeout=30, message="the killed controller's lock to go")
        if started == 2:
            monkeypatch.chdir(Path(workspace.path).parent)
            main(["sweep", "resume", hd.id])
    hd.wait_for_completion(raise_on_error=False)
    assert hd.get_status() == "Completed", hd.get_detailed_status()
    assert indexes(hd) == [0, 1, 2, 3, 4, 5]  # max_total_runs trials, each index once
    log = workspace.store.read_log(hd.id, LOG_NAME).decode()
    assert log.count("Restarted sweep") == 2


def _locked(workspace: Workspace, run_id: str) -> bool:
    from rundock.agent.runlock import agent_alive

    return agent_alive(sweep_dir(workspace, run_id))


SWEEP_YAML = """
experiment: from-yaml
source_directory: src
script: train.py
arguments: [--steps, 3]
sampling:
  type: random
  seed: 5
  parameter_space:
    --q: uniform(0.9, 1.0)
policy:
  type: bandit
  slack_factor: 0.5
primary_metric_name: accuracy
primary_metric_goal: maximize
max_total_runs: 3
max_concurrent_runs: 2
tags: {team: vision}
"""


def test_a_sweep_from_yaml_outlives_the_process_that_submitted_it(workspace: Workspace, src: Path) -> None:
    project = Path(workspace.path).parent
    (src.parent / "sweep.yaml").write_text(SWEEP_YAML)
    done = subprocess.run([sys.executable, "-m", "rundock", "sweep", str(src.parent / "sweep.yaml")], cwd=project,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    run_id = done.stdout.strip()
    hd = Run.get(workspace, run_id)  # the submitting process has exited; its sweep goes on
    assert isinstance(hd, HyperDriveRun) and hd.experiment.name == "from-yaml"
    hd.wait_for_completion()
    assert len(hd.get_children()) == 3 and hd.get_tags()["team"] == "vision"
    assert "Restarted" not in workspace.store.read_log(run_id, LOG_NAME).decode()  # the first controller did it all
    shown = subprocess.run([sys.executable, "-m", "rundock", "show", run_id], cwd=project, capture_output=True,
                           text=True, timeout=120)
    assert shown.returncode == 0 and "Status: Completed" in shown.stdout, shown.stderr
    bad = src.parent / "bad.yaml"
    bad.write_text(SWEEP_YAML.replace("max_total_runs: 3", "max_total_runs: 0"))
    refused = subprocess.run([sys.executable, "-m", "rundock", "sweep", str(bad)], cwd=project, capture_output=True,
                             text=True, timeout=120)
    assert refused.returncode == 2 and "max_total_runs" in refused.stderr


# -- an SSH host and a pool ----------------------------------------------------------------------------
@pytest.fixture(scope="module")
def ssh_host(tmp_path_factory: pytest.TempPathFactory, docker_base_image: str) -> Iterator[Any]:
    from tests.hosts import running_ssh_host

    with running_ssh_host(docker_base_image, tmp_path_factory.mktemp("sshd")) as host:
        yield host


def test_a_sweep_on_an_ssh_host(workspace: Workspace, src: Path, ssh_host: Any, tmp_path: Path,
                                monkeypatch: pytest.MonkeyPatch) -> None:
    from tests.integration.test_ssh import attach_box

    attach_box(workspace, ssh_host, tmp_path, monkeypatch)
    hd = submit(workspace, src, GridParameterSampling({"--q": choice(0.9, 1.0)}), target="box",
                policy=BanditPolicy(slack_factor=0.2), max_total_runs=2, max_concurrent_runs=2)
    hd.wait_for_completion()
    trials = children(hd)
    assert [c.get_status() for c in trials] == ["Completed", "Completed"]
    assert all(c._record.target == "box" for c in trials)
    best = hd.get_best_run_by_primary_metric()
    assert best is not None and params(best) == {"--q": 1.0}


def test_a_sweep_on_a_pool(team: Team) -> None:  # noqa: F811  (the fixture imported above)
    team.box("box1").start()
    (team.project / "sweep_train.py").write_text(TRAIN)
    trial = ScriptRunConfig(str(team.project), "sweep_train.py", arguments=["--steps", 3],
                            run_config=RunConfiguration(target=POOL))
    hd = Experiment(team.ws, "pool-sweep").submit(HyperDriveConfig(
        run_config=trial, hyperparameter_sampling=GridParameterSampling({"--q": choice(0.9, 1.0)}),
        primary_metric_name="accuracy", primary_metric_goal="maximize", max_total_runs=2, max_concurrent_runs=1))
    assert isinstance(hd, HyperDriveRun)
    hd.wait_for_completion()
    assert [c.get_status() for c in children(hd)] == ["Completed", "Completed"]
    assert all(c._record.target == POOL for c in hd.get_children())
