from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from rundock import Environment, Experiment, RunConfiguration, ScriptRunConfig
from rundock.errors import ConfigError
from rundock.submitter.workspace import Workspace


def test_run_configuration_round_trips_through_yaml(tmp_path: Path) -> None:
    env = Environment("gpu-env")
    env.python.user_managed_dependencies = True
    env.python.interpreter_path = "/opt/py/bin/python"
    env.environment_variables = {"SEED": "1"}
    config = RunConfiguration(script="train.py", arguments=["--lr", 0.1], environment=env,
                              max_run_duration_seconds=600)
    path = config.save(str(tmp_path), name="train")
    assert path.endswith("train.runconfig.yml")
    assert RunConfiguration.load(str(tmp_path), name="train") == config


def test_unknown_field_names_the_file_and_field(tmp_path: Path) -> None:
    path = tmp_path / "bad.yml"
    path.write_text("script: train.py\nenvironment:\n  python:\n    user_managed: true\n")
    with pytest.raises(ConfigError) as err:
        RunConfiguration.load(str(path))
    text = str(err.value)
    assert str(path) in text and "environment.python.user_managed" in text
    assert "user_managed_dependencies" in text  # what was expected


def test_wrong_type_says_what_was_expected(tmp_path: Path) -> None:
    path = tmp_path / "bad.yml"
    path.write_text("script: train.py\nmax_run_duration_seconds: soon\n")
    with pytest.raises(ConfigError, match=r"max_run_duration_seconds.*expected an integer, got 'soon'"):
        RunConfiguration.load(str(path))
    path.write_text("environment:\n  python:\n    user_managed_dependencies: maybe\n")
    with pytest.raises(ConfigError, match=r"user_managed_dependencies.*boolean"):
        RunConfiguration.load(str(path))


def test_missing_and_unparsable_files_are_named(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="nope.yml.*not found"):
        RunConfiguration.load(str(tmp_path / "nope.yml"))
    (tmp_path / "broken.yml").write_text("script: [unclosed\n")
    with pytest.raises(ConfigError, match="broken.yml.*not valid YAML"):
        RunConfiguration.load(str(tmp_path / "broken.yml"))


def test_script_errors_come_before_anything_is_created(workspace: Workspace, source: Callable[..., Path],
                                                       tmp_path: Path) -> None:
    src = source(**{"train.py": "print(1)"})
    (tmp_path / "outside.py").write_text("print(2)")
    exp = Experiment(workspace, "checks")
    cases = [
        (ScriptRunConfig(str(src), "missing.py"), "field 'script'.*'missing.py' was not found"),
        (ScriptRunConfig(str(src), "../outside.py"), "field 'script'.*outside the source folder"),
        (ScriptRunConfig(str(src)), "field 'script'.*no script"),
        (ScriptRunConfig(str(tmp_path / "nowhere"), "train.py"), "field 'source_directory'"),
        (ScriptRunConfig(str(src), "train.py", max_run_duration_seconds=0), "max_run_duration_seconds"),
    ]
    for config, message in cases:
        with pytest.raises(ConfigError, match=message):
            exp.submit(config)
    assert workspace.store.list_runs() == []
    assert not (Path(workspace.path) / "artifacts").exists() or not any((Path(workspace.path) / "artifacts").iterdir())


def test_experiment_names_are_checked(workspace: Workspace) -> None:
    with pytest.raises(ConfigError, match="experiment name"):
        Experiment(workspace, "has spaces")


def test_unknown_target_is_a_clear_error(workspace: Workspace, source: Callable[..., Path]) -> None:
    src = source(**{"train.py": "print(1)"})
    with pytest.raises(ConfigError, match="compute target 'gpu-box' is not attached; attached targets: local"):
        Experiment(workspace, "t").submit(ScriptRunConfig(str(src), "train.py", compute_target="gpu-box"))
    assert workspace.store.list_runs() == []


def test_workspace_config_errors_name_the_file(tmp_path: Path) -> None:
    folder = tmp_path / ".rundock"
    folder.mkdir()
    (folder / "config.yaml").write_text("local:\n  max_concurrent: 3\n")
    with pytest.raises(ConfigError, match=r"config.yaml.*local.max_concurrent"):
        Workspace(str(folder))


def test_workspace_is_found_from_a_subfolder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    ws = Workspace.create(str(tmp_path), name="proj")
    deep = tmp_path / "a" / "b"
    deep.mkdir(parents=True)
    monkeypatch.chdir(deep)
    assert Workspace.from_config().path == ws.path
    monkeypatch.chdir("/")
    monkeypatch.setenv("RUNDOCK_HOME", str(tmp_path / "home"))
    assert Workspace.from_config().path == str(tmp_path / "home")


def test_a_run_yml_sets_environment_variables_and_a_bad_one_is_named() -> None:
    good = RunConfiguration.from_mapping({"script": "train.py", "environment_variables": {"SEED": "7"}})
    assert good.environment_variables == {"SEED": "7"}
    with pytest.raises(ConfigError, match="environment_variables"):
        RunConfiguration.from_mapping({"script": "train.py", "environment_variables": {"SEED": 7}})
