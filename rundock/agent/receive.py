"""Blobs arriving on a remote host: a tar stream whose members are named ``<digest>.<size>[.z]``
(standard library only).

Each member is stored under its digest only after its content proved to hash to it. ``.z`` members are
zlib-compressed, and are inflated in chunks, never to more than their declared size: a member that
inflates past it (a "zip bomb"), is shorter than declared, or hashes to another digest is refused with
an error naming it, and leaves nothing behind (small blobs go into one pack that is committed only when
the whole stream arrived; a large blob's temporary file is removed). Memory stays at a few chunks
whatever the sizes.
"""

from __future__ import annotations

import hashlib
import os
import tarfile
import zlib
from typing import IO, Any, cast

from rundock.history.artifacts import PACK_MAX_BLOB, ArtifactStore

CHUNK = 1 << 20


class BlobRefused(ValueError):
    """A blob that is not what its name says (too large when inflated, cut short, or damaged)."""


def parse_member(name: str) -> tuple[str, int, bool]:
    """(digest, size, compressed) of a member name ``<64 hex>.<size>[.z]``; BlobRefused otherwise."""
    parts = name.split(".")
    compressed = len(parts) == 3 and parts[2] == "z"
    if compressed:
        parts = parts[:2]
    if len(parts) != 2 or not parts[1].isdigit() or len(parts[0]) != 64 or \
            any(c not in "0123456789abcdef" for c in parts[0]):
        raise BlobRefused(f"blob {name!r} is not named <sha256>.<size>[.z]; refusing it")
    return parts[0], int(parts[1]), compressed


class BoundedBlob:
    """A member's content as a stream (``read``): inflated if compressed, never past ``size`` bytes."""

    def __init__(self, source: IO[bytes], name: str, size: int, compressed: bool) -> None:
        self.source = source
        self.name = name
        self.size = size
        self.left = size
        self.inflater: Any = zlib.decompressobj() if compressed else None

    def _next(self, want: int) -> tuple[bytes, bool]:
        """Up to ``want`` bytes and whether the content has ended."""
        z = self.inflater
        while True:
            if z is None:
                data = self.source.read(want)
                return data, not data
            if z.unconsumed_tail:
                data = z.decompress(z.unconsumed_tail, want)
            elif z.eof:
                if z.unused_data or self.source.read(1):
                    raise BlobRefused(f"blob {self.name} has bytes after its compressed content; refusing it")
                return b"", True
            else:
                raw = self.source.read(CHUNK)
                if not raw:
                    raise BlobRefused(f"blob {self.name} ends in the middle of its compressed content")
                try:
                    data = z.decompress(raw, want)
                except zlib.error as exc:
                    raise BlobRefused(f"blob {self.name} is not valid zlib data ({exc})") from None
            if data:
                return data, False

    def read(self, n: int = -1) -> bytes:
        want = min(n if n is not None and n > 0 else CHUNK, self.left + 1)  # one byte more tells "too long"
        data, ended = self._next(want)
        if len(data) > self.left:
            raise BlobRefused(f"blob {self.name} is larger than the {self.size} bytes it was sent as "
                              "(a compressed blob that inflates past its size); refusing it")
        self.left -= len(data)
        if ended and self.left:
            raise BlobRefused(f"blob {self.name} has {self.size - self.left} of the {self.size} bytes it was sent as")
        return data

    def read_all(self) -> bytes:
        out = bytearray()
        while True:
            data = self.read(CHUNK)
            if not data:
                return bytes(out)
            out += data


def _store_loose(store: ArtifactStore, blob: BoundedBlob, digest: str) -> None:
    """Stream a large blob into the store (hashed once, by the store); remove it again if it is damaged."""
    stored, _, new = store.put_stream(cast(IO[bytes], blob))
    if stored != digest:
        if new:
            try:
                os.unlink(store.path(stored))
            except FileNotFoundError:
                pass
        raise BlobRefused(f"blob {digest} arrived damaged (its content hashes to {stored})")


def receive(root: str, stream: Any) -> int:
    """Store each member of a tar stream under its digest; return how many were stored (see the module doc)."""
    stored = 0
    store = ArtifactStore(os.path.join(root, "artifacts"))
    with tarfile.open(fileobj=stream, mode="r|*") as tar, store.pack() as pack:
        for member in tar:
            if not member.isfile():
                continue
            digest, size, compressed = parse_member(member.name)
            if not compressed and member.size != size:
                raise BlobRefused(f"blob {member.name} holds {member.size} bytes, not {size}; refusing it")
            src = tar.extractfile(member)
            assert src is not None
            blob = BoundedBlob(src, member.name, size, compressed)
            if size > PACK_MAX_BLOB:
                _store_loose(store, blob, digest)
            else:
                data = blob.read_all()
                if hashlib.sha256(data).hexdigest() != digest:
                    raise BlobRefused(f"blob {digest} arrived damaged")
                pack.add(data, digest)
            stored += 1
    return stored
