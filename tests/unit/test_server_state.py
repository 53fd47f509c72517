"""The server's tables (tokens, secrets) over SQLite and PostgreSQL, and the encryption of secret values."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from rundock.errors import StoreVersionError
from rundock.server.crypto import SecretBox, write_key_file
from rundock.server.state import SCHEMA_VERSION, ServerState, open_state
from rundock.server.tokens import hash_token, issue_token


@pytest.fixture(params=["sqlite", "postgresql"])
def state(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[ServerState]:
    if request.param == "sqlite":
        opened = open_state(f"sqlite:///{tmp_path / 'history.db'}")
        yield opened
        opened.close()
        return
    from tests import pg

    with pg.fresh_schema() as uri:
        opened = open_state(uri)
        yield opened
        opened.close()


def test_tables_are_made_by_migrate_never_by_opening(state: ServerState) -> None:
    with pytest.raises(StoreVersionError, match="rundock server init"):
        state.check()
    assert state.migrate() == (0, SCHEMA_VERSION)
    assert state.migrate() == (SCHEMA_VERSION, SCHEMA_VERSION)
    state.check()
    assert state.history_id() == state.history_id()


def test_tokens_are_found_by_hash_listed_and_revoked(state: ServerState) -> None:
    state.migrate()
    record, token = issue_token(state, "gpu-box", "agent", ["a100", "a100", "h100"], 30)
    assert token.startswith("rdk_") and len(token) > 40
    found = state.token_by_hash(hash_token(token))
    assert found is not None and found.pools == ("a100", "h100") and found.role == "agent"
    assert found.expires_at is not None and found.expires_at > found.created_at + 29 * 86400
    assert state.token_by_hash(hash_token(token + "x")) is None
    assert [t.name for t in state.list_tokens()] == ["gpu-box"]
    assert state.revoke_token(record.token_id)
    revoked = state.token_by_hash(hash_token(token))
    assert revoked is not None and revoked.revoked_at is not None
    assert not state.revoke_token("tok_nope")


@pytest.mark.parametrize(("name", "role", "pools", "days", "field"), [
    ("bad name!", "user", [], None, "name"), ("ci", "root", [], None, "role"), ("box", "agent", [], None, "pools"),
    ("alice", "user", ["gpu"], None, "pools"), ("alice", "user", [], 0, "expires_in_days"),
])
def test_a_bad_token_request_names_the_field(state: ServerState, name: str, role: str, pools: list[str],
                                             days: float | None, field: str) -> None:
    state.migrate()
    with pytest.raises(ValueError, match=f"field '{field}'"):
        issue_token(state, name, role, pools, days)


def test_secrets_are_stored_as_given_and_listed_by_name(state: ServerState, tmp_path: Path) -> None:
    state.migrate()
    write_key_file(str(tmp_path / "key"))
    box = SecretBox((tmp_path / "key").read_text().strip())
    state.put_secret("DB_PASSWORD", box.seal("DB_PASSWORD", "hunter2"), "alice")
    stored = state.get_secret("DB_PASSWORD")
    assert stored is not None and stored.owner == "alice" and b"hunter2" not in stored.value
    assert box.open("DB_PASSWORD", stored.value) == "hunter2"
    with pytest.raises(ValueError, match="belongs to another secret"):
        box.open("OTHER", stored.value)
    assert [s.name for s in state.list_secrets()] == ["DB_PASSWORD"]
    assert state.delete_secret("DB_PASSWORD") and not state.delete_secret("DB_PASSWORD")
    assert state.get_secret("DB_PASSWORD") is None


def test_a_value_sealed_with_another_key_is_refused(tmp_path: Path) -> None:
    write_key_file(str(tmp_path / "one"))
    write_key_file(str(tmp_path / "two"))
    assert not write_key_file(str(tmp_path / "one"))  # never replaced
    sealed = SecretBox((tmp_path / "one").read_text().strip()).seal("K", "v")
    with pytest.raises(ValueError, match="cannot be decrypted"):
        SecretBox((tmp_path / "two").read_text().strip()).open("K", sealed)
    assert oct((tmp_path / "one").stat().st_mode & 0o777) == "0o600"
