"""The sweep's progress log: ``hyperdrive.txt`` in its sweep folder and ``azureml-logs/hyperdrive.txt`` in
the history (v1's name), which ``HyperDriveRun.wait_for_completion(show_output=True)`` and ``rundock sweep``
stream.

Each line is written to the file first, then the file's tail that the history lacks is appended there, so a
line the history could not take (it was busy) goes with the next one. A restarted controller goes on from
the history's length; a sweep folder that lacks lines the history has (a controller restarted on another
machine) first gets them back.
"""

from __future__ import annotations

import os
import time

from rundock.errors import RundockError
from rundock.history.store import RunStore

LOG_NAME = "azureml-logs/hyperdrive.txt"
LOG_FILE = "hyperdrive.txt"


class SweepLog:
    """Append-only progress lines of one sweep."""

    def __init__(self, store: RunStore, run_id: str, folder: str) -> None:
        self.store = store
        self.run_id = run_id
        self.path = os.path.join(folder, LOG_FILE)
        stored = store.read_log(run_id, LOG_NAME)
        size = os.path.getsize(self.path) if os.path.exists(self.path) else 0
        if size < len(stored):
            with open(self.path, "wb") as fh:
                fh.write(stored)
        self.shipped = len(stored)

    def write(self, line: str) -> None:
        stamp = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime())
        with open(self.path, "ab") as fh:
            fh.write(f"[{stamp}Z] {line}\n".encode())
        self.ship()

    def ship(self) -> None:
        """Append what the history lacks (a failure is retried with the next line)."""
        with open(self.path, "rb") as fh:
            fh.seek(self.shipped)
            data = fh.read()
        if not data:
            return
        try:
            self.store.append_log(self.run_id, LOG_NAME, self.shipped, data)
        except RundockError:
            return
        self.shipped += len(data)
