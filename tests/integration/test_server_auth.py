"""Tokens and roles on every route group of a real server, over SQLite and PostgreSQL.

Each group is tried with no token, a malformed one, an unknown one, an expired one and a revoked one (all 401,
never an answer), and with a token whose role or ownership does not allow the request (403).
"""

from __future__ import annotations

import hashlib
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pytest
import requests

from rundock.submitter.snapshot import manifest_id
from tests import server_fixtures
from tests.conftest import wait_until
from tests.server_fixtures import ServerHandle

# This module's fixtures: one server per module, over SQLite and over PostgreSQL.
server = server_fixtures.server
store_uri_per_module = server_fixtures.store_uri_per_module

BLOB = b"a blob of a gpu run\n"
DIGEST = hashlib.sha256(BLOB).hexdigest()


@dataclass
class World:
    """Tokens of every kind and a run of alice's on pool gpu, with a stored snapshot and file."""

    server: ServerHandle
    tokens: dict[str, str]
    run_id: str
    snapshot_id: str

    def call(self, who: str | None, method: str, path: str, **kwargs: Any) -> requests.Response:
        session = self.server.session(self.tokens[who] if who else None)
        with session:
            return session.request(method, self.server.url + path, timeout=30, **kwargs)


@pytest.fixture(scope="module")
def world(server: ServerHandle) -> World:
    tokens = {name: server.make_token(name, role, pools) for name, role, pools in (
        ("alice", "user", ()), ("bob", "user", ()), ("agent-gpu", "agent", ("gpu",)),
        ("agent-cpu", "agent", ("cpu",)))}
    tokens["admin"] = server.admin_token
    expiring = server.make_token("short-lived", "user", expires_in_days=1e-5)  # under a second
    revoked = server.create_token("gone", "user")
    tokens["expired"], tokens["revoked"] = expiring, revoked["token"]
    tokens["unknown"] = "rdk_" + "x" * 43
    tokens["malformed"] = "not-a-rundock-token"
    with server.session(server.admin_token) as admin:
        assert admin.delete(server.api(f"/tokens/{revoked['id']}")).status_code == 204
    alice = server.session(tokens["alice"])
    manifest = [{"path": f"train-{time.time_ns()}.py", "digest": DIGEST, "size": len(BLOB), "mode": 0o644}]
    snapshot_id = manifest_id(manifest)
    upload = alice.put(server.api(f"/uploads/{DIGEST}"), params={"offset": 0}, data=BLOB,
                       headers={"X-Rundock-Final": "1"})
    assert upload.json() == {"complete": True}, upload.text
    alice.put(server.api(f"/snapshots/{snapshot_id}"), json={"manifest": manifest}).raise_for_status()
    run = alice.post(server.api("/runs"), json={"experiment": "auth", "target": "gpu", "snapshot_id": snapshot_id,
                                                    "run_definition": {"secrets": ["X"]}})
    run.raise_for_status()
    wait_until(lambda: time.time() > 1.0 + run.json()["created_at"], message="the short-lived token to expire")
    return World(server, tokens, run.json()["run_id"], snapshot_id)


# One request per route group: (group, method, path, keyword arguments, who may not do it -> 403).
Request = Callable[["World"], tuple[str, str, dict[str, Any]]]
GROUPS: dict[str, tuple[Request, list[str]]] = {
    "runs": (lambda w: ("POST", "/api/v1/runs", {"json": {"experiment": "auth"}}), ["agent-gpu"]),
    "run read": (lambda w: ("GET", f"/api/v1/runs/{w.run_id}", {}), ["agent-cpu"]),
    "run data": (lambda w: ("POST", f"/api/v1/runs/{w.run_id}/journal", {"json": {
        "attempt": 1, "source": "agent", "records": [{"seq": 1, "type": "tags", "values": {"k": "v"}}]}}),
        ["bob", "agent-cpu"]),
    "logs": (lambda w: ("PUT", f"/api/v1/runs/{w.run_id}/logs/driver.txt",
                        {"params": {"offset": 0}, "data": b"hello\n"}), ["bob", "agent-cpu"]),
    "snapshots": (lambda w: ("GET", f"/api/v1/snapshots/{w.snapshot_id}", {}), ["agent-cpu"]),
    "models": (lambda w: ("POST", "/api/v1/models/net/versions", {"json": {"path": "outputs/net.pt", "files": []}}),
               ["agent-gpu"]),
    "environments": (lambda w: ("POST", "/api/v1/environments/torch", {"json": {"definition": {"name": "torch"}}}),
                     ["agent-gpu"]),
    "admin": (lambda w: ("GET", "/api/v1/admin/snapshots", {}), ["alice", "agent-gpu"]),
    "blobs": (lambda w: ("GET", f"/api/v1/blobs/{DIGEST}", {}), ["agent-cpu"]),
    "uploads": (lambda w: ("GET", f"/api/v1/uploads/{DIGEST}", {}), []),  # every role uploads
    "secrets": (lambda w: ("PUT", "/api/v1/secrets/AUTH_TEST", {"json": {"value": "v"}}), ["agent-gpu"]),
    "run secrets": (lambda w: ("GET", f"/api/v1/runs/{w.run_id}/secrets", {"params": {"name": "X"}}),
                    ["bob", "agent-cpu"]),
    "tokens": (lambda w: ("GET", "/api/v1/tokens", {}), ["alice", "agent-gpu"]),
    "server": (lambda w: ("GET", "/api/v1/whoami", {}), []),
    "openapi": (lambda w: ("GET", "/openapi.json", {}), []),
}
BAD = ["none", "malformed", "unknown", "expired", "revoked"]


