"""Copy the job's stdout and stderr into the driver log as they arrive.

Both streams go to one file in arrival order; the tail of stderr is kept for the
error of a failed run. Secret values are replaced with ``***`` before anything
is written, including a secret split across two reads.

A process's two pipes are read by one thread (``merged_pipes``) in the order they
become readable, stdout first when both are: a traceback printed after the
script's last lines lands after them even on a busy machine, where two reader
threads could interleave a late stdout chunk after it.
"""

from __future__ import annotations

import os
import selectors
import threading
from collections.abc import Iterable, Iterator
from typing import IO, Tuple

STDERR_TAIL_BYTES = 16 * 1024
STDERR_TAIL_LINES = 20
MASK = b"***"


class Masker:
    """Replaces secret values in a byte stream that arrives in pieces."""

    def __init__(self, secrets: list[str]) -> None:
        self.secrets = sorted({s.encode() for s in secrets if len(s) >= 3}, key=len, reverse=True)
        self._carry = b""

    def feed(self, data: bytes, final: bool = False) -> bytes:
        """Masked bytes ready to write; holds back a tail that may start a secret."""
        if not self.secrets:
            return data
        buf = self._carry + data
        for secret in self.secrets:
            buf = buf.replace(secret, MASK)
        hold = 0 if final else self._partial_suffix(buf)
        self._carry = buf[len(buf) - hold:] if hold else b""
        return buf[: len(buf) - hold]

    def _partial_suffix(self, buf: bytes) -> int:
        longest = 0
        for secret in self.secrets:
            for size in range(min(len(secret) - 1, len(buf)), longest, -1):
                if buf.endswith(secret[:size]):
                    longest = size
                    break
        return longest


Chunk = Tuple[bytes, bool]  # (data, whether it came from stderr)


def tagged(chunks: Iterable[bytes], is_err: bool) -> Iterator[Chunk]:
    """One stream's chunks, each marked with the stream it came from."""
    for data in chunks:
        yield data, is_err


def merged_pipes(stdout: IO[bytes], stderr: IO[bytes]) -> Iterator[Chunk]:
    """Both pipes of a process, read in one thread as they become readable (stdout first when both are);
    closes each pipe at its end."""
    selector = selectors.DefaultSelector()
    try:
        for stream, is_err in ((stdout, False), (stderr, True)):
            selector.register(stream.fileno(), selectors.EVENT_READ, (stream, is_err))
        while selector.get_map():
            ready = sorted((key.data for key, _ in selector.select()), key=lambda item: item[1])
            for stream, is_err in ready:
                data = os.read(stream.fileno(), 65536)
                if data:
                    yield data, is_err
                else:
                    selector.unregister(stream.fileno())
                    stream.close()
    finally:
        selector.close()
        stdout.close()
        stderr.close()


class LogPump:
    """Writes the job's output into the driver log, masked: one reader thread per source of tagged chunks
    (``merged_pipes`` for a process's pipes, ``tagged`` streams for a container's)."""

    def __init__(self, sources: Iterable[Iterable[Chunk]], log_path: str, secrets: list[str] | None = None) -> None:
        self._fd = os.open(log_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        self._lock = threading.Lock()
        self._tail = bytearray()
        self._secrets = secrets or []
        self._threads = [threading.Thread(target=self._pump, args=(source,), daemon=True, name=f"rundock-pump-{i}")
                         for i, source in enumerate(sources)]
        for thread in self._threads:
            thread.start()

    def _write(self, data: bytes, is_err: bool) -> None:
        if data:
            with self._lock:
                os.write(self._fd, data)
                if is_err:
                    self._tail += data
                    del self._tail[:-STDERR_TAIL_BYTES]

    def _pump(self, source: Iterable[Chunk]) -> None:
        maskers: dict[bool, Masker] = {}  # per stream: a secret split across two reads of one stream
        for data, is_err in source:
            masker = maskers.setdefault(is_err, Masker(self._secrets))
            self._write(masker.feed(data), is_err)
        for is_err, masker in maskers.items():
            self._write(masker.feed(b"", final=True), is_err)

    def join(self, timeout: float | None = None) -> None:
        for thread in self._threads:
            thread.join(timeout)
        with self._lock:
            if self._fd >= 0:
                os.close(self._fd)
                self._fd = -1

    def stderr_tail(self) -> list[str]:
        """The last lines the job wrote to stderr."""
        text = bytes(self._tail).decode("utf-8", errors="replace")
        return text.rstrip("\n").splitlines()[-STDERR_TAIL_LINES:]
