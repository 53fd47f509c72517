"""Team secrets on a real server: who may set, list and delete them, which runs may read them and when, and
that a value never lands in the access log or the database unencrypted."""

from __future__ import annotations

import secrets
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import requests

from tests import server_fixtures
from tests.conftest import wait_until
from tests.server_fixtures import ServerHandle

# This module's fixtures: one server per module, over SQLite and over PostgreSQL.
server = server_fixtures.server
store_uri_per_module = server_fixtures.store_uri_per_module


@dataclass
class Team:
    server: ServerHandle
    sessions: dict[str, requests.Session]
    value: str

    def __getitem__(self, name: str) -> requests.Session:
        return self.sessions[name]

    def api(self, path: str) -> str:
        return self.server.api(path)


@pytest.fixture(scope="module")
def team(server: ServerHandle) -> Iterator[Team]:
    sessions = {"admin": server.session(server.admin_token)}
    for name, role, pools in (("alice", "user", ()), ("bob", "user", ()), ("agent-gpu", "agent", ("gpu",)),
                              ("agent-cpu", "agent", ("cpu",))):
        sessions[name] = server.session(server.make_token(name, role, pools))
    value = f"pa55-{secrets.token_hex(12)}"
    answer = sessions["alice"].put(server.api("/secrets/DB_PASSWORD"), json={"value": value})
    assert answer.status_code == 204, answer.text
    yield Team(server, sessions, value)
    for session in sessions.values():
        session.close()


def new_run(team: Team, secrets_listed: list[str] | None, target: str = "gpu") -> str:
    definition = {"script": "train.py"} if secrets_listed is None else {"secrets": secrets_listed}
    answer = team["alice"].post(team.api("/runs"), json={"experiment": "secrets", "target": target,
                                                         "run_definition": definition})
    answer.raise_for_status()
    return str(answer.json()["run_id"])


def read(team: Team, who: str, run_id: str, *names: str) -> requests.Response:
    return team[who].get(team.api(f"/runs/{run_id}/secrets"), params=[("name", n) for n in names])


def test_the_runs_agent_and_submitter_read_its_secrets_while_it_is_live(team: Team) -> None:
    run_id = new_run(team, ["DB_PASSWORD", "NOT_SET_YET"])
    for who in ("alice", "agent-gpu"):
        answer = read(team, who, run_id, "DB_PASSWORD", "NOT_SET_YET")
        assert answer.status_code == 200, answer.text
        assert answer.json() == {"values": {"DB_PASSWORD": team.value, "NOT_SET_YET": None}}
    for status in ("Starting", "Preparing", "Queued", "Running"):
        team["agent-gpu"].post(team.api(f"/runs/{run_id}/transitions"), json={"status": status}).raise_for_status()
    assert read(team, "agent-gpu", run_id, "DB_PASSWORD").json()["values"]["DB_PASSWORD"] == team.value
    team["agent-gpu"].post(team.api(f"/runs/{run_id}/transitions"), json={"status": "Completed"}).raise_for_status()
    for who in ("alice", "agent-gpu"):
        ended = read(team, who, run_id, "DB_PASSWORD")
        assert ended.status_code == 403 and "has ended" in ended.json()["error"]["message"]


@pytest.mark.parametrize("who", ["bob", "agent-cpu", "admin"])
def test_nobody_else_reads_a_runs_secrets(team: Team, who: str) -> None:
    run_id = new_run(team, ["DB_PASSWORD"])
    refused = read(team, who, run_id, "DB_PASSWORD")
    assert refused.status_code == 403 and team.value not in refused.text


def test_only_names_the_run_definition_lists_are_handed_out(team: Team) -> None:
    listed = new_run(team, ["OTHER"])
    refused = read(team, "alice", listed, "DB_PASSWORD")
    assert refused.status_code == 403 and "'DB_PASSWORD'" in refused.json()["error"]["message"]
    unlisted = new_run(team, None)  # a run that lists none gets none
    assert read(team, "agent-gpu", unlisted, "DB_PASSWORD").status_code == 403
    assert read(team, "alice", listed).status_code == 400  # no name asked for
    assert read(team, "alice", "no-such-run", "DB_PASSWORD").status_code == 404


def test_secrets_are_listed_by_name_and_changed_only_by_who_set_them(team: Team) -> None:
    assert team["bob"].put(team.api("/secrets/BOBS"), json={"value": "b"}).status_code == 204
    names = team["alice"].get(team.api("/secrets")).json()
    assert {"DB_PASSWORD", "BOBS"} <= set(names) and team.value not in str(names)
    assert team["agent-gpu"].get(team.api("/secrets")).status_code == 403
    taken = team["bob"].put(team.api("/secrets/DB_PASSWORD"), json={"value": "stolen"})
    assert taken.status_code == 403 and "'alice'" in taken.json()["error"]["message"]
    assert team["bob"].delete(team.api("/secrets/DB_PASSWORD")).status_code == 403
    assert team["alice"].delete(team.api("/secrets/BOBS")).status_code == 403
    assert team["admin"].delete(team.api("/secrets/BOBS")).status_code == 204
    assert team["bob"].delete(team.api("/secrets/BOBS")).status_code == 404
    bad = team["alice"].put(team.api("/secrets/has space"), json={"value": "x"})
    assert bad.status_code == 400 and "secret name" in bad.json()["error"]["message"]
    assert team["alice"].put(team.api("/secrets/EMPTY"), json={"value": ""}).status_code == 400


def test_a_value_is_neither_logged_nor_stored_in_clear(team: Team) -> None:
    run_id = new_run(team, ["DB_PASSWORD"])
    assert read(team, "agent-gpu", run_id, "DB_PASSWORD").json()["values"]["DB_PASSWORD"] == team.value
    wait_until(lambda: f"/api/v1/runs/{run_id}/secrets" in team.server.log_path.read_text(),
               message="the request's access-log line")  # written once the answer has gone out
    log = team.server.log_path.read_text()
    assert team.value not in log and "DB_PASSWORD" not in log.split(f"/runs/{run_id}/secrets")[1][:200]
    assert "Bearer" not in log and "rdk_" not in log  # neither the query nor a token
    assert team.value.encode() not in database_bytes(team.server)


def database_bytes(server: ServerHandle) -> bytes:
    """Everything the history's database holds: the SQLite files, or every row of the PostgreSQL schema."""
    if server.store_uri.startswith("sqlite:"):
        folder = Path(server.store_uri[len("sqlite:///"):]).parent
        return b"".join(p.read_bytes() for p in folder.iterdir() if p.is_file())
    import psycopg

    with psycopg.connect(server.store_uri, autocommit=True) as conn:
        tables = [r[0] for r in conn.execute("SELECT tablename FROM pg_tables WHERE schemaname = current_schema()")]
        assert "rundock_server_secrets" in tables
        return b"".join(str(conn.execute(f"SELECT * FROM {t}").fetchall()).encode() for t in tables)
