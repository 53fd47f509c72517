"""Copy the job's stdout and stderr into the driver log as they arrive.

Both pipes go to one file in arrival order; the tail of stderr is kept for the
error of a failed run. Secret values are replaced with ``***`` before anything
is written, including a secret split across two reads.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Iterable, Iterator
from typing import IO

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


def pipe_chunks(stream: IO[bytes]) -> Iterator[bytes]:
    """What a pipe delivers, as soon as it arrives; closes the pipe at its end."""
    fd = stream.fileno()
    try:
        while data := os.read(fd, 65536):
            yield data
    finally:
        stream.close()


class LogPump:
    """Writes two byte streams (stdout, stderr) into the driver log, masked."""

    def __init__(self, stdout: Iterable[bytes], stderr: Iterable[bytes], log_path: str,
                 secrets: list[str] | None = None) -> None:
        self._fd = os.open(log_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        self._lock = threading.Lock()
        self._tail = bytearray()
        self._threads = [threading.Thread(target=self._pump, args=(chunks, is_err, Masker(secrets or [])),
                                          daemon=True, name=f"rundock-pump-{'err' if is_err else 'out'}")
                         for chunks, is_err in ((stdout, False), (stderr, True))]
        for thread in self._threads:
            thread.start()

    def _write(self, data: bytes, is_err: bool) -> None:
        if data:
            with self._lock:
                os.write(self._fd, data)
                if is_err:
                    self._tail += data
                    del self._tail[:-STDERR_TAIL_BYTES]

    def _pump(self, chunks: Iterable[bytes], is_err: bool, masker: Masker) -> None:
        for data in chunks:
            self._write(masker.feed(data), is_err)
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
