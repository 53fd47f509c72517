"""Inside a job: a driver script submits its own trials with run.submit_child (Azure ML v1's habit)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from rundock import Experiment, Run, ScriptRunConfig
from rundock.submitter.workspace import Workspace

DRIVER = """
from azureml.core import Run, ScriptRunConfig

run = Run.get_context()
children = [run.submit_child(ScriptRunConfig(source_directory=".", script="trial.py", arguments=["--lr", lr]),
                             tags={"lr": str(lr)})
            for lr in (0.1, 0.2)]
for child in children:
    child.wait_for_completion()
    assert child.get_status() == "Completed", child.get_status()
    print("child", child.id, child.get_status(), flush=True)
try:
    run.submit_child(ScriptRunConfig(source_directory="/etc", script="passwd"))
except RuntimeError as exc:
    print("refused:", exc, flush=True)
    run.log("refused", 1)
"""

TRIAL = """
import argparse
from azureml.core import Run

parser = argparse.ArgumentParser()
parser.add_argument("--lr", type=float)
args = parser.parse_args()
Run.get_context().log("lr", args.lr)
"""


def test_a_driver_script_submits_and_waits_for_its_trials(workspace: Workspace, source: Callable[..., Path],
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RUNDOCK_MAX_CONCURRENT_RUNS", "4")
    src = source(**{"driver.py": DRIVER, "trial.py": TRIAL})
    parent = Experiment(workspace, "sweep").submit(ScriptRunConfig(str(src), "driver.py"))
    parent.wait_for_completion(raise_on_error=False)
    log = workspace.store.read_log(parent.id, "system_logs/driver_log.txt").decode()
    assert parent.get_status() == "Completed", (parent.get_details().get("error"), log)
    children = Run.get(workspace, parent.id).get_children()
    assert len(children) == 2
    assert all(c.get_status() == "Completed" and c.parent is not None and c.parent.id == parent.id
               for c in children)
    assert sorted(c.get_metrics()["lr"] for c in children) == [0.1, 0.2]
    assert sorted(c.get_tags()["lr"] or "" for c in children) == ["0.1", "0.2"]
    assert all(f"child {c.id} Completed" in log for c in children)
    assert "refused: submit_child() failed: source_directory '/etc' is not inside the job's working directory" in log
    assert parent.get_metrics() == {"refused": 1}
