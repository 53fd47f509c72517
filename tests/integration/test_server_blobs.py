"""Blobs over a real server: what is missing, downloads with ranges, resumable uploads that are checked and
streamed (never held whole in memory), and which blobs an agent may read."""

from __future__ import annotations

import hashlib
import os
import socket
from collections.abc import Iterator
from urllib.parse import urlsplit

import psutil
import pytest
import requests

from rundock.submitter.snapshot import manifest_id
from tests import server_fixtures
from tests.conftest import wait_until
from tests.server_fixtures import ServerHandle

# This module's fixtures: one server per module, over SQLite and over PostgreSQL.
server = server_fixtures.server
store_uri_per_module = server_fixtures.store_uri_per_module


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@pytest.fixture(scope="module")
def alice(server: ServerHandle) -> Iterator[requests.Session]:
    with server.session(server.make_token("alice", "user")) as session:
        yield session


def upload(server: ServerHandle, session: requests.Session, data: bytes, offset: int = 0,
           final: bool = True, digest: str | None = None) -> requests.Response:
    headers = {"X-Rundock-Final": "1"} if final else {}
    return session.put(server.api(f"/uploads/{digest or sha(data)}"), params={"offset": offset}, data=data,
                       headers=headers, timeout=60)


def test_missing_names_the_blobs_the_server_lacks(server: ServerHandle, alice: requests.Session) -> None:
    stored, absent = os.urandom(100), os.urandom(100)
    assert upload(server, alice, stored).json() == {"complete": True}
    answer = alice.post(server.api("/blobs/missing"), json={"digests": [sha(stored), sha(absent), sha(absent)]})
    assert answer.json() == {"missing": [sha(absent)]}
    bad = alice.post(server.api("/blobs/missing"), json={"digests": ["../../etc/passwd"]})
    assert bad.status_code == 400 and "SHA-256" in bad.json()["error"]["message"]


def test_a_blob_downloads_whole_or_from_an_offset(server: ServerHandle, alice: requests.Session) -> None:
    data = os.urandom(3 * (1 << 20) + 17)  # larger than a pack entry: a loose blob, read in pieces
    small = b"0123456789"  # stored too: a 10-byte blob
    for blob in (data, small):
        assert upload(server, alice, blob).json() == {"complete": True}
    head = alice.head(server.api(f"/blobs/{sha(data)}"))
    assert head.status_code == 200 and int(head.headers["content-length"]) == len(data)
    whole = alice.get(server.api(f"/blobs/{sha(data)}"))
    assert whole.status_code == 200 and whole.content == data
    rest = alice.get(server.api(f"/blobs/{sha(data)}"), headers={"Range": f"bytes={len(data) - 1000}-"})
    assert rest.status_code == 206 and rest.content == data[-1000:]
    assert rest.headers["content-range"] == f"bytes {len(data) - 1000}-{len(data) - 1}/{len(data)}"
    middle = alice.get(server.api(f"/blobs/{sha(small)}"), headers={"Range": "bytes=2-4"})
    assert middle.status_code == 206 and middle.content == b"234"
    beyond = alice.get(server.api(f"/blobs/{sha(small)}"), headers={"Range": "bytes=10-"})
    assert beyond.status_code == 416 and beyond.headers["content-range"] == "bytes */10"
    assert alice.head(server.api(f"/blobs/{sha(b'never stored')}")).status_code == 404
    assert alice.get(server.api(f"/blobs/{sha(b'never stored')}")).json()["error"]["code"] == "not_found"


def test_an_upload_resumes_from_what_the_server_holds(server: ServerHandle, alice: requests.Session) -> None:
    data = os.urandom(300_000)
    digest = sha(data)
    assert alice.get(server.api(f"/uploads/{digest}")).json() == {"offset": 0}
    assert upload(server, alice, data[:100_000], final=False, digest=digest).json() == {"offset": 100_000}
    assert alice.get(server.api(f"/uploads/{digest}")).json() == {"offset": 100_000}
    wrong = upload(server, alice, data[50_000:], offset=50_000, digest=digest)
    assert wrong.status_code == 409 and wrong.json()["error"]["offset"] == 100_000
    assert upload(server, alice, data[100_000:200_000], offset=100_000, final=False, digest=digest).json() == \
        {"offset": 200_000}
    assert upload(server, alice, data[200_000:], offset=200_000, digest=digest).json() == {"complete": True}
    assert alice.get(server.api(f"/uploads/{digest}")).json() == {"complete": True}
    assert alice.get(server.api(f"/blobs/{digest}")).content == data
    assert not list((server.artifacts / "uploads").rglob(f"{digest}*"))  # the partial is gone


def test_an_empty_request_finishes_an_upload(server: ServerHandle, alice: requests.Session) -> None:
    data = os.urandom(5000)
    assert upload(server, alice, data, final=False).json() == {"offset": 5000}
    assert upload(server, alice, b"", offset=5000, digest=sha(data), final=False).json() == {"complete": True}
    assert upload(server, alice, b"").json() == {"complete": True}  # the empty blob
    assert alice.get(server.api(f"/blobs/{sha(b'')}")).content == b""


