"""Logging in to a team server: check the token, keep it, trust the server's certificate, point the workspace at it.

``login`` asks the server who the token is (``GET /api/v1/whoami``), saves the token in the user's
rundock home (``$RUNDOCK_HOME`` or ``~/.rundock``: ``credentials.json``, 0600; see
``rundock.history.backends.http_credentials``), where every process of the user finds it, agents
included, and writes ``history: URL`` in the workspace's ``config.yaml``. ``logout`` undoes both.

TLS, in the spirit of SSH host keys: an ``https://`` server whose certificate this machine's certificate
authorities do not verify is refused, with its SHA-256 fingerprint. ``login(..., trust_cert=True)``
fetches the certificate, shows its fingerprint for the user to confirm, and keeps it: from then on the
client trusts exactly that certificate for that server, and refuses a changed one, showing both
fingerprints, until it is trusted again.
"""

from __future__ import annotations

import ipaddress
import os
from collections.abc import Callable
from typing import Any

import yaml

from rundock.errors import ConfigError, RundockError, StoreUnavailableError
from rundock.history.backends import http_credentials as creds
from rundock.history.backends.http import HttpRunStore
from rundock.history.backends.http_client import HINT
from rundock.submitter.workspace import CONFIG_FILE, Workspace, write_private

Confirm = Callable[[str], bool]
LOGIN_RETRY_SECONDS = 2.0


class LoginAborted(RundockError):
    """The user did not confirm the server's certificate."""


def normalize_url(url: str) -> str:
    """``url`` checked (``http(s)://HOST[:PORT]``) without a trailing slash."""
    creds.split_url(url)
    return url.strip().rstrip("/")


def in_clear(url: str) -> bool:
    """Whether ``url`` is plain http to another machine (loopback is this machine)."""
    scheme, host, _, _ = creds.split_url(url)
    if scheme != "http" or host == "localhost":
        return False
    try:
        return not ipaddress.ip_address(host).is_loopback
    except ValueError:
        return True


def trust_server(url: str, confirm: Confirm | None = None) -> str:
    """Fetch the certificate the server at ``url`` presents, have ``confirm`` accept it (shown its fingerprint
    and, if it replaces a trusted one, the old fingerprint too) and trust it; return its fingerprint."""
    if not url.lower().startswith("https:"):
        raise ConfigError(f"{url} is not an https:// URL: there is no certificate to trust", field="--trust-cert")
    try:
        pem = creds.fetch_cert(url)
    except OSError as exc:
        raise RundockError(f"cannot fetch the certificate of {url}: {exc}; is the server running there?") from None
    new = creds.fingerprint(pem)
    old = creds.trusted_fingerprint(url)
    if old == new:
        return new
    message = f"The server {url} presents a certificate with SHA-256 fingerprint\n  {new}\n"
    if old is not None:
        message += f"It REPLACES the certificate you trusted for it, whose fingerprint was\n  {old}\n"
    message += "Check it with the server's admin (openssl x509 -in CERT.pem -noout -fingerprint -sha256). Trust it?"
    if confirm is not None and not confirm(message):
        raise LoginAborted(f"the certificate of {url} was not trusted; nothing was changed")
    creds.trust_cert(url, pem)
    return new


def login(workspace: Workspace, url: str, token: str, *, trust_cert: bool = False,
          confirm: Confirm | None = None) -> dict[str, Any]:
    """Check ``token`` with the server at ``url``, save it and make ``url`` the workspace's history; return who
    the token is (name, role, pools, expires_at)."""
    url = normalize_url(url)
    if not token or not token.strip():
        raise ConfigError("the token is empty; ask the server's admin for one (`rundock server token create NAME`)",
                          field="--token")
    if trust_cert:
        trust_server(url, confirm)
    store = HttpRunStore(url, token=token.strip())
    store.client.retry_seconds = LOGIN_RETRY_SECONDS  # someone is waiting at the prompt: a wrong URL shows at once
    try:
        who = store.whoami()
    except StoreUnavailableError as exc:
        detail = str(exc).replace(f". {HINT}", "")  # the hint about config.yaml is not for a URL typed just now
        raise StoreUnavailableError(f"cannot log in: {detail}. Check the URL and the port, and that `rundock server` "
                                    "runs there") from None
    finally:
        store.close()
    creds.save_login(url, token.strip(), name=who.get("name"), role=who.get("role"))
    set_history(workspace, url)
    return who


def logout(workspace: Workspace, url: str | None = None, *, forget_cert: bool = False) -> list[str]:
    """Forget the token for ``url`` (default: the workspace's server) and, when the workspace's history is that
    server, remove its ``history:`` line; return what was done, in words."""
    url = normalize_url(url or workspace.history_uri)
    done = []
    if creds.forget_login(url):
        done.append(f"forgot the token for {url} ({creds.credentials_path()})")
    if workspace.is_server and creds.server_key(workspace.history_uri) == creds.server_key(url):
        set_history(workspace, None)
        done.append(f"{os.path.join(workspace.path, CONFIG_FILE)}: history is the local one again")
    if forget_cert and creds.forget_cert(url):
        done.append(f"no longer trusts the certificate of {url}")
    return done


def set_history(workspace: Workspace, url: str | None) -> None:
    """Write (or, with None, remove) the ``history:`` of the workspace's ``config.yaml``, keeping the rest."""
    path = os.path.join(workspace.path, CONFIG_FILE)
    data: Any = {}
    if os.path.exists(path):
        with open(path, encoding="utf-8") as fh:
            data = yaml.safe_load(fh) or {}
    if not isinstance(data, dict):
        raise ConfigError("expected a mapping at the top of the file", source=path)
    if url is None:
        data.pop("history", None)
    else:
        data["history"] = url
    write_private(path, yaml.safe_dump(data, sort_keys=False))


def whoami(workspace: Workspace) -> dict[str, Any]:
    """Who the workspace's server says its token is."""
    store = workspace.store
    if not isinstance(store, HttpRunStore):
        raise ConfigError(f"this workspace's history is not a team server ({workspace.history_uri}); connect it to one "
                          "with `rundock login URL --token TOKEN`", source=os.path.join(workspace.path, CONFIG_FILE),
                          field="history")
    return store.whoami()
