"""Where the team-server client keeps its tokens and the server certificates it was told to trust.

Both live in the user's rundock home, ``$RUNDOCK_HOME`` or else ``~/.rundock`` (the same folder the
``rundock`` command uses as its fallback workspace), so that every process of that user finds them: the
CLI, notebooks, and the local agents it starts (their environment keeps ``RUNDOCK_HOME`` and ``HOME``,
never a ``RUNDOCK_TOKEN``):

- ``credentials.json`` (0600): ``{"servers": {"https://runs.lab:8765": {"token": ..., "name": ...,
  "role": ...}}}``, keyed by the server's normalized URL (``server_key``); written by ``rundock login``,
  entries removed by ``rundock logout``;
- ``trusted_certs/<host>_<port>.pem`` (folder 0700, files 0600): a server certificate the user chose to
  trust (``rundock login URL --trust-cert``), in the spirit of SSH's ``known_hosts``: the client accepts from
  that server exactly this certificate, by its SHA-256 fingerprint (``trusted_fingerprint``), whoever issued
  it (itself, or a company's own CA), so a changed certificate is refused until trusted again.

A token is found in this order: the one given to the store, ``$RUNDOCK_TOKEN``, then this file.
Standard library only, Python 3.8+ (the agent uses it on compute hosts).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import socket
import ssl
from typing import Any
from urllib.parse import urlsplit

ENV_HOME = "RUNDOCK_HOME"
ENV_TOKEN = "RUNDOCK_TOKEN"
CREDENTIALS_FILE = "credentials.json"
CERTS_DIR = "trusted_certs"
_DEFAULT_PORTS = {"http": 80, "https": 443}


def rundock_home() -> str:
    """The user's rundock home: ``$RUNDOCK_HOME``, else ``~/.rundock``."""
    return os.path.abspath(os.environ.get(ENV_HOME) or os.path.join(os.path.expanduser("~"), ".rundock"))


def split_url(url: str) -> tuple[str, str, int, str]:
    """(scheme, host, port, path) of a server URL; ValueError when it is not an ``http(s)://host[:port]`` URL."""
    parts = urlsplit(url.strip())
    scheme = parts.scheme.lower()
    if scheme not in _DEFAULT_PORTS or not parts.hostname:
        raise ValueError(f"not a server URL: {url!r}; expected http(s)://HOST[:PORT], e.g. https://runs.lab:8765")
    if parts.query or parts.fragment or parts.username or parts.password:
        raise ValueError(f"a server URL has no user, query or fragment: {url!r}")
    try:
        port = parts.port or _DEFAULT_PORTS[scheme]
    except ValueError:
        raise ValueError(f"bad port in server URL {url!r}") from None
    return scheme, parts.hostname.lower(), port, parts.path.rstrip("/")


def server_key(url: str) -> str:
    """The normalized URL a server is known by: ``scheme://host:port[/path]``, lower case, no trailing slash."""
    scheme, host, port, path = split_url(url)
    shown = f"[{host}]" if ":" in host else host
    return f"{scheme}://{shown}:{port}{path}"


# -- private files -------------------------------------------------------------------------------------------
def _private_folder(path: str) -> None:
    os.makedirs(path, mode=0o700, exist_ok=True)
    if os.stat(path).st_mode & 0o077:
        os.chmod(path, 0o700)


def _write_private(path: str, data: bytes) -> None:
    """Replace ``path`` atomically with a file only its owner may read."""
    _private_folder(os.path.dirname(path))
    tmp = f"{path}.{os.getpid()}.tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as fh:
        fh.write(data)
    os.replace(tmp, path)


# -- tokens ----------------------------------------------------------------------------------------------------
def credentials_path() -> str:
    return os.path.join(rundock_home(), CREDENTIALS_FILE)


