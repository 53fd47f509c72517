"""SSH connections to remote compute targets (paramiko), verified against known_hosts.

Host keys come from ``~/.ssh/known_hosts`` and the workspace's own
``.rundock/known_hosts`` (where ``rundock target trust NAME`` records them). An
unknown key is refused with its fingerprint and the command that trusts it; a
changed key is refused loudly before anything is sent. ``~/.ssh/config``
aliases, users, ports, identity files and ProxyJump are honoured; keys in an
ssh-agent are used. Passwords and passphrases are never written anywhere:
they come from the attach call (this process only) or from
``RUNDOCK_SSH_PASSWORD`` / ``RUNDOCK_SSH_KEY_PASSPHRASE``.
"""

from __future__ import annotations

import base64
import dataclasses
import hashlib
import os
import socket
from collections.abc import Iterable
from typing import Any

import paramiko

from rundock.errors import RundockError


class SshError(RundockError):
    """A remote host cannot be reached, authenticated or trusted; the message names the host and the fix."""


class UnknownHostKeyError(SshError):
    """The host's key is not in any known_hosts file."""


@dataclasses.dataclass
class SshTarget:
    """Where and how to connect (what ``RemoteCompute.attach_configuration`` records)."""

    name: str
    address: str
    ssh_port: int | None = None
    username: str | None = None
    private_key_file: str | None = None
    password: str | None = dataclasses.field(default=None, repr=False)
    private_key_passphrase: str | None = dataclasses.field(default=None, repr=False)


def fingerprint(key: paramiko.PKey) -> str:
    """OpenSSH's SHA256 fingerprint of a key."""
    digest = hashlib.sha256(key.asbytes()).digest()
    return "SHA256:" + base64.b64encode(digest).decode().rstrip("=")


class _RefuseUnknown(paramiko.MissingHostKeyPolicy):
    def __init__(self, target_name: str) -> None:
        self.target_name = target_name

    def missing_host_key(self, client: paramiko.SSHClient, hostname: str, key: paramiko.PKey) -> None:
        raise UnknownHostKeyError(
            f"the host key of {hostname} is not known: {key.get_name()} {fingerprint(key)}. Check that this is the "
            f"fingerprint of the host, then trust it with `rundock target trust {self.target_name}`; nothing was "
            "sent to the host")


def _known_host_name(host: str, port: int) -> str:
    return host if port == 22 else f"[{host}]:{port}"


