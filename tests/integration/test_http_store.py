"""The team server's HTTP store against a real ``rundock server`` process: speed, tokens, failures and
exactly-once, batches, blobs both ways, memory."""

from __future__ import annotations

import hashlib
import os
import socket
import statistics
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests

from rundock.errors import StoreUnavailableError
from rundock.history.artifacts import ArtifactStore
from rundock.history.backends import http_credentials as creds
from rundock.history.backends.http import HttpRunStore
from rundock.history.backends.http_client import ServerAuthError
from rundock.history.records import JournalPlan, MetricRecord
from rundock.submitter.snapshot import manifest_id
from tests.conftest import REPO
from tests.server_fixtures import ServerHandle, running_server

BATCH = 100  # the server's per-request limits in this module: records, and bytes
MAX_BYTES = 300_000


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerHandle]:
    with running_server(tmp_path_factory.mktemp("server"),
                        env={"RUNDOCK_SERVER_MAX_METRICS_PER_BATCH": str(BATCH),
                             "RUNDOCK_SERVER_MAX_REQUEST_BYTES": str(MAX_BYTES)}) as handle:
        yield handle


@pytest.fixture(autouse=True)
def private_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Credentials and trusted certificates of this test only; no token from the environment."""
    monkeypatch.setenv("RUNDOCK_HOME", str(tmp_path / "home"))
    monkeypatch.delenv("RUNDOCK_TOKEN", raising=False)
    return tmp_path / "home"


@pytest.fixture
def store(server: ServerHandle, tmp_path: Path) -> Iterator[HttpRunStore]:
    with HttpRunStore(server.url, artifacts_root=str(tmp_path / "cache"), token=server.make_token("alice")) as s:
        assert isinstance(s, HttpRunStore)
        yield s


def _requests(server: ServerHandle, method: str, prefix: str) -> int:
    return sum(1 for e in server.access_log() if e.get("method") == method and str(e.get("path")).startswith(prefix))


def test_a_small_read_takes_a_few_milliseconds_over_a_kept_alive_connection(store: HttpRunStore) -> None:
    run_id = store.create_run("speed").run_id
    for _ in range(20):
        store.get_run(run_id)
    times = []
    for _ in range(200):
        started = time.perf_counter()
        store.get_run(run_id)
        times.append(time.perf_counter() - started)
    assert statistics.median(times) <= 0.005, f"p50 {statistics.median(times) * 1000:.1f} ms (a 40 ms stall?)"


def test_the_token_comes_from_the_argument_then_the_environment_then_the_login(
        server: ServerHandle, monkeypatch: pytest.MonkeyPatch) -> None:
    good, bad = server.make_token("bob"), "rdk_not-a-real-token-0123456789"
    creds.save_login(server.url + "/", good, name="bob", role="user")  # the saved one: the URL's form does not matter
    assert HttpRunStore(server.url).whoami()["name"] == "bob"
    monkeypatch.setenv("RUNDOCK_TOKEN", bad)  # the environment beats the saved login
    with pytest.raises(ServerAuthError) as refused:
        HttpRunStore(server.url).whoami()
    monkeypatch.setenv("RUNDOCK_TOKEN", good)
    with pytest.raises(ServerAuthError):
        HttpRunStore(server.url, token=bad).whoami()  # the argument beats the environment
    text = str(refused.value)
    assert bad not in text and good not in text
    assert server.url in text and "rundock login" in text
    store = HttpRunStore(server.url, token=good)
    assert good not in repr(store) and good not in repr(store.client) and good not in repr(store.client.session.auth)


def test_a_stopped_server_is_a_clear_error_in_bounded_time(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RUNDOCK_HTTP_RETRY_SECONDS", "1.5")
    handle = running_server(tmp_path)
    store = HttpRunStore(handle.url, token=handle.admin_token)
    run_id = store.create_run("e").run_id
    handle.stop()
    for call in (lambda: store.get_run(run_id), lambda: store.log_metrics(run_id, [MetricRecord("m", "scalar", 1)])):
        started = time.monotonic()
        with pytest.raises(StoreUnavailableError) as failed:
            call()
        assert time.monotonic() - started < 10
        assert handle.url in str(failed.value) and "rundock server" in str(failed.value)
        assert "history:" in str(failed.value)


def test_a_server_that_never_answers_is_a_clear_error_in_bounded_time(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RUNDOCK_HTTP_RETRY_SECONDS", "1")
    monkeypatch.setenv("RUNDOCK_HTTP_READ_TIMEOUT", "0.5")
    with socket.socket() as silent:  # accepts connections (the kernel does) and never says a word
        silent.bind(("127.0.0.1", 0))
        silent.listen(64)
        url = f"http://127.0.0.1:{silent.getsockname()[1]}"
        started = time.monotonic()
        with pytest.raises(StoreUnavailableError, match="127.0.0.1"):
            HttpRunStore(url, token="rdk_x").get_run("r")
        assert time.monotonic() - started < 8


def test_a_port_that_drops_connection_attempts_is_a_clear_error_in_bounded_time(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RUNDOCK_HTTP_RETRY_SECONDS", "1")
    monkeypatch.setenv("RUNDOCK_HTTP_CONNECT_TIMEOUT", "0.5")
    with socket.socket() as full:  # its accept queue full: the kernel leaves further SYNs unanswered (a black hole)
        full.bind(("127.0.0.1", 0))
        full.listen(0)
        fillers = [socket.socket() for _ in range(3)]
        for filler in fillers:
            filler.setblocking(False)
            filler.connect_ex(full.getsockname())
        time.sleep(0.2)
        url = f"http://127.0.0.1:{full.getsockname()[1]}"
        for call in (lambda s: s.get_run("r"), lambda s: s.log_metrics("r", [MetricRecord("m", "scalar", 1)])):
            started = time.monotonic()
            with pytest.raises(StoreUnavailableError, match="connecting timed out"):
                call(HttpRunStore(url, token="rdk_x"))
            assert time.monotonic() - started < 8
        for filler in fillers:
            filler.close()


class LossyProxy:
    """A TCP proxy to the server that can lose the server's next answers: the request arrives, its answer never
    comes back (the client sees the connection close), as when a network breaks at the wrong moment."""

    def __init__(self, upstream: str) -> None:
        host, port = upstream.split("//", 1)[1].split(":")
        self.upstream = (host, int(port))
        self.lose = 0
        self._lock = threading.Lock()
        self.listener = socket.socket()
        self.listener.bind(("127.0.0.1", 0))
        self.listener.listen(64)
        self.url = f"http://127.0.0.1:{self.listener.getsockname()[1]}"
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            server = socket.create_connection(self.upstream)
            threading.Thread(target=self._pump, args=(client, server, False), daemon=True).start()
            threading.Thread(target=self._pump, args=(server, client, True), daemon=True).start()

    def _pump(self, source: socket.socket, target: socket.socket, answers: bool) -> None:
        try:
            while data := source.recv(65536):
                if answers:
                    with self._lock:
                        lost = self.lose > 0
                        self.lose -= lost
                    if lost:
                        break
                target.sendall(data)
        except OSError:
            pass
        for sock in (source, target):
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            sock.close()

    def close(self) -> None:
        self.listener.close()


def test_lost_answers_never_duplicate_anything(server: ServerHandle, tmp_path: Path,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RUNDOCK_HTTP_RETRY_SECONDS", "5")
    proxy = LossyProxy(server.url)
    token = server.make_token("carol")
    direct = HttpRunStore(server.url, token=token)
    store = HttpRunStore(proxy.url, token=token, artifacts_root=str(tmp_path / "cache"))
    try:
        store.limits()
        proxy.lose = 1  # create_run: the run is made, its answer lost; the retry finds it
        run_id = store.create_run("lossy").run_id
        assert [r.run_id for r in direct.list_runs(experiment="lossy")] == [run_id]

        proxy.lose = 1  # a journal batch: sent again, applied once (marks)
        records = [{"seq": i, "t": 1.0, "type": "metric", "name": "j", "kind": "scalar", "value": i}
                   for i in range(1, 4)]
        assert store.apply_journal(run_id, 0, "job", records) == 3
        assert [m.value for m in direct.get_metric_records(run_id, "j")] == [1, 2, 3]

        proxy.lose = 1  # a client change has no marks: not sent again; it happened once, and the caller is told
        with pytest.raises(StoreUnavailableError, match="may or may not"):
            store.log_metrics(run_id, [MetricRecord("p", "scalar", 7)])
        assert [m.value for m in direct.get_metric_records(run_id, "p")] == [7]
    finally:
        proxy.close()


def test_long_batches_are_split_in_order_within_the_servers_limit(server: ServerHandle, store: HttpRunStore) -> None:
    assert store.limits()[0] == BATCH
    run_id = store.create_run("batches").run_id
    before = _requests(server, "POST", f"/api/v1/runs/{run_id}/journal")
    records = [{"seq": i, "t": 1.0, "type": "metric", "name": "m", "kind": "scalar", "value": i}
               for i in range(1, 1051)]
    assert store.apply_journal(run_id, 0, "job", records) == 1050
    assert _requests(server, "POST", f"/api/v1/runs/{run_id}/journal") - before == 11
    assert store.apply_journal(run_id, 0, "job", records[:500]) == 1050  # chunks seen again: nothing twice
    store.apply_plan(run_id, JournalPlan(metrics=[MetricRecord("c", "scalar", i) for i in range(250)],
                                         tags={"done": "yes"}))
    assert [m.value for m in store.get_metric_records(run_id, "m")] == list(range(1, 1051))
    assert [m.value for m in store.get_metric_records(run_id, "c")] == list(range(250))
    assert store.get_run(run_id).tags == {"done": "yes"}

    wide = [{"seq": i, "t": 1.0, "type": "metric", "name": "w", "kind": "scalar", "value": i, "description": "d" * 5000}
            for i in range(1, 201)]  # 1 MB in 200 records: the byte limit cuts it, not the record count
    before = _requests(server, "POST", f"/api/v1/runs/{run_id}/journal")
    assert store.apply_journal(run_id, 0, "wide", wide) == 200
    assert _requests(server, "POST", f"/api/v1/runs/{run_id}/journal") - before >= 4
    assert [m.value for m in store.get_metric_records(run_id, "w")] == list(range(1, 201))


def _file_record(seq: int, name: str, digest: str, size: int) -> dict[str, object]:
    return {"seq": seq, "t": 1.0, "type": "file", "name": name, "digest": digest, "size": size}


def test_blobs_are_sent_once_and_an_interrupted_upload_goes_on_where_it_stopped(
        server: ServerHandle, store: HttpRunStore, tmp_path: Path) -> None:
    assert store.cache is not None
    data = os.urandom(3 << 20)
    digest, size, _ = store.cache.put_bytes(data)
    run_id = store.create_run("blobs").run_id
    store.apply_journal(run_id, 0, "job", [_file_record(1, "outputs/a.bin", digest, size)])
    with server.session(server.admin_token) as session:
        assert session.get(server.api(f"/blobs/{digest}"), timeout=30).content == data
    again = HttpRunStore(server.url, artifacts_root=store.cache.root, token=server.admin_token)
    other = again.create_run("blobs").run_id
    again.apply_journal(other, 0, "job", [_file_record(1, "outputs/same.bin", digest, size)])
    assert _requests(server, "PUT", f"/api/v1/uploads/{digest}") == 1  # the server had it: not sent again
    empty, _, _ = store.cache.put_bytes(b"")  # an empty output is a blob too
    store.apply_journal(run_id, 0, "job", [_file_record(2, "outputs/empty", empty, 0)])
    assert store.blobs.offset(empty) is None

    big = os.urandom(5 << 20)
    big_digest, big_size, _ = store.cache.put_bytes(big)
    # An upload by this client's token that broke off after 2 MiB (each token resumes its own partial uploads).
    cut = store.client.session.put(server.api(f"/uploads/{big_digest}"), params={"offset": 0}, data=big[:2 << 20],
                                   timeout=30)
    assert cut.status_code < 300, cut.text
    with server.session(server.admin_token) as session:  # another token's upload starts from nothing
        assert session.get(server.api(f"/uploads/{big_digest}"), timeout=30).json() == {"offset": 0}
    assert store.blobs.offset(big_digest) == 2 << 20
    assert store.blobs.upload(big_digest) == big_size - (2 << 20)  # only the rest was sent
    assert store.blobs.offset(big_digest) is None
    fresh = ArtifactStore(str(tmp_path / "laptop2"))
    fresh.remote = store.remote_blobs()
    assert fresh.read(big_digest) == big


def test_a_blob_is_fetched_into_the_cache_on_first_read_and_checked(server: ServerHandle, store: HttpRunStore,
                                                                     tmp_path: Path) -> None:
    assert store.cache is not None
    data = os.urandom(1 << 20) * 3
    digest, size, _ = store.cache.put_bytes(data)
    manifest = [{"path": "x.bin", "digest": digest, "size": size, "mode": 420}]
    store.put_snapshot(manifest_id(manifest), manifest)  # the server takes a snapshot under its own id only
    other = ArtifactStore(str(tmp_path / "other-machine"))
    assert not other.has(digest)
    other.remote = store.remote_blobs()
    other.copy_to(digest, str(tmp_path / "out.bin"))
    assert (tmp_path / "out.bin").read_bytes() == data and other.has(digest) and other.size(digest) == size

    damaged = server.artifacts / digest[:2] / digest  # the server's copy goes bad: the cache refuses it
    damaged.chmod(0o644)
    damaged.write_bytes(b"x" * size)
    third = ArtifactStore(str(tmp_path / "third-machine"))
    third.remote = store.remote_blobs()
    with pytest.raises(OSError, match="not kept"):
        third.read(digest)
    assert not third.has(digest)


MEMORY_PROBE = textwrap.dedent("""
    import os, sys
    from rundock.history.artifacts import ArtifactStore
    def peak_rss_kib():  # this process's own high-water mark (getrusage's ru_maxrss keeps the parent's across exec)
        with open("/proc/self/status") as fh:
            return next(int(line.split()[1]) for line in fh if line.startswith("VmHWM:"))
    from rundock.history.backends.http import HttpRunStore
    url, token, cache, other, source = sys.argv[1:6]
    store = HttpRunStore(url, artifacts_root=cache, token=token)
    digest, size, _ = store.cache.put_file(source)
    os.unlink(source)
    run_id = store.create_run("memory").run_id
    store.apply_journal(run_id, 0, "job", [{"seq": 1, "t": 1.0, "type": "file", "name": "outputs/big.bin",
                                            "digest": digest, "size": size}])
    reader = ArtifactStore(other)
    reader.remote = store.remote_blobs()
    reader.copy_to(digest, os.path.join(other, "copy.bin"))
    assert os.path.getsize(os.path.join(other, "copy.bin")) == size
    print(peak_rss_kib() // 1024)
""")


def test_a_large_output_goes_both_ways_in_little_memory(server: ServerHandle, tmp_path: Path) -> None:
    source = tmp_path / "big.bin"
    chunk = os.urandom(1 << 20)
    with open(source, "wb") as fh:
        for i in range(300):
            fh.write(hashlib.sha256(bytes([i % 256])).digest() + chunk[32:])
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    done = subprocess.run([sys.executable, "-c", MEMORY_PROBE, server.url, server.admin_token, str(tmp_path / "c1"),
                           str(tmp_path / "c2"), str(source)], capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 0, done.stderr
    peak_mb = int(done.stdout.strip().splitlines()[-1])
    assert peak_mb < 200, f"the client peaked at {peak_mb} MB for a 300 MB file"


def test_requests_carry_the_bearer_token_and_nothing_else_of_it(server: ServerHandle) -> None:
    token = server.make_token("dave")
    store = HttpRunStore(server.url, token=token)
    run = store.create_run("who")
    assert run.submitted_by == "dave"  # the server knows the token's name: it was sent
    with requests.get(server.api(f"/runs/{run.run_id}"), timeout=10) as anonymous:
        assert anonymous.status_code == 401