def test_bytes_that_do_not_match_the_digest_are_discarded(server: ServerHandle,
                                                          alice: requests.Session) -> None:
    claimed = sha(b"what the client meant to send")
    answer = upload(server, alice, b"something else", digest=claimed)
    assert answer.status_code == 400 and "digest mismatch" in answer.json()["error"]["message"]
    assert alice.get(server.api(f"/uploads/{claimed}")).json() == {"offset": 0}
    assert alice.head(server.api(f"/blobs/{claimed}")).status_code == 404


def _half_sent(server: ServerHandle, token: str, digest: str, total: int, sent: bytes) -> socket.socket:
    """A connection that announced ``total`` bytes for an upload and sent only ``sent`` so far."""
    where = urlsplit(server.url)
    conn = socket.create_connection((where.hostname, where.port or 80))
    conn.sendall(f"PUT /api/v1/uploads/{digest}?offset=0 HTTP/1.1\r\nHost: {where.netloc}\r\n"
                 f"Authorization: Bearer {token}\r\nX-Rundock-Final: 1\r\nContent-Length: {total}\r\n\r\n".encode()
                 + sent)
    return conn


def test_a_dropped_upload_keeps_what_arrived_and_blocks_a_second_writer_meanwhile(
        server: ServerHandle, alice: requests.Session) -> None:
    data = os.urandom(1 << 20)
    digest = sha(data)
    token = str(alice.headers["Authorization"]).split()[1]
    conn = _half_sent(server, token, digest, len(data), data[:400_000])
    try:
        wait_until(lambda: alice.get(server.api(f"/uploads/{digest}")).json().get("offset") == 400_000,
                   message="the first part to reach the disk")
        busy = upload(server, alice, data[400_000:], offset=400_000, digest=digest)
        assert busy.status_code == 409 and "another request" in busy.json()["error"]["message"]
    finally:
        conn.close()  # the client goes away mid-upload

    def resumed() -> bool:
        answer = upload(server, alice, data[400_000:], offset=400_000, digest=digest)
        return answer.status_code == 200 and answer.json() == {"complete": True}

    wait_until(resumed, message="the upload to resume once the dropped request ended")
    assert alice.get(server.api(f"/blobs/{digest}")).content == data


def test_a_big_upload_and_download_stream_without_holding_the_blob(server: ServerHandle,
                                                                   alice: requests.Session) -> None:
    piece = os.urandom(1 << 20)
    count = 256  # 256 MiB
    digest = hashlib.sha256()
    for _ in range(count):
        digest.update(piece)
    process = psutil.Process(server.process.pid)
    before = process.memory_info().rss
    peak = [before]

    def body() -> Iterator[bytes]:
        for i in range(count):
            if i % 16 == 0:
                peak.append(process.memory_info().rss)
            yield piece

    answer = alice.put(server.api(f"/uploads/{digest.hexdigest()}"), params={"offset": 0}, data=body(),
                       headers={"X-Rundock-Final": "1"}, timeout=300)
    assert answer.json() == {"complete": True}, answer.text
    with alice.get(server.api(f"/blobs/{digest.hexdigest()}"), stream=True, timeout=300) as download:
        received = hashlib.sha256()
        for i, chunk in enumerate(download.iter_content(1 << 20)):
            received.update(chunk)
            if i % 16 == 0:
                peak.append(process.memory_info().rss)
    assert received.hexdigest() == digest.hexdigest()
    grew = (max(peak) - before) / (1 << 20)
    assert grew < 64, f"the server grew by {grew:.0f} MiB while moving a 256 MiB blob"


def test_an_agent_reads_only_the_blobs_of_its_pools_runs(server: ServerHandle,
                                                         alice: requests.Session) -> None:
    gpu = server.session(server.make_token("box-gpu", "agent", ["gpu"]))
    cpu = server.session(server.make_token("box-cpu", "agent", ["cpu"]))
    source, output, unrelated = os.urandom(64), os.urandom(64), os.urandom(64)
    for blob in (source, output):
        assert upload(server, gpu, blob).json() == {"complete": True}  # agents upload too
    assert upload(server, alice, unrelated).json() == {"complete": True}
    manifest = [{"path": "train.py", "digest": sha(source), "size": 64, "mode": 0o644}]
    snapshot = manifest_id(manifest)
    alice.put(server.api(f"/snapshots/{snapshot}"), json={"manifest": manifest}).raise_for_status()
    run = alice.post(server.api("/runs"), json={"experiment": "blobs", "target": "gpu", "snapshot_id": snapshot})
    run_id = run.json()["run_id"]
    gpu.post(server.api(f"/runs/{run_id}/plan"), json={"files": [
        {"name": "outputs/out.bin", "digest": sha(output), "size": 64, "at": 1e9}]}).raise_for_status()
    assert gpu.get(server.api(f"/blobs/{sha(source)}")).content == source
    for status in ("Starting", "Preparing", "Queued", "Running", "Completed"):
        gpu.post(server.api(f"/runs/{run_id}/transitions"), json={"status": status}).raise_for_status()
    assert gpu.get(server.api(f"/blobs/{sha(output)}")).content == output  # a finished run's file too
    for session, blob in ((gpu, unrelated), (cpu, source), (cpu, output)):
        refused = session.get(server.api(f"/blobs/{sha(blob)}"))
        assert refused.status_code == 403 and refused.json()["error"]["code"] == "forbidden"
        assert session.head(server.api(f"/blobs/{sha(blob)}")).status_code == 403
    assert alice.get(server.api(f"/blobs/{sha(unrelated)}")).content == unrelated
