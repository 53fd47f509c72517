"""Where the warm agent's socket lives and who may use it (standard library only).

The socket folder is ``$XDG_RUNTIME_DIR/rundock`` when that is this user's private folder, else
``<tmp>/rundock-<uid>``, checked with ``lstat`` before use (a real folder, ours, mode 0700): another
local user may have created the name first. ``SO_PEERCRED`` tells each end the other's uid. The
``flock`` helpers keep one daemon per socket (see ``rundock.agent.daemon``).
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import re
import socket
import stat
import struct
import tempfile
import time
from typing import Callable, Iterator

_CRED = struct.Struct("3i")  # struct ucred: pid, uid, gid
_VERSION = re.compile(r"^[A-Za-z0-9_-]{1,64}$")


class UnsafeFolderError(OSError):
    """The folder for the warm agent's socket is not a private folder of this user."""


def _check_private(path: str, uid: int) -> str | None:
    """Why ``path`` is not a real folder of ``uid`` with mode 0700 (None when it is)."""
    try:
        st = os.lstat(path)
    except OSError as exc:
        return f"cannot inspect it ({exc.strerror})"
    if stat.S_ISLNK(st.st_mode):
        return "it is a symbolic link"
    if not stat.S_ISDIR(st.st_mode):
        return "it is not a folder"
    if st.st_uid != uid:
        return f"it belongs to uid {st.st_uid}, not {uid}"
    if st.st_mode & 0o077:
        return f"its mode is {stat.S_IMODE(st.st_mode):04o}, not 0700"
    return None


def _xdg_base(uid: int) -> str | None:
    """``$XDG_RUNTIME_DIR`` when it is set and is this user's own folder that no one else may write to."""
    xdg = os.environ.get("XDG_RUNTIME_DIR")
    if not xdg or not os.path.isabs(xdg):
        return None
    try:
        st = os.stat(xdg)
    except OSError:
        return None
    if not stat.S_ISDIR(st.st_mode) or st.st_uid != uid or st.st_mode & 0o022:
        return None  # e.g. another user's, kept across `sudo`: use the temporary folder instead
    return xdg


def runtime_folder() -> str:
    """The private folder of this user's agent sockets, created if missing; UnsafeFolderError when it is not private."""
    uid = os.getuid()
    xdg = _xdg_base(uid)
    folder = os.path.join(xdg, "rundock") if xdg else os.path.join(tempfile.gettempdir(), f"rundock-{uid}")
    try:
        os.mkdir(folder, 0o700)
    except FileExistsError:
        pass
    except OSError as exc:
        raise UnsafeFolderError(f"cannot create the warm agent's folder {folder}: {exc.strerror}") from None
    problem = _check_private(folder, uid)
    if problem:
        raise UnsafeFolderError(f"not using the warm agent's folder {folder}: {problem} (another user may have "
                                "created it; remove it and submit again)")
    return folder


def _base(root: str, version: str) -> str:
    if not _VERSION.match(version):
        raise ValueError(f"not a code version: {version!r}")
    key = hashlib.sha256(os.path.abspath(root).encode()).hexdigest()[:16]
    return os.path.join(runtime_folder(), f"{key}-{version}")


def socket_path(root: str, version: str) -> str:
    """A short path (Unix sockets allow about 100 characters) in a private folder of this user."""
    return _base(root, version) + ".sock"


def peer_uid(conn: socket.socket) -> int | None:
    """The uid of the process at the other end of a Unix socket (None where the system cannot say)."""
    option = getattr(socket, "SO_PEERCRED", None)
    if option is None:
        return None
    try:
        raw = conn.getsockopt(socket.SOL_SOCKET, option, _CRED.size)
    except OSError:
        return None
    return int(_CRED.unpack(raw)[1])


def _lock(path: str, timeout: float) -> int | None:
    """An open descriptor of lock file ``path`` holding an exclusive flock; None when it stays taken ``timeout``
    seconds. The file may be removed by whoever holds its lock (see ``_remove_held``): a lock taken on a file
    that is no longer at ``path`` is dropped and taken again on the file that is."""
    deadline = time.monotonic() + timeout
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
        try:
            while True:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except BlockingIOError:
                    if time.monotonic() > deadline:
                        os.close(fd)
                        return None
                    time.sleep(0.01)
            held, current = os.fstat(fd), os.lstat(path)
            if (held.st_dev, held.st_ino) == (current.st_dev, current.st_ino):
                return fd
        except FileNotFoundError:
            pass  # removed by its holder between our open and our lock: take the new one
        except BaseException:
            os.close(fd)
            raise
        os.close(fd)


def _remove_held(path: str, fd: int) -> None:
    """Remove lock file ``path`` whose lock ``fd`` holds (it is the file at ``path``: see ``_lock``)."""
    with contextlib.suppress(OSError):
        os.unlink(path)
    os.close(fd)


@contextlib.contextmanager
def start_lock(root: str, version: str, timeout: float = 20.0) -> Iterator[None]:
    """Hold the exclusive lock under which a submitter decides to start the daemon of ``root``.

    UnsafeFolderError when the folder is not private; TimeoutError when the lock stays taken ``timeout`` seconds.
    """
    fd = _lock(_base(root, version) + ".lock", timeout)
    if fd is None:
        raise TimeoutError(f"the warm agent's start lock stayed taken for {timeout:.0f} s")
    try:
        yield
    finally:
        os.close(fd)  # releases the lock


def wait_for_socket(root: str, version: str, alive: Callable[[], bool], timeout: float) -> bool:
    """Wait until the daemon's socket is there (it appears once the daemon listens) while ``alive()``."""
    path = socket_path(root, version)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if os.path.exists(path):
            return True
        if not alive():
            return os.path.exists(path)
        time.sleep(0.01)
    return False
