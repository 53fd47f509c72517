"""Run-scoped tokens: what a job's ``mlflow.log_metric()`` authenticates with, instead of its user's token.

A run token is ``rdkrun_<payload>.<signature>`` (URL-safe base64, no padding): the payload is
``<expires_at>:<token_id>:<run_id>`` (unix seconds; the id of the server token that minted it), the signature
HMAC-SHA256 over it with a key derived from the server's secrets key (HMAC of the key with a fixed label, so the
secrets key itself never signs anything). Run tokens are not rows in the token table, so nothing needs cleaning
up: one is good only

- on the MLflow routes (``/api/2.0/mlflow/...``; every other route refuses it, as it lacks the ``rdk_`` prefix),
- for its own run, and only while that run is not in a final state (checked on every request),
- while the token that minted it is neither revoked nor expired (``mlflow_auth`` checks it on every request),
- until it expires (``RUN_TOKEN_DAYS`` after it was minted, or when the minting token expires if sooner), and
  while the server keeps its secrets key: replacing the key voids every run token.

``POST /api/v1/runs/{run_id}/run-token`` mints one for a caller who may write that run (the submitter does so
when it starts a job of a server-backed workspace).
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import functools
import hashlib
import hmac
import time

RUN_TOKEN_PREFIX = "rdkrun_"
RUN_TOKEN_DAYS = 30.0
_LABEL = b"rundock mlflow run tokens v2"  # v2: the payload names the minting token


class RunTokenError(ValueError):
    """A run token that is malformed, forged or expired; the message says which."""


@dataclasses.dataclass(frozen=True)
class RunToken:
    run_id: str
    expires_at: float
    minted_by: str  # the id of the server token that minted it


@functools.lru_cache(maxsize=8)
def signing_key(secrets_key: str) -> bytes:
    """The key run tokens are signed with, derived from the server's secrets key (base64 text)."""
    return hmac.new(secrets_key.encode("utf-8"), _LABEL, hashlib.sha256).digest()


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode("ascii").rstrip("=")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def _sign(key: bytes, payload: bytes) -> bytes:
    return hmac.new(key, payload, hashlib.sha256).digest()


def mint_token(key: bytes, run_id: str, minted_by: str, *, days: float = RUN_TOKEN_DAYS, now: float | None = None,
               not_after: float | None = None) -> tuple[str, int]:
    """A new run token for ``run_id``, minted by the server token ``minted_by`` (its id), and its expiry time (unix
    seconds): ``days`` from now, or ``not_after`` (the minting token's expiry) if sooner."""
    expires_at = int((time.time() if now is None else now) + days * 86400)
    if not_after is not None:
        expires_at = min(expires_at, int(not_after))
    if not minted_by or ":" in minted_by:
        raise ValueError(f"a run token is minted by a token id without ':', not {minted_by!r}")
    payload = f"{expires_at}:{minted_by}:{run_id}".encode()
    return f"{RUN_TOKEN_PREFIX}{_b64(payload)}.{_b64(_sign(key, payload))}", expires_at


def is_run_token(token: str) -> bool:
    return token.startswith(RUN_TOKEN_PREFIX)


def verify(key: bytes, token: str, *, now: float | None = None) -> RunToken:
    """The run a token is good for; RunTokenError if it is malformed, not signed with ``key``, or expired. (Whether
    the token that minted it still holds is the caller's to check: that takes the token table.)"""
    body = token[len(RUN_TOKEN_PREFIX):] if is_run_token(token) else ""
    encoded, dot, signature = body.partition(".")
    try:
        payload, given = _unb64(encoded), _unb64(signature)
    except (binascii.Error, ValueError):
        payload, given = b"", b""
    if not dot or not payload or not hmac.compare_digest(_sign(key, payload), given):
        raise RunTokenError("invalid run token: it was not minted by this server (or the server's secrets key "
                            "was replaced since, or rundock was upgraded); submit the run again for a new one")
    expires, _, rest = payload.decode("utf-8", "replace").partition(":")
    minted_by, _, run_id = rest.partition(":")
    if not expires.isdigit() or not minted_by or not run_id:
        raise RunTokenError("invalid run token: its contents are not a run, a token and an expiry time")
    if (time.time() if now is None else now) >= int(expires):
        raise RunTokenError(f"the run token of run {run_id} has expired")
    return RunToken(run_id, float(expires), minted_by)
