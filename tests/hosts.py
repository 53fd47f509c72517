"""A throwaway "remote host" for tests and benchmarks: a container running sshd on loopback.

It runs the test base image with ``--network host``: its own filesystem and
Python, nothing of rundock, reachable only through SSH on 127.0.0.1:PORT.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import paramiko


@dataclasses.dataclass
class SshHost:
    port: int
    key_file: str
    container: str
    folder: Path

    def sh(self, code: str) -> str:
        """Run Python on the host (outside SSH, to inspect it)."""
        proc = subprocess.run(["docker", "exec", self.container, "python3", "-c", code], capture_output=True,
                              text=True, timeout=60)
        if proc.returncode != 0:
            raise RuntimeError(proc.stderr)
        return proc.stdout


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def has_sshd(client: Any, image: str) -> bool:
    out = client.containers.run(image, ["sh", "-c", "test -x /usr/sbin/sshd && echo yes || echo no"], remove=True,
                                network_mode="none")
    return b"yes" in out


def start_ssh_host(client: Any, image: str, folder: Path, volumes: dict[str, Any] | None = None) -> SshHost:
    """Start the host; its client key is ``folder/client_key`` (authorized for root)."""
    host_key, client_key = paramiko.RSAKey.generate(2048), paramiko.RSAKey.generate(2048)
    host_key.write_private_key_file(str(folder / "host_key"))
    client_key.write_private_key_file(str(folder / "client_key"))
    (folder / "authorized_keys").write_text(f"ssh-rsa {client_key.get_base64()}\n")
    for name in ("host_key", "client_key"):
        os.chmod(folder / name, 0o600)
    port = free_port()
    (folder / "sshd_config").write_text("\n".join([
        f"Port {port}", "ListenAddress 127.0.0.1", "HostKey /sshtest/host_key",
        "AuthorizedKeysFile /sshtest/authorized_keys", "PermitRootLogin prohibit-password",
        "PasswordAuthentication no", "UsePAM no", "StrictModes no",
        "Subsystem sftp /usr/lib/openssh/sftp-server"]) + "\n")
    container = client.containers.run(
        image, ["sh", "-c", "mkdir -p /run/sshd && exec /usr/sbin/sshd -D -e -f /sshtest/sshd_config"],
        detach=True, network_mode="host", volumes={str(folder): {"bind": "/sshtest", "mode": "ro"}, **(volumes or {})},
        tmpfs={"/small": "size=2m", "/medium": "size=8m"}, name=f"rundock-test-sshd-{port}", remove=True)
    deadline = time.monotonic() + 30
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            break
        except OSError:
            if time.monotonic() > deadline:
                container.remove(force=True)
                raise RuntimeError("sshd in the test host did not start listening") from None
            time.sleep(0.1)
    return SshHost(port, str(folder / "client_key"), container.id, folder)


@contextlib.contextmanager
def running_ssh_host(image: str, folder: Path) -> Iterator[SshHost]:
    """A test host for the length of a ``with`` block (tests skip, or fail under CI, where the image has no sshd)."""
    import docker

    from tests.conftest import require_service

    client = docker.from_env()
    if not has_sshd(client, image):
        require_service("SSH", f"the test base image {image} has no sshd; .ci/services.sh builds one")
    host = start_ssh_host(client, image, folder)
    try:
        yield host
    finally:
        try:
            client.containers.get(host.container).remove(force=True)
        except docker.errors.NotFound:
            pass
