"""Checks on names shared by the job side and the run history (standard library only)."""

from __future__ import annotations

import os
import posixpath
import stat
from typing import BinaryIO


def artifact_name(name: str) -> str:
    """Normalize a run file name; refuse one that would leave the run's namespace.

    Raises ValueError for an empty name, an absolute path, a '..' part or a NUL character.
    """
    if not isinstance(name, str) or not name.strip():
        raise ValueError(f"file name {name!r} is empty; give a relative path such as 'outputs/model.pkl'")
    if "\0" in name:
        raise ValueError(f"file name {name!r} contains a NUL character")
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


def escape_name(name: str) -> str:
    """A file name from the file system as valid UTF-8 text: each byte that is not UTF-8 (which Python
    decodes to a lone surrogate) becomes ``%XX``, so such a file is stored under a visible name
    (``r\\xe9sultat.csv`` on disk is stored as ``r%E9sultat.csv``); a backslash becomes ``%5C``."""
    if "\\" in name:  # a backslash is a separator to artifact_name: keep it as a character
        name = name.replace("\\", "%5C")
    try:
        name.encode("utf-8")
        return name
    except UnicodeEncodeError:
        return "".join(f"%{ord(c) - 0xDC00:02X}" if 0xDC80 <= ord(c) <= 0xDCFF else
                       c.encode("utf-8", "replace").decode("utf-8") for c in name)


def safe_join(folder: str, name: str) -> str:
    """``folder/name`` for a run file name, refusing one whose resolved path leaves ``folder``
    (through '..', an absolute name, or a link already in ``folder``)."""
    base = os.path.realpath(folder)
    target = os.path.realpath(os.path.join(base, artifact_name(name)))
    if os.path.commonpath([base, target]) != base:
        raise ValueError(f"file name {name!r} would be written outside {folder}; refusing it")
    return target


class OutsideError(OSError):
    """A path that resolves outside the folder it must stay in (a link, or '..')."""


def open_inside(path: str, folder: str, root: str | None = None, limit: int | None = None) -> BinaryIO:
    """Open ``path`` for reading without following a link at its end, and only if the file opened is a
    plain file whose real location is inside ``folder`` (checked on the open descriptor, so a link swapped
    in after the check changes nothing). ``root`` is a trusted folder above ``folder`` (the run directory,
    made by the agent): ``folder``'s place is then taken relative to it without resolving the
    components in between, so a ``folder`` that the job replaced with a link leads nowhere. A FIFO or a
    device is refused without blocking. Raises OSError (OutsideError when it leaves ``folder``, or when it
    is larger than ``limit`` bytes)."""
    if root is not None:
        base = os.path.join(os.path.realpath(root), os.path.relpath(folder, root))
    else:
        base = os.path.realpath(folder)
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0))
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise OutsideError(f"{path} is not a plain file")
        if limit is not None and st.st_size > limit:
            raise OutsideError(f"{path} is {st.st_size} bytes; at most {limit} are read")
        try:
            real = os.readlink(f"/proc/self/fd/{fd}")  # what was opened, not what the name points at now
        except OSError:
            real = os.path.realpath(path)
        if not real.startswith(base + os.sep):
            raise OutsideError(f"{path} resolves to {real}, outside {base}")
        return os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise
