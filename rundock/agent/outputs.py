"""Collect ``./outputs`` and ``./logs`` into the run history while the job runs.

Changes are noticed with watchdog (inotify) where it is installed and by a
polling scan otherwise (an agent on a host with nothing but Python). Either
way they are only hints: a file is stored when it is closed, or once it
has been quiet for a moment; ``final_scan`` (after the job's processes are
gone) stores every file whose content is not already recorded, so each file
present at the end is in the history with a matching hash whatever the
watcher missed. A file that cannot be stored at the final scan (a full
artifact store) is reported, and the run fails naming it.

The job is untrusted: files are opened without following links and only when
their real location is inside the watched folder, so a link in ``outputs/``
never makes the agent copy a file from elsewhere. A name that is not UTF-8 is
stored under an escaped name (``%XX`` for each such byte), never dropped.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from typing import Any, Callable

from rundock.context import rundir
from rundock.context.journal import JournalWriter
from rundock.context.names import artifact_name, escape_name, open_inside
from rundock.history.artifacts import ArtifactStore

log = logging.getLogger(__name__)

WATCHED_DIRS = rundir.WATCHED_DIRS
QUIET_SECONDS = 0.5


POLL_SECONDS = 0.5


def _watchdog_observer(collector: OutputCollector, paths: list[str]) -> Any:
    """A started watchdog observer feeding ``collector``, or None where watchdog is not installed."""
    try:
        from watchdog.events import FileClosedEvent, FileSystemEvent, FileSystemEventHandler, FileSystemMovedEvent
        from watchdog.observers import Observer
    except ImportError:
        return None

    class Handler(FileSystemEventHandler):
        def on_any_event(self, event: FileSystemEvent) -> None:
            if event.is_directory:
                return
            path = event.dest_path if isinstance(event, FileSystemMovedEvent) else event.src_path
            collector.mark(os.fsdecode(path), closed=isinstance(event, FileClosedEvent))

    observer = Observer()
    for path in paths:
        observer.schedule(Handler(), path, recursive=True)
    observer.start()
    return observer


def _walk(top: str) -> Any:
    """``os.walk`` of a watched folder, or nothing if the job replaced it with a link (never followed)."""
    return () if os.path.islink(top) else os.walk(top)


class _Poller(threading.Thread):
    """Notices new and changed files by comparing size and mtime on each scan."""

    def __init__(self, collector: OutputCollector, paths: list[str]) -> None:
        super().__init__(name="rundock-outputs-poll", daemon=True)
        self.collector = collector
        self.paths = paths
        self._seen: dict[str, tuple[int, int]] = {}
        self._halt = threading.Event()

    def run(self) -> None:
        while not self._halt.wait(POLL_SECONDS):
            for top in self.paths:
                for root, _dirs, files in _walk(top):
                    for name in files:
                        path = os.path.join(root, name)
                        try:
                            st = os.stat(path)
                        except OSError:
                            continue
                        if self._seen.get(path) != (st.st_size, st.st_mtime_ns):
                            self._seen[path] = (st.st_size, st.st_mtime_ns)
                            self.collector.mark(path, closed=False)

    def stop(self) -> None:
        self._halt.set()


class OutputCollector:
    """Stores files under the watched folders of ``src_dir`` as journal file records."""

    def __init__(self, src_dir: str, artifacts: ArtifactStore, journal: JournalWriter,
                 on_record: Callable[[], None] | None = None) -> None:
        self.src_dir = src_dir
        self.root = os.path.dirname(os.path.abspath(src_dir))  # the run directory: made by the agent, trusted
        self.on_record = on_record  # e.g. wake the syncer: a stored file reaches the history at once
        self.artifacts = artifacts
        self.journal = journal
        self._known: dict[str, tuple[int, int, str]] = {}  # name -> (size, mtime_ns, digest) stored
        self._failed: dict[str, str] = {}
        self._exact = False
        self._dirty: dict[str, float] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._observer: Any = None
        self._thread = threading.Thread(target=self._loop, name="rundock-outputs", daemon=True)

    def start(self) -> None:
        paths = [os.path.join(self.src_dir, name) for name in WATCHED_DIRS]
        for path in paths:
            os.makedirs(path, exist_ok=True)
        self._observer = _watchdog_observer(self, paths)
        if self._observer is None:
            self._observer = _Poller(self, paths)
            self._observer.start()
        self._thread.start()
        for top in paths:  # files written before the watch began (it starts just after the job)
            for root, _dirs, files in _walk(top):
                for name in files:
                    self.mark(os.path.join(root, name), closed=False)

    def mark(self, path: str, closed: bool) -> None:
        with self._lock:
            self._dirty[path] = 0.0 if closed else time.monotonic()
        self._wake.set()

    def _loop(self) -> None:
        while not self._stop.is_set():
            self._wake.wait(0.2 if self._dirty else 2.0)  # idle: sleep until a file event wakes it
            self._wake.clear()
            now = time.monotonic()
            with self._lock:
                ready = [p for p, t in self._dirty.items() if now - t >= QUIET_SECONDS or t == 0.0]
                for path in ready:
                    del self._dirty[path]
            for path in ready:
                self.store(path)

    def store(self, path: str) -> bool:
        """Store one file of the watched folders if its content is new; return whether it was recorded."""
        name = os.path.relpath(path, self.src_dir).replace(os.sep, "/")
        if name.startswith("../") or name.split("/")[0] not in WATCHED_DIRS:
            return False
        return self.store_as(path, escape_name(name), os.path.join(self.src_dir, name.split("/")[0]))

    def store_as(self, path: str, name: str, folder: str | None = None) -> bool:
        """Store ``path`` (which must stay inside ``folder``, default its own folder) as the run file ``name``
        if its content is new; return whether it was recorded. Failures are kept for ``final_scan``."""
        if artifact_name(name) != name:  # cannot be stored under this name: say so rather than drop it
            self._failed[name] = "the file name cannot be stored (it is not a plain relative name)"
            return False
        try:
            fh = open_inside(path, folder or os.path.dirname(path), root=self.root)
        except FileNotFoundError:
            self._failed.pop(name, None)  # deleted since: nothing to store
            return False
        except OSError as exc:  # a link, a device, a folder: never followed, never stored
            log.debug("not stored: %s (%s)", path, exc)
            return False
        try:
            with fh:
                st = os.fstat(fh.fileno())
                known = self._known.get(name)
                if known is not None and known[:2] == (st.st_size, st.st_mtime_ns) and not self._exact:
                    return False  # while the job runs; the final scan hashes every file
                digest, size, _ = self.artifacts.put_stream(fh)
        except OSError as exc:  # a full artifact store; the final scan reports it
            self._failed[name] = f"{exc.strerror or exc}"
            log.warning("could not store %s: %s", name, exc)
            return False
        self._failed.pop(name, None)
        self._known[name] = (st.st_size, st.st_mtime_ns, digest)
        if known is not None and known[2] == digest:
            return False
        self.journal.append("file", name=name, digest=digest, size=size)
        if self.on_record is not None:
            self.on_record()
        return True

    def last_failures(self) -> list[tuple[str, str]]:
        """(name, reason) of files that could not be stored, as of now."""
        return sorted(self._failed.items())

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()
        if self._observer is not None:
            self._observer.stop()
            self._observer.join()
        if self._thread.is_alive():
            self._thread.join()

    def final_scan(self) -> tuple[int, list[tuple[str, str]]]:
        """Store every file under the watched folders not yet recorded as it is now; return how many were
        stored and (name, reason) for each file that could not be."""
        stored = 0
        self._failed.clear()
        self._exact = True
        for name in WATCHED_DIRS:
            top = os.path.join(self.src_dir, name)
            if os.path.islink(top):  # the job replaced the folder with a link: nothing there is the run's
                self._failed[name] = f"{name}/ was replaced by a link; outputs must be files inside the run"
                continue
            for root, _dirs, files in os.walk(top):
                for fname in sorted(files):
                    stored += self.store(os.path.join(root, fname))
        return stored, self.last_failures()


def scan_for_lost_agent(run_dir: str, artifacts: ArtifactStore) -> list[tuple[str, str]]:
    """The final scan a dead agent did not get to make: store the run's outputs and logs as the agent would
    (records in the agent's journal, continuing its sequence). Call it only while holding the run's agent
    lock, after every process of the run is gone. Returns (name, reason) of files that could not be stored."""
    journal = JournalWriter(run_dir, rundir.AGENT_SOURCE)
    try:
        collector = OutputCollector(os.path.join(run_dir, rundir.SRC_DIR), artifacts, journal)
        _stored, failures = collector.final_scan()
        logs = os.path.join(run_dir, rundir.SYSTEM_LOGS_DIR)
        for name in sorted(os.listdir(logs)) if os.path.isdir(logs) else []:
            collector.store_as(os.path.join(logs, name), f"{rundir.SYSTEM_LOGS_DIR}/{name}")
        return failures
    finally:
        journal.close()
