"""Content-addressed file storage: a blob is stored once under its SHA-256.

Two layouts, both read through the same calls (``has``, ``open``, ``read``, ``copy_to``):

- loose blobs, one file each under ``root/<2 hex>/<64 hex>``: large files, logs,
  outputs and models;
- packs under ``root/packs/``: many small blobs written together as one
  ``<name>.pack`` (their bytes, back to back) and one ``<name>.idx`` (digest,
  offset, size per blob). A snapshot of 2,000 small files creates two files
  instead of 2,000, which is what made snapshots slow.

Every write goes to a temporary file in the same folder and is renamed into
place (a pack before its index), so a reader never sees a partial blob and a
crash leaves no corrupt one. A pack is never changed in place; only
``rundock gc`` (rundock.history.gc) removes blobs: loose ones, and packs
replaced by a new pack of their live blobs, written before the old pair goes.
Readers in other processes notice new and removed index files through the
packs folder's mtime, and a read whose pack went away looks the blob up again.

A store may have a remote source (``remote``: the team server, for a workspace whose history is one): a
blob missing here is then fetched from it into this store by ``open``, ``read``, ``copy_to``, ``file_path``
and ``size``, streamed to a temporary file whose SHA-256 is checked before it is installed. ``has`` and
``keep`` answer for this store alone.

A writer that finds a blob already stored and reuses it calls ``keep``, which
stamps the blob's file (or its pack) with the current time: gc spares what was
used within its grace period, so a blob that nothing referred to a moment ago
but that a run or a snapshot is taking up again is not removed under it.
"""

from __future__ import annotations

import hashlib
import io
import os
import shutil
import struct
import tempfile
import threading
import time
import uuid
from collections.abc import Iterable
from typing import IO, BinaryIO, NamedTuple, Protocol

_CHUNK = 1 << 20
PACK_MAX_BLOB = 1 << 20  # larger blobs are stored loose
_IDX_MAGIC = b"RDPACK01"
_IDX_ENTRY = struct.Struct("<32sQQ")
_MTIME_TICK = 0.05  # seconds; generous for the kernel's coarse file timestamps


def sha256_file(path: str) -> tuple[str, int]:
    """The hex SHA-256 and size of a file."""
    digest = hashlib.sha256()
    size = 0
    with open(path, "rb") as fh:
        while chunk := fh.read(_CHUNK):
            digest.update(chunk)
            size += len(chunk)
    return digest.hexdigest(), size


_HEX = frozenset("0123456789abcdef")


def _check_digest(digest: str) -> None:
    if len(digest) != 64 or not _HEX.issuperset(digest):
        raise ValueError(f"not a SHA-256 digest: {digest!r}")


def _stamp(path: str) -> bool:
    """Set the mtime of ``path`` to now; False when there is no such file."""
    try:
        os.utime(path)
    except FileNotFoundError:
        return False
    except PermissionError:  # someone else's file: it is there, and not this user's to collect
        pass
    return True


class RemoteBlobs(Protocol):
    """Where a store fetches the blobs it lacks (``ArtifactStore.remote``)."""

    def fetch_blob(self, digest: str, target: str) -> None:
        """Write the blob's bytes to the new file ``target``; FileNotFoundError when the source lacks it."""


class _Packed(NamedTuple):
    pack: str
    offset: int
    size: int


