"""A real ``rundock server`` process for tests: started on a free loopback port over a given store.

Use ``running_server(tmp_path)`` (SQLite history in ``tmp_path``) or ``running_server(tmp_path, store_uri=...)``
(e.g. a database from ``postgres_database()``); the handle is also a context manager that stops the server::

    with running_server(tmp_path) as server:
        alice = server.make_token("alice", "user")
        server.session(alice).get(server.api("/whoami"))

The server is prepared the way a team would (``rundock server init`` writes its configuration, secrets key and
first admin token) and started as ``python -m rundock.server --config ...``; its standard error (the JSON access
log and any traceback) goes to ``handle.log_path``. With ``tls=True`` it serves HTTPS with a self-signed
certificate for 127.0.0.1 and localhost; ``handle.verify`` is the certificate file to trust.

The ``server`` fixture (import it into a test module) is one server per module, over SQLite and over a fresh
PostgreSQL schema (``tests.pg``). ``postgres_database()`` makes a whole database ``rundock_t_<hex>`` (for tests
that take a database away from a running server) and drops it afterwards. Without PostgreSQL those tests are
skipped, or fail under ``RUNDOCK_REQUIRE_POSTGRES=1`` (CI).
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime as dt
import ipaddress
import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import pytest
import requests

from tests.conftest import REPO

START_TIMEOUT_S = 30.0


def free_port() -> int:
    """A TCP port nothing listens on now (the server may still lose a race for it: ``running_server`` retries)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclasses.dataclass
