"""Tokens, roles and the one dependency every route but the health checks goes through: ``authenticated``.

Tokens are made by ``tokens`` (random, stored as SHA-256 hashes: see there for why no slow hash).

Roles:

- ``admin``: everything (tokens, housekeeping), but a run's secrets only as any other submitter;
- ``user``: submits runs and writes its own (``submitted_by`` is the token's name), reads every run;
- ``agent``: reads and writes the runs of its pools (a run's ``target`` is a pool name) and nothing else.

Lookups are cached for at most ``TOKEN_CACHE_SECONDS``, so a token revoked stops working within that time on
every server sharing the database, and at once on the server that revoked it; expiry is checked on every request.
"""

from __future__ import annotations

import dataclasses
import threading
import time
from collections.abc import Awaitable, Callable
from typing import Any

from fastapi import Depends, Request
from starlette.concurrency import run_in_threadpool

from rundock.server.errors import ApiError
from rundock.server.state import ServerState, TokenRecord
from rundock.server.tokens import TOKEN_PREFIX, hash_token

TOKEN_CACHE_SECONDS = 1.0


@dataclasses.dataclass(frozen=True)
class Principal:
    """Who a request comes from: its token's id, name, role and pools."""

    token_id: str
    name: str
    role: str
    pools: tuple[str, ...] = ()
    expires_at: float | None = None

    @property
    def is_admin(self) -> bool:
        return self.role == "admin"

    def describe(self) -> str:
        """How messages name this principal: ``token 'ci' (agent of pools a100, cpu)``."""
        pools = f" of pool{'s' if len(self.pools) != 1 else ''} {', '.join(self.pools)}" if self.pools else ""
        return f"token {self.name!r} ({self.role}{pools})"

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "role": self.role, "pools": list(self.pools), "expires_at": self.expires_at}


class TokenCache:
    """Token lookups by hash, remembered for at most ``ttl`` seconds (misses too: a flood of bad tokens)."""

    def __init__(self, state: ServerState, ttl: float = TOKEN_CACHE_SECONDS) -> None:
        self.state = state
        self.ttl = ttl
        self._entries: dict[str, tuple[TokenRecord | None, float]] = {}
        self._lock = threading.Lock()

    def cached(self, token_hash: str) -> tuple[bool, TokenRecord | None]:
        """(whether a fresh entry was found, the record) without touching the database."""
        entry = self._entries.get(token_hash)
        if entry is not None and time.monotonic() - entry[1] < self.ttl:
            return True, entry[0]
        return False, None

    def load(self, token_hash: str) -> TokenRecord | None:
        record = self.state.token_by_hash(token_hash)
        with self._lock:
            if len(self._entries) > 10_000:
                self._entries.clear()
            self._entries[token_hash] = (record, time.monotonic())
        return record

    def by_id(self, token_id: str) -> TokenRecord | None:
        """The token with id ``token_id`` (a run token's minter), looked up at most once per ``ttl``."""
        found, record = self.cached("id:" + token_id)
        if found:
            return record
        record = self.state.token_by_id(token_id)
        with self._lock:
            if len(self._entries) > 10_000:
                self._entries.clear()
            self._entries["id:" + token_id] = (record, time.monotonic())
        return record

    def forget(self) -> None:
        """Drop every entry (a token was revoked here)."""
        with self._lock:
            self._entries.clear()


def token_problem(record: TokenRecord, now: float | None = None) -> str | None:
    """Why ``record`` is no longer good (revoked, expired), or None."""
    if record.revoked_at is not None:
        return f"token {record.name!r} ({record.token_id}) was revoked"
    if record.expires_at is not None and (time.time() if now is None else now) >= record.expires_at:
        return f"token {record.name!r} ({record.token_id}) has expired"
    return None


def _unauthorized(message: str) -> ApiError:
    error = ApiError(401, message)
    error.headers["WWW-Authenticate"] = "Bearer"
    return error


async def authenticated(request: Request) -> Principal:
    """The principal of the request's bearer token, or 401. Every route but ``/healthz`` and ``/readyz`` depends
    on this function (directly or through ``allow``); a test checks that none is left out."""
    header = request.headers.get("authorization", "")
    scheme, _, token = header.partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer" or not token:
        raise _unauthorized("this route needs a token: send the header 'Authorization: Bearer <token>' (an admin "
                            "makes tokens with `rundock server token create`)")
    if not token.startswith(TOKEN_PREFIX):
        raise _unauthorized(f"that is not a rundock server token (they start with {TOKEN_PREFIX!r})")
    cache: TokenCache = request.app.state.services.tokens
    token_hash = hash_token(token)
    found, record = cache.cached(token_hash)
    if not found:
        record = await run_in_threadpool(cache.load, token_hash)
    if record is None:
        raise _unauthorized("unknown token: it was never issued by this server (or its tables were replaced)")
    problem = token_problem(record)
    if problem:
        raise _unauthorized(f"{problem}; ask an admin for a new one")
    principal = Principal(record.token_id, record.name, record.role, record.pools, record.expires_at)
    request.state.principal = principal  # for the access log
    return principal


def allow(*roles: str) -> Callable[..., Awaitable[Principal]]:
    """A dependency: the authenticated principal if its role is one of ``roles``, else 403."""

    async def role_check(principal: Principal = Depends(authenticated)) -> Principal:
        if principal.role not in roles:
            raise ApiError(403, f"{principal.describe()} may not do this: it needs the role {' or '.join(roles)}")
        return principal

    role_check.__name__ = f"allow_{'_'.join(roles)}"
    return role_check


ANY_ROLE = allow("admin", "user", "agent")
SUBMITTERS = allow("admin", "user")
ADMINS = allow("admin")
