"""The local mirror of a remote run directory, fed by pulls (see ``rundock.agent.remote.pull``).

A pull arrives as one gzip tar: ``state.json`` (the host's view of the run and what follows), then
``data/<file>`` (the bytes of a journal or log file after the offset the mirror asked for, or a staged
upload whole) and ``blobs/<digest>`` (stored files that new journal records name). The host is not
trusted further than its answers can be checked:

- every name must be one the state announced, and stay under the mirror;
- data for a journal or log file lands exactly at the mirror file's end: bytes the mirror already has
  are skipped, data past its end is refused (the mirror never gets holes), and a file the host
  answered with ``reset`` is rewritten from its start;
- every member must be the size the state announced, is copied in bounded chunks (a gzip bomb
  costs at most a chunk of memory), and a blob is stored only if it hashes to its name.

A member that fails a check is skipped and reported; the rest of the pull is applied, so one bad
member never keeps a run from advancing.

A cancel that could not reach the host yet waits in the mirror (``cancel.pending``): the next pull carries
it to the host before anything else, and removes it once the host has it.
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import json
import os
import tarfile
from collections.abc import Iterator
from typing import IO, TYPE_CHECKING, Any, cast

from rundock.context import rundir
from rundock.context.names import artifact_name, safe_join
from rundock.context.records import upload_path

if TYPE_CHECKING:
    from rundock.submitter.workspace import Workspace

PULLED_DIRS = (rundir.JOURNAL_DIR, rundir.AGENT_JOURNAL_DIR, rundir.SYSTEM_LOGS_DIR)  # as the host sends them
MAX_STATE = 8 << 20
MAX_MEMBERS = 200_000
CHUNK = 1 << 20
LOCK_FILE = ".pull.lock"
CANCEL_PENDING = "cancel.pending"


@dataclasses.dataclass
class Pulled:
    """What one pull brought: the host's state, what was refused, and whether a file started over."""

    state: dict[str, Any]
    problems: list[str] = dataclasses.field(default_factory=list)
    reset: bool = False


def offsets(mirror: str) -> dict[str, int]:
    """The size of every pulled file in the mirror: where the next pull starts."""
    found = {}
    for folder in PULLED_DIRS:
        directory = os.path.join(mirror, folder)
        try:
            names = os.listdir(directory)
        except OSError:
            continue
        for name in names:
            path = os.path.join(directory, name)
            if os.path.isfile(path) and not os.path.islink(path):
                found[f"{folder}/{name}"] = os.path.getsize(path)
    return found


def mirror_path(workspace_path: str, target: str, run_id: str) -> str:
    """Where the mirror of a run on ``target`` lives in a workspace."""
    return os.path.join(workspace_path, "remote", target, "runs", run_id)


def request_cancel(mirror: str) -> None:
    """Leave a cancel for the next pull to carry to the host."""
    os.makedirs(mirror, mode=0o700, exist_ok=True)
    os.close(os.open(os.path.join(mirror, CANCEL_PENDING), os.O_WRONLY | os.O_CREAT, 0o600))


def cancel_pending(mirror: str) -> bool:
    return os.path.exists(os.path.join(mirror, CANCEL_PENDING))


def cancel_delivered(mirror: str) -> None:
    with contextlib.suppress(FileNotFoundError):
        os.unlink(os.path.join(mirror, CANCEL_PENDING))


