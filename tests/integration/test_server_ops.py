"""Running a team server: the CLI (init, tokens, settings), TLS, limits, the access log, a graceful stop, and
what clients see when the database goes away."""

from __future__ import annotations

import hashlib
import os
import signal
import stat
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests

from tests.conftest import REPO, wait_until
from tests.server_fixtures import free_port, postgres_database, running_server


def rundock(*args: str, env: dict[str, str] | None = None, check: bool = True) -> subprocess.CompletedProcess[str]:
    """``python -m rundock ARGS`` (the real command line), its output captured."""
    full_env = {**os.environ, "PYTHONPATH": str(REPO), **(env or {})}
    result = subprocess.run([sys.executable, "-m", "rundock", *args], capture_output=True, text=True, timeout=120,
                            env=full_env)
    if check:
        assert result.returncode == 0, result.stderr
    return result


def test_init_tokens_and_serve_from_the_written_config(tmp_path: Path) -> None:
    store = f"sqlite:///{tmp_path / 'db' / 'history.db'}"
    config = tmp_path / "etc" / "server.yaml"
    first = rundock("server", "init", "--store", store, "--artifacts", str(tmp_path / "blobs"), "--config",
                    str(config))
    admin_token = first.stdout.strip()
    assert admin_token.startswith("rdk_") and "shown once" in first.stderr
    key = tmp_path / "etc" / "server.secrets.key"
    for private in (config, key):
        assert stat.S_IMODE(private.stat().st_mode) == 0o600
    key_text = key.read_text()
    again = rundock("server", "init", "--store", store, "--artifacts", str(tmp_path / "blobs"), "--config",
                    str(config))
    assert again.stdout == "" and "exists already" in again.stderr and key.read_text() == key_text

    made = rundock("server", "token", "create", "ci-box", "--role", "agent", "--pool", "gpu", "--pool", "cpu",
                   "--expires-in-days", "30", "--config", str(config))
    agent_token = made.stdout.strip()
    listing = rundock("server", "token", "list", "--config", str(config)).stdout
    assert "ci-box" in listing and "gpu, cpu" in listing and agent_token not in listing
    bad = rundock("server", "token", "create", "x", "--role", "agent", "--config", str(config), check=False)
    assert bad.returncode != 0 and "pools" in bad.stderr

    port = free_port()
    process = subprocess.Popen([sys.executable, "-m", "rundock.server", "--config", str(config), "--port", str(port)],
                               env={**os.environ, "PYTHONPATH": str(REPO)}, stderr=subprocess.PIPE, text=True)
    try:
        url = f"http://127.0.0.1:{port}"
        wait_until(lambda: _ready(url), message="the server to answer")
        whoami = requests.get(f"{url}/api/v1/whoami", headers={"Authorization": f"Bearer {agent_token}"}).json()
        assert whoami["name"] == "ci-box" and whoami["pools"] == ["gpu", "cpu"] and whoami["expires_at"]
        assert requests.get(f"{url}/api/v1/tokens",
                            headers={"Authorization": f"Bearer {admin_token}"}).status_code == 200
    finally:
        process.send_signal(signal.SIGTERM)
        assert process.wait(30) == 0


def _ready(url: str, verify: Any = True) -> bool:
    try:
        return requests.get(f"{url}/readyz", timeout=2, verify=verify).status_code == 200
    except requests.RequestException:
        return False


def test_flags_win_over_the_environment_which_wins_over_the_file(tmp_path: Path) -> None:
    config = tmp_path / "server.yaml"
    file_port, env_port, flag_port = free_port(), free_port(), free_port()
    rundock("server", "init", "--store", f"sqlite:///{tmp_path / 'h.db'}", "--artifacts", str(tmp_path / "a"),
            "--config", str(config), "--port", str(file_port))
    env = {**os.environ, "PYTHONPATH": str(REPO), "RUNDOCK_SERVER_PORT": str(env_port)}
    for args, port in (([], env_port), (["--port", str(flag_port)], flag_port)):
        process = subprocess.Popen([sys.executable, "-m", "rundock.server", "--config", str(config), *args], env=env)
        try:
            wait_until(lambda: _ready(f"http://127.0.0.1:{port}"), message=f"the server on port {port}")  # noqa: B023
        finally:
            process.send_signal(signal.SIGTERM)
            assert process.wait(30) == 0


