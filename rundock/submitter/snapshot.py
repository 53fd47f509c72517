"""Source snapshots: deterministic, ignore-aware and content addressed.

Which files travel: one ignore file at the root (``.amlignore``, else
``.gitignore``) plus every nested ``.gitignore``, with gitignore semantics
(pathspec), a deeper file overriding a shallower one; version-control folders,
caches and virtual environments are always left out. A link that leaves the
folder is refused. Each file is stored once in the artifact store under its
SHA-256 (small files together in one pack), so an unchanged folder
re-submitted writes nothing new.

File names: a name that is not valid UTF-8 on disk (bytes such as
``b"r\xe9sultat.csv"``) is stored escaped, each such byte as ``%XX``
(``r%E9sultat.csv``, rundock.context.names.escape_name, as for outputs), and the
job finds it under that name. Two files whose names escape to the same text are
refused, naming both.

``restore_zip`` is v1's ``restore_snapshot``: ``<snapshot id>.zip`` in a folder
(default: the temp folder), written through a private temporary file that is
renamed into place, so a file or link already there is replaced, never written
through.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import hashlib
import json
import os
import stat
import tempfile
import zipfile
from collections.abc import Callable
from typing import Any

import pathspec

from rundock.context.names import artifact_name, escape_name
from rundock.errors import SnapshotError
from rundock.history.artifacts import PACK_MAX_BLOB, ArtifactStore, sha256_file
from rundock.history.store import RunStore

DEFAULT_MAX_BYTES = 300 * 1024 * 1024
DEFAULT_MAX_FILES = 2000
ALWAYS_EXCLUDED = frozenset({".git", ".hg", ".svn", "__pycache__", ".ipynb_checkpoints", ".rundock",
                             ".mypy_cache", ".pytest_cache", ".ruff_cache", "node_modules", ".tox", ".nox"})
Progress = Callable[[int, int], None]
SNAPSHOT_THREADS = max(2, os.cpu_count() or 1)  # large files are copied into the store on this many threads


@dataclasses.dataclass(frozen=True)
class SnapshotLimits:
    max_bytes: int = DEFAULT_MAX_BYTES
    max_files: int = DEFAULT_MAX_FILES


@dataclasses.dataclass
class SourceFile:
    path: str  # relative, '/'-separated
    full: str
    size: int
    executable: bool


@dataclasses.dataclass
class Snapshot:
    snapshot_id: str
    manifest: list[dict[str, Any]]
    total_bytes: int
    new_bytes: int


def _is_virtualenv(path: str) -> bool:
    return os.path.isfile(os.path.join(path, "pyvenv.cfg"))


class _Walker:
    def __init__(self, root: str) -> None:
        self.root = os.path.realpath(root)
        self.files: list[SourceFile] = []
        self._visited: set[str] = set()
        root_ignore = next((n for n in (".amlignore", ".gitignore") if os.path.isfile(os.path.join(root, n))), None)
        self.ignore_file = root_ignore or ".amlignore"
        self._root_spec = self._load(os.path.join(self.root, root_ignore)) if root_ignore else None

    @staticmethod
    def _load(path: str) -> pathspec.GitIgnoreSpec:
        with open(path, encoding="utf-8", errors="replace") as fh:
            return pathspec.GitIgnoreSpec.from_lines(fh.read().splitlines())

    def _ignored(self, rel: str, is_dir: bool, specs: list[tuple[str, pathspec.GitIgnoreSpec]]) -> bool:
        for base, spec in reversed(specs):  # the deepest ignore file decides first
            sub = rel[len(base) + 1:] if base else rel
            result = spec.check_file(sub + "/" if is_dir else sub)
            if result.include is not None:
                return bool(result.include)
        return False

    def walk(self, directory: str, rel: str, specs: list[tuple[str, pathspec.GitIgnoreSpec]]) -> None:
        real = os.path.realpath(directory)
        if real in self._visited:
            return
        self._visited.add(real)
        if rel == "" and self._root_spec is not None:
            specs = [("", self._root_spec)]
        nested = os.path.join(directory, ".gitignore")
        if rel and os.path.isfile(nested):
            specs = [*specs, (rel, self._load(nested))]
        try:
            entries = sorted(os.scandir(directory), key=lambda e: e.name)
        except OSError as exc:
            raise SnapshotError(f"cannot read folder {directory}: {exc}") from exc
        for entry in entries:
            child = f"{rel}/{entry.name}" if rel else entry.name
            if entry.name in ALWAYS_EXCLUDED:
                continue
            if entry.is_symlink():
                target = os.path.realpath(entry.path)
                if os.path.commonpath([self.root, target]) != self.root:
                    raise SnapshotError(f"link {child!r} points outside the source folder (to {target}); "
                                        f"replace it with a copy or add it to {self.ignore_file}")
            try:
                st = os.stat(entry.path)
            except OSError as exc:
                raise SnapshotError(f"cannot read {child!r}: {exc}") from exc
            if stat.S_ISDIR(st.st_mode):
                if not self._ignored(child, True, specs) and not _is_virtualenv(entry.path):
                    self.walk(entry.path, child, specs)
            elif stat.S_ISREG(st.st_mode) and not self._ignored(child, False, specs):
                self.files.append(SourceFile(escape_name(child), entry.path, st.st_size, bool(st.st_mode & 0o111)))


def _refuse_clashes(files: list[SourceFile]) -> None:
    seen: dict[str, SourceFile] = {}
    for f in files:
        other = seen.setdefault(f.path, f)
        if other is not f:
            raise SnapshotError(f"{other.full!r} and {f.full!r} would both be stored as {f.path!r} (a name that is "
                                "not UTF-8 is stored with its bytes escaped as %XX); rename one of them")


def collect(source_dir: str, limits: SnapshotLimits = SnapshotLimits()) -> list[SourceFile]:
    """The files that travel in a snapshot of ``source_dir`` (a folder, or one file), sorted; enforces the limits."""
    if os.path.isfile(source_dir):
        st = os.stat(source_dir)
        return [SourceFile(escape_name(os.path.basename(source_dir)), source_dir, st.st_size,
                           bool(st.st_mode & 0o111))]
    if not os.path.isdir(source_dir):
        raise SnapshotError(f"source folder {source_dir!r} does not exist")
    walker = _Walker(source_dir)
    walker.walk(walker.root, "", [])
    files = walker.files
    _refuse_clashes(files)
    total = sum(f.size for f in files)
    if len(files) > limits.max_files or total > limits.max_bytes:
        biggest = sorted(files, key=lambda f: f.size, reverse=True)[:10]
        listing = "\n".join(f"  {f.size / 1e6:10.1f} MB  {f.path}" for f in biggest)
        raise SnapshotError(
            f"the source folder {source_dir!r} has {len(files)} files and {total / 1e6:.1f} MB; the snapshot limit "
            f"is {limits.max_files} files and {limits.max_bytes / 1e6:.0f} MB.\nLargest files:\n{listing}\n"
            f"Leave out data, checkpoints and outputs by listing them in {os.path.join(source_dir, walker.ignore_file)}"
            " (gitignore syntax), or raise the limit with RUNDOCK_SNAPSHOT_MAX_MB / RUNDOCK_SNAPSHOT_MAX_FILES.")
    return files


def manifest_id(manifest: list[dict[str, Any]]) -> str:
    return hashlib.sha256(json.dumps(manifest, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def take_snapshot(source_dir: str, store: RunStore, artifacts: ArtifactStore,
                  limits: SnapshotLimits = SnapshotLimits(), progress: Progress | None = None) -> Snapshot:
    """Store the snapshot of ``source_dir``; return its id and how many new bytes it cost.

    Small files are read once, hashed and, when new, appended to one pack; large ones are hashed, then
    copied loose on a few threads. An unchanged folder only costs reading and hashing it.
    """
    files = collect(source_dir, limits)
    total = sum(f.size for f in files)
    manifest: list[dict[str, Any]] = []
    large: list[tuple[SourceFile, str, os.stat_result]] = []
    done = new_bytes = 0
    with artifacts.pack() as pack:
        for f in files:
            try:
                if f.size <= PACK_MAX_BLOB:
                    with open(f.full, "rb") as fh:
                        data = fh.read()
                    digest, new = pack.add(data, hashlib.sha256(data).hexdigest())
                    size = len(data)
                    new_bytes += size if new else 0
                else:
                    before = os.stat(f.full)
                    digest, size = sha256_file(f.full)
                    if not artifacts.keep(digest, refresh=False):  # kept: gc spares a blob taken up again
                        large.append((f, digest, before))
            except OSError as exc:
                raise SnapshotError(f"cannot read {f.path!r} in {source_dir!r}: {exc}") from exc
            manifest.append({"path": f.path, "digest": digest, "size": size, "mode": 0o755 if f.executable else 0o644})
            done += size
            if progress is not None:
                progress(done, total)

    def store_one(item: tuple[SourceFile, str, os.stat_result]) -> int:
        f, digest, before = item
        try:
            return before.st_size if artifacts.adopt(f.full, digest, before.st_size, before.st_mtime_ns) else 0
        except OSError as exc:
            raise SnapshotError(f"cannot store {f.path!r} from {source_dir!r}: {exc}") from exc

    with concurrent.futures.ThreadPoolExecutor(max_workers=SNAPSHOT_THREADS) as pool:
        new_bytes += sum(pool.map(store_one, large))
    snapshot_id = manifest_id(manifest)
    store.put_snapshot(snapshot_id, manifest)
    return Snapshot(snapshot_id, manifest, total, new_bytes)


def write_zip(manifest: list[dict[str, Any]], artifacts: ArtifactStore, path: str) -> str:
    """A zip of a snapshot at ``path`` (fixed timestamps, so the same snapshot gives the same bytes); private (0600).

    Written to a temporary file in the same folder, then renamed over ``path``.
    """
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=".rundock-snapshot-", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as fh, zipfile.ZipFile(fh, "w", compression=zipfile.ZIP_DEFLATED) as zf:
            for entry in manifest:  # names stored before escaping existed may still hold undecodable bytes
                info = zipfile.ZipInfo(escape_name(artifact_name(entry["path"])), date_time=(1980, 1, 1, 0, 0, 0))
                info.external_attr = (entry.get("mode", 0o644) | stat.S_IFREG) << 16
                info.compress_type = zipfile.ZIP_DEFLATED
                with artifacts.open(entry["digest"]) as src, zf.open(info, "w") as dst:
                    while chunk := src.read(1 << 20):
                        dst.write(chunk)
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
    return path


def restore_zip(manifest: list[dict[str, Any]], artifacts: ArtifactStore, snapshot_id: str,
                path: str | None = None) -> str:
    """Azure ML v1's ``restore_snapshot``: write ``<snapshot_id>.zip`` in folder ``path`` (default: the temp
    folder; created when missing) and return the zip's path.

    A ``path`` ending in ``.zip`` that is not an existing folder is taken as the zip's own path (rundock's
    earlier behaviour).
    """
    folder = tempfile.gettempdir() if path is None else os.fspath(path)
    if folder.lower().endswith(".zip") and not os.path.isdir(folder):
        return write_zip(manifest, artifacts, folder)
    if os.path.exists(folder) and not os.path.isdir(folder):
        raise NotADirectoryError(f"restore_snapshot(path={folder!r}): path is the folder to write "
                                 f"{snapshot_id}.zip in, and {folder!r} is a file")
    os.makedirs(folder, exist_ok=True)
    return write_zip(manifest, artifacts, os.path.join(folder, f"{snapshot_id}.zip"))
