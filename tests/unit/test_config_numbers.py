"""Every number in every configuration is finite and not negative (``cancel_grace_seconds: .nan`` once hung a run)."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from rundock.errors import ConfigError
from rundock.runconfig.environment import Environment
from rundock.runconfig.run_configuration import RunConfiguration
from rundock.runconfig.script_run_config import ScriptRunConfig
from rundock.submitter.compute import ComputeTarget
from rundock.submitter.workspace import Workspace

BAD = [".nan", ".inf", "-.inf", "-1"]


def _yaml_with(path: Path, dotted: str, raw: str, base: dict[str, object] | None = None) -> None:
    """Write ``base`` as YAML with field ``dotted`` set to the YAML scalar ``raw`` (e.g. ``.nan``)."""
    data: dict[str, object] = dict(base or {})
    node = data
    *parents, leaf = dotted.split(".")
    for name in parents:
        node = node.setdefault(name, {})  # type: ignore[assignment]
    node[leaf] = "@VALUE@"
    path.write_text(yaml.safe_dump(data).replace("'@VALUE@'", raw))


@pytest.mark.parametrize("raw", BAD)
@pytest.mark.parametrize("field", ["max_run_duration_seconds", "cancel_grace_seconds",
                                   "environment.docker.gpu_count"])
def test_run_configuration_files(tmp_path: Path, field: str, raw: str) -> None:
    path = tmp_path / "train.runconfig.yml"
    _yaml_with(path, field, raw, {"script": "train.py"})
    with pytest.raises(ConfigError, match=rf"in {path}, field '{field}': expected an? (integer|finite number)"):
        RunConfiguration.load(str(path))


def test_zero_run_duration_is_refused_and_zero_grace_is_fine(tmp_path: Path) -> None:
    path = tmp_path / "train.runconfig.yml"
    path.write_text("max_run_duration_seconds: 0\n")
    with pytest.raises(ConfigError, match=r"field 'max_run_duration_seconds': expected an integer above 0, got 0"):
        RunConfiguration.load(str(path))
    path.write_text("cancel_grace_seconds: 0\n")
    assert RunConfiguration.load(str(path)).cancel_grace_seconds == 0


@pytest.mark.parametrize("raw", BAD)
def test_environment_files(tmp_path: Path, raw: str) -> None:
    _yaml_with(tmp_path / "environment.yml", "docker.gpu_count", raw, {"name": "e"})
    with pytest.raises(ConfigError, match=r"environment.yml, field 'docker.gpu_count': expected an integer"):
        Environment.load_from_directory(str(tmp_path))


@pytest.mark.parametrize("raw", BAD)
@pytest.mark.parametrize("field", ["local.heartbeat_seconds", "local.max_concurrent_runs", "snapshot.max_mb",
                                   "snapshot.max_files"])
def test_workspace_config(tmp_path: Path, field: str, raw: str) -> None:
    folder = tmp_path / ".rundock"
    folder.mkdir()
    _yaml_with(folder / "config.yaml", field, raw)
    with pytest.raises(ConfigError, match=rf"config.yaml, field '{field}': expected an? (integer|finite number)"):
        Workspace(str(folder))


def test_workspace_heartbeat_must_be_above_zero(tmp_path: Path) -> None:
    folder = tmp_path / ".rundock"
    folder.mkdir()
    (folder / "config.yaml").write_text("local:\n  heartbeat_seconds: 0\n")
    with pytest.raises(ConfigError, match=r"field 'local.heartbeat_seconds': expected a finite number above 0"):
        Workspace(str(folder))


@pytest.mark.parametrize("raw", BAD)
@pytest.mark.parametrize("field", ["ssh_port", "max_concurrent_runs"])
def test_attached_targets(tmp_path: Path, field: str, raw: str) -> None:
    ws = Workspace(str(tmp_path / ".rundock"))
    (tmp_path / ".rundock" / "targets.yaml").write_text("")
    _yaml_with(tmp_path / ".rundock" / "targets.yaml", f"gpu-box.{field}", raw, {"gpu-box": {"address": "h"}})
    with pytest.raises(ConfigError, match=rf"targets.yaml, field 'gpu-box.{field}': expected an integer"):
        ComputeTarget(ws, "gpu-box")


@pytest.mark.parametrize(("name", "raw"), [
    ("RUNDOCK_HEARTBEAT_SECONDS", "nan"), ("RUNDOCK_HEARTBEAT_SECONDS", "0"), ("RUNDOCK_HEARTBEAT_SECONDS", "inf"),
    ("RUNDOCK_SNAPSHOT_MAX_MB", "-inf"), ("RUNDOCK_SNAPSHOT_MAX_FILES", "-5"), ("RUNDOCK_MAX_CONCURRENT_RUNS", "nan")])
def test_environment_variables(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, name: str, raw: str) -> None:
    ws = Workspace(str(tmp_path / ".rundock"))
    monkeypatch.setenv(name, raw)
    with pytest.raises(ConfigError, match=rf"in environment, field '{name}': expected a finite number"):
        _ = (ws.heartbeat_seconds, ws.snapshot_limits, ws.max_concurrent_runs)


@pytest.mark.parametrize("value", [float("nan"), float("inf"), float("-inf"), -1.0])
def test_python_api(tmp_path: Path, value: float) -> None:
    (tmp_path / "train.py").write_text("print(1)\n")
    with pytest.raises(ConfigError, match=r"field 'cancel_grace_seconds': expected a finite number >= 0"):
        ScriptRunConfig(str(tmp_path), "train.py", run_config=RunConfiguration(cancel_grace_seconds=value)).validate()
    with pytest.raises(ConfigError, match=r"field 'max_run_duration_seconds'"):
        ScriptRunConfig(str(tmp_path), "train.py", max_run_duration_seconds=value).validate()  # type: ignore[arg-type]
    env = Environment("e")
    env.docker.gpu_count = value  # type: ignore[assignment]
    with pytest.raises(ConfigError, match=r"field 'environment.docker.gpu_count'"):
        ScriptRunConfig(str(tmp_path), "train.py", environment=env).validate()


def test_arguments_may_be_any_number(tmp_path: Path) -> None:
    """Script arguments are the script's business: a negative one is fine."""
    path = tmp_path / "train.runconfig.yml"
    path.write_text("script: train.py\narguments: [--offset, -1, --lr, 0.5]\n")
    assert RunConfiguration.load(str(path)).arguments == ["--offset", -1, "--lr", 0.5]


