from __future__ import annotations

import os
import zipfile
from pathlib import Path

import pytest

from rundock.agent.materialize import materialize
from rundock.errors import SnapshotError
from rundock.history.artifacts import ArtifactStore
from rundock.history.backends.sqlite import SqliteRunStore
from rundock.submitter.snapshot import SnapshotLimits, collect, take_snapshot, write_zip


def _tree(root: Path, files: dict[str, str]) -> Path:
    for rel, text in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(text)
    return root


def _paths(root: Path, limits: SnapshotLimits = SnapshotLimits()) -> list[str]:
    return [f.path for f in collect(str(root), limits)]


def test_gitignore_rules_with_nested_files_and_negation(tmp_path: Path) -> None:
    root = _tree(tmp_path / "src", {
        ".gitignore": "*.log\ndata/\n!keep.log\n",
        "train.py": "", "run.log": "", "keep.log": "", "data/big.bin": "",
        "pkg/.gitignore": "*.tmp\n!important.tmp\nkeep.log\n", "pkg/a.tmp": "", "pkg/important.tmp": "",
        "pkg/keep.log": "", "pkg/mod.py": "",
    })
    assert _paths(root) == [".gitignore", "keep.log", "pkg/.gitignore", "pkg/important.tmp", "pkg/mod.py",
                            "train.py"]


def test_amlignore_replaces_the_root_gitignore(tmp_path: Path) -> None:
    root = _tree(tmp_path / "src", {".amlignore": "secret.txt\n", ".gitignore": "*.py\n",
                                    "train.py": "", "secret.txt": ""})
    assert _paths(root) == [".amlignore", ".gitignore", "train.py"]


def test_default_excludes(tmp_path: Path) -> None:
    root = _tree(tmp_path / "src", {"train.py": "", ".git/HEAD": "", "__pycache__/x.pyc": "",
                                    "myenv/pyvenv.cfg": "", "myenv/lib/site.py": "", ".rundock/history.db": ""})
    assert _paths(root) == ["train.py"]


def test_links_inside_are_followed_and_links_outside_refused(tmp_path: Path) -> None:
    root = _tree(tmp_path / "src", {"train.py": "x", "conf/a.yml": "a"})
    os.symlink("conf", root / "conf-link")
    assert _paths(root) == ["conf/a.yml", "train.py"]  # the folder is taken once
    (tmp_path / "secret").write_text("s")
    os.symlink(tmp_path / "secret", root / "leak")
    with pytest.raises(SnapshotError, match="link 'leak' points outside the source folder"):
        collect(str(root))


def test_limits_name_the_largest_files_and_the_ignore_file(tmp_path: Path) -> None:
    root = _tree(tmp_path / "src", {"train.py": "x"})
    (root / "weights.bin").write_bytes(b"0" * 3_000_000)
    with pytest.raises(SnapshotError) as err:
        collect(str(root), SnapshotLimits(max_bytes=1_000_000))
    text = str(err.value)
    assert "weights.bin" in text and ".amlignore" in text and "3.0 MB" in text
    many = _tree(tmp_path / "many", {f"f{i}.txt": "" for i in range(5)})
    with pytest.raises(SnapshotError, match="5 files"):
        collect(str(many), SnapshotLimits(max_files=4))


def test_snapshots_are_deterministic_and_stored_once(tmp_path: Path) -> None:
    store = SqliteRunStore(str(tmp_path / "h.db"))
    artifacts = ArtifactStore(str(tmp_path / "artifacts"))
    files = {"train.py": "print('hi')", "pkg/m.py": "x = 1"}
    first = take_snapshot(str(_tree(tmp_path / "a", files)), store, artifacts)
    blobs = sorted(p for p in (tmp_path / "artifacts").rglob("*") if p.is_file())
    os.utime(tmp_path / "a" / "train.py", (1, 1))
    again = take_snapshot(str(tmp_path / "a"), store, artifacts)
    elsewhere = take_snapshot(str(_tree(tmp_path / "b", files)), store, artifacts)
    assert first.snapshot_id == again.snapshot_id == elsewhere.snapshot_id
    assert first.new_bytes == first.total_bytes > 0 and again.new_bytes == 0 and elsewhere.new_bytes == 0
    assert sorted(p for p in (tmp_path / "artifacts").rglob("*") if p.is_file()) == blobs
    (tmp_path / "a" / "train.py").write_text("print('changed')")
    assert take_snapshot(str(tmp_path / "a"), store, artifacts).snapshot_id != first.snapshot_id


def test_materialize_and_zip_restore_the_files(tmp_path: Path) -> None:
    store = SqliteRunStore(str(tmp_path / "h.db"))
    artifacts = ArtifactStore(str(tmp_path / "artifacts"))
    root = _tree(tmp_path / "a", {"train.py": "print('hi')", "pkg/m.py": "x = 1"})
    os.chmod(root / "train.py", 0o755)
    snap = take_snapshot(str(root), store, artifacts)
    materialize(store.get_snapshot(snap.snapshot_id), artifacts, str(tmp_path / "out"))
    assert (tmp_path / "out" / "pkg" / "m.py").read_text() == "x = 1"
    assert os.access(tmp_path / "out" / "train.py", os.X_OK)
    zpath = write_zip(store.get_snapshot(snap.snapshot_id), artifacts, str(tmp_path / "s.zip"))
    with zipfile.ZipFile(zpath) as zf:
        assert sorted(zf.namelist()) == ["pkg/m.py", "train.py"]
        assert zf.read("train.py") == b"print('hi')"


@pytest.mark.parametrize("bad", ["../escape.py", "/etc/passwd", "a/../../b"])
def test_extraction_never_writes_outside_the_target(tmp_path: Path, bad: str) -> None:
    artifacts = ArtifactStore(str(tmp_path / "artifacts"))
    digest, size, _ = artifacts.put_bytes(b"evil")
    with pytest.raises((SnapshotError, ValueError)):
        materialize([{"path": bad, "digest": digest, "size": size, "mode": 0o644}], artifacts,
                    str(tmp_path / "run" / "src"))
    assert not (tmp_path / "escape.py").exists() and not (tmp_path / "run" / "b").exists()
