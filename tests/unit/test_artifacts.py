"""The artifact store: loose blobs and packs of small ones, read the same way from any process."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from pathlib import Path

import pytest

from rundock.agent.materialize import materialize
from rundock.history.artifacts import PACK_MAX_BLOB, ArtifactStore
from rundock.history.backends.sqlite import SqliteRunStore
from rundock.submitter.snapshot import take_snapshot


def _files(store_root: Path) -> list[Path]:
    return sorted(p for p in store_root.rglob("*") if p.is_file())


def test_a_snapshot_of_many_small_files_is_one_pack_and_large_files_stay_loose(tmp_path: Path) -> None:
    src = tmp_path / "src"
    for i in range(300):
        (src / f"pkg{i % 7}").mkdir(parents=True, exist_ok=True)
        (src / f"pkg{i % 7}" / f"m{i}.py").write_text(f"value = {i}\n")
    (src / "same_a.txt").write_text("dup")
    (src / "same_b.txt").write_text("dup")
    big = os.urandom(PACK_MAX_BLOB + 1)
    (src / "weights.bin").write_bytes(big)
    store, artifacts = SqliteRunStore(str(tmp_path / "h.db")), ArtifactStore(str(tmp_path / "artifacts"))
    snap = take_snapshot(str(src), store, artifacts)
    names = [p.name for p in _files(tmp_path / "artifacts")]
    assert sorted(n.rsplit(".", 1)[-1] for n in names if n.endswith((".pack", ".idx"))) == ["idx", "pack"]
    assert hashlib.sha256(big).hexdigest() in names and len(names) == 3  # one pack, its index, one loose blob
    assert snap.new_bytes == snap.total_bytes - 3  # the duplicate is stored once
    materialize(store.get_snapshot(snap.snapshot_id), artifacts, str(tmp_path / "out"))
    for path in src.rglob("*"):
        if path.is_file():
            assert (tmp_path / "out" / path.relative_to(src)).read_bytes() == path.read_bytes()
    assert take_snapshot(str(src), store, artifacts).new_bytes == 0
    assert len(_files(tmp_path / "artifacts")) == 3  # nothing new, not even an empty pack


def test_another_process_sees_a_pack_written_after_it_opened_the_store(tmp_path: Path) -> None:
    reader = ArtifactStore(str(tmp_path / "a"))
    digest = hashlib.sha256(b"from elsewhere").hexdigest()
    assert not reader.has(digest)
    code = ("import sys; from rundock.history.artifacts import ArtifactStore\n"
            "with ArtifactStore(sys.argv[1]).pack() as p: print(p.add(b'from elsewhere')[0])")
    out = subprocess.run([sys.executable, "-c", code, str(tmp_path / "a")], check=True, capture_output=True,
                         text=True, env={**os.environ, "PYTHONPATH": str(Path(__file__).parents[2])})
    assert out.stdout.strip() == digest
    assert reader.has(digest) and reader.read(digest) == b"from elsewhere" and reader.size(digest) == 14
    with open(reader.file_path(digest), "rb") as fh:  # a path for callers that need a file (log listings)
        assert fh.read() == b"from elsewhere"


def test_an_interrupted_pack_leaves_nothing_visible(tmp_path: Path) -> None:
    artifacts = ArtifactStore(str(tmp_path / "a"))
    with pytest.raises(RuntimeError), artifacts.pack() as pack:
        digest, new = pack.add(b"half done")
        assert new
        raise RuntimeError("interrupted")
    assert not artifacts.has(digest) and _files(tmp_path / "a") == []
    # A pack whose index was never written (a crash between the two renames) is ignored.
    (tmp_path / "a" / "packs" / "orphan.pack").write_bytes(b"half done")
    assert not ArtifactStore(str(tmp_path / "a")).has(digest)


def test_a_truncated_pack_is_reported_not_returned_short(tmp_path: Path) -> None:
    artifacts = ArtifactStore(str(tmp_path / "a"))
    with artifacts.pack() as pack:
        digest, _ = pack.add(b"x" * 1000)
    (pack_file,) = (tmp_path / "a" / "packs").glob("*.pack")
    os.chmod(pack_file, 0o644)
    pack_file.write_bytes(b"x" * 10)
    with pytest.raises(OSError, match="shorter than its index"):
        ArtifactStore(str(tmp_path / "a")).read(digest)