@pytest.mark.parametrize(("args", "message"), [
    (["--max-run-duration", "-5"], "field 'max_run_duration_seconds': expected an integer above 0, got -5"),
    (["-c", "@RUNCONFIG@"], "field 'cancel_grace_seconds': expected a finite number >= 0, got nan"),
])
def test_the_command_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
                          args: list[str], message: str) -> None:
    from rundock.submitter.cli import main

    project = tmp_path / "project"
    (project / "src").mkdir(parents=True)
    (project / "src" / "train.py").write_text("print(1)\n")
    runconfig = project / "train.runconfig.yml"
    runconfig.write_text("script: train.py\ncancel_grace_seconds: .nan\n")
    Workspace.create(str(project)).close()
    monkeypatch.chdir(project)
    monkeypatch.setenv("RUNDOCK_AGENT_IDLE_SECONDS", "5")  # should a submit get through, its warm agent goes soon
    argv = ["submit", str(project / "src"), "-s", "train.py", "--detach",
            *[str(runconfig) if a == "@RUNCONFIG@" else a for a in args]]
    with pytest.raises(SystemExit) as exited:
        main(argv)
    assert exited.value.code == 2
    err = " ".join(capsys.readouterr().err.split())
    assert message in err
    if "-c" in args:
        assert str(runconfig) in err
    ws = Workspace(str(project / ".rundock"))
    try:
        assert ws.store.list_runs() == []  # refused before any run was created
    finally:
        ws.close()


def test_attaching_a_target_checks_its_numbers_and_keeps_the_file_private(tmp_path: Path) -> None:
    import os

    from rundock.submitter.compute import ComputeTarget, RemoteCompute
    from rundock.submitter.workspace import Workspace

    ws = Workspace.create(str(tmp_path))
    with pytest.raises(ConfigError, match="max_concurrent_runs"):
        ComputeTarget.attach(ws, "gpu", RemoteCompute.attach_configuration(address="h", max_concurrent_runs=-1))
    assert not os.path.exists(os.path.join(ws.path, "targets.yaml"))
    ComputeTarget.attach(ws, "gpu", RemoteCompute.attach_configuration(address="h"))
    assert os.stat(os.path.join(ws.path, "targets.yaml")).st_mode & 0o777 == 0o600
