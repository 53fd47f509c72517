"""The team-server client's HTTP plumbing: one pooled session, timeouts, retries, TLS trust, error mapping.

Every request has a timeout (connect 5 s, read 60 s; ``RUNDOCK_HTTP_CONNECT_TIMEOUT``,
``RUNDOCK_HTTP_READ_TIMEOUT``) and is retried with backoff (0.2 s, doubling, at most 5 s apart) for up to
``RUNDOCK_HTTP_RETRY_SECONDS`` (30) in all, according to its ``Retry`` policy:

- ``Retry.ALWAYS`` (a call that may safely happen twice: reads, journal batches, log chunks, uploads):
  on connection errors, timeouts and 502/503/504 answers;
- ``Retry.UNSENT`` (a call that must not happen twice): only when the request surely never reached the
  server (the connection could not be made); any other failure raises at once.

Then the caller gets a ``StoreUnavailableError`` that names the server, what failed and what to do. So a
stopped server or a dead network gives a clear error in bounded time (about the retry budget plus one
connect timeout), never a hang.

Answers map onto the errors a store raises: 400 and 413 → ``ValueError``, 409 → ``ServerConflictError``
(a ``ValueError`` too), except 409 ``fenced`` → ``AttemptFencedError``; 404 → what the caller
says (``RunNotFoundError`` by default); 401 → ``ServerAuthError``; 403 → ``ServerPermissionError``;
503 after the retries → ``StoreUnavailableError``; other failures → ``StoreError``. The token is sent
as a bearer header and appears in no message, log line or repr.

A client made for one attempt of a pool run (``attempt``: the per-run agent on a pool's GPU box) sends
``X-Rundock-Attempt: n`` with every request, so the server can refuse the writes of an attempt it fenced.
"""

from __future__ import annotations

import enum
import json
import logging
import os
import ssl
import time
from typing import Any, Callable, Mapping, Union

import requests
from requests.adapters import HTTPAdapter
from urllib3.exceptions import ConnectTimeoutError

from rundock.errors import AttemptFencedError, RundockError, RunNotFoundError, StoreError, StoreUnavailableError
from rundock.history.backends import http_credentials as creds

log = logging.getLogger("rundock.http")

API = "/api/v1"
ATTEMPT_HEADER = "X-Rundock-Attempt"
HINT = ("Is the server running? Start it with `rundock server` on that host, and check `history:` in "
        ".rundock/config.yaml")
_RETRY_STATUSES = frozenset((502, 503, 504))
NotFound = Callable[[str], Exception]


class ServerAuthError(StoreError):
    """The server refused the token (missing, wrong, expired or revoked)."""


class ServerPermissionError(StoreError, PermissionError):
    """The token is valid but its role may not do this."""


class ServerConflictError(RundockError, ValueError):
    """The request clashes with what the server holds (409): a property set to another value, an upload's offset."""


class UntrustedServerError(StoreError):
    """The server's TLS certificate is not trusted (unknown, or changed since it was trusted)."""


class PinnedAdapter(HTTPAdapter):
    """Connections that accept exactly one server certificate: the one whose SHA-256 is ``fingerprint``.

    Used with ``verify=False`` (no certificate authority decides), urllib3 compares the SHA-256 of the certificate
    the server presents with ``fingerprint`` on every new connection, through a proxy too, and refuses any other
    (an ``SSLError`` saying the fingerprints differ).
    """

    def __init__(self, fingerprint: str, **kwargs: Any) -> None:
        self.fingerprint = fingerprint.replace(":", "").lower()
        super().__init__(**kwargs)

    def init_poolmanager(self, connections: int, maxsize: int, block: bool = False, **pool_kwargs: Any) -> None:
        pool_kwargs["assert_fingerprint"] = self.fingerprint
        super().init_poolmanager(connections, maxsize, block, **pool_kwargs)

    def proxy_manager_for(self, proxy: str, **proxy_kwargs: Any) -> Any:
        proxy_kwargs["assert_fingerprint"] = self.fingerprint
        return super().proxy_manager_for(proxy, **proxy_kwargs)


class Retry(enum.Enum):
    ALWAYS = "always"
    UNSENT = "unsent"


def _env_seconds(name: str, default: float) -> float:
    raw = os.environ.get(name)
    if raw is None:
        return default
    try:
        value = float(raw)
    except ValueError:
        value = -1.0
    if not value > 0 or value == float("inf"):
        raise StoreError(f"{name} must be a number of seconds above 0, got {raw!r}")
    return value


class _Bearer(requests.auth.AuthBase):
    """``Authorization: Bearer``; as ``auth=`` it also keeps a ~/.netrc from replacing the header."""

    def __init__(self, token: str | None) -> None:
        self._token = token

    def __call__(self, request: requests.PreparedRequest) -> requests.PreparedRequest:
        if self._token:
            request.headers["Authorization"] = f"Bearer {self._token}"
        return request

    @property
    def present(self) -> bool:
        return bool(self._token)

    def __repr__(self) -> str:
        return "_Bearer(<hidden>)"


