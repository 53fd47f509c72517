"""``pull``: what is new in a remote run directory, as one gzip tar for the submitter (standard library only).

The tar holds ``state.json`` (the host's view of the run: whether its agent holds the run's lock, whether
an agent ever took it, how long it has been silent on this host's monotonic clock, the last state the
agent recorded; and what follows), then ``data/<file>`` (a journal or log file's bytes after the offset
the submitter's mirror asked for; a staged upload whole) and ``blobs/<digest>`` (stored files the agent's
new records name). The submitter's offsets are not trusted: one the file cannot have is answered from
the file's start with ``reset``. Journal lines that are not records are skipped here; the submitter's
syncer quarantines them.
"""

from __future__ import annotations

import gzip
import io
import json
import os
import re
import stat
import tarfile
import time
from typing import IO, Any

from rundock.agent import runlock
from rundock.context import rundir
from rundock.context.journal import read_from
from rundock.context.names import open_inside
from rundock.context.records import upload_path
from rundock.history.artifacts import ArtifactStore

PULLED_DIRS = (rundir.JOURNAL_DIR, rundir.AGENT_JOURNAL_DIR, rundir.SYSTEM_LOGS_DIR)
JOURNAL_DIRS = (rundir.JOURNAL_DIR, rundir.AGENT_JOURNAL_DIR)
MAX_PULL_FILE = 16 << 20  # bytes of one file per pull; the rest comes with the next one ("more")
MAX_PULL_TOTAL = 64 << 20  # bytes of journals and logs per pull
_DIGEST = re.compile(r"[0-9a-f]{64}")


def _last_state(run_dir: str) -> dict[str, Any] | None:
    """The last state the run's agent recorded (its own journal's tail), or None."""
    path = rundir.entry(run_dir, rundir.AGENT_JOURNAL_DIR, rundir.AGENT_SOURCE + ".jsonl")
    try:
        with open(path, "rb") as fh:
            size = fh.seek(0, os.SEEK_END)
            fh.seek(max(0, size - 65536))
            tail = fh.read()
    except OSError:
        return None
    for line in reversed(tail.split(b"\n")):
        try:
            rec = json.loads(line)
        except ValueError:
            continue
        if isinstance(rec, dict) and rec.get("type") == "state" and isinstance(rec.get("status"), str):
            return {"status": rec["status"], "detail": str(rec.get("detail") or ""),
                    "error": rec.get("error") if isinstance(rec.get("error"), dict) else None}
    return None


# -- pull --------------------------------------------------------------------------------------
def _pulled_names(directory: str, folder: str) -> list[str]:
    try:
        names = sorted(os.listdir(directory))
    except OSError:
        return []
    if folder == rundir.JOURNAL_DIR:  # only the job's own files are read there
        return [n for n in names if n.startswith(rundir.JOB_SOURCE_PREFIX) and n.endswith(".jsonl")]
    if folder == rundir.AGENT_JOURNAL_DIR:
        return [n for n in names if n == rundir.AGENT_SOURCE + ".jsonl"]
    return names


def _offset(asked: Any, size: int) -> tuple[int, bool]:
    """Where to read from, and whether the submitter's copy must start over (an offset it cannot have)."""
    if isinstance(asked, bool) or not isinstance(asked, int) or asked < 0 or asked > size:
        return 0, True
    return asked, False


def _scan(data: bytes, agent: bool, blobs: dict[str, int], uploads: set[str]) -> None:
    """Note the blobs (agent records) and staged uploads (job records) that new file records name.

    A line that is not a JSON object, or a record whose fields are not what a file record holds, is
    skipped here: what it means is the submitter's syncer's business (it quarantines it).
    """
    for line in data.splitlines():
        try:
            rec = json.loads(line)
        except ValueError:
            continue
        if not isinstance(rec, dict) or rec.get("type") != "file":
            continue
        if agent:
            digest, size = rec.get("digest"), rec.get("size")
            if isinstance(digest, str) and _DIGEST.fullmatch(digest) and isinstance(size, int) \
                    and not isinstance(size, bool) and size >= 0:
                blobs[digest] = size
        elif "digest" not in rec:
            try:
                uploads.add(upload_path(rec.get("path")))
            except ValueError:
                continue


