"""Pure logic of the SSH target's transfers: retry classification, the host's bounded blob intake and pull
offsets, and the submitter's checks on what a pull brings (no host, no mocks: streams built here)."""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
import socket
import tarfile
import tracemalloc
import zlib
from pathlib import Path
from typing import Any

import paramiko
import pytest

from rundock.agent.pull import _offset, _scan
from rundock.agent.receive import BlobRefused, BoundedBlob, parse_member, receive
from rundock.history.artifacts import ArtifactStore
from rundock.submitter.ssh import RETRY_DELAYS, SshError, is_transient, retrying
from rundock.submitter.targets import mirror
from rundock.submitter.workspace import Workspace

DIGEST = "ab" * 32


# -- retrying ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(("exc", "transient"), [
    (ConnectionResetError(104, "Connection reset by peer"), True),
    (ConnectionRefusedError(111, "Connection refused"), True),
    (OSError("Socket is closed"), True),
    (EOFError(), True),
    (TimeoutError("timed out"), True),
    (paramiko.SSHException("Error reading SSH protocol banner[Errno 104] Connection reset by peer"), True),
    (paramiko.SSHException("SSH session not active"), True),
    (paramiko.AuthenticationException("Authentication timeout."), True),
    (paramiko.AuthenticationException("Authentication failed."), False),
    (paramiko.BadHostKeyException("h", paramiko.RSAKey.generate(1024), paramiko.RSAKey.generate(1024)), False),
    (paramiko.PasswordRequiredException("encrypted"), False),
    (socket.gaierror(-2, "Name or service not known"), False),
    (paramiko.SSHException("Incompatible ssh peer (no acceptable kex algorithm)"), False),
    (SshError("no usable Python"), False),
    (ValueError("other"), False),
])
def test_transient_failures_are_told_from_permanent_ones(exc: BaseException, transient: bool) -> None:
    assert is_transient(exc) is transient


def test_retrying_waits_between_transient_failures_only() -> None:
    waits: list[float] = []
    calls = iter([SshError("reset", transient=True), SshError("reset", transient=True), "done"])

    def action() -> str:
        value = next(calls)
        if isinstance(value, Exception):
            raise value
        return value

    assert retrying(action, sleep=waits.append) == "done"
    assert waits == list(RETRY_DELAYS[:2])

    def refused() -> None:
        raise SshError("refused the login")

    waits.clear()
    with pytest.raises(SshError, match="^refused the login$"):
        retrying(refused, sleep=waits.append)
    assert waits == []

    def lost() -> None:
        raise SshError("connection lost", transient=True)

    with pytest.raises(SshError, match=rf"connection lost \(tried {len(RETRY_DELAYS) + 1} times") as raised:
        retrying(lost, sleep=waits.append)
    assert raised.value.transient and waits == list(RETRY_DELAYS)


# -- the host's blob intake ------------------------------------------------------------------------------------
def _tar(members: dict[str, bytes]) -> io.BytesIO:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    buffer.seek(0)
    return buffer


def _files(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file())


def test_member_names_carry_the_size_to_inflate_to() -> None:
    assert parse_member(f"{DIGEST}.12.z") == (DIGEST, 12, True)
    assert parse_member(f"{DIGEST}.0") == (DIGEST, 0, False)
    for bad in (f"{DIGEST}.z", DIGEST, f"{DIGEST}.-1.z", f"{DIGEST}.1.gz", "../x.1", f"{DIGEST[:-1]}.1"):
        with pytest.raises(BlobRefused):
            parse_member(bad)


def test_a_blob_is_never_inflated_past_its_declared_size(tmp_path: Path) -> None:
    bomb = zlib.compress(b"\0" * (64 << 20), 9)
    tracemalloc.start()
    try:
        with pytest.raises(BlobRefused, match="larger than the 1000 bytes"):
            BoundedBlob(io.BytesIO(bomb), "x", 1000, True).read_all()
        with pytest.raises(BlobRefused, match="larger than the 2000000 bytes"):  # a large one, streamed
            ArtifactStore(str(tmp_path / "a")).put_stream(BoundedBlob(io.BytesIO(bomb), "x", 2_000_000, True))  # type: ignore[arg-type]
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 8 << 20
    assert [n for n in _files(tmp_path / "a") if not n.startswith("packs")] == []
    with pytest.raises(BlobRefused, match="has 3 of the 5 bytes"):
        BoundedBlob(io.BytesIO(zlib.compress(b"abc")), "x", 5, True).read_all()
    with pytest.raises(BlobRefused, match="ends in the middle"):
        BoundedBlob(io.BytesIO(zlib.compress(b"abc" * 100)[:10]), "x", 300, True).read_all()
    with pytest.raises(BlobRefused, match="bytes after"):
        BoundedBlob(io.BytesIO(zlib.compress(b"abc") + b"junk"), "x", 3, True).read_all()
    assert BoundedBlob(io.BytesIO(zlib.compress(b"abc" * 1000)), "x", 3000, True).read_all() == b"abc" * 1000


def test_receive_stores_verified_blobs_and_leaves_nothing_of_a_refused_stream(tmp_path: Path) -> None:
    small, large = b"hello" * 10, os.urandom(3 << 20)
    d_small, d_large = hashlib.sha256(small).hexdigest(), hashlib.sha256(large).hexdigest()
    ok = _tar({f"{d_small}.{len(small)}.z": zlib.compress(small), f"{d_large}.{len(large)}": large})
    assert receive(str(tmp_path / "host"), ok) == 2
    store = ArtifactStore(str(tmp_path / "host" / "artifacts"))
    assert store.read(d_small) == small and store.read(d_large) == large
    before = _files(tmp_path / "host")
    other_small, other_large = b"other" * 10, os.urandom(2 << 20)
    for members, refusal in (
            ({f"{hashlib.sha256(other_small).hexdigest()}.50.z": zlib.compress(other_small),
              f"{DIGEST}.{len(other_large)}": other_large}, "damaged"),  # a large blob under a wrong name
            ({f"{DIGEST}.50": b"x" * 50}, "damaged"),
            ({f"{DIGEST}.10": b"x" * 50}, "holds 50 bytes, not 10"),
            ({f"{DIGEST}.z": zlib.compress(b"x")}, "not named")):
        with pytest.raises(BlobRefused, match=refusal):
            receive(str(tmp_path / "host"), _tar(members))
        assert _files(tmp_path / "host") == before  # no pack, no loose blob, no temporary file


# -- the host's pull -----------------------------------------------------------------------------------------
def test_the_host_answers_an_offset_a_file_cannot_have_from_its_start() -> None:
    assert _offset(10, 100) == (10, False)
    assert _offset(100, 100) == (100, False)
    for asked in (10**12, 101, -1, "10", None, True, 1.5):
        assert _offset(asked, 100) == (0, True)


def test_the_host_scans_only_well_formed_file_records() -> None:
    blobs: dict[str, int] = {}
    uploads: set[str] = set()
    lines = [b"garbage", b"42", b"[1]", b'{"type": "file"}', b'{"type": "file", "digest": ["x"], "size": 1}',
             b'{"type": "file", "path": "../../etc/passwd"}', b'{"type": "file", "path": "journal/job-1.jsonl"}',
             b'{"type": "file", "path": "uploads/model.pt"}', f'{{"type": "file", "digest": "{DIGEST}", '
             '"size": 5}'.encode()]
    _scan(b"\n".join(lines), False, blobs, uploads)
    assert blobs == {} and uploads == {"uploads/model.pt"}  # a job's record never names a stored blob
    _scan(b"\n".join(lines), True, blobs, uploads)
    assert blobs == {DIGEST: 5}


# -- the submitter's mirror ----------------------------------------------------------------------------------
def _pull_stream(state: dict[str, Any], members: list[tuple[str, bytes]]) -> io.BytesIO:
    buffer = io.BytesIO()
    with gzip.GzipFile(fileobj=buffer, mode="wb", compresslevel=1) as zipped, \
            tarfile.open(fileobj=zipped, mode="w|") as tar:
        for name, data in [("state.json", json.dumps(state).encode()), *members]:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    buffer.seek(0)
    return buffer


