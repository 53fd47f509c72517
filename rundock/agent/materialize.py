"""Write a snapshot's files into a run directory, never outside it."""

from __future__ import annotations

import os
from typing import Any

from rundock.context.names import artifact_name
from rundock.errors import SnapshotError
from rundock.history.artifacts import ArtifactStore


def materialize(manifest: list[dict[str, Any]], artifacts: ArtifactStore, target: str) -> None:
    """Write a snapshot's files under ``target``; never writes outside it."""
    root = os.path.realpath(target)
    os.makedirs(root, exist_ok=True)
    for entry in manifest:
        rel = artifact_name(entry["path"])
        dest = os.path.join(root, rel)
        parent = os.path.realpath(os.path.dirname(dest))
        if os.path.commonpath([root, parent]) != root:
            raise SnapshotError(f"snapshot entry {entry['path']!r} would be written outside {target}")
        artifacts.copy_to(entry["digest"], dest)
        os.chmod(dest, 0o755 if entry.get("mode", 0o644) & 0o111 else 0o644)
