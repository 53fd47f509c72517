"""SSH connections to remote compute targets (paramiko), verified against known_hosts.

Host keys come from ``~/.ssh/known_hosts`` and the workspace's own
``.rundock/known_hosts`` (where ``rundock target trust NAME`` records them). An
unknown key is refused with its fingerprint and the command that trusts it; a
changed key is refused loudly before anything is sent, and ``trust`` replaces
it only after showing both fingerprints and asking. ``~/.ssh/config``
aliases, users, ports, identity files and ProxyJump are honoured; keys in an
ssh-agent are used. Passwords and passphrases are never written anywhere:
they come from the attach call (this process only) or from
``RUNDOCK_SSH_PASSWORD`` / ``RUNDOCK_SSH_KEY_PASSPHRASE``.

Every SshError says whether it is ``transient`` (worth trying again on a new
connection) or permanent; ``retrying`` is the one bounded backoff. Which
commands may be repeated is the caller's business (see targets/remote.py).
"""

from __future__ import annotations

import base64
import dataclasses
import hashlib
import os
import socket
import time
from collections.abc import Callable, Iterable, Sequence
from typing import IO, Any, TypeVar

import paramiko

from rundock.errors import RundockError

T = TypeVar("T")

# Waits between attempts after a transient failure (a connection reset or refused while sshd restarts, a
# channel closed under load, a handshake cut short): bounded, about 4 s in all, before an error is shown.
RETRY_DELAYS: tuple[float, ...] = (0.25, 0.5, 1.0, 2.0)
RETRY_BUDGET_SECONDS = 30.0  # no new attempt starts this long after the first (slow timeouts count)
STDERR_KEEP = 1 << 20  # the tail of a command's stderr that is kept


class SshError(RundockError):
    """A remote host cannot be reached, authenticated or trusted; the message names the host and the fix.

    ``transient`` is True for failures that may pass if the command is tried again on a new connection
    (never for a refused login, an unknown or changed host key, or a host without Python).
    """

    def __init__(self, message: str, transient: bool = False) -> None:
        super().__init__(message)
        self.transient = transient


class UnknownHostKeyError(SshError):
    """The host's key is not in any known_hosts file."""


_TRANSIENT_TEXT = ("socket is closed", "error reading ssh protocol banner", "authentication timeout",
                   "negotiation failed", "session not active", "no existing session", "unable to open channel",
                   "connection reset", "connection refused", "connection aborted", "broken pipe", "eof",
                   "connection lost", "timed out", "timeout opening channel")


def is_transient(exc: BaseException) -> bool:
    """Whether a failure of the SSH layer may pass when tried again (a new connection, a moment later)."""
    if isinstance(exc, SshError):
        return exc.transient
    if isinstance(exc, (paramiko.BadHostKeyException, paramiko.PasswordRequiredException, socket.gaierror)):
        return False
    if isinstance(exc, paramiko.AuthenticationException):  # refused, except a timeout under load
        return "timeout" in str(exc).lower()
    if isinstance(exc, (ConnectionError, EOFError, TimeoutError, paramiko.ChannelException,
                        paramiko.ssh_exception.NoValidConnectionsError)):
        return True
    if isinstance(exc, (OSError, paramiko.SSHException)):
        text = str(exc).lower()
        return any(part in text for part in _TRANSIENT_TEXT)
    return False


