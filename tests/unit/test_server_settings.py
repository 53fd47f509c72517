"""The server's settings: flags over environment over file, and errors that name the setting and its source."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest

from rundock.errors import ConfigError
from rundock.server.settings import load_settings, resolve_store, write_config_file

NO_FLAGS: dict[str, str | None] = {}


def config(tmp_path: Path, text: str) -> str:
    path = tmp_path / "server.yaml"
    path.write_text(text)
    return str(path)


def test_a_flag_wins_over_the_environment_which_wins_over_the_file(tmp_path: Path) -> None:
    path = config(tmp_path, "store: sqlite:///from-file.db\nartifacts: blobs\nport: 1111\nhost: 10.0.0.1\n")
    env = {"RUNDOCK_SERVER_PORT": "2222", "RUNDOCK_SERVER_HOST": "0.0.0.0"}
    settings = load_settings({"port": "3333"}, env, path)
    assert settings.port == 3333  # flag
    assert settings.host == "0.0.0.0"  # environment
    assert settings.store == "sqlite:///from-file.db"  # file
    assert settings.artifacts == str(tmp_path / "blobs")  # a path in the file is relative to the file
    assert settings.max_request_bytes == 64 << 20  # default
    assert settings.config_path == path


def test_the_config_file_can_come_from_the_environment(tmp_path: Path) -> None:
    path = config(tmp_path, "store: sqlite:///x.db\nartifacts: /srv/blobs\n")
    assert load_settings(NO_FLAGS, {"RUNDOCK_SERVER_CONFIG": path}).artifacts == "/srv/blobs"


@pytest.mark.parametrize(("flags", "env", "text", "field", "source"), [
    ({}, {"RUNDOCK_SERVER_PORT": "eighty"}, "", "port", "environment variable RUNDOCK_SERVER_PORT"),
    ({"port": "70000"}, {}, "", "port", "--port"),
    ({}, {}, "max_request_bytes: 10\n", "max_request_bytes", "server.yaml"),
    ({}, {}, "colour: blue\n", "colour", "server.yaml"),
])
def test_a_bad_value_names_the_setting_and_where_it_came_from(tmp_path: Path, flags: dict[str, str],
                                                             env: dict[str, str], text: str, field: str,
                                                             source: str) -> None:
    path = config(tmp_path, "store: sqlite:///x.db\nartifacts: blobs\n" + text)
    with pytest.raises(ConfigError) as caught:
        load_settings(flags, env, path)
    assert caught.value.field == field
    assert source in str(caught.value)


def test_store_and_artifacts_are_required(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="--store") as caught:
        load_settings({"artifacts": str(tmp_path)}, {})
    assert caught.value.field == "store"
    with pytest.raises(ConfigError) as caught:
        load_settings({"store": "sqlite:///x.db"}, {})
    assert caught.value.field == "artifacts"


def test_a_certificate_needs_its_key(tmp_path: Path) -> None:
    cert = tmp_path / "cert.pem"
    cert.write_text("x")
    with pytest.raises(ConfigError, match="--tls-key") as caught:
        load_settings({"store": "sqlite:///x.db", "artifacts": "a", "tls_cert": str(cert)}, {})
    assert caught.value.field == "tls_key"


def test_the_secrets_key_comes_from_the_environment_unless_a_key_file_is_named(tmp_path: Path) -> None:
    key_file = tmp_path / "key"
    key_file.write_text("from-file\n")
    base = {"store": "sqlite:///x.db", "artifacts": "a"}
    env = {"RUNDOCK_SECRETS_KEY": "from-env"}
    assert load_settings(base, env).key_text() == "from-env"
    assert load_settings({**base, "secrets_key_file": str(key_file)}, env).key_text() == "from-file"
    with pytest.raises(ConfigError, match="secrets-key-file"):
        load_settings(base, {}).key_text()


def test_the_written_file_is_private_and_reads_back(tmp_path: Path) -> None:
    path = str(tmp_path / "etc" / "server.yaml")
    write_config_file(path, {"store": "sqlite:///h.db", "artifacts": "/srv/a", "port": 9000, "tls_cert": None})
    assert stat.S_IMODE(Path(path).stat().st_mode) == 0o600
    settings = load_settings(NO_FLAGS, {}, path)
    assert (settings.store, settings.artifacts, settings.port, settings.tls_cert) == ("sqlite:///h.db", "/srv/a",
                                                                                      9000, None)
    assert resolve_store(None, path, {}) == "sqlite:///h.db"
    assert resolve_store("sqlite:///flag.db", path, {}) == "sqlite:///flag.db"
