"""``rundock gc``: free the stored blobs nothing refers to, safely while runs are live.

Kept (referenced): the files of every snapshot still in the history, of every run (archived ones too)
and of every model version, and the files named by the agent journals of runs that have not finished
(an agent stores an output before its journal record reaches the history). First, snapshots that no run
uses any more are forgotten (``StoreAdmin.prune_snapshots``), so that their files can go too. Then:

- an unreferenced loose blob is removed;
- a pack is rewritten only when that is worthwhile: when more than ``rewrite_ratio`` of its bytes (by
  default half) are dead, its live blobs are written to a new pack (pack, then index) and only then does
  the old pair go (index first), so a live blob is always in one pack or the other; a reader in another
  process that still knows the old pack looks the blob up again (rundock.history.artifacts). A pack with
  nothing live is removed;
- temporary files that writers left behind when they crashed are removed.

Why a grace period (``grace_seconds``, default one hour; ``rundock gc --grace MINUTES``): while runs are
live, blobs are written before the history refers to them. An agent stores an output, then its record
reaches the history; a submit stores a snapshot's files, then the snapshot, then the run (over SSH,
minutes may pass in between). So nothing whose file (loose blob, pack, temporary file) or snapshot record
changed within the grace period is removed, and a writer that reuses a blob already stored stamps it
with the current time (``ArtifactStore.keep``): a blob that was garbage a moment ago but that a run is
taking up again is young again. Choose a grace period longer than a blob can wait for its reference: a
history that refuses writes for longer (locked, a full disk: the agent keeps retrying) is the case to
think of before choosing a short one. ``--grace 0`` is only safe with no run, submit or upload under way.

Why the order is safe: the candidates (files older than the cutoff) are listed before the references are
read, so a blob written after the listing is never a candidate, and one written before it is young or
already referenced when they are read. Each removal takes the candidate out of sight first (renamed to
``<name>.gc-trash``) and then checks its mtime again: a writer that stamped it meanwhile gets it put back;
a writer that comes after it was taken away finds it missing and stores it again. A gc that crashed
leaves ``*.gc-trash`` files behind; the next gc puts them back before it starts.

Standard library only, Python 3.8.
"""

from __future__ import annotations

import dataclasses
import glob
import hashlib
import json
import os
import time
from collections.abc import Iterable, Iterator, Sequence
from typing import Dict, NamedTuple, Tuple

from rundock.context import rundir
from rundock.errors import RundockError, RunNotFoundError
from rundock.history.artifacts import ArtifactStore
from rundock.history.store import RunStore

DEFAULT_GRACE_SECONDS = 3600.0
DEFAULT_REWRITE_RATIO = 0.5
TRASH = ".gc-trash"
_INCOMING = ".incoming-"  # the prefix or infix of every temporary file ArtifactStore writes
_HEX = frozenset("0123456789abcdef")

Entries = Dict[str, Tuple[int, int]]  # digest -> (offset, size); Python 3.8 syntax


@dataclasses.dataclass
class GcReport:
    """What a collection freed (or, with ``dry_run``, would free) and what it left, and why."""

    dry_run: bool
    grace_seconds: float
    snapshots: list[str] = dataclasses.field(default_factory=list)  # unused snapshots forgotten
    loose_blobs: int = 0
    loose_bytes: int = 0
    packs_rewritten: int = 0  # replaced by a pack of their live blobs, or removed when nothing was live
    pack_bytes: int = 0  # what those packs freed
    dead_bytes_left: int = 0  # dead blobs in packs where a rewrite is not worth it yet
    temp_files: int = 0
    temp_bytes: int = 0
    young: int = 0  # unreferenced loose blobs and packs with dead blobs, spared: newer than the grace period
    taken_up: int = 0  # spared because a writer took them up while gc ran
    damaged: list[str] = dataclasses.field(default_factory=list)  # packs left alone: a blob did not match

    @property
    def freed_bytes(self) -> int:
        return self.loose_bytes + self.pack_bytes + self.temp_bytes


class _Loose(NamedTuple):
    digest: str
    path: str
    size: int
    mtime: float


class _Pack(NamedTuple):
    name: str  # the index's file name in the packs folder
    path: str  # the pack file
    size: int
    mtime: float
    entries: Entries


