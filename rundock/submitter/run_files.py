"""Downloading a run's files: every target path is checked to stay where the caller asked."""

from __future__ import annotations

import os

from rundock.context.names import artifact_name, safe_join
from rundock.history.artifacts import ArtifactStore, sha256_file
from rundock.history.store import RunStore


def download_file(store: RunStore, artifacts: ArtifactStore, run_id: str, name: str, output_file_path: str | None,
                  validate_checksum: bool) -> str:
    """Copy the run's file ``name`` to ``output_file_path`` (a file or a folder; default: its base name here)."""
    name = artifact_name(name)
    files = store.list_files(run_id)
    if name not in files:
        raise FileNotFoundError(f"run {run_id} has no file {name!r}; its files: {', '.join(sorted(files)) or 'none'}")
    target = output_file_path or safe_join(".", os.path.basename(name))
    if os.path.isdir(target):
        target = os.path.join(target, os.path.basename(name))
    artifacts.copy_to(files[name].digest, target)
    if validate_checksum and sha256_file(target)[0] != files[name].digest:
        raise OSError(f"checksum mismatch for {name!r} downloaded to {target}")
    return target


def targets(names: list[str], prefix: str | None, output_directory: str | None, output_paths: list[str] | None,
            append_prefix: bool) -> list[tuple[str, str]]:
    """(run file name, local path) for ``download_files``; a name that would land outside
    ``output_directory`` raises ValueError before anything is written."""
    if output_paths is not None:
        if len(output_paths) != len(names):
            raise ValueError(f"output_paths has {len(output_paths)} entries for {len(names)} files")
        return list(zip(names, output_paths, strict=True))
    out = []
    for name in names:
        rel = name if append_prefix or not prefix else name[len(prefix):].lstrip("/")
        out.append((name, safe_join(output_directory or ".", rel)))
    return out
