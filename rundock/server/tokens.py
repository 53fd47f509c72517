"""Making tokens: ``rdk_`` + ``secrets.token_urlsafe(32)``, stored as a SHA-256 hash with a name, role and pools.

Only the hash is stored. A slow password hash (bcrypt, scrypt) protects guessable secrets from dictionary
attacks; a random 256-bit token cannot be guessed, so one fast hash per request is as safe and keeps each
request cheap. The token itself is seen once, by whoever asked for it.
"""

from __future__ import annotations

import hashlib
import re
import secrets
import time

from rundock.server.state import ROLES, ServerState, TokenRecord

TOKEN_PREFIX = "rdk_"
_TOKEN_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._@-]{0,63}$")
_POOL = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")


def new_token() -> str:
    return TOKEN_PREFIX + secrets.token_urlsafe(32)


def hash_token(token: str) -> str:
    """The stored form of a token (SHA-256 hex; see the module docstring for why no slow hash)."""
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


def issue_token(state: ServerState, name: str, role: str, pools: list[str],
                expires_in_days: float | None) -> tuple[TokenRecord, str]:
    """Check the request and store a new token; return its record and the token (the only time it is seen).

    A bad name, role, pool list or lifetime raises ValueError naming the field.
    """
    if not _TOKEN_NAME.match(name):
        raise ValueError(f"field 'name': token name {name!r} must be letters, digits, '.', '_', '@' or '-' "
                         "(at most 64)")
    if role not in ROLES:
        raise ValueError(f"field 'role': {role!r} is not a role; expected one of {', '.join(ROLES)}")
    if role == "agent" and not pools:
        raise ValueError("field 'pools': an agent token needs the pools whose runs it takes (--pool NAME)")
    if role != "agent" and pools:
        raise ValueError(f"field 'pools': only agent tokens have pools, not {role} tokens")
    for pool in pools:
        if not _POOL.match(pool):
            raise ValueError(f"field 'pools': {pool!r} is not a pool name")
    if expires_in_days is not None and not expires_in_days > 0:
        raise ValueError("field 'expires_in_days': expected a number of days above 0")
    token = new_token()
    expires_at = time.time() + expires_in_days * 86400 if expires_in_days is not None else None
    return state.add_token(hash_token(token), name, role, list(dict.fromkeys(pools)), expires_at), token
