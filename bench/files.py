"""Figures 7-9: snapshots, transfer to an SSH host, and many outputs."""

from __future__ import annotations

import hashlib
import random
import shutil
import subprocess
import time
from pathlib import Path

import paramiko

from bench.common import Figure, log, p50, source, submit, workspace
from rundock import ComputeTarget, RemoteCompute
from rundock.history.artifacts import ArtifactStore
from rundock.history.backends.sqlite import SqliteRunStore
from rundock.submitter.snapshot import SnapshotLimits, take_snapshot
from rundock.submitter.ssh import trust_host
from rundock.submitter.targets.remote import RemoteTarget
from tests.hosts import SshHost

TREE_FILES, TREE_BYTES = 2000, 50 * 1024 * 1024


def make_tree(folder: Path) -> Path:
    """2,000 files, 50 MB: half source-like text, half incompressible data, in 40 folders."""
    rng = random.Random(7)
    per_file = TREE_BYTES // TREE_FILES
    words = [f"token{i}" for i in range(500)]
    for i in range(TREE_FILES):
        path = folder / f"pkg{i % 40}" / f"file{i}.{'py' if i % 2 else 'bin'}"
        path.parent.mkdir(parents=True, exist_ok=True)
        if i % 2:
            text = " ".join(rng.choice(words) for _ in range(per_file // 7))
            path.write_bytes(text.encode()[:per_file])
        else:
            path.write_bytes(rng.randbytes(per_file))
    return folder


def _timed(command: list[str]) -> float:
    began = time.perf_counter()
    subprocess.run(command, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.perf_counter() - began


def snapshots(root: Path, tree: Path) -> Figure:
    mb = TREE_BYTES / 1e6
    ours, again, again_bytes = [], [], []
    limits = SnapshotLimits(max_bytes=TREE_BYTES * 2, max_files=TREE_FILES * 2)
    for rep in range(3):
        store = SqliteRunStore(str(root / f"snap-{rep}" / "history.db"))
        artifacts = ArtifactStore(str(root / f"snap-{rep}" / "artifacts"))
        began = time.perf_counter()
        take_snapshot(str(tree), store, artifacts, limits)
        ours.append(mb / (time.perf_counter() - began))
        began = time.perf_counter()
        unchanged = take_snapshot(str(tree), store, artifacts, limits)
        again.append(time.perf_counter() - began)
        again_bytes.append(unchanged.new_bytes)
        shutil.rmtree(root / f"snap-{rep}")
    base = [mb / _timed(["tar", "czf", str(root / "t.tgz"), "-C", str(tree), "."]) for _ in range(3)]
    zstd = [mb / _timed(["tar", "--zstd", "-cf", str(root / "t.tzst"), "-C", str(tree), "."]) for _ in range(3)] \
        if shutil.which("zstd") else []
    log(f"7: snapshot {p50(ours):.0f} MB/s, tar czf {p50(base):.0f} MB/s, unchanged {p50(again) * 1000:.0f} ms")
    zstd_note = f"`tar --zstd`: {p50(zstd):.0f} MB/s. " if zstd else "`zstd` is not installed here. "
    return Figure(7, "snapshot of a 50 MB / 2,000-file tree", "MB/s", ours,
                  ">= 150 MB/s; unchanged re-submit: 0 bytes, <= 200 ms",
                  p50(ours) >= 150 and max(again_bytes) == 0 and p50(again) <= 0.200, "`tar czf`", base,
                  note=f"{zstd_note}Unchanged re-submit: p50 {p50(again) * 1000:.0f} ms, "
                       f"{max(again_bytes)} new bytes stored. A snapshot reads and hashes (SHA-256) every file "
                       "once; the files the store lacks go into one pack (a file of blobs plus an index) instead "
                       "of one file per blob, which made creating 2,000 files the cost before.")


def transfer(root: Path, tree: Path, host: SshHost, disk: Path) -> Figure:
    """Every method writes to ``disk``, a regular folder on the host."""
    ws = workspace(root, "transfer")
    snapshot = take_snapshot(str(tree), ws.store, ws.artifacts, SnapshotLimits(TREE_BYTES * 2, TREE_FILES * 2))
    digests = [e["digest"] for e in snapshot.manifest]
    ours = []
    for rep in range(3):
        ComputeTarget.attach(ws, f"t{rep}", RemoteCompute.attach_configuration(
            address="127.0.0.1", ssh_port=host.port, username="root", private_key_file=host.key_file,
            root=f"{disk}/rundock-{rep}"))
        target = RemoteTarget(ws, f"t{rep}")
        trust_host(target.ssh_target(), target.known_hosts)
        conn = target.connect()
        target.ensure_agent(conn)
        began = time.perf_counter()
        target.send_blobs(conn, digests)
        ours.append(time.perf_counter() - began)

    def sftp() -> float:
        client = paramiko.SSHClient()
        client.set_missing_host_key_policy(paramiko.AutoAddPolicy())  # a throwaway loopback test host
        client.connect("127.0.0.1", port=host.port, username="root", key_filename=host.key_file)
        began = time.perf_counter()
        with client.open_sftp() as sftp_client:
            base = f"{disk}/sftp-{time.time_ns()}"
            made = set()
            for path in sorted(tree.rglob("*")):
                remote = f"{base}/{path.relative_to(tree)}"
                if path.is_dir():
                    continue
                parent = remote.rsplit("/", 1)[0]
                for i in range(len(base), len(parent) + 1):
                    prefix = parent[:i]
                    if (i == len(parent) or parent[i] == "/") and prefix not in made:
                        try:
                            sftp_client.mkdir(prefix)
                        except OSError:
                            pass
                        made.add(prefix)
                sftp_client.put(str(path), remote)
        client.close()
        return time.perf_counter() - began

    scp = [_timed(["scp", "-q", "-r", "-i", host.key_file, "-P", str(host.port), "-o", "BatchMode=yes",
                   "-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null", str(tree),
                   f"root@127.0.0.1:{disk}/scp-{i}"]) for i in range(3)]
    sftp_times = [sftp() for _ in range(2)]
    log(f"8: transfer {p50(ours):.2f} s, SFTP {p50(sftp_times):.2f} s, scp -r {p50(scp):.2f} s")
    return Figure(8, "snapshot transfer to the SSH host, same tree", "s", ours,
                  "faster than SFTP and scp; <= 1 s on loopback",
                  p50(ours) < min(p50(sftp_times), p50(scp)) and p50(ours) <= 1.0,
                  "paramiko SFTP `put` file by file", sftp_times,
                  note=f"`scp -r` (OpenSSH): p50 {p50(scp):.2f} s. rundock sends the blobs the host lacks as one "
                       "tar stream on one paramiko channel, each blob zlib-compressed when a sample shows it "
                       "compresses (half of this tree is random bytes, sent as they are); the host verifies each "
                       "blob's SHA-256 and stores the small ones as one pack, as the submitting machine does. All "
                       "three methods write to a regular folder of the host's disk.")


OUTPUTS = """
import os
for d in range(100):
    folder = f"outputs/batch{d}/part"
    os.makedirs(folder, exist_ok=True)
    for f in range(50):
        with open(f"{folder}/item{f}.txt", "w") as fh:
            fh.write(f"{d}:{f}:" + "x" * (f * 7))
"""


def outputs(root: Path) -> Figure:
    ws = workspace(root, "outputs")
    shares = []
    for _ in range(3):
        run = submit(ws, source(root, "outputs", OUTPUTS))
        run.wait_for_completion()
        src = Path(run._record.run_dir or "") / "src"
        disk = {p.relative_to(src).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
                for p in (src / "outputs").rglob("*") if p.is_file()}
        stored = {n: f.digest for n, f in ws.store.list_files(run.id).items() if n.startswith("outputs/")}
        shares.append(100.0 * sum(stored.get(n) == d for n, d in disk.items()) / len(disk))
    log(f"9: {min(shares):.1f}% of 5,000 outputs stored with matching hashes")
    return Figure(9, "5,000 files written into new folders under ./outputs during a run", "%", shares,
                  "100 % in the history with matching hashes by the terminal state", min(shares) == 100.0)