@pytest.mark.parametrize("case", BAD)
@pytest.mark.parametrize("group", sorted(GROUPS))
def test_a_bad_token_gets_401_on_every_group(world: World, group: str, case: str) -> None:
    method, path, kwargs = GROUPS[group][0](world)
    answer = world.call(None if case == "none" else case, method, path, **kwargs)
    assert answer.status_code == 401, answer.text
    assert answer.json()["error"]["code"] == "unauthorized"
    assert answer.headers["www-authenticate"] == "Bearer"
    word = {"none": "needs a token", "malformed": "not a rundock server token", "unknown": "unknown token",
            "expired": "expired", "revoked": "revoked"}[case]
    assert word in answer.json()["error"]["message"]


WRONG = [(group, who) for group, (_, whos) in sorted(GROUPS.items()) for who in whos]


@pytest.mark.parametrize(("group", "who"), WRONG)
def test_a_token_without_the_right_gets_403(world: World, group: str, who: str) -> None:
    method, path, kwargs = GROUPS[group][0](world)
    answer = world.call(who, method, path, **kwargs)
    assert answer.status_code == 403, answer.text
    error = answer.json()["error"]
    assert error["code"] == "forbidden" and repr(who) in error["message"]


@pytest.mark.parametrize("group", sorted(GROUPS))
def test_the_right_token_gets_through(world: World, group: str) -> None:
    """The same requests succeed for a token that may make them (so the 401s and 403s above mean something)."""
    method, path, kwargs = GROUPS[group][0](world)
    who = {"admin": "admin", "tokens": "admin", "blobs": "agent-gpu", "snapshots": "agent-gpu",
           "run data": "agent-gpu", "logs": "alice"}.get(group, "alice")
    answer = world.call(who, method, path, **kwargs)
    assert answer.status_code < 300, (group, answer.text)


def test_health_checks_are_the_only_anonymous_routes(world: World) -> None:
    assert world.call(None, "GET", "/healthz").json() == {"status": "ok"}
    assert world.call(None, "GET", "/readyz").status_code == 200
    assert world.call(None, "GET", "/docs").status_code in (401, 404)
    assert world.call(None, "GET", "/redoc").status_code in (401, 404)


def test_revoking_a_token_takes_effect_at_once(world: World) -> None:
    created = world.server.create_token("carol", "user")
    with world.server.session(created["token"]) as carol:
        assert carol.get(world.server.api("/whoami")).json()["name"] == "carol"
        world.call("admin", "DELETE", f"/api/v1/tokens/{created['id']}").raise_for_status()
        assert carol.get(world.server.api("/whoami")).status_code == 401


def test_revoking_with_the_cli_takes_effect_within_a_second(world: World) -> None:
    created = world.server.create_token("dave", "user")
    with world.server.session(created["token"]) as dave:
        assert dave.get(world.server.api("/whoami")).status_code == 200  # now in the server's cache
        subprocess.run([sys.executable, "-m", "rundock.server", "token", "revoke", created["id"], "--config",
                        str(world.server.config_path)], check=True, capture_output=True, timeout=60)
        revoked_at = time.monotonic()
        wait_until(lambda: dave.get(world.server.api("/whoami")).status_code == 401, timeout=5,
                   message="the revoked token to be refused")
        assert time.monotonic() - revoked_at <= 1.5


def test_whoami_says_who_and_what(world: World) -> None:
    answer = world.call("agent-gpu", "GET", "/api/v1/whoami").json()
    assert answer == {"name": "agent-gpu", "role": "agent", "pools": ["gpu"], "expires_at": None}