class ServerHandle:
    """A running server: where it listens, its first admin token and its process."""

    url: str
    admin_token: str
    process: subprocess.Popen[bytes]
    log_path: Path
    store_uri: str
    artifacts: Path
    config_path: Path
    verify: str | bool = True  # what ``requests`` should trust: the self-signed certificate under TLS

    def api(self, path: str) -> str:
        """The full URL of an API path (``/runs`` -> ``<url>/api/v1/runs``)."""
        return f"{self.url}/api/v1{path}"

    def session(self, token: str | None = None) -> requests.Session:
        """A keep-alive session sending ``token`` (none: anonymous) and trusting the server's certificate."""
        session = requests.Session()
        session.trust_env = False  # loopback: no proxy, and REQUESTS_CA_BUNDLE would override ``verify``
        session.verify = self.verify
        if token is not None:
            session.headers["Authorization"] = f"Bearer {token}"
        return session

    def make_token(self, name: str, role: str = "user", pools: Iterable[str] = (),
                   expires_in_days: float | None = None) -> str:
        """A new token made through the API by the admin; returns the secret token."""
        return str(self.create_token(name, role, pools, expires_in_days)["token"])

    def create_token(self, name: str, role: str = "user", pools: Iterable[str] = (),
                     expires_in_days: float | None = None) -> dict[str, Any]:
        """Like ``make_token``, but the whole answer: ``{"id": ..., "token": ...}``."""
        body = {"name": name, "role": role, "pools": list(pools), "expires_in_days": expires_in_days}
        with self.session(self.admin_token) as session:
            answer = session.post(self.api("/tokens"), json=body, timeout=30)
        answer.raise_for_status()
        return dict(answer.json())

    def access_log(self) -> list[dict[str, Any]]:
        """The JSON access-log lines the server wrote so far."""
        entries = []
        for line in self.log_path.read_text(encoding="utf-8", errors="replace").splitlines():
            if line.startswith("{"):
                with contextlib.suppress(ValueError):
                    entries.append(json.loads(line))
        return entries

    def stop(self, timeout: float = 30.0) -> int | None:
        """SIGTERM the server and wait for it; return its exit status (None if it had to be killed)."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
                return None
        return self.process.returncode

    def __enter__(self) -> ServerHandle:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def running_server(tmp_path: Path, store_uri: str | None = None, tls: bool = False, *,
                   extra_args: Iterable[str] = (), env: dict[str, str] | None = None) -> ServerHandle:
    """Initialise and start a server over ``store_uri`` (default: a new SQLite history in ``tmp_path``).

    ``extra_args`` go to ``python -m rundock.server`` (e.g. ``["--max-request-bytes", "1000"]``); ``env``
    adds environment variables for the server process. The caller stops it (``stop()`` or ``with``).
    """
    from rundock.server.setup import init_server

    folder = tmp_path / f"server-{secrets.token_hex(3)}"
    folder.mkdir(parents=True)
    store_uri = store_uri or f"sqlite:///{folder / 'history.db'}"
    artifacts = folder / "artifacts"
    config = folder / "server.yaml"
    admin_token = init_server(store_uri, str(artifacts), str(config)).admin_token
    assert admin_token is not None, f"{store_uri} had an admin token already: give each server a new history"
    args = list(extra_args)
    verify: str | bool = True
    if tls:
        cert, key = self_signed_certificate(folder)
        args += ["--tls-cert", str(cert), "--tls-key", str(key)]
        verify = str(cert)
    scheme = "https" if tls else "http"
    log_path = folder / "server.log"
    child_env = {k: v for k, v in os.environ.items() if not k.startswith("RUNDOCK_SERVER_")}
    child_env.pop("RUNDOCK_SECRETS_KEY", None)
    child_env.update(env or {})
    child_env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), child_env.get("PYTHONPATH")]))
    last_error = ""
    for _ in range(3):
        port = free_port()
        with open(log_path, "ab") as log:
            process = subprocess.Popen(
                [sys.executable, "-m", "rundock.server", "--config", str(config), "--host", "127.0.0.1",
                 "--port", str(port), *args], stdout=log, stderr=subprocess.STDOUT, env=child_env, cwd=str(folder))
        handle = ServerHandle(f"{scheme}://127.0.0.1:{port}", admin_token, process, log_path, store_uri, artifacts,
                              config, verify)
        if _wait_ready(handle):
            return handle
        handle.stop(5)
        last_error = log_path.read_text(errors="replace")[-3000:]
        if "address already in use" not in last_error.lower():
            break
    raise RuntimeError(f"rundock server did not start; its log ends:\n{last_error}")


def _wait_ready(handle: ServerHandle) -> bool:
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        if handle.process.poll() is not None:
            return False
        try:
            if requests.get(f"{handle.url}/readyz", verify=handle.verify, timeout=2).status_code == 200:
                return True
        except requests.RequestException:
            pass
        time.sleep(0.05)
    return False


def self_signed_certificate(folder: Path) -> tuple[Path, Path]:
    """A self-signed certificate and its key for 127.0.0.1 and localhost, written in ``folder``."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = dt.datetime.now(dt.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - dt.timedelta(minutes=5))
            .not_valid_after(now + dt.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([x509.DNSName("localhost"),
                                                        x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
                           critical=False)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(key, hashes.SHA256()))
    cert_path, key_path = folder / "cert.pem", folder / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    key_path.chmod(0o600)
    return cert_path, key_path


@contextlib.contextmanager
def postgres_database() -> Iterator[str]:
    """A fresh, empty PostgreSQL database ``rundock_t_<hex>``; yields its URI and drops it afterwards."""
    from tests import pg

    name = f"rundock_t_{secrets.token_hex(6)}"
    with pg.admin_connection() as admin:
        admin.execute(f'CREATE DATABASE "{name}"')
    base = pg.SERVER_URI.split("?", 1)[0]
    try:
        yield base.rsplit("/", 1)[0] + f"/{name}"
    finally:
        with pg.admin_connection() as admin:
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def store_uri_per_module(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A fresh history URI per test module: an SQLite file, then a new PostgreSQL schema (``tests.pg``)."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path_factory.mktemp('history') / 'history.db'}"
        return
    from tests import pg

    with pg.fresh_schema() as uri:
        yield uri


@pytest.fixture(scope="module")
def server(store_uri_per_module: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerHandle]:
    """A server per test module, over SQLite and over PostgreSQL (import this fixture into a test module)."""
    with running_server(tmp_path_factory.mktemp("server"), store_uri_per_module) as handle:
        yield handle
