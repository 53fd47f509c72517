"""What ``agent serve`` tells the server at register: the address other nodes reach it at (never loopback when
the box has another address), and a clear refusal from a server older than the agent."""

from __future__ import annotations

import ipaddress
import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from rundock.errors import RundockError
from rundock.pool_agent.address import PUBLIC_PROBE, primary_address, route_address
from rundock.pool_agent.serve import PoolAgent, ServeOptions


def test_a_server_on_loopback_does_not_make_master_addr_loopback() -> None:
    public = route_address(PUBLIC_PROBE)
    if public is None or ipaddress.ip_address(public).is_loopback:
        pytest.skip("this machine has no route to a public address: only loopback to report")
    assert primary_address("http://127.0.0.1:8080") == public
    assert primary_address("http://localhost:8080") == public


def test_the_route_to_the_server_wins_and_loopback_is_the_last_resort() -> None:
    routes = {"10.1.2.3": "10.1.2.9", "127.0.0.1": "127.0.0.1", PUBLIC_PROBE: "192.168.7.7"}
    assert primary_address("https://10.1.2.3:8443", routes.get) == "10.1.2.9"
    assert primary_address("http://127.0.0.1:8080", routes.get) == "192.168.7.7"
    only_loopback = {"127.0.0.1": "127.0.0.1"}
    found = primary_address("http://127.0.0.1:8080", only_loopback.get)
    assert found == "127.0.0.1" or not ipaddress.ip_address(found).is_loopback  # the host name's, if it has one


class _OldServer(BaseHTTPRequestHandler):
    """A server that predates ``address``: its register body forbids unknown fields (FastAPI's 422)."""

    def do_POST(self) -> None:  # noqa: N802 (http.server's name)
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        extra = [k for k in body if k == "address"]
        status, answer = (422, {"detail": [{"type": "extra_forbidden", "loc": ["body", k],
                                            "msg": "Extra inputs are not permitted"} for k in extra]}) if extra \
            else (200, {"agent_id": "agt_1", "lease_seconds": 30, "poll_seconds": 10, "fenced": []})
        data = json.dumps(answer).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture()
def old_server() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _OldServer)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def test_an_older_server_refusing_address_says_upgrade_the_server_first(old_server: str, tmp_path: Path,
                                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))  # no nvidia-smi: a box without GPUs
    agent = PoolAgent(ServeOptions(old_server, "a100", str(tmp_path / "work"), token="t", address="10.0.0.5"))
    with pytest.raises(RundockError, match="upgrade the server first") as refused:
        agent.register()
    assert "address" in str(refused.value), refused.value