def retrying(action: Callable[[], T], delays: Sequence[float] = RETRY_DELAYS,
             on_retry: Callable[[SshError], None] | None = None, sleep: Callable[[float], None] = time.sleep,
             clock: Callable[[], float] = time.monotonic) -> T:
    """``action()``, tried again after each transient SshError with the waits in ``delays``.

    Permanent errors (and other exceptions) go through at once; when the attempts are spent, the last
    error is raised with how often it was tried. Only wrap actions that are safe to repeat.
    """
    started = clock()
    for attempt in range(len(delays) + 1):
        try:
            return action()
        except SshError as exc:
            if not exc.transient:
                raise
            last_try = attempt == len(delays) or clock() - started + delays[attempt] > RETRY_BUDGET_SECONDS
            if last_try:
                raise type(exc)(f"{exc} (tried {attempt + 1} times over {clock() - started:.1f} s)",
                                transient=True) from None
            if on_retry is not None:
                on_retry(exc)
            sleep(delays[attempt])
    raise AssertionError("unreachable")


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
            self.close()
            raise
        except paramiko.BadHostKeyException as exc:
            self.close()
            raise SshError(
                f"THE HOST KEY OF {self.host}:{self.port} HAS CHANGED (target {target.name}): it now presents "
                f"{exc.key.get_name()} {fingerprint(exc.key)}, but {exc.expected_key.get_name()} "
                f"{fingerprint(exc.expected_key)} is recorded. Someone may be intercepting the connection, or the "
                "host was reinstalled. Nothing was sent. If the change is expected, run "
                f"`rundock target trust {target.name}`: it shows both fingerprints and asks before replacing "
                "the old one") from None
        except paramiko.PasswordRequiredException:
            self.close()
            raise SshError(f"the key for {self.where} is encrypted: load it into ssh-agent or set "
                           "RUNDOCK_SSH_KEY_PASSPHRASE") from None
        except paramiko.AuthenticationException as exc:
            self.close()
            if is_transient(exc):  # the host did not answer the login in time: busy, not a refusal
                raise SshError(f"{self.where} did not answer the login in time ({exc})", transient=True) from None
            raise SshError(f"{self.where} refused the login ({exc}); check the user name and that its "
                           "authorized_keys holds your public key (or load the key into ssh-agent, or set "
                           "RUNDOCK_SSH_PASSWORD)") from None
        except (OSError, EOFError, paramiko.SSHException) as exc:
            transport = self.client.get_transport()
            refused = transport is not None and transport.is_active() and not transport.is_authenticated()
            self.close()
            if refused and not is_transient(exc):
                # paramiko reports some refused logins as errors reading the key files it tried
                raise SshError(f"{self.where} refused the login; check the user name and that its authorized_keys "
                               "holds your public key (or load the key into ssh-agent)") from None
            raise SshError(f"cannot connect to {self.where}: {exc or type(exc).__name__}; check the address and "
                           "port, that sshd runs there and that the network lets you reach it",
                           transient=is_transient(exc)) from None

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
    def run(self, command: str, stdin: bytes | Iterable[bytes] = b"", timeout: float = 600,
            sink: IO[bytes] | None = None) -> tuple[int, bytes, bytes]:
        """Run ``command``, feeding it ``stdin`` (bytes or chunks); return (exit code, stdout, stderr).

        With ``sink``, stdout is written there as it arrives (and b"" is returned for it). A command that
        exits before reading all of its stdin is not an error: its exit code and stderr are returned. A lost
        connection raises a transient SshError; whether the command may be run again is the caller's call.
        """
        transport = self.client.get_transport()
        if transport is None or not transport.is_active():
            raise SshError(f"the connection to {self.where} was lost", transient=True)
        try:
            channel = transport.open_session(timeout=15)
        except (OSError, EOFError, paramiko.SSHException) as exc:
            raise SshError(f"the connection to {self.where} failed opening a channel for `{command[:60]}`: "
                           f"{exc or type(exc).__name__}", transient=True) from None
        try:
            channel.settimeout(timeout)
            channel.exec_command(command)
            self._feed(channel, transport, stdin)
            out, err = bytearray(), bytearray()
            while True:
                if channel.recv_ready():
                    data = channel.recv(1 << 20)
                    if sink is not None:
                        sink.write(data)
                    else:
                        out += data
                elif channel.recv_stderr_ready():
                    err += channel.recv_stderr(1 << 16)
                    del err[:-STDERR_KEEP]
                elif channel.exit_status_ready() and not channel.recv_ready() and not channel.recv_stderr_ready():
                    break
                else:
                    channel.status_event.wait(0.01)
            code = channel.recv_exit_status()
            channel.close()
        except TimeoutError:
            raise SshError(f"`{command[:60]}` on {self.where} sent nothing for {timeout:.0f} s") from None
        except (OSError, EOFError, paramiko.SSHException) as exc:
            raise SshError(f"the connection to {self.where} failed during `{command[:60]}`: "
                           f"{exc or type(exc).__name__}", transient=is_transient(exc) or not transport.is_active()
                           ) from None
        if code == -1 and not transport.is_active():  # no exit status: the connection went away, not the command
            raise SshError(f"the connection to {self.where} was lost during `{command[:60]}`", transient=True)
        return code, bytes(out), bytes(err)

    @staticmethod
    def _feed(channel: paramiko.Channel, transport: paramiko.Transport, stdin: bytes | Iterable[bytes]) -> None:
        """Send ``stdin``; stop quietly when the command has exited (and closed the channel) without reading it."""
        try:
            for chunk in [stdin] if isinstance(stdin, bytes) else stdin:
                if chunk:
                    channel.sendall(chunk)
            channel.shutdown_write()
        except OSError:
            if not transport.is_active() or not (channel.closed or channel.exit_status_ready()):
                raise

    def close(self) -> None:
        self.client.close()
        if self._jump is not None:
            self._jump.close()


