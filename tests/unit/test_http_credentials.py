"""Where the team-server client keeps tokens and trusted certificates, and how it finds them (no server needed)."""

from __future__ import annotations

import json
import stat
from pathlib import Path

import pytest

from rundock.history.backends import http_credentials as creds
from rundock.history.backends.http import json_chunks
from tests.server_fixtures import self_signed_certificate


@pytest.fixture(autouse=True)
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("RUNDOCK_HOME", str(tmp_path / "home"))
    monkeypatch.delenv("RUNDOCK_TOKEN", raising=False)
    return tmp_path / "home"


@pytest.mark.parametrize("url, key", [
    ("https://Runs.Lab:8765/", "https://runs.lab:8765"),
    ("https://runs.lab", "https://runs.lab:443"),
    ("http://10.0.0.5", "http://10.0.0.5:80"),
    ("https://runs.lab:8765/team/", "https://runs.lab:8765/team"),
    ("http://[::1]:8765", "http://[::1]:8765"),
])
def test_a_server_is_known_by_one_normalized_url(url: str, key: str) -> None:
    assert creds.server_key(url) == key


@pytest.mark.parametrize("url", ["runs.lab:8765", "ftp://runs.lab", "https://", "https://u:p@runs.lab",
                                 "https://runs.lab?x=1", "https://runs.lab:99999"])
def test_what_is_not_a_server_url_is_refused_with_an_example(url: str) -> None:
    with pytest.raises(ValueError, match="server URL"):
        creds.server_key(url)


def test_tokens_are_kept_private_and_found_in_order(home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    assert creds.find_token("https://runs.lab:8765") is None
    creds.save_login("https://runs.lab:8765/", "rdk_saved", name="alice", role="user")
    assert stat.S_IMODE((home / "credentials.json").stat().st_mode) == 0o600
    assert stat.S_IMODE(home.stat().st_mode) == 0o700
    assert creds.find_token("https://RUNS.lab:8765") == "rdk_saved"
    assert creds.find_token("https://runs.lab:9999") is None  # another server
    monkeypatch.setenv("RUNDOCK_TOKEN", "rdk_env")
    assert creds.find_token("https://runs.lab:8765") == "rdk_env"
    assert creds.find_token("https://runs.lab:8765", "rdk_given") == "rdk_given"
    assert creds.forget_login("https://runs.lab:8765") and not creds.forget_login("https://runs.lab:8765")
    assert creds.saved_login("https://runs.lab:8765") is None


def test_a_damaged_credentials_file_says_how_to_fix_it(home: Path) -> None:
    home.mkdir()
    (home / "credentials.json").write_text("{not json")
    with pytest.raises(ValueError, match="rundock login"):
        creds.find_token("https://runs.lab")


def test_a_trusted_certificate_is_kept_per_server_with_its_fingerprint(home: Path, tmp_path: Path) -> None:
    cert, _ = self_signed_certificate(tmp_path)
    pem = cert.read_text()
    assert creds.trusted_cert("https://runs.lab:8765") is None
    path = creds.trust_cert("https://runs.lab:8765", pem)
    assert creds.trusted_cert("https://runs.lab:8765/") == path
    assert stat.S_IMODE(Path(path).stat().st_mode) == 0o600
    assert stat.S_IMODE(Path(path).parent.stat().st_mode) == 0o700
    fingerprint = creds.trusted_fingerprint("https://runs.lab:8765")
    assert fingerprint is not None and len(fingerprint.split(":")) == 32
    assert creds.trusted_cert("https://runs.lab:8766") is None  # another port, another server
    assert creds.forget_cert("https://runs.lab:8765") and creds.trusted_cert("https://runs.lab:8765") is None


def test_batches_are_cut_in_order_within_both_limits() -> None:
    items = list(range(1050))
    parts = list(json_chunks(items, 100, 10**6, lambda part: {"r": part}))
    assert len(parts) == 11 and [x for p in parts for x in json.loads(p)["r"]] == items
    small = list(json_chunks(["x" * 100] * 10, 100, 350, lambda part: {"r": part}))  # the byte limit cuts too
    assert all(len(p) <= 350 for p in small) and sum(p.count(b"x" * 100) for p in small) == 10
    assert len(list(json_chunks(["x" * 1000], 100, 350, lambda part: {"r": part}))) == 1  # one too big goes alone


@pytest.mark.parametrize("url, clear", [("http://runs.lab:8765", True), ("http://10.1.2.3", True),
                                        ("http://127.0.0.1:8765", False), ("http://localhost", False),
                                        ("http://[::1]:8765", False), ("https://runs.lab", False)])
def test_login_warns_only_where_a_token_would_cross_the_network_unencrypted(url: str, clear: bool) -> None:
    from rundock.submitter.credentials import in_clear

    assert in_clear(url) is clear
