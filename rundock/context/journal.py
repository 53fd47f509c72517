"""The run journal: append-only JSON-lines files with sequence numbers.

Standard library only. Every writer owns one file: the agent
``<run_dir>/agent_journal/agent.jsonl``, each process of the job
``<run_dir>/journal/job-<pid>.jsonl`` (see ``rundock.context.rundir``); each
record carries the writer's sequence number, so a reader can ship records any
number of times and the run history applies each (run, attempt, source, seq)
once. What a record may say is ``rundock.context.records``' business.

A record is written with a single ``os.write`` on an ``O_APPEND`` descriptor:
once ``append`` returns, the record survives the writing process crashing or
being killed, and a reader never sees half a record as complete.
"""

from __future__ import annotations

import errno
import json
import os
import stat
import threading
import time
from typing import Any

from rundock.context import rundir

JOURNAL_DIR = rundir.JOURNAL_DIR
_SUFFIX = ".jsonl"
MAX_RECORD_BYTES = 1 << 20  # a longer line is handed over as unreadable, never parsed
READ_CHUNK = 64 << 20  # what one pass reads of one journal file at most
_TAIL_BYTES = 65536


def last_seq(path: str) -> int:
    """The sequence number of the last complete record in ``path`` (0 if none)."""
    try:
        with open(path, "rb") as fh:
            size = fh.seek(0, os.SEEK_END)
            fh.seek(max(0, size - _TAIL_BYTES))
            tail = fh.read()
    except FileNotFoundError:
        return 0
    for line in reversed(tail.split(b"\n")):
        try:
            return int(json.loads(line)["seq"])
        except (ValueError, KeyError, TypeError):
            continue
    return 0


def read_from(path: str, offset: int, limit: int = -1) -> bytes:
    """The bytes of ``path`` after ``offset`` (at most ``limit``); empty if none or no file.

    The file is opened without following a link and only if it is a plain file: a job that replaces
    its journal (or a log) with a link to another file, or a FIFO, gets nothing read on its behalf.
    """
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0))
    except (FileNotFoundError, IsADirectoryError):
        return b""
    except OSError as exc:
        if exc.errno == errno.ELOOP:  # a link
            return b""
        raise
    with os.fdopen(fd, "rb") as fh:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode) or st.st_size <= offset:
            return b""
        fh.seek(offset)
        return fh.read(limit)


_INF = float("inf")


class ScalarFormatter:
    """The body of a scalar metric record, formatted without building a dict (``run.log()``'s fast path)."""

    def __init__(self) -> None:
        self._heads: dict[str, str] = {}

    def body(self, name: str, value: Any) -> str:
        head = self._heads.get(name)
        if head is None:
            head = self._heads[name] = f'"name":{json.dumps(name)},"value":'  # kind: scalar, the default
        kind = type(value)
        if kind is int:
            return head + str(value)
        if kind is float and value == value and value not in (_INF, -_INF):
            return head + repr(value)
        return head + json.dumps(value)  # bools, strings, None, NaN and infinities


class JournalWriter:
    """Appends records for one source; safe to share between threads."""

    def __init__(self, run_dir: str, source: str) -> None:
        folder = rundir.AGENT_JOURNAL_DIR if rundir.is_agent_source(source) else JOURNAL_DIR
        directory = os.path.join(run_dir, folder)
        os.makedirs(directory, exist_ok=True)
        self.path = os.path.join(directory, source + _SUFFIX)
        self.source = source
        self._lock = threading.Lock()
        self._seq = last_seq(self.path)
        self._fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)

    def append(self, record_type: str, /, **fields: Any) -> int:
        """Write one record of ``record_type``; return its sequence number."""
        with self._lock:
            record = {"seq": self._seq + 1, "t": time.time(), "type": record_type}
            record.update(fields)
            return self._write((json.dumps(record, separators=(",", ":"), default=str) + "\n").encode())

    def append_raw(self, record_type: str, body: str) -> int:
        """Write a record whose fields are given as JSON text (``"name":"x","value":1``): the fast path of
        ``run.log()``, which formats a scalar metric without building a dict or calling json.dumps."""
        with self._lock:
            return self._write(f'{{"seq":{self._seq + 1},"t":{time.time()!r},"type":"{record_type}",{body}}}\n'
                               .encode())

    def _write(self, data: bytes) -> int:
        """One write(2) of a whole record (the lock is held); the sequence number moves only once it is all
        written, and a short write (a full disk) is cut off again, so the next record is never glued to it."""
        if len(data) > MAX_RECORD_BYTES:
            raise ValueError(f"a journal record of {len(data)} bytes is larger than the limit of "
                             f"{MAX_RECORD_BYTES} bytes; log large data as a file (run.upload_file)")
        written = os.write(self._fd, data)
        if written != len(data):
            os.ftruncate(self._fd, os.fstat(self._fd).st_size - written)
            raise OSError(errno.ENOSPC, f"short write to the run journal {self.path} ({written} of {len(data)} "
                                        "bytes): the disk or quota is full")
        self._seq += 1
        return self._seq

    @property
    def seq(self) -> int:
        """The sequence number of the last record written."""
        return self._seq

    def close(self) -> None:
        with self._lock:
            if self._fd >= 0:
                os.close(self._fd)
                self._fd = -1


