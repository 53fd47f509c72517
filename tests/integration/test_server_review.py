"""Attacks on a real team server, and the answers a careful server gives: each test states one rule the server
(or its client) must keep, over SQLite and PostgreSQL where the store matters.

- an agent reads only its pools' runs, snapshots and blobs, however it names them;
- a user changes only its own runs, through the team API and through MLflow's alike;
- what names content (snapshot ids, digests, run ids) is checked before it is stored;
- bad input is a 400, never a 500 or a 503 a client would retry;
- a partial upload is its uploader's alone, and a run token lives no longer than the token that minted it;
- a client that stops sending does not hold a connection for ever (one that keeps sending is never cut off);
- ``rundock login --trust-cert`` trusts the certificate the server presents, whoever issued it.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import ipaddress
import json
import secrets
import socket
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import requests

from tests import server_fixtures
from tests.conftest import wait_until
from tests.server_fixtures import ServerHandle

# This module's fixtures: one server per module, over SQLite and over PostgreSQL.
server = server_fixtures.server
store_uri_per_module = server_fixtures.store_uri_per_module

MLFLOW = "/api/2.0/mlflow"


def _name(prefix: str) -> str:
    """A token or pool name of its own, so the tests of this module never see each other's runs."""
    return f"{prefix}-{secrets.token_hex(3)}"


def _session(server: ServerHandle, token: str) -> requests.Session:
    return server.session(token)


def _create_run(session: requests.Session, server: ServerHandle, **fields: Any) -> str:
    answer = session.post(server.api("/runs"), json={"experiment": "review", **fields}, timeout=30)
    assert answer.status_code == 201, answer.text
    return str(answer.json()["run_id"])


def _upload(session: requests.Session, server: ServerHandle, data: bytes) -> str:
    digest = hashlib.sha256(data).hexdigest()
    answer = session.put(server.api(f"/uploads/{digest}"), params={"offset": 0}, data=data,
                         headers={"X-Rundock-Final": "1"}, timeout=30)
    assert answer.json() == {"complete": True}, answer.text
    return digest


