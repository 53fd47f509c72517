"""Writing and reading the export tar, streamed: a blob passes through in 1 MiB pieces, never whole.

``ArchiveWriter`` writes to a temporary file beside the destination and renames it into place when
everything is written, so a failed export leaves no half archive behind (and the file is private: 0600).
Every blob is hashed on its way in, so a blob damaged in the exporting history is caught there.

``ArchiveReader`` walks the members of an archive in order. It refuses what an export never writes
before anything is read from it: a link, a device, a FIFO, a folder, a sparse file, or a name that is
not one of the format's (``transfer_format.member``). Tar errors (a truncated or damaged archive) leave
as ArchiveError naming the member being read. Reading a member's bytes goes through ``HashingReader``
when its digest must be checked.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import tarfile
import tempfile
from collections.abc import Iterator
from typing import IO, Any, BinaryIO, Callable, cast

from rundock.history.transfer_format import MANIFEST, ArchiveError, Member, TransferError, member

CHUNK = 1 << 20
Progress = Callable[[int], None]  # called with how many more bytes went through


class HashingReader(io.RawIOBase):
    """A read-only stream over ``source`` that hashes what it hands out and reports progress."""

    def __init__(self, source: IO[bytes], progress: Progress | None = None) -> None:
        super().__init__()
        self.source = source
        self.sha256 = hashlib.sha256()
        self.size = 0
        self.progress = progress

    def readable(self) -> bool:
        return True

    def read(self, size: int | None = -1) -> bytes:
        data = self.source.read(CHUNK if size is None or size < 0 else size)
        self.sha256.update(data)
        self.size += len(data)
        if self.progress is not None and data:
            self.progress(len(data))
        return data

    def readinto(self, buffer: Any) -> int:
        data = self.read(len(buffer))
        buffer[:len(data)] = data
        return len(data)

    def drain(self) -> str:
        """Read what is left; return the hex digest of everything read."""
        while self.read(CHUNK):
            pass
        return self.sha256.hexdigest()


class ArchiveWriter:
    """A new archive at ``path``; ``commit()`` makes it appear there, ``discard()`` (or an error) removes it."""

    def __init__(self, path: str, created: float, overwrite: bool = False) -> None:
        self.path = os.path.abspath(path)
        if os.path.isdir(self.path):
            raise TransferError(f"{path} is a folder; give the archive's file name, e.g. {path}/runs.tar")
        if os.path.exists(self.path) and not overwrite:
            raise TransferError(f"{path} exists; choose another name or overwrite it (--force)")
        self.folder = os.path.dirname(self.path)
        os.makedirs(self.folder, exist_ok=True)
        fd, self._tmp = tempfile.mkstemp(dir=self.folder, prefix=".rundock-export-", suffix=".partial")
        self._fh = os.fdopen(fd, "wb")
        self._tar = tarfile.open(fileobj=self._fh, mode="w", format=tarfile.PAX_FORMAT)  # noqa: SIM115 (commit/discard)
        self.created = created

    def _info(self, name: str, size: int) -> tarfile.TarInfo:
        info = tarfile.TarInfo(name)
        info.size, info.mode, info.mtime = size, 0o600, int(self.created)
        return info

    def add_bytes(self, name: str, data: bytes) -> None:
        self._tar.addfile(self._info(name, len(data)), io.BytesIO(data))

    def add_json(self, name: str, doc: Any) -> None:
        self.add_bytes(name, json.dumps(doc, separators=(",", ":")).encode("utf-8"))

    def add_stream(self, name: str, stream: IO[bytes], size: int) -> None:
        """A member of ``size`` bytes read from ``stream`` (a spooled metrics file)."""
        self._tar.addfile(self._info(name, size), stream)

    def add_blob(self, digest: str, size: int, stream: IO[bytes], progress: Progress | None = None) -> None:
        """``blobs/<digest>``, checking that ``stream`` holds exactly the ``size`` bytes that hash to ``digest``."""
        reader = HashingReader(stream, progress)
        try:
            self._tar.addfile(self._info(f"blobs/{digest}", size), cast(IO[bytes], reader))
        except OSError as exc:  # tarfile: "unexpected end of data" when the blob is shorter than recorded
            raise TransferError(f"blob {digest} in this history is shorter than its {size} recorded bytes "
                                f"({exc}): it is damaged") from exc
        if reader.read(1) or reader.sha256.hexdigest() != digest:
            raise TransferError(f"blob {digest} in this history does not match its digest: it is damaged")

    def spool(self) -> IO[bytes]:
        """A temporary file beside the archive, for a member whose size is only known once it is written."""
        return tempfile.TemporaryFile(dir=self.folder, prefix=".rundock-export-")

    def commit(self) -> None:
        self._tar.close()
        self._fh.flush()
        os.fsync(self._fh.fileno())
        self._fh.close()
        os.replace(self._tmp, self.path)

    def discard(self) -> None:
        try:
            self._tar.close()
        except Exception:  # the archive is thrown away: the error that led here is the one that matters
            pass
        self._fh.close()
        if os.path.exists(self._tmp):
            os.unlink(self._tmp)


class ArchiveReader:
    """The members of the archive at ``path``, in order (``with ArchiveReader(p) as r: for m in r.members()``)."""

    def __init__(self, path: str) -> None:
        self.path = path
        if os.path.isdir(path):
            raise ArchiveError(f"{path} is a folder, not a rundock export archive")
        try:
            self._raw: BinaryIO = open(path, "rb")  # noqa: SIM115 (closed by close())
        except FileNotFoundError:
            raise FileNotFoundError(f"archive {path} not found") from None
        self.size = os.fstat(self._raw.fileno()).st_size
        try:
            self._tar = tarfile.open(fileobj=self._raw, mode="r:")  # noqa: SIM115 (closed by close())
        except tarfile.TarError:
            self._raw.close()
            raise ArchiveError(f"{path} is not a rundock export archive (not a tar file)") from None
        self._current: tarfile.TarInfo | None = None

    def __enter__(self) -> ArchiveReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._tar.close()
        self._raw.close()

    @property
    def position(self) -> int:
        """How far into the archive file reading has got (for progress)."""
        return self._raw.tell()

    def members(self) -> Iterator[tuple[Member, tarfile.TarInfo]]:
        """Each member, classified; ArchiveError for one that is not a plain file of a known name, and for an
        archive whose first member is not the manifest."""
        while True:
            after = self._current.name if self._current is not None else "the start of the archive"
            try:
                info = self._tar.next()
            except tarfile.TarError as exc:
                raise ArchiveError(f"{self.path} is damaged after member {after} ({exc})") from None
            # Read once, in order: keep no list of every member (typeshed does not declare this attribute).
            self._tar.members = []  # type: ignore[attr-defined]
            if info is None:
                return
            if self._current is None and info.name != MANIFEST:
                raise ArchiveError(f"{self.path} is not a rundock export archive (its first member is "
                                   f"{info.name!r:.200}, not {MANIFEST})")
            self._current = info
            if not info.isreg() or info.issparse():
                what = "a link" if info.issym() or info.islnk() else "a device or FIFO" if info.isdev() else \
                    "a folder" if info.isdir() else "a sparse file" if info.issparse() else "not a plain file"
                raise ArchiveError(f"refused: it is {what}; a rundock export holds only plain files", info.name)
            yield member(info.name), info

    def open(self, info: tarfile.TarInfo) -> IO[bytes]:
        fh = self._tar.extractfile(info)
        if fh is None:  # not reached for a plain file
            raise ArchiveError("cannot be read", info.name)
        return cast(IO[bytes], _Guarded(fh, info.name))

    def read_json(self, info: tarfile.TarInfo, limit: int) -> bytes:
        if info.size > limit:
            raise ArchiveError(f"is {info.size} bytes; a JSON member of a rundock export is at most {limit}",
                               info.name)
        with self.open(info) as fh:
            return fh.read()


class _Guarded(io.RawIOBase):
    """A member's bytes; a tar error while reading them (a truncated archive) names the member."""

    def __init__(self, fh: IO[bytes], name: str) -> None:
        super().__init__()
        self._fh, self._name = fh, name

    def readable(self) -> bool:
        return True

    def read(self, size: int | None = -1) -> bytes:
        try:
            return self._fh.read(-1 if size is None else size)
        except (tarfile.TarError, OSError, EOFError) as exc:
            raise ArchiveError(f"cannot be read: the archive is truncated or damaged ({exc})", self._name) from None

    def readinto(self, buffer: Any) -> int:
        data = self.read(len(buffer))
        buffer[:len(data)] = data
        return len(data)

    def readline(self, size: int | None = -1) -> bytes:
        try:
            return self._fh.readline(-1 if size is None else size)
        except (tarfile.TarError, OSError, EOFError) as exc:
            raise ArchiveError(f"cannot be read: the archive is truncated or damaged ({exc})", self._name) from None