class SshConnection:
    """One authenticated SSH connection; commands run on new channels of it."""

    def __init__(self, target: SshTarget, known_hosts: str) -> None:
        self.target = target
        self.known_hosts = known_hosts
        config = self._ssh_config(target.address)
        self.host = config.get("hostname", target.address)
        self.port = int(target.ssh_port or config.get("port", 22))
        self.username = target.username or config.get("user") or os.environ.get("USER") or "root"
        self.where = f"{self.username}@{self.host}:{self.port} (target {target.name})"
        self.client = paramiko.SSHClient()
        self._jump: paramiko.SSHClient | None = None
        self._connect(config)

    @staticmethod
    def _ssh_config(alias: str) -> dict[str, Any]:
        path = os.path.expanduser("~/.ssh/config")
        if not os.path.exists(path):
            return {}
        return dict(paramiko.SSHConfig.from_path(path).lookup(alias))

    def _load_host_keys(self, client: paramiko.SSHClient) -> None:
        for path in (os.path.expanduser("~/.ssh/known_hosts"), self.known_hosts):
            if os.path.exists(path):
                client.load_host_keys(path) if path == self.known_hosts else client.load_system_host_keys(path)

    def _connect(self, config: dict[str, Any]) -> None:
        target = self.target
        sock = None
        if config.get("proxyjump"):
            sock = self._jump_channel(str(config["proxyjump"]))
        key_files: list[str] = [target.private_key_file] if target.private_key_file else \
            list(config.get("identityfile") or [])
        # paramiko takes a list of key files here, though its type stubs say one string
        key_filename: Any = [os.path.expanduser(k) for k in key_files] or None
        self._load_host_keys(self.client)
        self.client.set_missing_host_key_policy(_RefuseUnknown(target.name))
        try:
            self.client.connect(
                self.host, port=self.port, username=self.username, sock=sock, timeout=15, banner_timeout=15,
                auth_timeout=15, key_filename=key_filename,
                password=target.password or os.environ.get("RUNDOCK_SSH_PASSWORD"),
                passphrase=target.private_key_passphrase or os.environ.get("RUNDOCK_SSH_KEY_PASSPHRASE"),
                allow_agent=True, look_for_keys=not key_files)
        except UnknownHostKeyError:
            raise
        except paramiko.BadHostKeyException as exc:
            raise SshError(
                f"THE HOST KEY OF {self.host}:{self.port} HAS CHANGED (target {target.name}): it now presents "
                f"{exc.key.get_name()} {fingerprint(exc.key)}, but {exc.expected_key.get_name()} "
                f"{fingerprint(exc.expected_key)} is recorded. Someone may be intercepting the connection, or the "
                "host was reinstalled. Nothing was sent. If the change is expected, remove the old key "
                f"(`ssh-keygen -R {_known_host_name(self.host, self.port)}`) and run "
                f"`rundock target trust {target.name}`") from None
        except paramiko.AuthenticationException as exc:
            raise SshError(f"{self.where} refused the login ({exc}); check the user name and that its "
                           "authorized_keys holds your public key (or load the key into ssh-agent, or set "
                           "RUNDOCK_SSH_PASSWORD)") from None
        except paramiko.PasswordRequiredException:
            raise SshError(f"the key for {self.where} is encrypted: load it into ssh-agent or set "
                           "RUNDOCK_SSH_KEY_PASSPHRASE") from None
        except (OSError, paramiko.SSHException) as exc:
            transport = self.client.get_transport()
            if transport is not None and transport.is_active() and not transport.is_authenticated():
                # paramiko reports some refused logins as errors reading the key files it tried
                raise SshError(f"{self.where} refused the login; check the user name and that its authorized_keys "
                               "holds your public key (or load the key into ssh-agent)") from None
            raise SshError(f"cannot connect to {self.where}: {exc}; check the address and port, that sshd runs "
                           "there and that the network lets you reach it") from None

    def _jump_channel(self, jump: str) -> paramiko.Channel:
        user, _, hostport = jump.rpartition("@")
        host, _, port = hostport.partition(":")
        jump_target = SshTarget(name=f"{self.target.name} (ProxyJump)", address=host,
                                ssh_port=int(port) if port else None, username=user or None)
        self._jump = SshConnection(jump_target, self.known_hosts).client
        transport = self._jump.get_transport()
        assert transport is not None
        return transport.open_channel("direct-tcpip", (self.host, self.port), ("127.0.0.1", 0))

    # -- commands ------------------------------------------------------------------------
    def run(self, command: str, stdin: bytes | Iterable[bytes] = b"", timeout: float = 600) -> tuple[int, bytes, bytes]:
        """Run ``command``, feeding it ``stdin`` (bytes or chunks); return (exit code, stdout, stderr)."""
        transport = self.client.get_transport()
        if transport is None or not transport.is_active():
            raise SshError(f"the connection to {self.where} was lost")
        try:
            channel = transport.open_session(timeout=15)
            channel.settimeout(timeout)
            channel.exec_command(command)
            for chunk in [stdin] if isinstance(stdin, bytes) else stdin:
                if chunk:
                    channel.sendall(chunk)
            channel.shutdown_write()
            out, err = bytearray(), bytearray()
            while True:
                if channel.recv_ready():
                    out += channel.recv(1 << 20)
                elif channel.recv_stderr_ready():
                    err += channel.recv_stderr(1 << 16)
                elif channel.exit_status_ready() and not channel.recv_ready() and not channel.recv_stderr_ready():
                    break
                else:
                    channel.status_event.wait(0.01)
            code = channel.recv_exit_status()
            channel.close()
            return code, bytes(out), bytes(err)
        except (TimeoutError, OSError, paramiko.SSHException) as exc:
            raise SshError(f"the connection to {self.where} failed during `{command[:60]}`: {exc}") from None

    def close(self) -> None:
        self.client.close()
        if self._jump is not None:
            self._jump.close()


def trust_host(target: SshTarget, known_hosts: str) -> str:
    """Record the host's current key in ``known_hosts``; return its fingerprint line."""
    config = SshConnection._ssh_config(target.address)
    host = config.get("hostname", target.address)
    port = int(target.ssh_port or config.get("port", 22))
    try:
        with socket.create_connection((host, port), timeout=15) as sock, paramiko.Transport(sock) as transport:
            transport.start_client(timeout=15)
            key = transport.get_remote_server_key()
    except (OSError, paramiko.SSHException) as exc:
        raise SshError(f"cannot reach {host}:{port} to read its host key: {exc}") from None
    entries = paramiko.HostKeys(known_hosts) if os.path.exists(known_hosts) else paramiko.HostKeys()
    entries.add(_known_host_name(host, port), key.get_name(), key)
    os.makedirs(os.path.dirname(known_hosts), exist_ok=True)
    entries.save(known_hosts)
    return f"{_known_host_name(host, port)} {key.get_name()} {fingerprint(key)}"
