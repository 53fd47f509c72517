"""Checks on names shared by the job side and the run history (standard library only)."""

from __future__ import annotations

import posixpath


def artifact_name(name: str) -> str:
    """Normalize a run file name; refuse one that would leave the run's namespace.

    Raises ValueError for an empty name, an absolute path or a '..' part.
    """
    if not isinstance(name, str) or not name.strip():
        raise ValueError(f"file name {name!r} is empty; give a relative path such as 'outputs/model.pkl'")
    text = name.replace("\\", "/")
    if text.startswith("/") or (len(text) > 1 and text[1] == ":"):
        raise ValueError(f"file name {name!r} is absolute; give a path relative to the run, e.g. 'outputs/x'")
    parts = [p for p in text.split("/") if p not in ("", ".")]
    if ".." in parts or not parts:
        raise ValueError(f"file name {name!r} leaves the run's namespace ('..' is not allowed)")
    return posixpath.join(*parts)


def metric_name(name: str) -> str:
    """A metric name must be a non-empty string of at most 255 characters."""
    if not isinstance(name, str) or not name or len(name) > 255:
        raise ValueError(f"metric name {name!r} must be a non-empty string of at most 255 characters")
    return name
