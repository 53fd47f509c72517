"""Ship a run directory's journal and live logs to the run history.

Idempotent: records are applied once per (run id, attempt, source, sequence
number) and log chunks once per (run id, log name, offset), so a syncer can
start over from the beginning after a crash and nothing is duplicated.

Nothing is lost when a pass fails: the journal reader moves past records only
after the history has applied them, so a pass that raises (history locked past
its busy timeout, a full disk, a staged file that cannot be stored yet) is
read again by the next one. One record that may never be applied (malformed,
or not its writer's to make: see ``rundock.context.records``) is quarantined
with the reason in the run's ``system_logs/rejected_records.txt``; the rest of
its batch is applied.
"""

from __future__ import annotations

import json
import logging
import os
import threading
from typing import Any

from rundock.context import records as rec_types
from rundock.context import rundir
from rundock.context.journal import JournalReader, read_from
from rundock.context.names import open_inside
from rundock.errors import RunNotFoundError, StoreError
from rundock.history.artifacts import ArtifactStore
from rundock.history.store import RunStore

log = logging.getLogger(__name__)

SYSTEM_LOGS_DIR = rundir.SYSTEM_LOGS_DIR
REJECTED_LOG = f"{SYSTEM_LOGS_DIR}/rejected_records.txt"
MAX_LOG_CHUNK = 256 * 1024
IDLE_PERIOD = 1.0
BACKLOG = 1000  # a pass that shipped at least this many records is followed by another at once: a job logging
# fast is shipped continuously, in large batches, instead of a batch per period


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
        self._children: set[str] = set()
        self._strangers: set[str] = set()  # run ids that are not this run's children
        self._rejected = bytearray()
        self._rejected_keys: set[tuple[str, str, str]] = set()
        self._rejected_shipped = 0
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.last_error: Exception | None = None

    # -- one pass -----------------------------------------------------------------------
    def sync_once(self) -> int:
        """Ship what is new; return how much (journal records plus log bytes; 0 when nothing was new).

        Raises what the history raised; everything not applied is read again by the next pass.
        """
        with self._lock:
            batches = self._journal.read_new()
            groups: dict[tuple[str, str], list[dict[str, Any]]] = {}
            for source, recs in self._waiting:
                groups.setdefault((source, recs[0].get("run", self.run_id)), []).extend(recs)
            self._register_children(batches)
            for source, recs in batches:
                self._route(source, recs, groups)
            waiting: list[tuple[str, list[dict[str, Any]]]] = []
            for (source, run_id), recs in groups.items():
                try:
                    self._apply(source, run_id, recs)
                except RunNotFoundError:  # a child whose creating record is in another source's file
                    if run_id == self.run_id:
                        raise
                    waiting.append((source, recs))
            self._waiting = waiting
            self._journal.commit()
            shipped = self._ship_logs()
            return sum(len(recs) for _, recs in batches) + shipped

    def _apply(self, source: str, run_id: str, recs: list[dict[str, Any]]) -> None:
        """Apply a group; if the history refuses it for something in a record (not for being unavailable),
        apply the records one by one and quarantine the ones it refuses, so one record never stalls a run."""
        try:
            self.store.apply_journal(run_id, self.attempt, source, recs)
            return
        except (StoreError, RunNotFoundError):
            raise
        except Exception as exc:  # a value the history cannot hold (an integer too large, nesting too deep...)
            log.warning("run %s: a batch from %s was refused (%s); applying its records one by one",
                        self.run_id, source, exc)
        for rec in recs:
            try:
                self.store.apply_journal(run_id, self.attempt, source, [rec])
            except (StoreError, RunNotFoundError):
                raise
            except Exception as exc:
                self._reject(source, rec, f"the run history refused it: {type(exc).__name__}: {exc}")

    def _route(self, source: str, recs: list[Any], groups: dict[tuple[str, str], list[dict[str, Any]]]) -> None:
        """Check each record, stage the files it names, and group it by the run it is about."""
        plain = rundir.is_agent_source(source) and not any(r.get("type") == rec_types.FILE for r in recs
                                                           if isinstance(r, dict))
        if plain:  # the agent's heartbeats and states, by far the common case: checked, grouped as they are
            good = [r for r in recs if self._accept(source, r)]
            if good:
                groups.setdefault((source, self.run_id), []).extend(good)
            return
        plain_metric = rec_types.is_plain_metric
        key = (source, self.run_id)
        if key not in groups and all(plain_metric(rec) for rec in recs):  # run.log() only: shipped as read
            groups[key] = recs
            return
        for rec in recs:
            if plain_metric(rec):  # run.log(): the bulk of every journal
                groups.setdefault((source, self.run_id), []).append(rec)
                continue
            if not self._accept(source, rec):
                continue
            if rec["type"] == rec_types.FILE and "digest" not in rec and not self._ingest(source, rec):
                continue
            groups.setdefault((source, rec.get("run", self.run_id)), []).append(rec)

    def _register_children(self, batches: list[tuple[str, list[Any]]]) -> None:
        """Learn every child run this pass creates, whichever source creates it, before any record about it
        is checked: a worker process's journal may be read before the one of the process that made the child."""
        pending = [(source, r) for source, recs in batches for r in recs
                   if isinstance(r, dict) and r.get("type") == rec_types.CHILD and r.get("run") not in self._children]
        while pending:
            left = []
            for source, rec in pending:
                if rec.get("parent") == self.run_id or rec.get("parent") in self._children:
                    self._accept(source, rec)
                else:
                    left.append((source, rec))
            if len(left) == len(pending):
                return  # the rest name parents that are not this run's: _accept rejects them in the main pass
            pending = left

    def _known_child(self, run_id: Any) -> None:
        """Add ``run_id`` to the known children if the history says it is one (a syncer started afresh)."""
        if not isinstance(run_id, str) or run_id in self._children or run_id in self._strangers:
            return
        try:
            parent = self.store.get_run(run_id).parent_id
        except RunNotFoundError:
            parent = None
        if parent is not None and (parent == self.run_id or parent in self._children):
            self._children.add(run_id)
        else:
            self._strangers.add(run_id)

    def _accept(self, source: str, rec: Any) -> bool:
        if isinstance(rec, dict) and rec.get("run", self.run_id) != self.run_id and rec.get("type") != rec_types.CHILD:
            self._known_child(rec.get("run"))
        try:
            rec_types.check(rec, source, self.run_id, self._children)
        except rec_types.RecordError as exc:
            self._reject(source, rec, str(exc))
            return False
        if rec.get("type") == rec_types.CHILD:
            parent = rec.get("parent")
            if parent != self.run_id and parent not in self._children:
                self._reject(source, rec, f"parent {parent!r} is neither this run nor one of its children")
                return False
            if not self._owns(rec["run"]):
                self._reject(source, rec, f"run {rec['run']!r} already exists and is not a child of this run")
                return False
            self._children.add(rec["run"])
        return True

    def _owns(self, child_id: str) -> bool:
        """Whether ``child_id`` is new or already a child of this run (a job cannot adopt another run)."""
        try:
            parent = self.store.get_run(child_id).parent_id
        except RunNotFoundError:
            return True
        return parent == self.run_id or parent in self._children

    def _ingest(self, source: str, rec: dict[str, Any]) -> bool:
        """Store a job's staged upload (a file directly in ``uploads/``, opened without following links)."""
        rel = rec_types.upload_path(rec.get("path"))
        try:
            fh = open_inside(os.path.join(self.run_dir, rel), os.path.join(self.run_dir, rundir.UPLOADS_DIR),
                             root=self.run_dir)
        except FileNotFoundError:
            self._reject(source, rec, f"the staged file {rel} is missing")
            return False
        except OSError as exc:
            self._reject(source, rec, f"the staged file {rel} cannot be read: {exc}")
            return False
        with fh:
            digest, size, _ = self.artifacts.put_stream(fh)  # OSError (a full disk): the pass is retried
        rec["digest"], rec["size"] = digest, size
        return True

    def _reject(self, source: str, rec: Any, reason: str) -> None:
        try:
            text = json.dumps(rec, default=str)[:500] if not isinstance(rec, dict) or rec.get("type") != "unreadable" \
                else repr(rec.get("line"))
        except (ValueError, RecursionError):
            text = "(a record too deeply nested to show)"
        key = (source, reason, text)
        if key in self._rejected_keys:  # read again after a failed pass
            return
        self._rejected_keys.add(key)
        line = f"{source} seq {rec.get('seq') if isinstance(rec, dict) else '?'}: {reason}: {text}\n"
        log.warning("run %s: journal record rejected: %s", self.run_id, line.strip())
        self._rejected += line.encode("utf-8", "replace")

    def _ship_logs(self) -> int:
        """Ship new log bytes; return how many."""
        directory = os.path.join(self.run_dir, SYSTEM_LOGS_DIR)
        try:
            names = sorted(os.listdir(directory))
        except FileNotFoundError:
            names = []
        shipped = 0
        for name in names:
            path = os.path.join(directory, name)
            offset = self._log_offsets.get(name, 0)
            while data := read_from(path, offset, MAX_LOG_CHUNK):
                self.store.append_log(self.run_id, f"{SYSTEM_LOGS_DIR}/{name}", offset, data)
                offset += len(data)
                shipped += len(data)
                self._log_offsets[name] = offset
        if len(self._rejected) > self._rejected_shipped:
            start = self._rejected_shipped
            self.store.append_log(self.run_id, REJECTED_LOG, start, bytes(self._rejected[start:]))
            self._rejected_shipped = len(self._rejected)
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
        """Sync every ``period`` while there is something new (at once while there is a backlog); back off to once
        a second when idle."""
        wait = period
        while not self._stop.is_set():
            poked = self._wake.wait(wait)
            self._wake.clear()
            try:
                moved = self.sync_once()
                self.last_error = None
            except Exception as exc:  # the next pass retries; the final sync raises
                if type(exc) is not type(self.last_error):
                    log.exception("run %s: sync to the run history failed; retrying", self.run_id)
                self.last_error = exc
                moved = 0
            wait = 0.0 if moved >= BACKLOG else period if (moved or poked) else min(max(wait, period) * 2, IDLE_PERIOD)

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

    last_error: Exception | None = None

    def sync_once(self) -> int:
        return 0

    def start(self, period: float = 0.25) -> None:
        pass

    def poke(self) -> None:
        pass

    def stop(self) -> None:
        pass
