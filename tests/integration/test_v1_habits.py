"""Azure ML v1 habits end to end: a v1 .runconfig submitted from the command line runs a v1 training script
unchanged (``from azureml.core import Workspace, Experiment, Run``, ``run.experiment.workspace``), with a
source file whose name is not UTF-8; its metric steps and times are visible (SDK and ``rundock metrics
--json --history``, valid JSON even for NaN); its snapshot is restored as ``<id>.zip`` in a folder."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import zipfile
from pathlib import Path
from typing import Any

from rundock import Run
from rundock.submitter.workspace import Workspace

V1_SCRIPT = """\
import os
from azureml.core import Workspace, Experiment, Run

run = Run.get_context()
ws = run.experiment.workspace
print("Workspace: " + ws.name + ", " + ws.location + ", experiment " + run.experiment.name, flush=True)
print("data: " + open("r%E9sultat.csv").read().strip() + ", SEED=" + os.environ["SEED"], flush=True)
for step in range(3):
    run.log("loss", 1.0 / (step + 1), step=step)
run.log("odd", float("nan"))
run.log("big", float("inf"))
"""

V1_RUNCONFIG = """\
script: train.py
arguments: []
target: local
framework: Python
communicator: None
maxRunDurationSeconds: 600
nodeCount: 2
environment:
  name: v1-env
  environmentVariables:
    SEED: 7
  python:
    userManagedDependencies: true
    interpreterPath: {interpreter}
    condaDependencies:
      dependencies:
      - python=3.8.10
      - pip:
        - azureml-defaults
  docker:
    enabled: false
    baseImage: mcr.microsoft.com/azureml/openmpi3.1.2-ubuntu18.04
    arguments: []
history:
  outputCollection: true
  snapshotProject: true
  directoriesToWatch:
  - logs
dataReferences: {{}}
amlcompute:
  vmSize: STANDARD_D2_V2
"""


def rundock(cwd: Path, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "rundock", *args], cwd=cwd, capture_output=True, text=True,
                          timeout=timeout)


def _strict_json(text: str) -> Any:
    def refuse(token: str) -> None:
        raise AssertionError(f"not valid JSON: {token}")

    return json.loads(text, parse_constant=refuse)


def test_a_v1_project_runs_unchanged_and_shows_its_metric_steps(workspace: Workspace, tmp_path: Path) -> None:
    project = Path(workspace.path).parent
    src = tmp_path / "src"
    src.mkdir()
    (src / "train.py").write_text(V1_SCRIPT)
    with open(os.path.join(os.fsencode(src), b"r\xe9sultat.csv"), "wb") as fh:
        fh.write(b"a,b\n")
    (project / ".azureml").mkdir()
    (project / ".azureml" / "train.runconfig").write_text(V1_RUNCONFIG.format(interpreter=sys.executable))

    submitted = rundock(project, "submit", str(src), "-c", ".azureml/train.runconfig", "-e", "v1habits", "--detach")
    assert submitted.returncode == 0, submitted.stderr
    assert "V1ConfigWarning" in submitted.stderr and "nodeCount (2)" in submitted.stderr
    assert "amlcompute.vmSize ('STANDARD_D2_V2')" in submitted.stderr
    run = Run.get(workspace, submitted.stdout.strip().splitlines()[-1])
    run.wait_for_completion(raise_on_error=False)
    log = run.get_details_with_logs()["logFiles"]["system_logs/driver_log.txt"]
    assert run.get_status() == "Completed", log
    assert f"Workspace: {workspace.name}, local, experiment v1habits" in log or \
        "Workspace: local, local, experiment v1habits" in log  # until the agent sets RUNDOCK_WORKSPACE_NAME
    assert "data: a,b, SEED=7" in log

    metrics = _strict_json(rundock(project, "metrics", run.id, "--json").stdout)
    assert metrics == {"loss": [1.0, 0.5, 1.0 / 3], "odd": "NaN", "big": "Infinity"}
    history = _strict_json(rundock(project, "metrics", run.id, "--json", "--history").stdout)
    assert [(h["value"], h["step"]) for h in history["loss"]] == [(1.0, 0), (0.5, 1), (1.0 / 3, 2)]
    assert all(h["time"].endswith("Z") for h in history["loss"]) and history["odd"][0]["value"] == "NaN"
    table = rundock(project, "metrics", run.id, "--history")
    assert table.returncode == 0 and "loss" in table.stdout and history["loss"][2]["time"] in table.stdout
    assert [h["step"] for h in run.get_metric_history("loss")] == [0, 1, 2]

    os.chdir(tmp_path)
    path = run.restore_snapshot(path="snapshots")
    assert path == os.path.join("snapshots", f"{run.get_snapshot_id()}.zip")
    with zipfile.ZipFile(path) as zf:
        assert sorted(zf.namelist()) == ["r%E9sultat.csv", "train.py"]
