"""The Run API of the reference, from the client side (interactive runs, models, listing, files)."""

from __future__ import annotations

import json
import os
import subprocess
import zipfile
from collections.abc import Callable
from pathlib import Path

import pytest

from rundock import Experiment, Model, Run, ScriptRunConfig
from rundock.context.schemas import MetricSchemaError
from rundock.history.records import RunRecord
from rundock.submitter.workspace import Workspace
from tests.conftest import wait_until
from tests.unit.test_schemas import ACCURACY, CONFUSION, PREDICTIONS, RESIDUALS


@pytest.fixture
def exp(workspace: Workspace) -> Experiment:
    return Experiment(workspace, "api")


def test_metrics_of_every_kind(exp: Experiment, tmp_path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    run = exp.start_logging()
    run.log("acc", 0.5, description="accuracy")
    run.log("loss", 1.0, step=0)
    run.log("loss", 0.5, step=1)
    with pytest.raises(ValueError, match="step"):
        run.log("loss", 0.1)
    run.log_list("classes", [1, 2, 3])
    run.log_row("citrus", fruit="orange", size=10)
    run.log_row("citrus", fruit="lemon", size=7)
    run.log_table("curve", {"x": [1, 2], "y": [0.6, 0.7]})
    run.log_accuracy_table("acc_table", json.dumps(ACCURACY))
    run.log_confusion_matrix("cm", CONFUSION)
    run.log_predictions("pred", PREDICTIONS)
    run.log_residuals("res", RESIDUALS)
    with pytest.raises(MetricSchemaError, match="bin_edges"):
        run.log_residuals("bad", {**RESIDUALS, "data": {"bin_edges": [1], "bin_counts": [1, 2]}})
    png = tmp_path / "chart.png"
    plt.plot([1, 2, 3])
    plt.savefig(png)
    run.log_image("chart", path=str(png))
    run.log_image("live_plot", plot=plt)
    with pytest.raises(ValueError, match="exactly one of"):
        run.log_image("neither")
    metrics = run.get_metrics()
    assert metrics["acc"] == 0.5 and metrics["loss"] == [1.0, 0.5] and metrics["classes"] == [1, 2, 3]
    assert metrics["citrus"] == {"fruit": ["orange", "lemon"], "size": [10, 7]}
    assert metrics["curve"] == {"x": [1, 2], "y": [0.6, 0.7]}
    assert metrics["acc_table"] == ACCURACY and metrics["cm"] == CONFUSION
    assert metrics["pred"] == PREDICTIONS and metrics["res"] == RESIDUALS
    assert metrics["chart"] == "images/chart.png" and metrics["live_plot"] == "images/live_plot.png"
    assert {"images/chart.png", "images/live_plot.png"} <= set(run.get_file_names())
    run.download_file("images/live_plot.png", str(tmp_path / "live.png"))
    assert (tmp_path / "live.png").read_bytes().startswith(b"\x89PNG")
    assert run.get_metrics(name="acc") == {"acc": 0.5}
    assert "bad" not in metrics and "neither" not in metrics


def test_recursive_metrics_as_in_the_reference(exp: Experiment) -> None:
    run = exp.start_logging()
    run.log("A", 1)
    with run.child_run() as child:
        child.log("A", 2)
    assert run.get_metrics() == {"A": 1}
    assert run.get_metrics(recursive=True) == {run.id: {"A": 1}, child.id: {"A": 2}}
    assert child.get_status() == "Completed" and child.parent is not None and child.parent.id == run.id


def test_child_runs(exp: Experiment, tmp_path: Path) -> None:
    parent = exp.start_logging()
    outputs = tmp_path / "child-out"
    outputs.mkdir()
    (outputs / "weights.bin").write_bytes(b"w")
    child = parent.child_run(name="part-1", outputs=str(outputs))
    assert child.get_status() == "Running" and child.display_name == "part-1"
    child.complete()
    assert child.get_file_names() == ["outputs/weights.bin"]
    with pytest.raises(RuntimeError, match="boom"), parent.child_run(name="broken") as broken:
        raise RuntimeError("boom")
    assert broken.get_status() == "Failed" and "boom" in broken.get_details()["error"]["error"]["message"]
    counted = parent.create_children(count=3)
    tagged = parent.create_children(tag_key="fold", tag_values=["a", "b"])
    with pytest.raises(ValueError, match="either count, or tag_key and tag_values"):
        parent.create_children(count=2, tag_key="x", tag_values=["1"])
    with pytest.raises(ValueError, match="either count"):
        parent.create_children()
    assert [c.get_tags() for c in tagged] == [{"fold": "a"}, {"fold": "b"}]
    grandchild = counted[0].child_run()
    assert len(parent.get_children()) == 7
    assert len(parent.get_children(recursive=True)) == 8
    assert [c.id for c in parent.get_children(tags={"fold": "b"})] == [tagged[1].id]
    assert {c.id for c in parent.get_children(status="Completed")} == {child.id}
    assert all(c.type == "rundock.childrun" for c in parent.get_children(type="rundock.childrun"))
    assert grandchild.parent is not None and grandchild.parent.id == counted[0].id
    assert [r.id for r in Run.list(exp)] == [parent.id]  # top-level runs only
    assert len(Run.list(exp, include_children=True)) == 9


def test_tags_and_properties(exp: Experiment) -> None:
    run = exp.start_logging()
    run.tag("DeploymentCandidate")
    run.tag("modifiedBy", "Master CI")
    run.tag("modifiedBy", "release pipeline")
    run.set_tags({"team": "nlp", "size": 3})
    run.set_tags("flag")
    assert run.get_tags() == {"DeploymentCandidate": None, "modifiedBy": "release pipeline", "team": "nlp",
                              "size": "3", "flag": None}
    assert run.remove_tags(["flag", "size"]) == {"DeploymentCandidate": None, "modifiedBy": "release pipeline",
                                                 "team": "nlp"}
    run.add_properties({"BuildId": "42"})
    run.add_properties({"BuildId": "42"})
    with pytest.raises(ValueError, match="immutable"):
        run.add_properties({"BuildId": "43"})
    assert run.get_properties() == {"BuildId": "42"}
    other = exp.start_logging()
    assert [r.id for r in Run.list(exp, tags="DeploymentCandidate")] == [run.id]
    assert [r.id for r in Run.list(exp, properties={"BuildId": "42"})] == [run.id]
    assert {r.id for r in Run.list(exp, status="Running")} == {run.id, other.id}


def test_lifecycle_of_interactive_runs(exp: Experiment, workspace: Workspace, tmp_path: Path,
                                       monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "outputs").mkdir()
    (tmp_path / "outputs" / "notes.txt").write_text("from the notebook")
    run = exp.start_logging(display_name="notebook")
    assert run.get_status() == "Running" and run.name == run.display_name == "notebook"
    run.flush()
    run.complete()
    assert run.get_status() == "Completed" and run.get_file_names() == ["outputs/notes.txt"]
    with exp.start_logging() as ok:
        ok.log("x", 1)
    assert ok.get_status() == "Completed"
    failing = exp.start_logging()
    failing.fail(error_details="diverged", error_code="Divergence")
    details = failing.get_details()
    assert details["status"] == "Failed"
    assert details["error"]["error"] == {"code": "Divergence", "message": "diverged"}
    canceled = exp.start_logging()
    canceled.cancel()
    assert canceled.get_status() == "Canceled"
    created = workspace.store.create_run("api")  # another actor created it
    started = Run.get(workspace, created.run_id)
    assert started.get_status() == "NotStarted"
    started.start()
    assert started.get_status() == "Running"
    assert Run.get_submitted_run().id.startswith("OfflineRun_")


def test_files(exp: Experiment, tmp_path: Path) -> None:
    run = exp.start_logging()
    (tmp_path / "a.txt").write_text("a")
    (tmp_path / "b.txt").write_text("b")
    folder = tmp_path / "folder" / "nested"
    folder.mkdir(parents=True)
    (folder / "c.txt").write_text("c")
    run.upload_file("single/a.txt", str(tmp_path / "a.txt"))
    with open(tmp_path / "b.txt", "rb") as stream:
        run.upload_file("stream/b.txt", stream)
    run.upload_files(["many/a.txt", "many/b.txt"], [str(tmp_path / "a.txt"), str(tmp_path / "b.txt")])
    run.upload_folder("dir", str(tmp_path / "folder"))
    for bad in ("../escape.txt", "/etc/passwd", "a/../../b"):
        with pytest.raises(ValueError, match="namespace|absolute"):
            run.upload_file(bad, str(tmp_path / "a.txt"))
    with pytest.raises(ValueError, match="2 names for 1 paths"):
        run.upload_files(["x", "y"], [str(tmp_path / "a.txt")])
    assert run.get_file_names() == ["dir/nested/c.txt", "many/a.txt", "many/b.txt", "single/a.txt", "stream/b.txt"]
    got = run.download_files(prefix="many/", output_directory=str(tmp_path / "out1"))
    assert sorted(Path(p).read_text() for p in got) == ["a", "b"]
    assert (tmp_path / "out1" / "many" / "a.txt").exists()
    run.download_files(prefix="many/", output_directory=str(tmp_path / "out2"), append_prefix=False)
    assert (tmp_path / "out2" / "a.txt").read_text() == "a"
    paths = [str(tmp_path / "x1"), str(tmp_path / "x2")]
    assert run.download_files(prefix="many/", output_paths=paths) == paths
    with pytest.raises(FileNotFoundError, match="has no file 'nope'"):
        run.download_file("nope")


def _git(cwd: Path, *args: str) -> None:
    subprocess.run(["git", "-c", "user.email=t@example.com", "-c", "user.name=t", *args], cwd=cwd, check=True,
                   capture_output=True)


def test_details_git_environment_and_snapshots(workspace: Workspace, source: Callable[..., Path],
                                               tmp_path: Path) -> None:
    src = source(**{"train.py": "print('hi')", "util.py": "X = 1"})
    _git(src, "init", "-q", "-b", "main")
    _git(src, "remote", "add", "origin", "https://example.com/team/repo.git")
    _git(src, "add", ".")
    _git(src, "commit", "-qm", "first")
    (src / "util.py").write_text("X = 2")  # uncommitted change
    run = Experiment(workspace, "details").submit(ScriptRunConfig(str(src), "train.py"))
    run.wait_for_completion()
    details = run.get_details()
    commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=src, capture_output=True, text=True).stdout.strip()
    props = details["properties"]
    assert props["azureml.git.repository_uri"] == "https://example.com/team/repo.git"
    assert props["azureml.git.branch"] == "main" and props["azureml.git.commit"] == commit
    assert props["azureml.git.dirty"] == "True" and props["mlflow.source.git.commit"] == commit
    assert props["ContentSnapshotId"] == run.get_snapshot_id()
    with_logs = run.get_details_with_logs()
    assert with_logs["logFiles"]["system_logs/driver_log.txt"] == "hi\n"
    env = run.get_environment()
    assert env is not None and env.python.user_managed_dependencies
    notebook = Experiment(workspace, "details").start_logging(snapshot_directory=str(src))
    first = notebook.get_snapshot_id()
    single = notebook.take_snapshot(str(src / "util.py"))
    assert notebook.get_snapshot_id() == single != first
    with zipfile.ZipFile(notebook.restore_snapshot(first, path=str(tmp_path))) as zf:
        assert sorted(zf.namelist()) == ["train.py", "util.py"]
    with zipfile.ZipFile(notebook.restore_snapshot(path=str(tmp_path / "latest.zip"))) as zf:
        assert zf.namelist() == ["util.py"] and zf.read("util.py") == b"X = 2"