@dataclasses.dataclass
class HostKeyCheck:
    """The key a host presents now, next to what the known_hosts files record for it."""

    name: str  # the host as known_hosts spells it (``[host]:port`` off port 22)
    key: paramiko.PKey
    recorded: list[paramiko.PKey]  # in the workspace's known_hosts
    system: list[paramiko.PKey]  # in ~/.ssh/known_hosts

    @property
    def trusted(self) -> bool:
        return any(k.get_name() == self.key.get_name() and k.asbytes() == self.key.asbytes()
                   for k in self.recorded + self.system)

    @property
    def previous(self) -> list[paramiko.PKey]:
        """The recorded keys the new one would replace (empty when the host is new or already trusted)."""
        return [] if self.trusted else self.recorded + self.system

    def describe(self) -> str:
        return f"{self.name} {self.key.get_name()} {fingerprint(self.key)}"


def _host_keys(path: str) -> paramiko.HostKeys:
    return paramiko.HostKeys(path) if os.path.exists(path) else paramiko.HostKeys()


def check_host_key(target: SshTarget, known_hosts: str) -> HostKeyCheck:
    """Read the host's key (nothing is sent but the SSH handshake) and what is recorded for it."""
    config = SshConnection._ssh_config(target.address)
    host = config.get("hostname", target.address)
    port = int(target.ssh_port or config.get("port", 22))
    name = _known_host_name(host, port)
    recorded = list((_host_keys(known_hosts).lookup(name) or {}).values())
    system = list((_host_keys(os.path.expanduser("~/.ssh/known_hosts")).lookup(name) or {}).values())

    def read() -> paramiko.PKey:
        try:
            with socket.create_connection((host, port), timeout=15) as sock, paramiko.Transport(sock) as transport:
                if recorded or system:  # ask for the kind of key recorded, as a connection does
                    options = transport.get_security_options()
                    kind = (system or recorded)[0].get_name()
                    if kind == "ssh-rsa":  # an RSA key is offered with a SHA-2 signature, as paramiko's client does
                        kind = next((k for k in ("rsa-sha2-512", "rsa-sha2-256") if k in options.key_types), kind)
                    if kind in options.key_types:
                        options.key_types = [kind, *(k for k in options.key_types if k != kind)]
                transport.start_client(timeout=15)
                return transport.get_remote_server_key()
        except (OSError, EOFError, paramiko.SSHException) as exc:
            raise SshError(f"cannot reach {host}:{port} to read its host key: {exc or type(exc).__name__}",
                           transient=is_transient(exc)) from None

    return HostKeyCheck(name, retrying(read), recorded, system)


def record_host_key(check: HostKeyCheck, known_hosts: str) -> str:
    """Record ``check.key`` as the host's only key in the workspace's known_hosts; return its fingerprint line."""
    if any(k.asbytes() != check.key.asbytes() for k in check.system):
        raise SshError(f"{os.path.expanduser('~/.ssh/known_hosts')} records another key for {check.name}, and it "
                       f"takes precedence; remove it there first (`ssh-keygen -R '{check.name}'`), then run this "
                       "again")
    entries = _host_keys(known_hosts)
    while True:
        try:
            del entries[check.name]
        except KeyError:
            break
    entries.add(check.name, check.key.get_name(), check.key)
    os.makedirs(os.path.dirname(known_hosts), exist_ok=True)
    tmp = f"{known_hosts}.{os.getpid()}.tmp"
    os.close(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600))
    entries.save(tmp)
    os.replace(tmp, known_hosts)
    return check.describe()


def trust_host(target: SshTarget, known_hosts: str) -> str:
    """Record the host's current key in ``known_hosts`` (replacing what was recorded); return its fingerprint line."""
    return record_host_key(check_host_key(target, known_hosts), known_hosts)