@pytest.mark.parametrize(("args", "env", "words"), [
    (["--port", "eighty"], {}, ["--port", "'port'"]),
    ([], {"RUNDOCK_SERVER_MAX_REQUEST_BYTES": "ten"}, ["RUNDOCK_SERVER_MAX_REQUEST_BYTES", "'max_request_bytes'"]),
    (["--tls-cert", "/nonexistent.pem", "--tls-key", "/nonexistent.key"], {}, ["'tls_cert'", "no such file"]),
])
def test_a_bad_setting_stops_the_server_with_a_message_naming_it(tmp_path: Path, args: list[str],
                                                                  env: dict[str, str], words: list[str]) -> None:
    config = tmp_path / "server.yaml"
    rundock("server", "init", "--store", f"sqlite:///{tmp_path / 'h.db'}", "--artifacts", str(tmp_path / "a"),
            "--config", str(config))
    result = subprocess.run([sys.executable, "-m", "rundock.server", "--config", str(config), *args],
                            capture_output=True, text=True, timeout=60,
                            env={**os.environ, "PYTHONPATH": str(REPO), **env})
    assert result.returncode == 2 and "Traceback" not in result.stderr
    for word in words:
        assert word in result.stderr


def test_a_history_never_initialised_is_refused_with_the_command_to_run(tmp_path: Path) -> None:
    key = tmp_path / "key"
    key.write_text("x" * 43 + "=")
    result = subprocess.run([sys.executable, "-m", "rundock.server", "--store", f"sqlite:///{tmp_path / 'h.db'}",
                             "--artifacts", str(tmp_path / "a"), "--secrets-key-file", str(key)],
                            capture_output=True, text=True, timeout=60, env={**os.environ, "PYTHONPATH": str(REPO)})
    assert result.returncode == 2 and "rundock server init" in result.stderr


def test_the_server_speaks_https_with_the_given_certificate(tmp_path: Path) -> None:
    with running_server(tmp_path, tls=True) as server:
        assert server.url.startswith("https://")
        with server.session(server.admin_token) as admin:
            assert admin.get(server.api("/whoami")).json()["role"] == "admin"
        with pytest.raises(requests.exceptions.SSLError):
            requests.get(f"{server.url}/healthz", timeout=10)  # an unknown certificate is not trusted by default
        with pytest.raises(requests.ConnectionError):
            requests.get(server.url.replace("https://", "http://") + "/healthz", timeout=10)


