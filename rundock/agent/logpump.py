"""Copy the job's stdout and stderr into the driver log as they arrive.

Both pipes go to one file in arrival order; the tail of stderr is kept for the
error of a failed run.
"""

from __future__ import annotations

import os
import threading
from typing import IO

STDERR_TAIL_BYTES = 16 * 1024
STDERR_TAIL_LINES = 20


class LogPump:
    def __init__(self, stdout: IO[bytes], stderr: IO[bytes], log_path: str) -> None:
        self._fd = os.open(log_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        self._lock = threading.Lock()
        self._tail = bytearray()
        self._threads = [threading.Thread(target=self._pump, args=(stream, is_err), daemon=True,
                                          name=f"rundock-pump-{'err' if is_err else 'out'}")
                         for stream, is_err in ((stdout, False), (stderr, True))]
        for thread in self._threads:
            thread.start()

    def _pump(self, stream: IO[bytes], is_err: bool) -> None:
        fd = stream.fileno()
        while data := os.read(fd, 65536):
            with self._lock:
                os.write(self._fd, data)
                if is_err:
                    self._tail += data
                    del self._tail[:-STDERR_TAIL_BYTES]
        stream.close()

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