@contextlib.contextmanager
def locked(mirror: str) -> Iterator[None]:
    """One pull at a time into ``mirror`` (threads and processes alike)."""
    os.makedirs(mirror, mode=0o700, exist_ok=True)
    fd = os.open(os.path.join(mirror, LOCK_FILE), os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def _copy(src: IO[bytes], out: IO[bytes], size: int, skip: int = 0) -> None:
    """Copy ``size`` bytes in chunks, dropping the first ``skip``."""
    left = size
    while left:
        data = src.read(min(CHUNK, left))
        if not data:
            raise OSError("the pull ended in the middle of a file")
        left -= len(data)
        if skip:
            dropped = min(skip, len(data))
            data, skip = data[dropped:], skip - dropped
        out.write(data)


class _Exactly:
    """At most ``size`` bytes of ``src`` (a tar member) for the artifact store."""

    def __init__(self, src: IO[bytes], size: int) -> None:
        self.src, self.left = src, size

    def read(self, n: int = -1) -> bytes:
        data = self.src.read(min(CHUNK if n is None or n < 0 else n, self.left))
        self.left -= len(data)
        return data


def _read_state(member: tarfile.TarInfo, handle: IO[bytes]) -> dict[str, Any]:
    if member.size > MAX_STATE:
        raise ValueError(f"its state is {member.size} bytes")
    state = json.loads(handle.read(MAX_STATE))
    if not isinstance(state, dict):
        raise ValueError("its state is not a JSON object")
    for key in ("files", "blobs", "uploads"):
        if not isinstance(state.setdefault(key, {}), dict):
            raise ValueError(f"its state's {key!r} is not an object")
    return state


def _data(pulled: Pulled, rel: str, member: tarfile.TarInfo, handle: IO[bytes], mirror: str) -> None:
    state = pulled.state
    path = safe_join(mirror, rel)
    os.makedirs(os.path.dirname(path), mode=0o700, exist_ok=True)
    if rel in state["uploads"]:  # a staged upload comes whole: replaced in one step
        if member.size != state["uploads"][rel]:
            raise ValueError(f"it holds {member.size} bytes, not the {state['uploads'][rel]} announced")
        tmp = f"{path}.{os.getpid()}.tmp"
        with open(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600), "wb") as out:
            _copy(handle, out, member.size)
        os.replace(tmp, path)
        return
    info = state["files"].get(rel)
    if not isinstance(info, dict) or info.get("size") != member.size:
        raise ValueError("the host did not announce it (or announced another size)")
    offset, reset = info.get("offset"), bool(info.get("reset"))
    if isinstance(offset, bool) or not isinstance(offset, int) or offset < 0 or (reset and offset != 0):
        raise ValueError(f"its offset {offset!r} is not valid")
    fd = os.open(path, os.O_RDWR | os.O_CREAT | getattr(os, "O_NOFOLLOW", 0), 0o600)
    with open(fd, "r+b") as out:
        if reset:
            out.truncate(0)
            pulled.reset = True
        have = out.seek(0, os.SEEK_END)
        if offset > have:
            raise ValueError(f"it starts at byte {offset}, past the {have} bytes the mirror holds; refused (the "
                             "next pull asks again from the mirror's end)")
        _copy(handle, out, member.size, skip=min(have - offset, member.size))  # bytes already here are skipped


def _blob(pulled: Pulled, digest: str, member: tarfile.TarInfo, handle: IO[bytes], ws: Workspace) -> None:
    if pulled.state["blobs"].get(digest) != member.size:
        raise ValueError("the host did not announce it (or announced another size)")
    stored, _, new = ws.artifacts.put_stream(cast(IO[bytes], _Exactly(handle, member.size)))
    if stored != digest:
        if new:
            os.unlink(ws.artifacts.path(stored))
        raise ValueError(f"it arrived damaged (its content hashes to {stored})")


def _pulled_name(rel: str) -> bool:
    """Whether ``rel`` is a file a pull may bring (a journal or log file, or a staged upload)."""
    folder, _, name = rel.partition("/")
    if folder == rundir.JOURNAL_DIR:
        return name.startswith(rundir.JOB_SOURCE_PREFIX) and name.endswith(".jsonl") and "/" not in name
    if folder == rundir.AGENT_JOURNAL_DIR:
        return name == rundir.AGENT_SOURCE + ".jsonl"
    if folder == rundir.SYSTEM_LOGS_DIR:
        return bool(name) and "/" not in name
    try:
        return upload_path(rel) == rel
    except ValueError:
        return False


def apply_pull(stream: IO[bytes], mirror: str, ws: Workspace) -> Pulled:
    """Apply one pull (a gzip tar read from ``stream``) to ``mirror``; see the module docstring."""
    pulled = Pulled({})
    with tarfile.open(fileobj=stream, mode="r|gz") as tar:
        for count, member in enumerate(tar):
            if count >= MAX_MEMBERS:
                raise ValueError(f"the pull holds more than {MAX_MEMBERS} members")
            handle = tar.extractfile(member) if member.isfile() else None
            if count == 0:
                if member.name != "state.json" or handle is None:
                    raise ValueError("the pull does not start with the host's state")
                pulled.state = _read_state(member, handle)
                continue
            if handle is None:
                pulled.problems.append(f"{member.name!r}: not a plain file; skipped")
                continue
            kind, _, rel = member.name.partition("/")
            try:
                if kind == "data" and artifact_name(rel) == rel and _pulled_name(rel):
                    _data(pulled, rel, member, handle, mirror)
                elif kind == "blobs":
                    _blob(pulled, rel, member, handle, ws)
                else:
                    raise ValueError("not a name a pull may bring")
            except (ValueError, OSError) as exc:
                pulled.problems.append(f"{member.name!r}: {exc}")
    return pulled
