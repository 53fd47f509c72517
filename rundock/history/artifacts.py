"""Content-addressed file storage: a blob is stored once under its SHA-256.

Writes go to a temporary file in the same folder and are renamed into place,
so a reader never sees a partial blob and a crash leaves no corrupt one.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
import threading
from typing import IO

_CHUNK = 1 << 20


def sha256_file(path: str) -> tuple[str, int]:
    """The hex SHA-256 and size of a file."""
    digest = hashlib.sha256()
    size = 0
    with open(path, "rb") as fh:
        while chunk := fh.read(_CHUNK):
            digest.update(chunk)
            size += len(chunk)
    return digest.hexdigest(), size


class ArtifactStore:
    """Blobs under ``root/<2 hex>/<64 hex>``."""

    def __init__(self, root: str) -> None:
        self.root = os.path.abspath(root)
        os.makedirs(self.root, exist_ok=True)
        self._dirs: set[str] = set()

    def path(self, digest: str) -> str:
        if len(digest) != 64 or not all(c in "0123456789abcdef" for c in digest):
            raise ValueError(f"not a SHA-256 digest: {digest!r}")
        return os.path.join(self.root, digest[:2], digest)

    def has(self, digest: str) -> bool:
        return os.path.exists(self.path(digest))

    def put_file(self, source: str, digest: str | None = None) -> tuple[str, int, bool]:
        """Store a file; return (digest, size, whether new bytes were written).

        With a known ``digest`` a file already stored costs one stat.
        """
        if digest is not None and self.has(digest):
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
            final = self.path(hexdigest)
            if os.path.exists(final):
                os.unlink(tmp)
                return hexdigest, size, False
            os.makedirs(os.path.dirname(final), exist_ok=True)
            os.chmod(tmp, 0o444)
            os.replace(tmp, final)
            return hexdigest, size, True
        except BaseException:
            if os.path.exists(tmp):
                os.unlink(tmp)
            raise

    def adopt(self, source: str, digest: str, size: int, mtime_ns: int) -> bool:
        """Store ``source`` under a digest just computed from it, copying without hashing again.

        Refuses (returns False) if the file changed since it was hashed (size or mtime differ), so a
        blob's name always matches its content.
        """
        final = self.path(digest)
        if os.path.exists(final):
            return False
        directory = os.path.dirname(final)
        if directory not in self._dirs:
            os.makedirs(directory, exist_ok=True)
            self._dirs.add(directory)
        tmp = f"{final}.incoming-{os.getpid()}-{threading.get_ident()}"
        shutil.copyfile(source, tmp)
        st = os.stat(source)
        if (st.st_size, st.st_mtime_ns) != (size, mtime_ns):
            os.unlink(tmp)
            raise OSError(f"{source} changed while it was being stored; try again")
        os.replace(tmp, final)
        return True

    def put_bytes(self, data: bytes) -> tuple[str, int, bool]:
        import io

        return self.put_stream(io.BytesIO(data))

    def copy_to(self, digest: str, target: str) -> None:
        """Write the blob to ``target`` (a new, writable file)."""
        os.makedirs(os.path.dirname(os.path.abspath(target)), exist_ok=True)
        tmp = target + ".rundock-partial"
        shutil.copyfile(self.path(digest), tmp)
        os.chmod(tmp, 0o644)
        os.replace(tmp, target)
