"""Blobs on their way to a remote host: one tar stream, produced in pieces while it is sent.

Each member is named ``<digest>.<size>`` (sent as it is) or ``<digest>.<size>.z`` (zlib-compressed),
so the host knows what each must inflate to and refuses one that inflates further (see
``rundock.agent.receive``). Large blobs go as they are, straight from their file.
"""

from __future__ import annotations

import io
import tarfile
import zlib
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from rundock.submitter.snapshot import Progress

if TYPE_CHECKING:
    from rundock.submitter.workspace import Workspace

COMPRESS_LIMIT = 8 * 1024 * 1024  # larger blobs (checkpoints, data) go as they are
SAMPLE = 4096  # enough to tell text from random bytes


def compressed(data: bytes) -> bytes | None:
    """The zlib-compressed bytes of a blob worth compressing, or None to send it as it is."""
    if len(zlib.compress(data[:SAMPLE], 1)) > 0.9 * min(len(data), SAMPLE):
        return None  # random-looking content: compressing it costs time and saves nothing
    return zlib.compress(data, 1)


def member(ws: Workspace, digest: str) -> tuple[str, bytes | str, int]:
    """(tar name, bytes to send or the path of a large loose blob, size in the store) of one blob."""
    size = ws.artifacts.size(digest)
    loose = ws.artifacts.loose_path(digest)
    if loose and size > COMPRESS_LIMIT:
        return f"{digest}.{size}", loose, size
    data = ws.artifacts.read(digest)
    packed = compressed(data)
    return (f"{digest}.{size}", data, size) if packed is None else (f"{digest}.{size}.z", packed, size)


def tar_stream(ws: Workspace, digests: list[str], total: int, progress: Progress | None) -> Iterator[bytes]:
    """A tar of blobs, produced in pieces while it is sent."""
    buffer = _Drain()
    done = 0
    with tarfile.open(fileobj=buffer, mode="w|") as tar:
        for digest in digests:
            name, body, size = member(ws, digest)
            if isinstance(body, str):
                tar.add(body, arcname=name)
            else:
                info = tarfile.TarInfo(name)
                info.size = len(body)
                tar.addfile(info, io.BytesIO(body))
            done += size
            if progress is not None:
                progress(done, total)
            yield buffer.take()
    yield buffer.take()


class _Drain(io.RawIOBase):
    def __init__(self) -> None:
        self.data = bytearray()

    def writable(self) -> bool:
        return True

    def write(self, b: Any) -> int:
        self.data += bytes(b)
        return len(b)

    def take(self) -> bytes:
        out, self.data = bytes(self.data), bytearray()
        return out