class HttpClient:
    """Requests to one server through one keep-alive connection pool, shared by the store's threads."""

    def __init__(self, url: str, token: str | None = None, *, pool_size: int = 16, attempt: int | None = None) -> None:
        creds.split_url(url)  # a clear ValueError for a URL that is not one
        self.url = url.strip().rstrip("/")
        self.key = creds.server_key(self.url)
        self.https = self.url.lower().startswith("https:")
        self.connect_timeout = _env_seconds("RUNDOCK_HTTP_CONNECT_TIMEOUT", 5.0)
        self.read_timeout = _env_seconds("RUNDOCK_HTTP_READ_TIMEOUT", 60.0)
        self.retry_seconds = _env_seconds("RUNDOCK_HTTP_RETRY_SECONDS", 30.0)
        self.session = requests.Session()
        # A server whose certificate the user trusted (``rundock login --trust-cert``) is verified by that
        # certificate's SHA-256 alone: exactly it, whoever issued it (a private CA, or itself).
        self._pinned = creds.trusted_fingerprint(self.url) if self.https else None
        adapter = HTTPAdapter(pool_connections=2, pool_maxsize=pool_size, max_retries=0) if self._pinned is None \
            else PinnedAdapter(self._pinned, pool_connections=2, pool_maxsize=pool_size, max_retries=0)
        self.session.mount("http://", adapter)
        self.session.mount("https://", adapter)
        self._auth = _Bearer(creds.find_token(self.url, token))
        self.session.auth = self._auth
        self.session.headers["User-Agent"] = "rundock-history-client"
        if attempt is not None:
            self.session.headers[ATTEMPT_HEADER] = str(attempt)
        # Given with each request: a session's own ``verify`` loses to $REQUESTS_CA_BUNDLE in requests. A pinned
        # server is not verified by certificate authorities (False) but by its fingerprint (``PinnedAdapter``).
        self._verify: bool = self._pinned is None

    @property
    def has_token(self) -> bool:
        return self._auth.present

    def __repr__(self) -> str:
        return f"HttpClient({self.url!r})"

    # -- requests ------------------------------------------------------------------------------------------------
    def call(self, method: str, path: str, *, what: str, retry: Retry = Retry.ALWAYS,
             params: Any = None, body: Any = None, data: Any = None,
             headers: Mapping[str, str] | None = None, stream: bool = False,
             not_found: NotFound | None = None, api: bool = True,
             read_timeout: float | None = None) -> requests.Response:
        """Send one request (``body``: JSON; ``data``: raw bytes or a file); return the successful response.

        ``data`` that is a stream cannot be sent twice: the caller retries uploads itself (``Retry.UNSENT``).
        """
        url = self.url + (API if api else "") + path
        all_headers: dict[str, str] = dict(headers or {})
        if body is not None:
            data = json.dumps(body, separators=(",", ":")).encode("utf-8")  # NaN and inf pass, as stores keep them
            all_headers["Content-Type"] = "application/json"
        timeout = (self.connect_timeout, read_timeout or self.read_timeout)
        deadline = time.monotonic() + self.retry_seconds
        pause = 0.2
        while True:
            failure: Union[Exception, requests.Response]
            try:
                resp = self.session.request(method, url, params=params, data=data, headers=all_headers,
                                            timeout=timeout, stream=stream, verify=self._verify)
            except requests.exceptions.SSLError as exc:
                raise self._tls_error(exc, what) from None
            except (requests.ConnectionError, requests.Timeout) as exc:
                if retry is Retry.UNSENT and not _surely_unsent(exc):
                    raise StoreUnavailableError(
                        f"the run history server {self.url} did not answer ({what}): {_reason(exc)}; it may or may "
                        f"not have done it, so it was not sent again. {HINT}") from None
                failure = exc
            else:
                if resp.status_code < 400:
                    return resp
                if resp.status_code not in _RETRY_STATUSES or retry is Retry.UNSENT:
                    raise self.error(resp, what, not_found)
                failure = resp
            if time.monotonic() + pause > deadline:
                if isinstance(failure, requests.Response):
                    raise self.error(failure, what, not_found)
                raise StoreUnavailableError(f"cannot reach the run history server {self.url} ({what}; tried for "
                                            f"{self.retry_seconds:.0f} s): {_reason(failure)}. {HINT}") from None
            log.info("%s: %s failed (%s); retrying in %.1f s", self.url, what,
                     failure.status_code if isinstance(failure, requests.Response) else _reason(failure), pause)
            if isinstance(failure, requests.Response):
                failure.close()
            time.sleep(pause)
            pause = min(pause * 2, 5.0)

    def get_json(self, path: str, *, what: str, params: Any = None,
                 not_found: NotFound | None = None) -> Any:
        return self.json(self.call("GET", path, what=what, params=params, not_found=not_found), what)

    def json(self, resp: requests.Response, what: str) -> Any:
        try:
            return resp.json()
        except ValueError:
            raise StoreError(f"the run history server {self.url} sent an answer that is not JSON ({what}, HTTP "
                             f"{resp.status_code}); is {self.url} a rundock server?") from None

    # -- errors ------------------------------------------------------------------------------------------------
    def error(self, resp: requests.Response, what: str, not_found: NotFound | None = None) -> Exception:
        """The exception a store raises for a refused request."""
        code, message = _error_of(resp)
        status = resp.status_code
        resp.close()
        if status == 409 and code == "fenced":
            return AttemptFencedError(f"the run history server {self.url} refused a write of a fenced attempt "
                                      f"({what}): {message}")
        if status == 409:
            return ServerConflictError(message)
        if status in (400, 413):
            return ValueError(message)
        if status == 404:
            return (not_found or RunNotFoundError)(message)
        if status == 401 and not self.has_token:
            return ServerAuthError(f"no token for the run history server {self.url} ({what}): run `rundock login "
                                   f"{self.url} --token TOKEN` (a token from its admin), or set RUNDOCK_TOKEN")
        if status == 401:
            return ServerAuthError(f"the run history server {self.url} refused the token ({what}): {message}. "
                                   f"Ask its admin for a token (`rundock server token create NAME`) and run "
                                   f"`rundock login {self.url} --token TOKEN`")
        if status == 403:
            return ServerPermissionError(f"the run history server {self.url} does not allow this token to do that "
                                         f"({what}): {message}")
        if status == 503:
            return StoreUnavailableError(f"the run history server {self.url} cannot use its history now ({what}): "
                                         f"{message}; try again later, or ask its admin to check its database")
        return StoreError(f"the run history server {self.url} failed ({what}): HTTP {status} {code}: {message}")

    def _tls_error(self, exc: Exception, what: str) -> Exception:
        """A clear refusal of a server whose certificate is not trusted, with what to do about it."""
        reason = _reason(exc)
        try:
            presented: str | None = creds.fingerprint(creds.fetch_cert(self.url, self.connect_timeout))
        except (OSError, ValueError, ssl.SSLError):
            presented = None
        trusted = self._pinned
        trust = f"rundock login {self.url} --token TOKEN --trust-cert"
        if trusted is not None and presented is not None and presented != trusted:
            return UntrustedServerError(
                f"the TLS certificate of {self.url} CHANGED since you trusted it ({what} refused).\n"
                f"  trusted:   SHA-256 {trusted}\n  presented: SHA-256 {presented}\n"
                f"Someone may be intercepting the connection. If its admin replaced the certificate on purpose, "
                f"check the new fingerprint with them, then trust it: {trust}")
        if presented is None:
            return UntrustedServerError(f"TLS with {self.url} failed ({what}): {reason}")
        if trusted is not None:
            return UntrustedServerError(f"the TLS certificate of {self.url} (SHA-256 {presented}) is the one you "
                                        f"trusted, but it does not verify ({what}): {reason}")
        return UntrustedServerError(
            f"the TLS certificate of {self.url} is not verified by this machine's certificate authorities ({what} "
            f"refused): {reason}.\n  presented: SHA-256 {presented}\nIf that is your server's certificate (its admin "
            f"can check: `openssl x509 -in CERT.pem -noout -fingerprint -sha256`), trust it: {trust}")

    def close(self) -> None:
        self.session.close()


