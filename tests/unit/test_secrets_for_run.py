"""Which workspace secrets a run may read: RunConfiguration.secrets and SecretStore.for_run."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from rundock.errors import ConfigError
from rundock.runconfig.run_configuration import RunConfiguration
from rundock.submitter.secrets import SecretStore


@pytest.fixture
def store(tmp_path: Path) -> SecretStore:
    secrets = SecretStore(str(tmp_path / "secrets.json"))
    secrets.set_secrets({"db": "s3cret", "api": "k3y"})
    return secrets


def test_local_runs_get_every_secret_unless_they_name_some(store: SecretStore) -> None:
    assert store.for_run(None, remote=False) == {"db": "s3cret", "api": "k3y"}
    assert store.for_run(["db"], remote=False) == {"db": "s3cret"}
    assert store.for_run([], remote=False) == {}


def test_remote_runs_get_only_the_secrets_they_name(store: SecretStore) -> None:
    assert store.for_run(None, remote=True) == {}
    assert store.for_run(["api"], remote=True) == {"api": "k3y"}


def test_a_missing_secret_is_named_with_how_to_add_it(store: SecretStore) -> None:
    for remote in (False, True):
        with pytest.raises(ConfigError, match=r"field 'secrets'.*no secret 'nope'.*`rundock secret set nope`"):
            store.for_run(["db", "nope"], remote=remote)


def test_no_secrets_file_means_no_secrets(tmp_path: Path) -> None:
    assert SecretStore(str(tmp_path / "none.json")).for_run(None, remote=False) == {}


def test_the_run_configuration_lists_secret_names(tmp_path: Path) -> None:
    path = tmp_path / "train.runconfig.yml"
    path.write_text(yaml.safe_dump({"script": "train.py", "secrets": ["db", "api"]}))
    config = RunConfiguration.load(str(path))
    assert config.secrets == ["db", "api"]
    assert RunConfiguration.load(config.save(str(tmp_path / "again.runconfig.yml"))).secrets == ["db", "api"]
    assert RunConfiguration().secrets is None


@pytest.mark.parametrize(("value", "field"), [("db", "secrets"), ([""], r"secrets\[0\]"), (["db", 3], r"secrets\[1\]"),
                                              ([" "], r"secrets\[0\]"), ({"db": 1}, "secrets")])
def test_bad_secret_lists_are_refused(tmp_path: Path, value: object, field: str) -> None:
    path = tmp_path / "bad.runconfig.yml"
    path.write_text(yaml.safe_dump({"script": "train.py", "secrets": value}))
    with pytest.raises(ConfigError, match=rf"bad.runconfig.yml, field '{field}'"):
        RunConfiguration.load(str(path))
    with pytest.raises(ConfigError, match="secret"):
        RunConfiguration(secrets=value).validate("api")  # type: ignore[arg-type]
