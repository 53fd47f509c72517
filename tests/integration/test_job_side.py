"""Inside jobs: Azure ML scripts unchanged, child runs, secrets, submit_child, clean."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

from rundock import Experiment, Run, ScriptRunConfig
from rundock.submitter.workspace import Workspace

# Written as Azure ML's own training samples are: nothing here knows about rundock.
AZURE_RIDGE = """
import os
import pickle

from azureml.core.run import Run

run = Run.get_context()
os.makedirs("./outputs", exist_ok=True)
alphas = [0.0, 0.2, 0.4, 0.6, 0.8, 1.0]
for alpha in alphas:
    mse = (alpha - 0.4) ** 2 + 0.1
    run.log("alpha", alpha)
    run.log("mse", mse)
    model_file_name = "ridge_{0:.2f}.pkl".format(alpha)
    with open(os.path.join("./outputs/", model_file_name), "wb") as file:
        pickle.dump({"alpha": alpha}, file)
    print("alpha is {0:.2f}, and mse is {1:0.2f}".format(alpha, mse))
run.tag("best_alpha", "0.4")
run.complete()
"""

AZURE_CHILDREN = """
from azureml.core import Run

run = Run.get_context()
children = run.create_children(count=5)
for i, child in enumerate(children):
    child.log("child_index", i)
    child.log("score", i * 0.1)
    child.complete()