class ArtifactStore:
    """Loose blobs under ``root/<2 hex>/<64 hex>`` and packs of small blobs under ``root/packs``."""

    def __init__(self, root: str) -> None:
        self.root = os.path.abspath(root)
        self.packs_dir = os.path.join(self.root, "packs")
        os.makedirs(self.packs_dir, exist_ok=True)
        self._dirs: set[str] = set()
        self._packed: dict[str, _Packed] = {}
        self._indexes: set[str] = set()
        self._seen: tuple[int, float] | None = None  # (packs folder mtime, when it was read)
        self._lock = threading.Lock()
        self.remote: RemoteBlobs | None = None  # consulted on a miss (see the module docstring)

    # -- where a blob is --------------------------------------------------------------------------
    def path(self, digest: str) -> str:
        """Where the blob is (or would be) stored loose."""
        _check_digest(digest)
        return os.path.join(self.root, digest[:2], digest)

    def loose_path(self, digest: str) -> str | None:
        """The blob's own file, or None when it is missing or lives in a pack."""
        path = self.path(digest)
        return path if os.path.exists(path) else None

    def file_path(self, digest: str) -> str:
        """A file holding the blob's bytes (a packed blob gets its own loose copy first)."""
        self._fetch_missing(digest)
        path = self.path(digest)
        if not os.path.exists(path):
            data = self.read(digest)
            tmp = self._incoming(path)
            with open(tmp, "wb") as out:
                out.write(data)
            self._install(tmp, path)
        return path

    def _find_packed(self, digest: str, refresh: bool = True) -> _Packed | None:
        found = self._packed.get(digest)
        if found is None and refresh and self.refresh():
            found = self._packed.get(digest)
        return found

    def refresh(self) -> bool:
        """Read index files other writers added (or forget those gc removed) since the last look; True when
        there was any change."""
        try:
            mtime = os.stat(self.packs_dir).st_mtime_ns
        except FileNotFoundError:
            return False
        with self._lock:
            # The folder's mtime has a coarse clock: if the last look came right after a change, a second
            # change in the same tick would leave the mtime as it was, so look again.
            if self._seen is not None and self._seen[0] == mtime and self._seen[1] - mtime / 1e9 > _MTIME_TICK:
                return False
            self._seen = (mtime, time.time())
            present = {n for n in os.listdir(self.packs_dir) if n.endswith(".idx")}
            if not self._indexes <= present:  # gc removed packs: read every index again, swapped in at once
                packed: dict[str, _Packed] = {}
                self._indexes = {n for n in sorted(present) if self._load_index(n, packed)}
                self._packed = packed
                return True
            fresh = sorted(present - self._indexes)
            for name in fresh:
                if self._load_index(name, self._packed):
                    self._indexes.add(name)
            return bool(fresh)

    def _load_index(self, name: str, packed: dict[str, _Packed]) -> bool:
        """Add the blobs of index ``name`` to ``packed``; False if gc removed it since the folder was listed."""
        try:
            entries = self.index_entries(name)
        except FileNotFoundError:
            return False
        pack = os.path.join(self.packs_dir, name[:-len(".idx")] + ".pack")
        for digest, (offset, size) in entries.items():
            packed.setdefault(digest, _Packed(pack, offset, size))
        return True

    def index_entries(self, name: str) -> dict[str, tuple[int, int]]:
        """The blobs of pack index ``name`` (a file name in ``packs_dir``): digest -> (offset, size)."""
        path = os.path.join(self.packs_dir, name)
        with open(path, "rb") as fh:
            data = fh.read()
        if not data.startswith(_IDX_MAGIC):
            raise OSError(f"{path} is not a rundock pack index")
        return {raw.hex(): (offset, size) for raw, offset, size in _IDX_ENTRY.iter_unpack(data[len(_IDX_MAGIC):])}

    def _forget(self, pack: str) -> None:
        """Stop believing in ``pack`` (gc removed it): the next look reads the indexes again."""
        with self._lock:
            self._indexes.discard(os.path.basename(pack)[:-len(".pack")] + ".idx")
            self._packed = {d: p for d, p in self._packed.items() if p.pack != pack}
            self._seen = None

    def keep(self, digest: str, refresh: bool = True) -> bool:
        """Whether the blob is stored, stamping its file (or its pack) with the current time so that a garbage
        collection running now spares it. A writer that reuses a stored blob asks this rather than ``has``."""
        for _ in range(3):
            packed = self._packed.get(digest)
            if packed is None:
                if _stamp(self.path(digest)):
                    return True
                packed = self._find_packed(digest, refresh)
                if packed is None:
                    return False
            if _stamp(packed.pack):
                return True
            self._forget(packed.pack)  # gc replaced that pack: look in the indexes there are now
            refresh = True
        return False

    def has(self, digest: str, refresh: bool = True) -> bool:
        """Whether the blob is stored; ``refresh=False`` skips looking for packs written since ``refresh()``."""
        return (digest in self._packed or os.path.exists(self.path(digest))
                or self._find_packed(digest, refresh) is not None)

    def size(self, digest: str) -> int:
        self._fetch_missing(digest)
        packed = self._find_packed(digest)
        return packed.size if packed is not None else os.path.getsize(self.path(digest))

    # -- reading ----------------------------------------------------------------------------------
    @staticmethod
    def _read_packed(digest: str, packed: _Packed) -> bytes:
        with open(packed.pack, "rb") as fh:
            fh.seek(packed.offset)
            data = fh.read(packed.size)
        if len(data) != packed.size:
            raise OSError(f"pack {packed.pack} is shorter than its index says; blob {digest} is damaged")
        return data

    def _packed_bytes(self, digest: str) -> bytes | None:
        """A packed blob's bytes (None when it is not in a pack); a pack that gc replaced since its index was
        read is looked up again in the indexes there are now."""
        packed = self._find_packed(digest)
        if packed is None:
            return None
        try:
            return self._read_packed(digest, packed)
        except FileNotFoundError:
            self._forget(packed.pack)
        packed = self._find_packed(digest)
        return None if packed is None else self._read_packed(digest, packed)

    def read(self, digest: str) -> bytes:
        self._fetch_missing(digest)
        data = self._packed_bytes(digest)
        if data is not None:
            return data
        with open(self.path(digest), "rb") as fh:
            return fh.read()

    def open(self, digest: str) -> BinaryIO:
        """A readable binary stream of the blob."""
        self._fetch_missing(digest)
        data = self._packed_bytes(digest)
        if data is not None:
            return io.BytesIO(data)  # packed blobs are small
        return open(self.path(digest), "rb")

    def copy_to(self, digest: str, target: str) -> None:
        """Write the blob to ``target`` (a new, writable file)."""
        self._fetch_missing(digest)
        os.makedirs(os.path.dirname(os.path.abspath(target)), exist_ok=True)
        tmp = target + ".rundock-partial"
        data = self._packed_bytes(digest)
        if data is not None:
            with open(tmp, "wb") as out:
                out.write(data)
        else:
            shutil.copyfile(self.path(digest), tmp)
        os.chmod(tmp, 0o644)
        os.replace(tmp, target)

    def _fetch_missing(self, digest: str) -> None:
        """Bring a blob this store lacks from its remote source, if it has one; its SHA-256 is checked first."""
        if self.remote is None or self.has(digest):
            return
        final = self.path(digest)
        tmp = self._incoming(final)
        try:
            self.remote.fetch_blob(digest, tmp)
            got, _ = sha256_file(tmp)
            if got != digest:
                raise OSError(f"blob {digest} fetched from {self.remote!r} has SHA-256 {got}: not kept")
            self._install(tmp, final)
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)

    # -- writing ----------------------------------------------------------------------------------
    def put_file(self, source: str, digest: str | None = None) -> tuple[str, int, bool]:
        """Store a file; return (digest, size, whether new bytes were written).

        With a known ``digest`` a file already stored costs one ``keep`` (a utime).
        """
        if digest is not None and self.keep(digest):
            return digest, os.path.getsize(source), False
        with open(source, "rb") as fh:
            return self.put_stream(fh)

    def put_stream(self, stream: IO[bytes]) -> tuple[str, int, bool]:
        digest = hashlib.sha256()
        size = 0
        fd, tmp = tempfile.mkstemp(dir=self.root, prefix=".incoming-")
        try:
            with os.fdopen(fd, "wb") as out:
                while chunk := stream.read(_CHUNK):
                    digest.update(chunk)
                    out.write(chunk)
                    size += len(chunk)
            hexdigest = digest.hexdigest()
            if self.keep(hexdigest):
                os.unlink(tmp)
                return hexdigest, size, False
            self._install(tmp, self.path(hexdigest))
            return hexdigest, size, True
        except BaseException:
            if os.path.exists(tmp):
                os.unlink(tmp)
            raise

    def put_bytes(self, data: bytes) -> tuple[str, int, bool]:
        return self.put_stream(io.BytesIO(data))

    def install_hashed(self, path: str, digest: str) -> bool:
        """Move ``path`` (a finished temporary file on this store's filesystem, whose SHA-256 the caller has just
        computed as it wrote it) into place as blob ``digest``, without copying it; False (and ``path`` removed)
        if the blob was already stored."""
        _check_digest(digest)
        if self.keep(digest):
            os.unlink(path)
            return False
        self._install(path, self.path(digest))
        return True

    def adopt(self, source: str, digest: str, size: int, mtime_ns: int) -> bool:
        """Store ``source`` loose under a digest just computed from it, copying without hashing again.

        Refuses (returns False) if the file changed since it was hashed (size or mtime differ), so a
        blob's name always matches its content.
        """
        if self.keep(digest):
            return False
        final = self.path(digest)
        tmp = self._incoming(final)
        shutil.copyfile(source, tmp)
        st = os.stat(source)
        if (st.st_size, st.st_mtime_ns) != (size, mtime_ns):
            os.unlink(tmp)
            raise OSError(f"{source} changed while it was being stored; try again")
        self._install(tmp, final)
        return True

    def _incoming(self, final: str) -> str:
        """A temporary name beside a loose blob's final place."""
        self._folder(final)
        return f"{final}.incoming-{os.getpid()}-{threading.get_ident()}"

    def _folder(self, final: str) -> None:
        directory = os.path.dirname(final)
        if directory not in self._dirs:
            os.makedirs(directory, exist_ok=True)
            self._dirs.add(directory)

    def _install(self, tmp: str, final: str) -> None:
        """Make a fully written temporary file the read-only blob at ``final``."""
        self._folder(final)
        os.chmod(tmp, 0o444)
        os.replace(tmp, final)

    def pack(self) -> PackWriter:
        """A writer that stores many small blobs as one pack: ``with store.pack() as p: p.add(data)``."""
        return PackWriter(self)

    def write_pack(self, blobs: Iterable[tuple[str, bytes]]) -> str:
        """A new pack of exactly ``blobs`` ((digest, bytes) pairs), stored elsewhere already or not; return its
        index's file name. gc replaces a pack with one of its live blobs this way."""
        fd, tmp = tempfile.mkstemp(dir=self.packs_dir, prefix=".incoming-", suffix=".pack")
        index, offset = [], 0
        try:
            with os.fdopen(fd, "wb") as out:
                for digest, data in blobs:
                    out.write(data)
                    index.append(_IDX_ENTRY.pack(bytes.fromhex(digest), offset, len(data)))
                    offset += len(data)
            return self._commit_pack(tmp, b"".join(index))
        except BaseException:
            if os.path.exists(tmp):
                os.unlink(tmp)
            raise

    def _commit_pack(self, tmp_pack: str, index: bytes) -> str:
        name = f"{time.time_ns():x}-{uuid.uuid4().hex[:12]}"
        pack = os.path.join(self.packs_dir, name + ".pack")
        os.chmod(tmp_pack, 0o444)
        os.replace(tmp_pack, pack)
        fd, tmp_idx = tempfile.mkstemp(dir=self.packs_dir, prefix=".incoming-")
        with os.fdopen(fd, "wb") as out:
            out.write(_IDX_MAGIC + index)
        os.chmod(tmp_idx, 0o444)
        os.replace(tmp_idx, os.path.join(self.packs_dir, name + ".idx"))
        with self._lock:
            if self._load_index(name + ".idx", self._packed):
                self._indexes.add(name + ".idx")
        return name + ".idx"