@pytest.fixture(scope="module")
def small(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """A server with small limits: 4 KiB bodies, 10 records a batch."""
    with running_server(tmp_path_factory.mktemp("small"), extra_args=[
            "--max-request-bytes", "4096", "--max-metrics-per-batch", "10"]) as server:
        yield server


def test_bodies_and_batches_over_the_limits_get_413_saying_so(small: Any) -> None:
    with small.session(small.make_token("alice", "user")) as alice:
        run_id = alice.post(small.api("/runs"), json={"experiment": "limits"}).json()["run_id"]
        records = [{"seq": i, "type": "metric", "name": "m", "value": i} for i in range(1, 12)]
        batch = alice.post(small.api(f"/runs/{run_id}/journal"), json={"attempt": 1, "source": "s",
                                                                        "records": records})
        assert batch.status_code == 413 and "at most 10" in batch.json()["error"]["message"]
        plan = alice.post(small.api(f"/runs/{run_id}/plan"), json={"metrics": [["m", "scalar", 1, None, "", 1.0]] * 11})
        assert plan.status_code == 413
        big = {"experiment": "limits", "description": "x" * 5000}
        declared = alice.post(small.api("/runs"), json=big)
        assert declared.status_code == 413
        message = declared.json()["error"]["message"]
        assert "4096 bytes" in message and "batches" in message
        chunked = alice.post(small.api("/runs"), data=iter([b'{"experiment": "limits", "description": "',
                                                            b"x" * 5000, b'"}']),
                             headers={"Content-Type": "application/json"})
        assert chunked.status_code == 413 and chunked.json()["error"]["code"] == "too_large"
        huge = alice.post(small.api("/runs"), data=b" " * (32 << 20), headers={"Content-Type": "application/json"})
        assert huge.status_code == 413  # a client still sending its body gets the answer too
        blob = os.urandom(20_000)  # uploads stream to disk: no limit
        done = alice.put(small.api(f"/uploads/{hashlib.sha256(blob).hexdigest()}"), params={"offset": 0}, data=blob,
                         headers={"X-Rundock-Final": "1"})
        assert done.json() == {"complete": True}


def test_the_access_log_has_one_json_line_per_request(small: Any) -> None:
    with small.session(small.admin_token) as admin:
        admin.get(small.api("/whoami"), params={"secret": "query-text"}).raise_for_status()
        admin.get(small.api("/runs/not-there"))
    wait_until(lambda: any(e.get("path") == "/api/v1/runs/not-there" for e in small.access_log()),
               message="the access log line")
    lines = {e["path"]: e for e in small.access_log() if "path" in e}
    whoami, missing = lines["/api/v1/whoami"], lines["/api/v1/runs/not-there"]
    assert set(whoami) == {"time", "method", "path", "status", "duration_ms", "principal", "bytes_in", "bytes"}
    assert (whoami["method"], whoami["status"], whoami["principal"]) == ("GET", 200, "admin")
    assert whoami["bytes"] > 0 and 0 <= whoami["duration_ms"] < 5000
    assert (missing["status"], missing["principal"]) == (404, "admin")
    text = small.log_path.read_text()
    assert "query-text" not in text and small.admin_token not in text


def test_sigterm_lets_an_upload_in_flight_finish_and_exits_0(tmp_path: Path) -> None:
    server = running_server(tmp_path)
    pieces = [os.urandom(64 << 10) for _ in range(20)]
    digest = hashlib.sha256(b"".join(pieces)).hexdigest()
    first_sent = threading.Event()
    result: dict[str, Any] = {}

    def body() -> Iterator[bytes]:
        for i, piece in enumerate(pieces):
            yield piece
            if i == 0:
                first_sent.set()
            time.sleep(0.1)  # a slow client: about 2 s in all

    def send() -> None:
        with server.session(server.admin_token) as admin:
            result["answer"] = admin.put(server.api(f"/uploads/{digest}"), params={"offset": 0}, data=body(),
                                         headers={"X-Rundock-Final": "1"}, timeout=60)

    sender = threading.Thread(target=send)
    sender.start()
    assert first_sent.wait(10)
    time.sleep(0.3)
    server.process.send_signal(signal.SIGTERM)
    sender.join(60)
    assert server.process.wait(30) == 0
    assert result["answer"].status_code == 200 and result["answer"].json() == {"complete": True}
    stored = server.artifacts / digest[:2] / digest
    assert hashlib.sha256(stored.read_bytes()).hexdigest() == digest


def test_a_replaced_history_file_gives_503_without_server_paths(tmp_path: Path) -> None:
    with running_server(tmp_path) as server, server.session(server.admin_token) as admin:
        admin.post(server.api("/runs"), json={"experiment": "e"}).raise_for_status()
        history = Path(server.store_uri[len("sqlite:///"):])
        history.rename(history.with_name("moved.db"))
        history.write_bytes(b"")
        answer = admin.post(server.api("/runs"), json={"experiment": "e"})
        assert answer.status_code == 503
        error = answer.json()["error"]
        assert error["code"] == "unavailable" and error["error_id"] in error["message"]
        assert str(tmp_path) not in answer.text
        assert error["error_id"] in server.log_path.read_text()


def test_a_database_that_goes_away_gives_503_and_the_server_recovers(tmp_path: Path) -> None:
    with postgres_database() as uri, running_server(tmp_path, uri) as server, \
            server.session(server.admin_token) as admin:
        from tests import pg

        run_id = admin.post(server.api("/runs"), json={"experiment": "e"}).json()["run_id"]
        database = uri.rsplit("/", 1)[1]
        with pg.admin_connection() as conn:
            conn.execute(f'ALTER DATABASE "{database}" ALLOW_CONNECTIONS false')
            conn.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s", (database,))
        try:
            down = admin.get(server.api(f"/runs/{run_id}"), timeout=60)
            assert down.status_code == 503 and down.json()["error"]["code"] == "unavailable"
            assert requests.get(f"{server.url}/readyz", timeout=60).status_code == 503
            assert requests.get(f"{server.url}/healthz", timeout=10).status_code == 200
        finally:
            with pg.admin_connection() as conn:
                conn.execute(f'ALTER DATABASE "{database}" ALLOW_CONNECTIONS true')
        wait_until(lambda: admin.get(server.api(f"/runs/{run_id}"), timeout=60).status_code == 200, timeout=60,
                   message="the server to use the database again")
        assert requests.get(f"{server.url}/readyz", timeout=60).status_code == 200


def test_upgrade_brings_both_stores_up_to_date(tmp_path: Path) -> None:
    store = f"sqlite:///{tmp_path / 'h.db'}"
    rundock("server", "init", "--store", store, "--artifacts", str(tmp_path / "a"), "--config",
            str(tmp_path / "s.yaml"))
    lines = rundock("server", "upgrade", "--store", store).stderr
    assert "up to date" in lines and "server tables" in lines
    from tests import pg

    with pg.fresh_schema() as uri:
        first = rundock("server", "upgrade", "--store", uri).stderr
        assert "version 0 -> " in first
        assert "version 0" not in rundock("server", "upgrade", "--store", uri).stderr