run.log("parent_done", 1)
"""


def _job(workspace: Workspace, src: Path, experiment: str = "jobs") -> Run:
    run = Experiment(workspace, experiment).submit(ScriptRunConfig(str(src), "train.py"))
    run.wait_for_completion(raise_on_error=False)
    return run


def test_an_azure_ml_training_script_runs_unchanged(workspace: Workspace, source: Callable[..., Path]) -> None:
    run = _job(workspace, source(**{"train.py": AZURE_RIDGE}))
    assert run.get_status() == "Completed", run.get_details().get("error")
    metrics = run.get_metrics()
    assert metrics["alpha"] == [0.0, 0.2, 0.4, 0.6, 0.8, 1.0]
    assert metrics["mse"] == [(a - 0.4) ** 2 + 0.1 for a in metrics["alpha"]]
    assert {f"outputs/ridge_{a:.2f}.pkl" for a in metrics["alpha"]} <= set(run.get_file_names())
    assert run.get_tags() == {"best_alpha": "0.4"}
    prepare = workspace.store.read_log(run.id, "system_logs/prepare_log.txt").decode()
    assert "rundock's shim is on the path" in prepare


def test_an_azure_ml_script_creating_children(workspace: Workspace, source: Callable[..., Path]) -> None:
    run = _job(workspace, source(**{"train.py": AZURE_CHILDREN}))
    assert run.get_status() == "Completed", run.get_details().get("error")
    children = sorted(run.get_children(), key=lambda c: c.get_metrics()["child_index"])
    assert len(children) == 5
    assert [c.get_metrics() for c in children] == [{"child_index": i, "score": i * 0.1} for i in range(5)]
    assert all(c.get_status() == "Completed" and c.parent is not None and c.parent.id == run.id for c in children)
    recursive = run.get_metrics(recursive=True)
    assert recursive[run.id] == {"parent_done": 1} and len(recursive) == 6


def test_in_job_children_outputs_failures_and_open_children(workspace: Workspace,
                                                            source: Callable[..., Path]) -> None:
    run = _job(workspace, source(**{"train.py": """
        import os
        from rundock import Run
        run = Run.get_context()
        os.makedirs("part1", exist_ok=True)
        open("part1/result.txt", "w").write("part one")
        with run.child_run(name="part1", outputs="part1") as child:
            child.log("rows", 10)
            grand = child.child_run(name="inner")
            grand.log("depth", 2)
            grand.complete()
        try:
            with run.child_run(name="fails") as bad:
                raise ValueError("bad shard")
        except ValueError:
            pass
        left_open = run.child_run(name="left-open")
        left_open.log("x", 1)
        tagged = run.create_children(tag_key="fold", tag_values=[0, 1])
        for c in tagged:
            c.complete()
    """}))
    assert run.get_status() == "Completed", run.get_details().get("error")
    by_name = {c.display_name: c for c in run.get_children(recursive=True)}
    assert by_name["part1"].get_status() == "Completed"
    assert by_name["part1"].get_file_names() == ["outputs/result.txt"]
    assert by_name["inner"].parent is not None and by_name["inner"].parent.id == by_name["part1"].id
    assert by_name["inner"].get_metrics() == {"depth": 2}
    assert by_name["fails"].get_status() == "Failed"
    assert "bad shard" in by_name["fails"].get_details()["error"]["error"]["message"]
    assert by_name["left-open"].get_status() == "Completed"
    assert "still open" in by_name["left-open"].get_detailed_status()["details"]
    folds = sorted(c.get_tags()["fold"] or "" for c in run.get_children(tags="fold"))
    assert folds == ["0", "1"]


def test_secrets_reach_the_job_and_nowhere_else(workspace: Workspace, source: Callable[..., Path]) -> None:
    workspace.set_secret("db-password", "hunter2-very-secret")
    workspace.get_default_keyvault().set_secret("api-token", "tok-123456")
    assert stat.S_IMODE(os.stat(workspace.secrets.path).st_mode) == 0o600
    run = _job(workspace, source(**{"train.py": """
        from rundock import Run
        run = Run.get_context()
        password = run.get_secret("db-password")
        found = run.get_secrets(["api-token", "missing"])
        print("connecting with", password, flush=True)
        run.log("token_found", found["api-token"] == "tok-123456")
        run.log("missing_is_none", found["missing"] is None)
        try:
            run.get_secret("missing")
        except KeyError as exc:
            print("error:", exc)
    """}))
    assert run.get_status() == "Completed", run.get_details().get("error")
    assert run.get_metrics() == {"token_found": True, "missing_is_none": True}
    log = workspace.store.read_log(run.id, "system_logs/driver_log.txt").decode()
    assert "connecting with ***" in log and "hunter2" not in log
    assert "rundock secret set missing" in log
    details = json.dumps(run.get_details_with_logs())
    assert "hunter2" not in details and "tok-123456" not in details
    run_dir = Path(run._record.run_dir or "")
    assert not (run_dir / "secrets.json").exists()
    leftovers = [p for p in run_dir.rglob("*") if p.is_file() and b"hunter2-very-secret" in p.read_bytes()]
    assert leftovers == []
    assert run.get_secrets(["db-password", "nope"]) == {"db-password": "hunter2-very-secret", "nope": None}


def test_submit_child_runs_a_real_job(workspace: Workspace, source: Callable[..., Path]) -> None:
    parent = Experiment(workspace, "sweep").start_logging()
    src = source(**{"train.py": "from rundock import Run\nRun.get_context().log('trial', 1)\n"})
    child = parent.submit_child(ScriptRunConfig(str(src), "train.py"), tags={"trial": "1"})
    child.wait_for_completion()
    assert child.get_status() == "Completed" and child.get_metrics() == {"trial": 1}
    assert [c.id for c in parent.get_children()] == [child.id]
    assert child.parent is not None and child.parent.id == parent.id and child.get_tags() == {"trial": "1"}


def test_clean_removes_the_run_files_on_its_target(workspace: Workspace, source: Callable[..., Path]) -> None:
    run = _job(workspace, source(**{"train.py": "open('outputs_note.txt', 'w').write('x')\n"}))
    run_dir = Path(run._record.run_dir or "")
    assert run_dir.is_dir()
    removed = run.clean()
    assert "src/train.py" in removed and "src/outputs_note.txt" in removed and "job.json" in removed
    assert not run_dir.exists()
    assert "system_logs/driver_log.txt" in run.get_file_names()  # the history keeps what it has


def test_secret_commands(workspace: Workspace) -> None:
    project = Path(workspace.path).parent
    cmd = [sys.executable, "-m", "rundock", "secret"]
    result = subprocess.run([*cmd, "set", "token"], input="s3cr3t-value\n", cwd=project, capture_output=True,
                            text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    listed = subprocess.run([*cmd, "list"], cwd=project, capture_output=True, text=True, timeout=60)
    assert listed.stdout.split() == ["token"] and "s3cr3t" not in listed.stdout
    assert workspace.secrets.get_secret("token") == "s3cr3t-value"
    missing = subprocess.run([*cmd, "delete", "nope"], cwd=project, capture_output=True, text=True, timeout=60)
    assert missing.returncode == 2 and "no secret 'nope'" in missing.stderr