class ReadBatch(list):  # type: ignore[type-arg]
    """Records read from one journal file, with ``lines``: their JSON text exactly as read, one line per record, so
    that a batch shipped on unchanged can be sent without encoding it again."""

    lines: list[bytes]


class JournalReader:
    """Reads the records that appeared since the last committed position, for every source.

    ``read_new`` returns records without moving on; ``commit`` moves each source's position past
    what was returned, once the caller has applied it. A pass that fails is read again next time.
    Only ``agent_journal/agent.jsonl`` is the agent's source; in ``journal/`` only ``job-*`` files
    are read (a job cannot pose as its agent by naming a file ``agent.jsonl`` there).
    """

    def __init__(self, run_dir: str) -> None:
        self.run_dir = run_dir
        self.directory = os.path.join(run_dir, JOURNAL_DIR)
        self._offsets: dict[str, int] = {}
        self._pending: dict[str, int] = {}

    def _files(self) -> list[tuple[str, str]]:
        """(source, path) of every journal file, the agent's first."""
        found = []
        agent = os.path.join(self.run_dir, rundir.AGENT_JOURNAL_DIR, rundir.AGENT_SOURCE + _SUFFIX)
        if os.path.exists(agent):
            found.append((rundir.AGENT_SOURCE, agent))
        try:
            names = sorted(os.listdir(self.directory))
        except FileNotFoundError:
            names = []
        for name in names:
            if name.startswith(rundir.JOB_SOURCE_PREFIX) and name.endswith(_SUFFIX):
                found.append((name[: -len(_SUFFIX)], os.path.join(self.directory, name)))
        return found

    def read_new(self) -> list[tuple[str, list[Any]]]:
        """Complete records after each source's committed position, as (source, records in order).

        A line that is not JSON (a torn write from a crashed writer, or garbage) comes back as a
        ``{"type": "unreadable", ...}`` entry, for the caller to quarantine.
        """
        out: list[tuple[str, list[Any]]] = []
        self._pending = {}
        for source, path in self._files():
            offset = self._offsets.get(source, 0)
            data = read_from(path, offset, READ_CHUNK)
            end = data.rfind(b"\n") + 1  # a trailing partial record waits for its newline
            if end == 0:
                if len(data) >= MAX_RECORD_BYTES:  # one endless line: hand it over, move past it
                    self._pending[source] = offset + len(data)
                    out.append((source, [{"type": "unreadable", "line": "a line longer than 1 MiB"}]))
                continue
            self._pending[source] = offset + end
            lines = [line for line in data[:end].split(b"\n") if line.strip()]
            if not lines:
                continue
            records: list[Any] = []
            if all(len(line) <= MAX_RECORD_BYTES for line in lines):
                try:  # one parse for the whole batch is several times faster than one per line
                    records = json.loads(b"[" + b",".join(lines) + b"]")
                    if len(records) != len(lines):  # a line that was not one value (e.g. "1,2"): parse each
                        records = []
                    else:
                        records = ReadBatch(records)
                        records.lines = lines
                except (ValueError, RecursionError):
                    records = []
            if not records:
                for line in lines:
                    records.append(_parse_line(line))
            out.append((source, records))
        return out

    def commit(self) -> None:
        """Move past what the last ``read_new`` returned."""
        self._offsets.update(self._pending)
        self._pending = {}


def _parse_line(line: bytes) -> Any:
    """One journal line as a record, or an ``unreadable`` entry saying why (for the caller to quarantine)."""
    if len(line) > MAX_RECORD_BYTES:
        return {"type": "unreadable", "line": f"a record of {len(line)} bytes (the limit is {MAX_RECORD_BYTES})"}
    try:
        return json.loads(line)
    except (ValueError, RecursionError):
        return {"type": "unreadable", "line": line[:200].decode("utf-8", "replace")}
