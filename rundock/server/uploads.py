"""Resumable blob uploads: bytes streamed to a partial file, hashed as they arrive, installed when complete.

A blob on its way lives in ``<artifacts>/uploads/<digest>.partial`` (a folder ``rundock gc`` leaves alone).
``PUT /uploads/{digest}?offset=N`` appends the request's body at N, which must be the partial's size (so a
client that lost a connection asks ``GET /uploads/{digest}`` and carries on from there). The request that says
it is the last one makes the server check the SHA-256 of the whole partial and install it in the artifact
store, or discard it when it does not match.

The SHA-256 of what arrived so far is kept in memory with the offset it covers, so the usual upload (one
request, or several in a row to this server) is hashed exactly once, as it streams in; after a restart the
partial is hashed again from disk when it completes. One upload per digest at a time: a second one meanwhile
gets 409. Nothing is ever held whole in memory.
"""

from __future__ import annotations

import hashlib
import os
import time
from collections.abc import AsyncIterator
from typing import Any

from starlette.concurrency import run_in_threadpool

from rundock.history.artifacts import ArtifactStore
from rundock.server.errors import ApiError

STALE_PARTIAL_SECONDS = 7 * 24 * 3600
_HEX = frozenset("0123456789abcdef")


def check_digest(digest: str) -> str:
    if len(digest) != 64 or not _HEX.issuperset(digest):
        raise ApiError(400, f"{digest!r} is not a blob digest: blobs are named by their SHA-256 in lowercase hex "
                            "(64 characters)")
    return digest


class Uploads:
    """The partial uploads of one artifact store."""

    def __init__(self, artifacts: ArtifactStore) -> None:
        self.artifacts = artifacts
        self.folder = os.path.join(artifacts.root, "uploads")
        os.makedirs(self.folder, exist_ok=True)
        self._busy: set[str] = set()
        self._hashes: dict[str, tuple[Any, int]] = {}  # digest -> (sha256 so far, bytes it covers)

    def partial(self, digest: str) -> str:
        return os.path.join(self.folder, digest + ".partial")

    def offset(self, digest: str) -> int:
        """How many bytes of an unfinished upload the server holds (0 if none)."""
        try:
            return os.path.getsize(self.partial(digest))
        except FileNotFoundError:
            return 0

    def remove_stale(self, now: float | None = None) -> int:
        """Remove partials nobody added to for ``STALE_PARTIAL_SECONDS``; return how many."""
        cutoff = (now or time.time()) - STALE_PARTIAL_SECONDS
        removed = 0
        for entry in os.scandir(self.folder):
            if entry.name.endswith(".partial") and entry.stat().st_mtime < cutoff:
                os.unlink(entry.path)
                removed += 1
        return removed

    async def receive(self, digest: str, offset: int, chunks: AsyncIterator[bytes], final: bool) -> dict[str, Any]:
        """Append ``chunks`` to the partial at ``offset``; when ``final`` (or nothing came), check and install.

        Returns ``{"offset": n}`` for an upload still open, ``{"complete": true}`` once the blob is stored.
        """
        if digest in self._busy:
            raise ApiError(409, f"blob {digest} is being uploaded by another request right now; ask "
                                f"GET /uploads/{digest} for the offset and try again later", offset=self.offset(digest))
        self._busy.add(digest)
        try:
            return await self._receive(digest, offset, chunks, final)
        finally:
            self._busy.discard(digest)

    async def _receive(self, digest: str, offset: int, chunks: AsyncIterator[bytes], final: bool) -> dict[str, Any]:
        if await run_in_threadpool(self.artifacts.keep, digest):
            async for _ in chunks:  # read what the client sends (dropped): it then reads the answer cleanly
                pass
            return {"complete": True}
        path = self.partial(digest)
        have = self.offset(digest)
        if offset != have:
            raise ApiError(409, f"upload of blob {digest}: offset {offset} given, but the server holds {have} bytes; "
                                f"send from offset {have}", offset=have)
        hashed, covered = self._hashes.pop(digest, (None, -1))
        if covered != have:  # the server restarted since the last part, or nothing came yet
            hashed = hashlib.sha256() if have == 0 else None  # None: hash the partial from disk at the end
        received = 0
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
                    self._hashes[digest] = (hashed, have + received)
        if not (final or received == 0):
            return {"offset": have + received}
        hashed, covered = self._hashes.pop(digest, (None, -1))
        return await run_in_threadpool(self._install, digest, path, hashed if covered == have + received else None)

    def _install(self, digest: str, path: str, hashed: Any) -> dict[str, Any]:
        if hashed is None:
            hashed = hashlib.sha256()
            with open(path, "rb") as fh:
                while chunk := fh.read(1 << 20):
                    hashed.update(chunk)
        if hashed.hexdigest() != digest:
            os.unlink(path)
            raise ApiError(400, f"digest mismatch: the bytes uploaded for blob {digest} have the SHA-256 "
                                f"{hashed.hexdigest()}; the partial upload was discarded, send the blob again")
        self.artifacts.install_hashed(path, digest)  # a rename: the partial lives inside the artifact store
        return {"complete": True}