def test_listing_by_compute_and_type_providers(workspace: Workspace, source: Callable[..., Path]) -> None:
    exp = Experiment(workspace, "listing")
    slow = exp.submit(ScriptRunConfig(str(source(**{"train.py": "import time\ntime.sleep(30)"})), "train.py"))
    local = workspace.compute_targets["local"]
    wait_until(lambda: slow.get_status() == "Running", message="the run to be Running")
    assert [r.id for r in Run.list_by_compute(local)] == [slow.id]
    assert [r.id for r in Run.list_by_compute(local, status="Running")] == [slow.id]
    assert Run.list_by_compute(local, status="Queued") == []
    with pytest.raises(ValueError, match="'Running' or 'Queued'"):
        Run.list_by_compute(local, status="Completed")
    slow.cancel()
    slow.wait_for_completion()
    assert Run.list_by_compute(local) == []

    class TunedRun(Run):
        pass

    def factory(experiment: Experiment, record: RunRecord) -> Run:
        return TunedRun(experiment, record.run_id, _record=record)

    Run.add_type_provider("rundock.scriptrun", factory)
    try:
        assert all(isinstance(r, TunedRun) for r in Run.list(exp))
        assert not any(isinstance(r, TunedRun) for r in Run.list(exp, _rehydrate_runs=False))
    finally:
        Run._type_providers.pop("rundock.scriptrun")


