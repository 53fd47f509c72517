"""Who is looking: signed session cookies, the two ways to get one, CSRF tokens, and ``ui_session``.

Every ``/ui`` route depends on ``ui_session`` (the login page and ``/`` excepted: ``ANONYMOUS_PATHS``). A request
without a valid session gets a redirect to the login page (pages) or 401 (``/ui/api/...``, or a client that does
not ask for HTML).

- ``rundock ui`` (``LocalAuth``): the command prints a URL with a one-time token; its first use sets the session
  cookie and redirects to the same URL without the token. The token works once: a URL copied from the terminal
  later, or by another local user, opens nothing. The app listens on 127.0.0.1 only.
- The team server (``ServerAuth``): ``/ui/login`` takes one of the server's API tokens; the session names the
  token, so revoking or expiring the token ends its sessions too, and the UI shows what the token's role may read.

The cookie is ``HttpOnly`` and ``SameSite=Strict``; its value is ``<subject>|<expires>|<session id>`` signed with
HMAC-SHA256. Signing out ends the session itself (``UiAuth.end``), not only the browser's cookie. State-changing
requests carry a CSRF token bound to the session (``Viewer.csrf``): pages put it in a ``<meta>`` element and forms;
``check_csrf`` compares it in constant time.
"""

from __future__ import annotations

import abc
import base64
import dataclasses
import hashlib
import hmac
import secrets
import threading
import time
from urllib.parse import quote

from fastapi import Request

from rundock.server.auth import Principal, TokenCache, token_problem
from rundock.server.errors import ApiError
from rundock.server.tokens import TOKEN_PREFIX, hash_token

COOKIE = "rundock_ui"
LOGIN_COOKIE = "rundock_ui_login"  # the login form's CSRF token, before there is a session
SESSION_SECONDS = 12 * 3600
ANONYMOUS_PATHS = ("/", "/ui/login")
LOCAL_PRINCIPAL = Principal("local", "local user", "admin")


@dataclasses.dataclass(frozen=True)
class Viewer:
    """The request's session: who (``principal``) and the CSRF token its pages send back."""

    principal: Principal
    session_id: str
    csrf: str


class Signer:
    """Signs and checks session cookie values and derives each session's CSRF token (HMAC-SHA256)."""

    def __init__(self, key: bytes, lifetime: float = SESSION_SECONDS) -> None:
        self._key = key
        self.lifetime = lifetime

    def _mac(self, text: str) -> str:
        return hmac.new(self._key, text.encode(), hashlib.sha256).hexdigest()

    def issue(self, subject: str) -> str:
        payload = f"{subject}|{int(time.time() + self.lifetime)}|{secrets.token_hex(16)}"
        encoded = base64.urlsafe_b64encode(payload.encode()).decode().rstrip("=")
        return f"{encoded}.{self._mac(payload)}"

    def verify(self, value: str) -> tuple[str, str] | None:
        """(subject, session id) of a good, unexpired cookie value; None otherwise."""
        encoded, _, mac = value.partition(".")
        try:
            payload = base64.urlsafe_b64decode(encoded + "=" * (-len(encoded) % 4)).decode()
        except (ValueError, UnicodeDecodeError):
            return None
        if not hmac.compare_digest(self._mac(payload), mac):
            return None
        subject, _, rest = payload.partition("|")
        expires, _, session_id = rest.partition("|")
        if not expires.isdigit() or int(expires) < time.time() or not session_id:
            return None
        return subject, session_id

    def csrf(self, session_id: str) -> str:
        return self._mac("csrf:" + session_id)


class UiAuth(abc.ABC):
    """How sessions start and whom they stand for."""

    def __init__(self, key: bytes) -> None:
        self.signer = Signer(key)
        self._ended: dict[str, float] = {}  # session id -> when its cookie would have expired anyway
        self._ended_lock = threading.Lock()

    def end(self, session_id: str) -> None:
        """Sign a session out: its cookie opens nothing from now on, even a copy of it kept elsewhere. (Kept in
        this process's memory until the cookie would have expired.)"""
        now = time.time()
        with self._ended_lock:
            for old in [k for k, until in self._ended.items() if until < now]:
                del self._ended[old]
            self._ended[session_id] = now + self.signer.lifetime

    def ended(self, session_id: str) -> bool:
        return session_id in self._ended

    @abc.abstractmethod
    def principal(self, subject: str) -> Principal | None:
        """The principal a session's subject stands for now (None: it no longer does)."""

    def exchange_once(self, token: str) -> str | None:
        """The subject for a one-time URL token (``rundock ui``), or None."""
        return None

    def login(self, token: str) -> str:
        """The subject for a token typed on the login page; ValueError saying why not."""
        raise ValueError("this UI has no login page: open the URL that `rundock ui` printed")