class PackWriter:
    """Small blobs appended to one new pack; committed (made visible) when the ``with`` block ends without error."""

    def __init__(self, store: ArtifactStore) -> None:
        self.store = store
        store.refresh()
        self._tmp = ""
        self._out: BinaryIO | None = None  # created with the first new blob: an unchanged snapshot writes nothing
        self._entries: dict[str, tuple[int, int]] = {}
        self._offset = 0

    def add(self, data: bytes, digest: str | None = None) -> tuple[str, bool]:
        """Store ``data`` (whose SHA-256 is ``digest`` when already known); return (digest, whether it is new)."""
        digest = digest or hashlib.sha256(data).hexdigest()
        if digest in self._entries or self.store.keep(digest, refresh=False):
            return digest, False
        if self._out is None:
            fd, self._tmp = tempfile.mkstemp(dir=self.store.packs_dir, prefix=".incoming-", suffix=".pack")
            self._out = os.fdopen(fd, "wb")
        self._out.write(data)
        self._entries[digest] = (self._offset, len(data))
        self._offset += len(data)
        return digest, True

    def __enter__(self) -> PackWriter:
        return self

    def __exit__(self, kind: object, error: object, tb: object) -> None:
        if self._out is None:
            return
        self._out.close()
        if kind is not None:
            os.unlink(self._tmp)
            return
        index = b"".join(_IDX_ENTRY.pack(bytes.fromhex(d), off, size) for d, (off, size) in self._entries.items())
        try:
            self.store._commit_pack(self._tmp, index)
        except BaseException:
            if os.path.exists(self._tmp):
                os.unlink(self._tmp)
            raise
