"""Resumable blob uploads: bytes streamed to a partial file, hashed as they arrive, installed when complete.

Each uploader (a token id) has partials of its own: a blob on its way lives in
``<artifacts>/uploads/<token id>/<digest>.partial`` (a folder ``rundock gc`` leaves alone), so what one client
left behind never mixes with another's upload of the same digest. ``PUT /uploads/{digest}?offset=N`` appends the
request's body at N, which must be the size of the uploader's partial (so a client that lost a connection asks
``GET /uploads/{digest}`` and carries on from there). The request that says it is the last one makes the server
check the SHA-256 of the whole partial and install it in the artifact store (or drop it, when another uploader
installed the same blob meanwhile), or discard it when it does not match.

An agent whose bytes matched a digest is remembered as holding that blob:
``<artifacts>/uploads/<token id>/<digest>.held``, an empty file. That is how an agent proves it holds a blob the
server already had (``access.BlobAccess``): knowing a digest is not holding its bytes.

The SHA-256 of what arrived so far is kept in memory with the offset it covers, so the usual upload (one
request, or several in a row to this server) is hashed exactly once, as it streams in; after a restart the
partial is hashed again from disk when it completes. One upload per uploader and digest at a time: a second one
meanwhile gets 409. Nothing is ever held whole in memory.
"""

from __future__ import annotations

import hashlib
import os
import re
import time
from collections.abc import AsyncIterator
from typing import Any

from starlette.concurrency import run_in_threadpool

from rundock.history.artifacts import ArtifactStore
from rundock.server.errors import ApiError

STALE_PARTIAL_SECONDS = 7 * 24 * 3600
_HEX = frozenset("0123456789abcdef")
_OWNER = re.compile(r"[A-Za-z0-9_.-]{1,64}")
_PARTIAL, _HELD = ".partial", ".held"


def check_digest(digest: str) -> str:
    if len(digest) != 64 or not _HEX.issuperset(digest):
        raise ApiError(400, f"{digest!r} is not a blob digest: blobs are named by their SHA-256 in lowercase hex "
                            "(64 characters)")
    return digest


def _owner_folder(owner: str) -> str:
    if not _OWNER.fullmatch(owner) or owner in (".", ".."):
        raise ValueError(f"uploader {owner!r} cannot name a folder")
    return owner