def test_models(exp: Experiment, workspace: Workspace, tmp_path: Path) -> None:
    run = exp.start_logging()
    for name in ("outputs/model.pkl", "outputs/bundle/a.bin", "outputs/bundle/b.bin"):
        (tmp_path / "f").write_text(name)
        run.upload_file(name, str(tmp_path / "f"))
    first = run.register_model("best_model", model_path="outputs/model.pkl", tags={"stage": "dev"},
                               properties={"auc": 0.9}, model_framework="ScikitLearn", description="first")
    second = run.register_model("best_model", model_path="outputs/model.pkl", tags={"stage": "prod"})
    bundle = run.register_model("bundle", model_path="outputs/bundle")
    assert (first.version, second.version, bundle.version) == (1, 2, 1)
    assert first.run_id == run.id and first.url.endswith(f"{run.id}/outputs/model.pkl")
    assert first.properties == {"auc": "0.9"} and first.model_framework == "ScikitLearn"
    latest = Model(workspace, "best_model")
    assert latest.version == 2 and latest.tags == {"stage": "prod"}
    assert Model(workspace, "best_model", version=1).description == "first"
    assert Model(workspace, id="best_model:1").version == 1
    assert Model(workspace, "best_model", tags={"stage": "dev"}).version == 1
    assert [m.id for m in Model.list(workspace, name="best_model")] == ["best_model:2", "best_model:1"]
    assert [m.id for m in Model.list(workspace, tags={"stage": "prod"})] == ["best_model:2"]
    assert sorted(m.id for m in Model.list(workspace, latest=True)) == ["best_model:2", "bundle:1"]
    path = latest.download(str(tmp_path / "dl"))
    assert Path(path).read_text() == "outputs/model.pkl"
    folder = bundle.download(str(tmp_path / "dl2"))
    assert sorted(os.listdir(folder)) == ["a.bin", "b.bin"]
    with pytest.raises(FileExistsError):
        latest.download(str(tmp_path / "dl"))
    with pytest.raises(ValueError, match="not a file or folder of the run"):
        run.register_model("ghost", model_path="outputs/missing.pkl")
    with pytest.raises(KeyError, match="no model 'ghost'"):
        Model(workspace, "ghost")
    (tmp_path / "local.onnx").write_text("onnx")
    registered = Model.register(workspace, str(tmp_path / "local.onnx"), "local-model")
    assert registered.version == 1 and registered.run_id is None