def _manifest_id(manifest: list[dict[str, Any]]) -> str:
    """How a snapshot's id is made from its manifest (``rundock.submitter.snapshot.manifest_id``)."""
    return hashlib.sha256(json.dumps(manifest, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


# -- who may do what ------------------------------------------------------------------------------------------
def test_mlflow_cannot_start_a_child_run_under_another_users_run(server: ServerHandle) -> None:
    """The team API refuses a child under someone else's run (403); MLflow's ``runs/create`` with the tag
    ``mlflow.parentRunId`` must refuse it too, instead of hanging bob's run under alice's."""
    alice = _session(server, server.make_token(_name("alice"), "user"))
    bob = _session(server, server.make_token(_name("bob"), "user"))
    parent = _create_run(alice, server)
    assert bob.post(server.api("/runs"), json={"experiment": "review", "parent_id": parent},
                    timeout=30).status_code == 403

    answer = bob.post(server.url + MLFLOW + "/runs/create", timeout=30, json={
        "experiment_id": "review", "tags": [{"key": "mlflow.parentRunId", "value": parent}]})

    assert answer.status_code == 403, answer.text
    assert answer.json()["error_code"] == "PERMISSION_DENIED"
    children = alice.get(server.api("/runs"), params={"parent_id": parent}, timeout=30).json()
    assert children == [], f"bob's run was made a child of alice's run: {children}"


def test_agent_cannot_read_another_pools_blob_by_naming_its_digest(server: ServerHandle) -> None:
    """An agent reads the blobs of its pools' runs only. Naming the digest of another pool's file (every agent
    sees model files' digests in ``GET /models``) in a file record of its own run must not open that blob."""
    pool, other = _name("gpu"), _name("private")
    alice = _session(server, server.make_token(_name("alice"), "user"))
    agent = _session(server, server.make_token(_name("agent"), "agent", [pool]))
    weights = b"weights of a private model " + secrets.token_bytes(8)
    digest = _upload(alice, server, weights)
    private_run = _create_run(alice, server, target=other)
    record = {"seq": 1, "type": "file", "name": "outputs/model.bin", "digest": digest, "size": len(weights), "t": 1.0}
    assert alice.post(server.api(f"/runs/{private_run}/journal"), timeout=30,
                      json={"attempt": 0, "source": "agent", "records": [record]}).status_code == 200
    model = _name("model")
    assert alice.post(server.api(f"/models/{model}/versions"), timeout=30, json={
        "run_id": private_run, "path": "outputs/model.bin",
        "files": [{"name": "model.bin", "digest": digest, "size": len(weights), "at": 1.0}]}).status_code == 200
    assert agent.get(server.api(f"/blobs/{digest}"), timeout=30).status_code == 403
    seen = [f["digest"] for m in agent.get(server.api("/models"), params={"name": model}, timeout=30).json()
            for f in m["files"]]
    own_run = _create_run(alice, server, target=pool)

    agent.post(server.api(f"/runs/{own_run}/journal"), timeout=30, json={"attempt": 0, "source": "agent", "records": [
        {**record, "name": "outputs/stolen.bin", "digest": seen[0] if seen else digest}]})
    answer = agent.get(server.api(f"/blobs/{digest}"), timeout=30)

    assert answer.status_code == 403, f"the agent of pool {pool} read a blob of pool {other}: {answer.content!r}"


def test_agent_cannot_read_another_pools_snapshot_by_pointing_its_run_at_it(server: ServerHandle) -> None:
    """An agent reads the snapshots of its pools' runs only; changing the ``snapshot_id`` of a run of its pool
    to another pool's snapshot must not open that snapshot (and its blobs)."""
    pool, other = _name("gpu"), _name("private")
    alice = _session(server, server.make_token(_name("alice"), "user"))
    agent = _session(server, server.make_token(_name("agent"), "agent", [pool]))
    source = b"API_KEY = 'from a private training script' " + secrets.token_bytes(8)
    manifest = [{"path": "train.py", "digest": _upload(alice, server, source), "size": len(source), "mode": 0o644}]
    snapshot_id = _manifest_id(manifest)
    assert alice.put(server.api(f"/snapshots/{snapshot_id}"), json={"manifest": manifest}, timeout=30).ok
    _create_run(alice, server, target=other, snapshot_id=snapshot_id)
    own_run = _create_run(alice, server, target=pool)
    assert agent.get(server.api(f"/snapshots/{snapshot_id}"), timeout=30).status_code == 403

    agent.patch(server.api(f"/runs/{own_run}"), json={"snapshot_id": snapshot_id}, timeout=30)
    answer = agent.get(server.api(f"/snapshots/{snapshot_id}"), timeout=30)

    assert answer.status_code == 403, f"the agent of pool {pool} read a snapshot of pool {other}: {answer.text}"


def test_an_agent_that_holds_a_blobs_bytes_may_name_it_even_when_the_server_had_it(server: ServerHandle) -> None:
    """Two pools' jobs may make the same bytes. To an agent, a blob it may not read is missing, whoever stored it:
    its client then sends the bytes (proving it holds them) and may name the blob in its run's files."""
    pool = _name("gpu")
    alice = _session(server, server.make_token(_name("alice"), "user"))
    agent = _session(server, server.make_token(_name("agent"), "agent", [pool]))
    shared = b"a checkpoint both pools downloaded " + secrets.token_bytes(8)
    digest = _upload(alice, server, shared)
    own_run = _create_run(alice, server, target=pool)
    assert agent.post(server.api("/blobs/missing"), json={"digests": [digest]}, timeout=30).json() == \
        {"missing": [digest]}
    assert agent.get(server.api(f"/uploads/{digest}"), timeout=30).json() == {"offset": 0}

    assert _upload(agent, server, shared) == digest
    answer = agent.post(server.api(f"/runs/{own_run}/journal"), timeout=30, json={"attempt": 0, "source": "agent",
                        "records": [{"seq": 1, "type": "file", "name": "outputs/ckpt.bin", "digest": digest,
                                     "size": len(shared), "t": 1.0}]})

    assert answer.status_code == 200, answer.text
    assert agent.get(server.api(f"/blobs/{digest}"), timeout=30).content == shared
    assert agent.post(server.api("/blobs/missing"), json={"digests": [digest]}, timeout=30).json() == {"missing": []}


def test_a_run_token_dies_with_the_token_that_minted_it(server: ServerHandle) -> None:
    """A job's run token (``rdkrun_…``) is good only while the token that minted it is: revoking a user's token
    (a laptop lost) or its expiry ends the run tokens it handed to jobs, not 30 days later."""
    created = server.create_token(_name("carol"), "user")
    carol = _session(server, str(created["token"]))
    run_id = _create_run(carol, server)
    run_token = carol.post(server.api(f"/runs/{run_id}/run-token"), timeout=30).json()["token"]
    job = _session(server, run_token)

    def log_metric() -> requests.Response:
        return job.post(server.url + MLFLOW + "/runs/log-metric", timeout=30, json={
            "run_id": run_id, "key": "loss", "value": 0.5, "timestamp": 1000, "step": 0})

    assert log_metric().status_code == 200
    admin = _session(server, server.admin_token)
    assert admin.delete(server.api(f"/tokens/{created['id']}"), timeout=30).status_code == 204
    wait_until(lambda: log_metric().status_code == 401, timeout=10, message="the run token to be refused")
    refused = log_metric().json()
    assert refused["error_code"] == "UNAUTHENTICATED" and "revoked" in refused["message"], refused

    short = server.create_token(_name("dave"), "user", expires_in_days=3 / 86400)
    dave = _session(server, str(short["token"]))
    minted = dave.post(server.api(f"/runs/{_create_run(dave, server)}/run-token"), timeout=30).json()
    assert minted["expires_at"] <= short["expires_at"], "a run token outlives the token that minted it"


def test_a_partial_upload_of_another_token_never_spoils_an_upload(server: ServerHandle) -> None:
    """Anyone may start uploading any digest. What mallory leaves half-sent for a digest must not turn alice's
    upload of it into a "digest mismatch": each token resumes its own partial upload only."""
    mallory = _session(server, server.make_token(_name("mallory"), "user"))
    alice = _session(server, server.make_token(_name("alice"), "user"))
    data = b"alice's results " + secrets.token_bytes(4000)
    digest = hashlib.sha256(data).hexdigest()
    started = mallory.put(server.api(f"/uploads/{digest}"), params={"offset": 0}, data=b"junk" * 500, timeout=30)
    assert started.json() == {"offset": 2000}, started.text

    assert alice.get(server.api(f"/uploads/{digest}"), timeout=30).json() == {"offset": 0}
    assert _upload(alice, server, data) == digest

    assert alice.get(server.api(f"/blobs/{digest}"), timeout=30).content == data
    finished = mallory.put(server.api(f"/uploads/{digest}"), params={"offset": 2000}, data=b"",
                           headers={"X-Rundock-Final": "1"}, timeout=30)
    assert finished.json() == {"complete": True}, finished.text  # a user reads every blob: it is there
    assert alice.get(server.api(f"/blobs/{digest}"), timeout=30).content == data


# -- what names content is checked ------------------------------------------------------------------------------
def test_a_snapshot_is_stored_only_under_the_id_of_its_manifest(server: ServerHandle) -> None:
    """Snapshot ids are the SHA-256 of their manifest, and a known id is never stored again. So a manifest sent
    under another manifest's id would be what every later run of that id executes (a pruned snapshot submitted
    again, a rerun): the server must refuse a manifest whose id is not its own."""
    mallory = _session(server, server.make_token(_name("agent"), "agent", [_name("pool")]))
    alice = _session(server, server.make_token(_name("alice"), "user"))
    honest = [{"path": "train.py", "digest": hashlib.sha256(b"print('hi')\n").hexdigest(), "size": 12, "mode": 420}]
    evil = [{"path": "train.py", "digest": hashlib.sha256(b"import os; os.system('...')\n").hexdigest(),
             "size": 28, "mode": 420}]
    snapshot_id = _manifest_id(honest)

    answer = mallory.put(server.api(f"/snapshots/{snapshot_id}"), json={"manifest": evil}, timeout=30)

    assert answer.status_code == 400, f"a manifest was stored under another manifest's id: {answer.text}"
    alice.put(server.api(f"/snapshots/{snapshot_id}"), json={"manifest": honest}, timeout=30)
    assert alice.get(server.api(f"/snapshots/{snapshot_id}"), timeout=30).json()["manifest"] == honest


def test_a_file_record_must_name_a_sha256_digest(server: ServerHandle) -> None:
    """Blobs are named by their SHA-256 in lowercase hex; a file record naming anything else is bad input
    (it would name no blob, or a path, wherever the digest is used)."""
    alice = _session(server, server.make_token(_name("alice"), "user"))
    run_id = _create_run(alice, server)

    answer = alice.post(server.api(f"/runs/{run_id}/journal"), timeout=30, json={"attempt": 0, "source": "agent",
                        "records": [{"seq": 1, "type": "file", "name": "outputs/x", "digest": "../../../etc/passwd",
                                     "size": 1, "t": 1.0}]})

    assert answer.status_code == 400, answer.text
    assert alice.get(server.api(f"/runs/{run_id}/files"), timeout=30).json() == {}


@pytest.mark.parametrize("run_id", ["a/../b", "../../etc", "with\u0000nul"])
def test_a_run_id_that_could_be_a_path_is_refused(server: ServerHandle, run_id: str) -> None:
    """Run ids become folder names on compute hosts (``runs/<run_id>``); the submitter allows letters, digits,
    ``_ . -`` and no ``..`` (``context.records.check_run_id``), and the server must hold every client to that."""
    alice = _session(server, server.make_token(_name("alice"), "user"))

    answer = alice.post(server.api("/runs"), json={"experiment": "review", "run_id": run_id}, timeout=30)

    assert answer.status_code == 400, answer.text
    assert "run_id" in answer.json()["error"]["message"]


# -- bad input is a 400 -----------------------------------------------------------------------------------------
@pytest.mark.parametrize("request_kind", ["log offset", "journal seq", "journal attempt", "metric step"])
def test_an_integer_beyond_64_bits_is_bad_input(server: ServerHandle, request_kind: str) -> None:
    """A number the history cannot hold is a 400 naming the problem, as PostgreSQL's history answers; never a
    500 ``internal`` error."""
    alice = _session(server, server.make_token(_name("alice"), "user"))
    run_id = _create_run(alice, server)
    huge = 2 ** 70
    journal = server.api(f"/runs/{run_id}/journal")
    if request_kind == "log offset":
        answer = alice.put(server.api(f"/runs/{run_id}/logs/driver.txt"), params={"offset": huge}, data=b"x",
                           timeout=30)
    elif request_kind == "journal seq":
        answer = alice.post(journal, timeout=30, json={"attempt": 0, "source": "a", "records": [
            {"seq": huge, "type": "tags", "values": {"k": "v"}}]})
    elif request_kind == "journal attempt":
        answer = alice.post(journal, timeout=30, json={"attempt": huge, "source": "a", "records": [
            {"seq": 1, "type": "tags", "values": {"k": "v"}}]})
    else:
        answer = alice.post(journal, timeout=30, json={"attempt": 0, "source": "a", "records": [
            {"seq": 1, "type": "metric", "name": "loss", "value": 1.0, "step": huge}]})

    assert answer.status_code == 400, answer.text


@pytest.mark.parametrize("route", ["plan", "mlflow log-batch"])
def test_deeply_nested_json_is_bad_input(server: ServerHandle, route: str) -> None:
    """A body nested 100,000 levels deep is refused with 400 (the journal route already does so), not a 500."""
    alice = _session(server, server.make_token(_name("alice"), "user"))
    run_id = _create_run(alice, server)
    nested = b"[" * 100_000 + b"]" * 100_000
    if route == "plan":
        url, body = server.api(f"/runs/{run_id}/plan"), b'{"tags":' + nested + b"}"
    else:
        url, body = server.url + MLFLOW + "/runs/log-batch", b'{"run_id":"' + run_id.encode() + b'","metrics":' + \
            nested + b"}"

    answer = alice.post(url, data=body, headers={"Content-Type": "application/json"}, timeout=60)

    assert answer.status_code == 400, answer.text


def test_a_transition_at_a_time_that_is_not_a_number_is_bad_input(server: ServerHandle) -> None:
    """``at: NaN`` is bad input (400). SQLite's history answered 503 "unavailable", which clients retry for half a
    minute; PostgreSQL's stored NaN as the time of the change."""
    alice = _session(server, server.make_token(_name("alice"), "user"))
    run_id = _create_run(alice, server)

    answer = alice.post(server.api(f"/runs/{run_id}/transitions"), data='{"status": "Starting", "at": NaN}',
                        headers={"Content-Type": "application/json"}, timeout=30)

    assert answer.status_code == 400, answer.text
    assert alice.get(server.api(f"/runs/{run_id}"), timeout=30).json()["status"] == "NotStarted"


def test_errors_do_not_name_the_servers_database(server: ServerHandle) -> None:
    """The server keeps its own file paths out of answers (``errors.scrub``); the address of its PostgreSQL
    database is no more a client's business."""
    if not server.store_uri.startswith("postgresql"):
        pytest.skip("the SQLite history's paths are already scrubbed from answers")
    alice = _session(server, server.make_token(_name("alice"), "user"))

    answer = alice.post(server.api("/runs"), json={"experiment": "review", "run_id": "x" + "\u0000"}, timeout=30)
    refused = alice.patch(server.api(f"/runs/{_create_run(alice, server)}"), json={"display_name": "x\u0000"},
                          timeout=30)  # PostgreSQL itself refuses the value

    assert answer.status_code == 400
    assert "postgresql:" not in answer.text, answer.text
    assert refused.status_code == 400
    assert "postgresql:" not in refused.text, refused.text


# -- connections ------------------------------------------------------------------------------------------------
STALLED_LIMIT_S = 60.0


def _closed_within(sock: socket.socket, seconds: float) -> bool:
    """Whether the server closes (or answers on) ``sock`` within ``seconds``."""
    sock.settimeout(seconds)
    try:
        sock.recv(1)
    except TimeoutError:
        return False
    except OSError:
        return True
    return True


def test_a_client_that_stops_sending_is_cut_off(tmp_path: Path) -> None:
    """Anyone who reaches the port can open connections and send half a request. A connection that sends
    nothing more for a minute is closed; otherwise a few thousand of them take every file descriptor.
    (The server here waits 3 s rather than its default minute; an upload that keeps sending is never cut off.)"""
    with server_fixtures.running_server(tmp_path, extra_args=["--request-timeout-seconds", "3"]) as server:
        _check_stalled_requests_are_cut_off(server)
        _check_a_slow_upload_that_keeps_sending_completes(server)


def _check_a_slow_upload_that_keeps_sending_completes(server: ServerHandle) -> None:
    pieces = [secrets.token_bytes(1000) for _ in range(4)]
    data = b"".join(pieces)

    def trickle() -> Iterator[bytes]:
        for piece in pieces:
            time.sleep(2.0)  # each pause under the server's 3 s; all of them well over it
            yield piece

    alice = _session(server, server.make_token(_name("alice"), "user"))
    digest = hashlib.sha256(data).hexdigest()
    answer = alice.put(server.api(f"/uploads/{digest}"), params={"offset": 0}, data=trickle(),
                       headers={"X-Rundock-Final": "1"}, timeout=60)
    assert answer.json() == {"complete": True}, answer.text
    assert alice.get(server.api(f"/blobs/{digest}"), timeout=30).content == data


def _check_stalled_requests_are_cut_off(server: ServerHandle) -> None:
    parts = urlsplit(server.url)
    host, port = parts.hostname or "127.0.0.1", parts.port or 80
    half_headers = socket.create_connection((host, port))
    half_body = socket.create_connection((host, port))
    try:
        half_headers.sendall(b"POST /api/v1/runs HTTP/1.1\r\nHost: x\r\n")
        half_body.sendall(f"POST /api/v1/runs HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {server.admin_token}\r\n"
                          "Content-Type: application/json\r\nContent-Length: 100\r\n\r\n{".encode())
        started = time.monotonic()
        assert _closed_within(half_headers, STALLED_LIMIT_S), "a request stalled in its headers was kept open"
        left = max(1.0, STALLED_LIMIT_S - (time.monotonic() - started))
        assert _closed_within(half_body, left), "a request stalled in its body was kept open"
    finally:
        half_headers.close()
        half_body.close()


# -- the client -------------------------------------------------------------------------------------------------
def _ca_issued_certificate(folder: Path) -> tuple[Path, Path]:
    """A server certificate for 127.0.0.1 issued by a private CA (as a company's own CA issues them), written
    with its chain; ``ca.pem`` beside it is the CA."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    now = dt.datetime.now(dt.timezone.utc)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "Lab CA")])
    ca = (x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name).public_key(ca_key.public_key())
          .serial_number(x509.random_serial_number()).not_valid_before(now - dt.timedelta(minutes=5))
          .not_valid_after(now + dt.timedelta(days=1))
          .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
          .sign(ca_key, hashes.SHA256()))
    key = ec.generate_private_key(ec.SECP256R1())
    leaf = (x509.CertificateBuilder().subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")]))
            .issuer_name(ca_name).public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5)).not_valid_after(now + dt.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([x509.DNSName("localhost"),
                                                        x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
                           critical=False)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .sign(ca_key, hashes.SHA256()))
    pem = serialization.Encoding.PEM
    cert_path, key_path = folder / "cert.pem", folder / "key.pem"
    cert_path.write_bytes(leaf.public_bytes(pem) + ca.public_bytes(pem))
    key_path.write_bytes(key.private_bytes(pem, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
    key_path.chmod(0o600)
    (folder / "ca.pem").write_bytes(ca.public_bytes(pem))
    return cert_path, key_path


@pytest.fixture()
def ca_issued_server(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[ServerHandle]:
    monkeypatch.setattr(server_fixtures, "self_signed_certificate", _ca_issued_certificate)
    with server_fixtures.running_server(tmp_path, tls=True) as handle:
        yield handle


def test_trust_cert_trusts_a_certificate_issued_by_a_private_ca(ca_issued_server: ServerHandle, tmp_path: Path,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    """``rundock login URL --trust-cert`` trusts the certificate the server presents. A server certificate issued
    by a company's own CA (not in the client's CA bundle) is the usual reason to use it; once trusted, the client
    must talk to that server, not call the very certificate it was told to trust "not verified"."""
    from rundock.history.backends import http_credentials as creds
    from rundock.history.backends.http import HttpRunStore

    monkeypatch.setenv("RUNDOCK_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("RUNDOCK_HTTP_RETRY_SECONDS", "2")
    url = ca_issued_server.url
    creds.trust_cert(url, creds.fetch_cert(url))
    store = HttpRunStore(url, token=ca_issued_server.admin_token)
    try:
        assert store.whoami()["role"] == "admin"
    finally:
        store.close()