class Uploads:
    """The partial uploads of one artifact store, per uploader."""

    def __init__(self, artifacts: ArtifactStore) -> None:
        self.artifacts = artifacts
        self.folder = os.path.join(artifacts.root, "uploads")
        os.makedirs(self.folder, exist_ok=True)
        self._busy: set[tuple[str, str]] = set()
        self._hashes: dict[tuple[str, str], tuple[Any, int]] = {}  # (owner, digest) -> (sha256 so far, bytes)

    def _path(self, owner: str, digest: str, suffix: str) -> str:
        return os.path.join(self.folder, _owner_folder(owner), digest + suffix)

    def partial(self, owner: str, digest: str) -> str:
        return self._path(owner, digest, _PARTIAL)

    def offset(self, owner: str, digest: str) -> int:
        """How many bytes of an unfinished upload of ``owner`` the server holds (0 if none)."""
        try:
            return os.path.getsize(self.partial(owner, digest))
        except FileNotFoundError:
            return 0

    def held(self, owner: str, digest: str) -> bool:
        """Whether ``owner`` sent the bytes of blob ``digest`` (marks untouched for ``STALE_PARTIAL_SECONDS`` are
        removed when the server starts)."""
        return os.path.exists(self._path(owner, digest, _HELD))

    def _mark_held(self, owner: str, digest: str) -> None:
        path = self._path(owner, digest, _HELD)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "ab"):
            pass
        os.utime(path)

    def remove_stale(self, now: float | None = None) -> int:
        """Remove partials nobody added to (and marks nobody renewed) for ``STALE_PARTIAL_SECONDS``; return how
        many."""
        cutoff = (now or time.time()) - STALE_PARTIAL_SECONDS
        removed = 0
        for top in os.scandir(self.folder):
            entries = list(os.scandir(top.path)) if top.is_dir(follow_symlinks=False) else [top]
            for entry in entries:
                if entry.name.endswith((_PARTIAL, _HELD)) and entry.stat().st_mtime < cutoff:
                    os.unlink(entry.path)
                    removed += 1
        return removed

    async def drain(self, owner: str, digest: str, chunks: AsyncIterator[bytes]) -> dict[str, Any]:
        """Read and drop a body whose blob the server has (and the uploader may read): the client then reads the
        answer cleanly. A partial of ``owner``'s for it is of no more use: removed."""
        async for _ in chunks:
            pass
        if (owner, digest) not in self._busy:
            self._hashes.pop((owner, digest), None)
            try:
                os.unlink(self.partial(owner, digest))
            except FileNotFoundError:
                pass
        return {"complete": True}

    async def receive(self, owner: str, digest: str, offset: int, chunks: AsyncIterator[bytes],
                      final: bool, remember: bool = False) -> dict[str, Any]:
        """Append ``chunks`` to ``owner``'s partial at ``offset``; when ``final`` (or nothing came), check and
        install; ``remember``: mark ``owner`` as holding the blob once its bytes matched.

        Returns ``{"offset": n}`` for an upload still open, ``{"complete": true}`` once the blob is stored.
        """
        key = (owner, digest)
        if key in self._busy:
            raise ApiError(409, f"blob {digest} is being uploaded by another request of this token right now; ask "
                                f"GET /uploads/{digest} for the offset and try again later",
                           offset=self.offset(owner, digest))
        self._busy.add(key)
        try:
            return await self._receive(owner, digest, offset, chunks, final, remember)
        finally:
            self._busy.discard(key)

    async def _receive(self, owner: str, digest: str, offset: int, chunks: AsyncIterator[bytes],
                       final: bool, remember: bool) -> dict[str, Any]:
        key = (owner, digest)
        path = self.partial(owner, digest)
        have = self.offset(owner, digest)
        if offset != have:
            raise ApiError(409, f"upload of blob {digest}: offset {offset} given, but the server holds {have} bytes; "
                                f"send from offset {have}", offset=have)
        hashed, covered = self._hashes.pop(key, (None, -1))
        if covered != have:  # the server restarted since the last part, or nothing came yet
            hashed = hashlib.sha256() if have == 0 else None  # None: hash the partial from disk at the end
        received = 0
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "ab") as out:
            try:
                async for chunk in chunks:
                    out.write(chunk)
                    received += len(chunk)
                    if hashed is not None:
                        hashed.update(chunk)
            finally:  # a client that went away mid-way resumes from what was written
                out.flush()
                if hashed is not None:
                    self._hashes[key] = (hashed, have + received)
        if not (final or received == 0):
            return {"offset": have + received}
        hashed, covered = self._hashes.pop(key, (None, -1))
        return await run_in_threadpool(self._install, owner, digest, path,
                                       hashed if covered == have + received else None, remember)

    def _install(self, owner: str, digest: str, path: str, hashed: Any, remember: bool) -> dict[str, Any]:
        if hashed is None:
            hashed = hashlib.sha256()
            with open(path, "rb") as fh:
                while chunk := fh.read(1 << 20):
                    hashed.update(chunk)
        if hashed.hexdigest() != digest:
            os.unlink(path)
            raise ApiError(400, f"digest mismatch: the bytes uploaded for blob {digest} have the SHA-256 "
                                f"{hashed.hexdigest()}; the partial upload was discarded, send the blob again")
        # A rename (the partial lives inside the artifact store), or the partial dropped when the blob is there.
        self.artifacts.install_hashed(path, digest)
        if remember:
            self._mark_held(owner, digest)
        return {"complete": True}
