"""The rundock command line, run as a user would run it (a real process per command)."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

from rundock.submitter.workspace import Workspace


def rundock(cwd: Path, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "rundock", *args], cwd=cwd, capture_output=True, text=True,
                          timeout=timeout)


SCRIPT = """
import time
from rundock.context import Run
run = Run.get_context()
for i in range(5):
    print(f"line {i}", flush=True)
    run.log("step_loss", 1.0 / (i + 1))
    time.sleep(0.3)
import os
os.makedirs("outputs", exist_ok=True)
open("outputs/result.txt", "w").write("42")
"""


def test_submit_follow_inspect_download(workspace: Workspace, source: Callable[..., Path],
                                        tmp_path: Path) -> None:
    project = Path(workspace.path).parent
    src = source(**{"train.py": SCRIPT})
    submitted = rundock(project, "submit", str(src), "-s", "train.py", "-e", "cli", "-t", "team=nlp", "--detach")
    assert submitted.returncode == 0, submitted.stderr
    run_id = submitted.stdout.strip()
    assert run_id.startswith("cli_") and "Submitted run" in submitted.stderr

    followed = rundock(project, "logs", run_id, "--follow")
    assert followed.returncode == 0, followed.stderr
    assert followed.stdout == "".join(f"line {i}\n" for i in range(5))  # each line once, in order

    listed = rundock(project, "runs", "-t", "team=nlp")
    assert run_id in listed.stdout and "Completed" in listed.stdout
    assert run_id not in rundock(project, "runs", "--status", "Failed").stdout
    assert run_id in rundock(project, "runs", "-p", "ContentSnapshotId").stdout
    assert run_id not in rundock(project, "runs", "-p", "ContentSnapshotId=other").stdout

    shown = rundock(project, "show", run_id)
    assert "Status: Completed" in shown.stdout and "outputs/result.txt" in shown.stdout
    for status in ("Preparing", "Queued", "Running", "Finalizing"):
        assert status in shown.stdout

    metrics = json.loads(rundock(project, "metrics", run_id, "--json").stdout)
    assert metrics == {"step_loss": [1.0 / (i + 1) for i in range(5)]}

    downloaded = rundock(project, "download", run_id, "-p", "outputs/", "-o", str(tmp_path / "dl"))
    assert downloaded.returncode == 0, downloaded.stderr
    assert (tmp_path / "dl" / "outputs" / "result.txt").read_text() == "42"


def test_submit_streams_the_run_and_reports_failure(workspace: Workspace, source: Callable[..., Path]) -> None:
    project = Path(workspace.path).parent
    src = source(**{"train.py": "import sys\nprint('working', flush=True)\nsys.exit(4)\n"})
    result = rundock(project, "submit", str(src), "-s", "train.py")
    assert result.returncode == 1
    assert "working" in result.stdout and "Status: Failed" in result.stdout
    assert "exited with code 4" in result.stderr


def test_bad_input_is_reported_with_what_to_fix(workspace: Workspace, source: Callable[..., Path],
                                               tmp_path: Path) -> None:
    project = Path(workspace.path).parent
    src = source(**{"train.py": "print(1)"})
    config = tmp_path / "train.runconfig.yml"
    config.write_text("script: train.py\nmax_run_duration: 10\n")
    result = rundock(project, "submit", str(src), "-c", str(config))
    assert result.returncode == 2
    assert str(config) in result.stderr and "max_run_duration" in result.stderr
    assert "max_run_duration_seconds" in result.stderr
    missing = rundock(project, "submit", str(src), "-s", "nope.py")
    assert missing.returncode == 2 and "'nope.py' was not found" in missing.stderr
    unknown = rundock(project, "show", "no-such-run")
    assert unknown.returncode == 2 and "no run 'no-such-run'" in unknown.stderr
    assert "run id" in rundock(project, "runs").stdout  # nothing was created by the failed submits
    assert Workspace.from_config(str(project)).store.list_runs() == []
