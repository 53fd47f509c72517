"""Ship a run directory's journal and live logs to the run history.

Idempotent: records are applied once per (run id, attempt, source, sequence
number) and log chunks once per (run id, log name, offset), so a syncer can
start over from the beginning after a crash and nothing is duplicated.
"""

from __future__ import annotations

import logging
import os
import threading
from typing import Any

from rundock.context.journal import JournalReader, read_from
from rundock.errors import RunNotFoundError
from rundock.history.artifacts import ArtifactStore
from rundock.history.store import RunStore

log = logging.getLogger(__name__)

SYSTEM_LOGS_DIR = "system_logs"
MAX_LOG_CHUNK = 256 * 1024
IDLE_PERIOD = 1.0


class Syncer:
    """Ships one run directory; ``sync_once`` may be called from any thread."""

    def __init__(self, run_dir: str, run_id: str, store: RunStore, artifacts: ArtifactStore, attempt: int = 0) -> None:
        self.run_dir = run_dir
        self.run_id = run_id
        self.attempt = attempt
        self.store = store
        self.artifacts = artifacts
        self._journal = JournalReader(run_dir)
        self._log_offsets: dict[str, int] = {}
        self._waiting: list[tuple[str, list[dict[str, Any]]]] = []  # records of a child not created yet
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # -- one pass -----------------------------------------------------------------------
    def sync_once(self) -> int:
        """Ship what is new; return how much (journal records plus log bytes; 0 when nothing was new)."""
        with self._lock:
            batches = self._journal.read_new()
            groups: dict[tuple[str, str], list[dict[str, Any]]] = {}
            for source, recs in [*self._waiting, *batches]:
                if not any("run" in r or r["type"] == "file" for r in recs):  # the common case: as it is
                    groups.setdefault((source, self.run_id), []).extend(recs)
                    continue
                for rec in recs:
                    if rec["type"] == "file" and "digest" not in rec:
                        self._ingest(rec)
                    groups.setdefault((source, rec.get("run", self.run_id)), []).append(rec)
            self._waiting = []
            for (source, run_id), recs in groups.items():
                try:
                    self.store.apply_journal(run_id, self.attempt, source, recs)
                except RunNotFoundError:  # a child whose creating record is in another source's file
                    if run_id == self.run_id:
                        raise
                    self._waiting.append((source, recs))
            shipped = self._ship_logs()
            return sum(len(recs) for _, recs in batches) + shipped

    def _ingest(self, rec: dict[str, Any]) -> None:
        path = rec.get("path", "")
        full = path if os.path.isabs(path) else os.path.join(self.run_dir, path)
        try:
            digest, size, _ = self.artifacts.put_file(full)
        except OSError as exc:
            log.warning("run %s: file %s for %s could not be stored: %s", self.run_id, full, rec.get("name"), exc)
            rec["type"] = "skipped"
            return
        rec["digest"], rec["size"] = digest, size

    def _ship_logs(self) -> int:
        """Ship new log bytes; return how many."""
        directory = os.path.join(self.run_dir, SYSTEM_LOGS_DIR)
        try:
            names = sorted(os.listdir(directory))
        except FileNotFoundError:
            return 0
        shipped = 0
        for name in names:
            path = os.path.join(directory, name)
            offset = self._log_offsets.get(name, 0)
            while data := read_from(path, offset, MAX_LOG_CHUNK):
                self.store.append_log(self.run_id, f"{SYSTEM_LOGS_DIR}/{name}", offset, data)
                offset += len(data)
                shipped += len(data)
            self._log_offsets[name] = offset
        return shipped

    # -- background loop ------------------------------------------------------------------
    def start(self, period: float = 0.25) -> None:
        """Sync every ``period`` seconds (sooner after ``poke``) until ``stop``."""
        self._thread = threading.Thread(target=self._loop, args=(period,), name="rundock-sync", daemon=True)
        self._thread.start()

    def poke(self) -> None:
        """Ask the background loop to sync now."""
        self._wake.set()

    def _loop(self, period: float) -> None:
        """Sync every ``period`` while there is something new; back off to once a second when idle."""
        wait = period
        while not self._stop.is_set():
            poked = self._wake.wait(wait)
            self._wake.clear()
            try:
                moved = self.sync_once()
            except Exception:  # the next pass retries; the final sync raises
                log.exception("run %s: sync to the run history failed; retrying", self.run_id)
                moved = 0
            wait = period if (moved or poked) else min(wait * 2, IDLE_PERIOD)

    def stop(self) -> None:
        """Stop the loop and ship everything that is left (raises if the history is unreachable)."""
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join()
        self.sync_once()


class JournalOnly:
    """The syncer of an agent without a run history (a remote host): records stay in the
    run directory, and the submitter pulls them over SSH and ships them with a ``Syncer``."""

    def sync_once(self) -> int:
        return 0

    def start(self, period: float = 0.25) -> None:
        pass

    def poke(self) -> None:
        pass

    def stop(self) -> None:
        pass