class _Damaged(RundockError):
    """A blob read back from a pack does not hash to its name (the pack is left as it is)."""


def collect(store: RunStore, artifacts: ArtifactStore, *, grace_seconds: float = DEFAULT_GRACE_SECONDS,
            dry_run: bool = False, run_dirs: Sequence[str] = (), rewrite_ratio: float = DEFAULT_REWRITE_RATIO,
            now: float | None = None) -> GcReport:
    """Free what nothing refers to in ``artifacts`` (see the module docstring); return what was freed.

    ``run_dirs``: the run directories (local runs and mirrors of remote ones) whose agent journals may name
    files the history has not heard of yet. ``now`` stands for the current time (tests).
    """
    cutoff = (time.time() if now is None else now) - grace_seconds
    report = GcReport(dry_run=dry_run, grace_seconds=grace_seconds)
    if not dry_run:
        restore_trash(artifacts)
    admin = store.admin()
    report.snapshots = admin.prune_snapshots(cutoff, dry_run=dry_run)
    loose, packs, temps = _listing(artifacts)  # before the references are read: see the module docstring
    referenced = admin.referenced_digests(report.snapshots if dry_run else ())
    referenced |= journal_digests(store, run_dirs)
    for blob in loose:
        if blob.digest in referenced:
            continue
        if blob.mtime >= cutoff:
            report.young += 1
            continue
        removed = True if dry_run else _take_away([blob.path], cutoff)
        if removed:
            report.loose_blobs += 1
            report.loose_bytes += blob.size
        elif removed is not None:
            report.taken_up += 1
    owned: set[str] = set()
    for pack in packs:  # oldest first: a blob stored in two packs is live in the first one only
        live = {d: e for d, e in pack.entries.items() if d in referenced and d not in owned}
        owned.update(live)
        dead = sum(size for d, (_, size) in pack.entries.items() if d not in live)
        if not dead:
            continue
        if pack.mtime >= cutoff:
            report.young += 1
        elif live and dead <= rewrite_ratio * sum(size for _, size in pack.entries.values()):
            report.dead_bytes_left += dead
        else:
            _rewrite(artifacts, pack, live, dead, cutoff, report)
    for path, size, mtime in temps:
        if mtime < cutoff and (dry_run or _unlink(path)):
            report.temp_files += 1
            report.temp_bytes += size
    return report


def journal_digests(store: RunStore, run_dirs: Iterable[str]) -> set[str]:
    """The digests that file records name in the agent journals of the runs in ``run_dirs`` that have not
    finished (or that the history does not know): stored, but maybe not yet recorded in the history."""
    found: set[str] = set()
    for run_dir in run_dirs:
        try:
            if store.get_run(os.path.basename(run_dir)).status.is_terminal:
                continue  # its agent shipped every record before the run could end
        except RunNotFoundError:
            pass
        for path in glob.glob(os.path.join(run_dir, rundir.AGENT_JOURNAL_DIR, "*.jsonl")):
            try:
                with open(path, "rb") as fh:
                    lines = fh.read().splitlines()
            except OSError:
                continue
            for line in lines:
                if b'"file"' not in line:
                    continue
                try:
                    record = json.loads(line)
                except ValueError:  # the last line of a journal being written
                    continue
                if isinstance(record, dict) and record.get("type") == "file" and isinstance(record.get("digest"), str):
                    found.add(record["digest"])
    return found


def restore_trash(artifacts: ArtifactStore) -> int:
    """Put back what a gc that crashed had taken out of sight (packs before their indexes); return how many."""
    trash = [p for p in _files(artifacts) if p.endswith(TRASH)]
    trash.sort(key=lambda p: p.endswith(".idx" + TRASH))
    for path in trash:
        original = path[:-len(TRASH)]
        if os.path.exists(original):  # stored again since
            _unlink(path)
        else:
            os.replace(path, original)
    return len(trash)