def _load() -> dict[str, Any]:
    try:
        with open(credentials_path(), encoding="utf-8") as fh:
            data = json.load(fh)
    except FileNotFoundError:
        return {"servers": {}}
    except ValueError:
        raise ValueError(f"{credentials_path()} is not valid JSON; remove it and run `rundock login` again") from None
    if not isinstance(data, dict) or not isinstance(data.get("servers"), dict):
        raise ValueError(f"{credentials_path()} is not a rundock credentials file; remove it and run `rundock login` "
                         "again")
    return data


def saved_login(url: str) -> dict[str, Any] | None:
    """What ``rundock login`` saved for the server at ``url`` (token, name, role), or None."""
    entry = _load()["servers"].get(server_key(url))
    return dict(entry) if isinstance(entry, dict) and isinstance(entry.get("token"), str) else None


def save_login(url: str, token: str, **about: Any) -> str:
    """Remember ``token`` (and ``about``: name, role...) for the server at ``url``; return the file's path."""
    data = _load()
    data["servers"][server_key(url)] = {"token": token, **about}
    _write_private(credentials_path(), json.dumps(data, indent=2, sort_keys=True).encode("utf-8"))
    return credentials_path()


def forget_login(url: str) -> bool:
    """Remove the saved token of the server at ``url``; whether there was one."""
    data = _load()
    if data["servers"].pop(server_key(url), None) is None:
        return False
    _write_private(credentials_path(), json.dumps(data, indent=2, sort_keys=True).encode("utf-8"))
    return True


def find_token(url: str, explicit: str | None = None) -> str | None:
    """The token for the server at ``url``: ``explicit``, else ``$RUNDOCK_TOKEN``, else the saved login."""
    if explicit:
        return explicit
    if os.environ.get(ENV_TOKEN):
        return os.environ[ENV_TOKEN]
    entry = saved_login(url)
    return entry["token"] if entry else None


# -- trusted certificates -----------------------------------------------------------------------------------------
def cert_path(url: str) -> str:
    """Where the trusted certificate of the server at ``url`` is (or would be) kept."""
    _, host, port, _ = split_url(url)
    return os.path.join(rundock_home(), CERTS_DIR, f"{re.sub(r'[^A-Za-z0-9.-]', '_', host)}_{port}.pem")


def trusted_cert(url: str) -> str | None:
    """The path of the certificate trusted for ``url``, or None when there is none (system CAs decide)."""
    path = cert_path(url)
    return path if os.path.exists(path) else None


def trust_cert(url: str, pem: str) -> str:
    """Trust ``pem`` (a PEM certificate) for the server at ``url`` from now on; return its file."""
    path = cert_path(url)
    _write_private(path, pem.encode("ascii"))
    return path


def forget_cert(url: str) -> bool:
    try:
        os.unlink(cert_path(url))
    except FileNotFoundError:
        return False
    return True


def fingerprint(pem: str) -> str:
    """A certificate's SHA-256 fingerprint as ``AB:CD:...`` (what ``openssl x509 -fingerprint -sha256`` shows)."""
    digest = hashlib.sha256(ssl.PEM_cert_to_DER_cert(pem)).hexdigest().upper()
    return ":".join(digest[i:i + 2] for i in range(0, len(digest), 2))


def trusted_fingerprint(url: str) -> str | None:
    path = trusted_cert(url)
    if path is None:
        return None
    with open(path, encoding="ascii") as fh:
        return fingerprint(fh.read())


def fetch_cert(url: str, timeout: float = 10.0) -> str:
    """The certificate the server at ``url`` presents, as PEM, fetched without verifying it (to show the user).

    ``ssl.get_server_certificate`` does the same, but takes a timeout only from Python 3.10 on.
    """
    _, host, port, _ = split_url(url)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    with socket.create_connection((host, port), timeout=timeout) as sock, \
            context.wrap_socket(sock, server_hostname=host) as tls:
        der = tls.getpeercert(binary_form=True)
    if not der:
        raise OSError(f"{host}:{port} presented no certificate")
    return ssl.DER_cert_to_PEM_cert(der)