class LocalAuth(UiAuth):
    """``rundock ui``: one printed token, good once, for the one local user."""

    def __init__(self) -> None:
        super().__init__(secrets.token_bytes(32))
        self.once = secrets.token_urlsafe(24)
        self._used = False
        self._lock = threading.Lock()

    def principal(self, subject: str) -> Principal | None:
        return LOCAL_PRINCIPAL if subject == "local" else None

    def exchange_once(self, token: str) -> str | None:
        with self._lock:
            if self._used or not hmac.compare_digest(token.encode(), self.once.encode()):
                return None
            self._used = True
        return "local"


class ServerAuth(UiAuth):
    """The team server: sessions stand for one of its API tokens, looked up again on every request."""

    def __init__(self, key: bytes, tokens: TokenCache) -> None:
        super().__init__(key)
        self.tokens = tokens

    def principal(self, subject: str) -> Principal | None:
        record = self.tokens.by_id(subject)
        if record is None or token_problem(record) is not None:
            return None
        return Principal(record.token_id, record.name, record.role, record.pools, record.expires_at)

    def login(self, token: str) -> str:
        token = token.strip()
        if not token.startswith(TOKEN_PREFIX):
            raise ValueError(f"that is not a rundock server token (they start with {TOKEN_PREFIX!r})")
        found, record = self.tokens.cached(hash_token(token))
        if not found:
            record = self.tokens.load(hash_token(token))
        if record is None:
            raise ValueError("unknown token: this server never issued it")
        problem = token_problem(record)
        if problem:
            raise ValueError(f"{problem}; ask an admin for a new one")
        return record.token_id


def session_key(secret_text: str) -> bytes:
    """The team server's session key, derived from its secrets key: the same on every replica and restart."""
    return hashlib.sha256(b"rundock-ui-session\0" + secret_text.encode()).digest()


def auth_of(request: Request) -> UiAuth:
    found: UiAuth = request.app.state.ui_auth
    return found


def set_session(response_headers: dict[str, str], value: str, secure: bool) -> None:
    response_headers["Set-Cookie"] = cookie_header(COOKIE, value, SESSION_SECONDS, secure)


def cookie_header(name: str, value: str, max_age: int, secure: bool) -> str:
    return (f"{name}={value}; Path=/ui; Max-Age={max_age}; HttpOnly; SameSite=Strict"
            + ("; Secure" if secure else ""))


def _wants_json(request: Request) -> bool:
    return request.url.path.startswith("/ui/api/") or "text/html" not in request.headers.get("accept", "")


def ui_session(request: Request) -> Viewer:
    """The request's session, or: a redirect to the login page (pages), 401 (JSON, SSE, downloads asked for
    by a client that does not want HTML). A ``?token=`` of ``rundock ui`` is exchanged here for a cookie."""
    auth = auth_of(request)
    cookie = request.cookies.get(COOKIE, "")
    checked = auth.signer.verify(cookie) if cookie else None
    principal = auth.principal(checked[0]) if checked else None
    if checked and principal is not None and not auth.ended(checked[1]):
        request.state.principal = principal  # for the team server's access log
        return Viewer(principal, checked[1], auth.signer.csrf(checked[1]))
    once = request.query_params.get("token")
    if once and request.method == "GET":
        subject = auth.exchange_once(once)
        if subject is not None:
            rest = "&".join(f"{quote(k)}={quote(v)}" for k, v in request.query_params.multi_items() if k != "token")
            error = ApiError(303, "signed in; go on to the page without the token")
            error.headers["Location"] = request.url.path + (f"?{rest}" if rest else "")
            set_session(error.headers, auth.signer.issue(subject), request.url.scheme == "https")
            raise error
    if _wants_json(request):
        raise ApiError(401, "the UI needs a session: sign in at /ui/login (or open the URL `rundock ui` printed)")
    target = request.url.path + (f"?{request.url.query}" if request.url.query else "")
    error = ApiError(303, "sign in first")
    error.headers["Location"] = f"/ui/login?next={quote(target, safe='')}"
    raise error


def check_csrf(request: Request, viewer: Viewer, form_value: str | None = None) -> None:
    """403 unless the request carries the session's CSRF token (header ``X-CSRF-Token`` or form field)."""
    sent = request.headers.get("x-csrf-token") or form_value or ""
    if not hmac.compare_digest(sent.encode(), viewer.csrf.encode()):
        raise ApiError(403, "missing or wrong CSRF token: reload the page and try again")