def _error_of(resp: requests.Response) -> tuple[str, str]:
    """(code, message) of an error answer, whatever its shape."""
    try:
        data = resp.json()
        err = data.get("error") if isinstance(data, dict) else None
        if isinstance(err, dict):
            return str(err.get("code") or resp.status_code), str(err.get("message") or resp.reason)
        if isinstance(data, dict) and "detail" in data:
            return str(resp.status_code), str(data["detail"])
    except ValueError:
        pass
    return str(resp.status_code), (resp.text[:300] or str(resp.reason))


def _surely_unsent(exc: Exception) -> bool:
    """Whether a failed request never reached the server: the connection itself could not be made."""
    if isinstance(exc, requests.ConnectTimeout):
        return True
    seen = 0
    current: BaseException | None = exc
    while current is not None and seen < 8:
        for arg in getattr(current, "args", ()):
            if isinstance(getattr(arg, "reason", None), ConnectTimeoutError) or isinstance(arg, ConnectTimeoutError):
                return True  # urllib3's NewConnectionError (refused, no route, name unknown) is one of these
        current = current.__cause__ or current.__context__
        seen += 1
    return False


def _reason(exc: Union[Exception, requests.Response]) -> str:
    if isinstance(exc, requests.Response):
        return f"HTTP {exc.status_code}: {_error_of(exc)[1]}"
    if isinstance(exc, requests.ConnectTimeout):
        return "connecting timed out"
    if isinstance(exc, requests.ReadTimeout):
        return "no answer within the read timeout"
    text = str(exc)
    for marker in ("Connection refused", "Name or service not known", "No route to host", "Network is unreachable",
                   "Connection reset", "Remote end closed connection"):
        if marker in text:
            return marker.lower()
    return text[:300]