# -- the store's files ----------------------------------------------------------------------------------
def _files(artifacts: ArtifactStore) -> Iterator[str]:
    """Every file of the loose folders, the root and the packs folder."""
    for folder in (artifacts.root, artifacts.packs_dir):
        for entry in os.scandir(folder):
            if entry.is_file(follow_symlinks=False):
                yield entry.path
    for entry in os.scandir(artifacts.root):
        if len(entry.name) == 2 and _HEX.issuperset(entry.name) and entry.is_dir(follow_symlinks=False):
            for inner in os.scandir(entry.path):
                if inner.is_file(follow_symlinks=False):
                    yield inner.path


def _listing(artifacts: ArtifactStore) -> tuple[list[_Loose], list[_Pack], list[tuple[str, int, float]]]:
    """Loose blobs, packs (oldest first) and temporary files, with their sizes and mtimes."""
    loose: list[_Loose] = []
    packs: list[_Pack] = []
    temps: list[tuple[str, int, float]] = []
    for path in _files(artifacts):
        name = os.path.basename(path)
        try:
            st = os.stat(path)
        except FileNotFoundError:  # gone since the folder was read
            continue
        if _INCOMING in name:
            temps.append((path, st.st_size, st.st_mtime))
        elif os.path.dirname(path) == artifacts.packs_dir:
            if name.endswith(".idx"):
                pack = os.path.join(artifacts.packs_dir, name[:-len(".idx")] + ".pack")
                try:
                    pst = os.stat(pack)
                    entries = artifacts.index_entries(name)
                except FileNotFoundError:
                    continue
                packs.append(_Pack(name, pack, pst.st_size, pst.st_mtime, entries))
        elif len(name) == 64 and _HEX.issuperset(name) and os.path.dirname(path) != artifacts.root:
            loose.append(_Loose(name, path, st.st_size, st.st_mtime))
    packs.sort(key=lambda p: p.name)  # names start with their creation time
    return loose, packs, temps


def _rewrite(artifacts: ArtifactStore, pack: _Pack, live: Entries, dead: int, cutoff: float,
             report: GcReport) -> None:
    """Replace ``pack`` by a pack of its ``live`` blobs (none: just remove it), old pair last."""
    new_index = None
    if not report.dry_run:
        if live:
            try:
                new_index = artifacts.write_pack(_read_blobs(pack.path, live))
            except (_Damaged, OSError) as exc:
                report.damaged.append(f"{pack.path}: {exc}")
                return
        old = [os.path.join(artifacts.packs_dir, pack.name), pack.path]  # the index goes first
        removed = _take_away(old, cutoff)
        if not removed:
            if new_index is not None:  # the old pack stays: the new one is not needed
                for name in (new_index, new_index[:-len(".idx")] + ".pack"):
                    _unlink(os.path.join(artifacts.packs_dir, name))
            if removed is not None:
                report.taken_up += 1
            return
    report.packs_rewritten += 1
    report.pack_bytes += dead


def _read_blobs(path: str, live: Entries) -> Iterator[tuple[str, bytes]]:
    """The ``live`` blobs of the pack at ``path``, each checked against its digest."""
    with open(path, "rb") as fh:
        for digest, (offset, size) in sorted(live.items(), key=lambda item: item[1][0]):
            fh.seek(offset)
            data = fh.read(size)
            if len(data) != size or hashlib.sha256(data).hexdigest() != digest:
                raise _Damaged(f"blob {digest} does not match its content; the pack is left as it is")
            yield digest, data


def _take_away(paths: list[str], cutoff: float) -> bool | None:
    """Remove ``paths`` unless a writer stamped the last one since ``cutoff``: True when removed, False
    when put back, None when they were gone already.

    Each is renamed out of sight first and the mtime checked after that, so a stamp that came before the
    rename is seen (the files are put back, last one first) and one that comes after it finds no file.
    """
    moved: list[str] = []
    for path in paths:
        try:
            os.replace(path, path + TRASH)
        except FileNotFoundError:
            continue
        moved.append(path)
    if not moved:
        return None
    try:
        young = os.stat(moved[-1] + TRASH).st_mtime >= cutoff
    except FileNotFoundError:
        young = False
    for path in moved:
        if not young:
            _unlink(path + TRASH)
    if young:
        for path in reversed(moved):
            os.replace(path + TRASH, path)
    return not young


def _unlink(path: str) -> bool:
    try:
        os.unlink(path)
    except FileNotFoundError:
        return False
    return True