def _state(files: dict[str, Any] | None = None, **more: Any) -> dict[str, Any]:
    return {"files": files or {}, "blobs": {}, "uploads": {}, **more}


def test_the_mirror_appends_exactly_at_its_end(workspace: Workspace, tmp_path: Path) -> None:
    mirror_dir = str(tmp_path / "mirror")
    rel = "journal/job-1.jsonl"
    log = tmp_path / "mirror" / rel

    def apply(offset: int, data: bytes, reset: bool = False) -> mirror.Pulled:
        stream = _pull_stream(_state({rel: {"offset": offset, "size": len(data), "reset": reset}}),
                              [(f"data/{rel}", data)])
        return mirror.apply_pull(stream, mirror_dir, workspace)

    assert apply(0, b"one\n").problems == []
    assert apply(4, b"two\n").problems == []
    assert apply(0, b"one\ntwo\nthree\n").problems == []  # a pull that overlaps what is here: only the rest lands
    assert log.read_bytes() == b"one\ntwo\nthree\n"
    far = apply(10**12, b"x\n")  # a hostile or confused host: never a hole, never a sparse terabyte
    assert len(far.problems) == 1 and "past the 14 bytes" in far.problems[0]
    assert log.stat().st_size == 14
    assert apply(0, b"new\n", reset=True).reset and log.read_bytes() == b"new\n"
    assert mirror.offsets(mirror_dir) == {rel: 4}


def test_the_mirror_refuses_what_the_state_did_not_announce(workspace: Workspace, tmp_path: Path) -> None:
    mirror_dir = str(tmp_path / "mirror")
    blob = b"blob content"
    digest = hashlib.sha256(blob).hexdigest()
    state = _state({"system_logs/driver_log.txt": {"offset": 0, "size": 3, "reset": False}},
                   blobs={digest: len(blob), DIGEST: 4}, uploads={"uploads/m.pt": 2})
    pulled = mirror.apply_pull(_pull_stream(state, [
        ("data/system_logs/driver_log.txt", b"abc"),
        ("data/../escape.txt", b"x"), ("data/system_logs/../../escape.txt", b"x"), ("data/src/train.py", b"x"),
        ("data/journal/agent.jsonl", b"x"), ("data/system_logs/prepare_log.txt", b"x"),
        ("data/uploads/m.pt", b"ok"), ("data/uploads/other.pt", b"no"),
        (f"blobs/{digest}", blob), (f"blobs/{DIGEST}", b"fake"), ("other", b"x")]), mirror_dir, workspace)
    assert len(pulled.problems) == 8, pulled.problems
    assert _files(tmp_path / "mirror") == ["system_logs/driver_log.txt", "uploads/m.pt"]
    assert not (tmp_path / "escape.txt").exists()
    assert workspace.artifacts.read(digest) == blob and not workspace.artifacts.has(DIGEST)
    without_state = io.BytesIO(gzip.compress(_tar({"data/system_logs/x": b"x"}).getvalue()))
    with pytest.raises(ValueError, match="does not start with the host's state"):
        mirror.apply_pull(without_state, mirror_dir, workspace)


def test_a_gzip_bomb_in_a_pull_costs_a_chunk_of_memory(workspace: Workspace, tmp_path: Path) -> None:
    mirror_dir = str(tmp_path / "mirror")
    size = 64 << 20
    zeros = b"\0" * size
    rel = "system_logs/driver_log.txt"
    announced_small = _pull_stream(_state({rel: {"offset": 0, "size": 10, "reset": False}}), [(f"data/{rel}", zeros)])
    honest = _pull_stream(_state({rel: {"offset": 0, "size": size, "reset": False}}), [(f"data/{rel}", zeros)])
    del zeros
    assert len(honest.getvalue()) < 1 << 20
    tracemalloc.start()
    try:
        refused = mirror.apply_pull(announced_small, mirror_dir, workspace)
        applied = mirror.apply_pull(honest, mirror_dir, workspace)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert len(refused.problems) == 1 and applied.problems == []
    assert os.path.getsize(os.path.join(mirror_dir, rel)) == size
    assert peak < 16 << 20  # far below the 64 MiB it inflates to