def pull(run_dir: str, store: ArtifactStore, offsets: Any, out: IO[bytes]) -> None:
    """Write a gzip tar: ``state.json``, then ``data/<file>`` (bytes after its offset), ``blobs/<digest>``.

    An offset that the file cannot have (past its end, negative, not a number) is answered with the
    file from its start and ``reset``; at most MAX_PULL_FILE bytes of a file (MAX_PULL_TOTAL in all) come per
    pull, and ``more`` says that the next pull brings the rest.
    """
    alive = runlock.agent_alive(run_dir)  # before reading: anything the agent wrote before it died is read below
    started = runlock.agent_started(run_dir)
    asked = offsets if isinstance(offsets, dict) else {}
    files: dict[str, dict[str, Any]] = {}
    payload: list[tuple[str, bytes]] = []
    blobs: dict[str, int] = {}
    uploads: set[str] = set()
    budget, more = MAX_PULL_TOTAL, False
    for folder in PULLED_DIRS:
        directory = os.path.join(run_dir, folder)
        for name in _pulled_names(directory, folder):
            rel = f"{folder}/{name}"
            path = os.path.join(directory, name)
            try:
                st = os.lstat(path)
            except OSError:
                continue
            if not stat.S_ISREG(st.st_mode):
                continue
            offset, reset = _offset(asked.get(rel, 0), st.st_size)
            limit = min(MAX_PULL_FILE, budget)
            if limit <= 0:
                more = True
                continue
            data = read_from(path, offset, limit)
            more = more or len(data) >= limit
            if folder in JOURNAL_DIRS:
                end = data.rfind(b"\n") + 1  # whole records only (one longer than the limit goes as it is)
                data = data if end == 0 and len(data) >= limit else data[:end]
                _scan(data, folder == rundir.AGENT_JOURNAL_DIR, blobs, uploads)
            if data or reset:
                budget -= len(data)
                files[rel] = {"offset": offset, "size": len(data), "reset": reset}
                payload.append((f"data/{rel}", data))
    sent_blobs = {d: size for d, size in blobs.items() if store.has(d) and store.size(d) == size}
    opened: list[tuple[str, IO[bytes], int]] = []
    sizes: dict[str, int] = {}
    for rel in sorted(uploads):
        try:
            staged = open_inside(os.path.join(run_dir, rel), run_dir)
        except OSError:
            continue
        sizes[rel] = os.fstat(staged.fileno()).st_size
        opened.append((rel, staged, sizes[rel]))
    # the host's own view of the run, for the submitter's lost-run judgment (see rundock.history.liveness)
    state: dict[str, Any] = {
        "agent_alive": alive, "agent_started": started, "silent": runlock.silent_for(run_dir),
        "agent_state": _last_state(run_dir), "now": time.time(), "exists": os.path.isdir(run_dir),
        "run_dir": run_dir, "files": files, "blobs": sent_blobs, "uploads": sizes, "more": more}
    with gzip.GzipFile(fileobj=out, mode="wb", compresslevel=1) as zipped, \
            tarfile.open(fileobj=zipped, mode="w|") as tar:
        _add(tar, "state.json", json.dumps(state).encode())
        for name, data in payload:
            _add(tar, name, data)
        for rel, handle, size in opened:
            with handle:
                info = tarfile.TarInfo(f"data/{rel}")
                info.size = size
                tar.addfile(info, _Exactly(handle, size))
        for digest, size in sent_blobs.items():
            info = tarfile.TarInfo(f"blobs/{digest}")
            info.size = size
            with store.open(digest) as blob:
                tar.addfile(info, _Exactly(blob, size))


class _Exactly:
    """``size`` bytes of a file that may change while it is sent (cut, or padded with zeros): the stream stays
    whole, and the submitter hashes what arrived."""

    def __init__(self, handle: IO[bytes], size: int) -> None:
        self.handle, self.left = handle, size

    def read(self, n: int = -1) -> bytes:
        n = self.left if n is None or n < 0 else min(n, self.left)
        data = bytearray()
        while len(data) < n:
            chunk = self.handle.read(n - len(data))
            if not chunk:
                data += b"\0" * (n - len(data))
                break
            data += chunk
        self.left -= n
        return bytes(data)


def _add(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    tar.addfile(info, io.BytesIO(data))
