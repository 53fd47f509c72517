"""Faults of a team server's history: PostgreSQL restarted under a live run, and the server killed (SIGKILL, no
goodbye) while a run's agent is storing a large output. Each run must end Completed with every value exactly once
and its outputs whole (same bytes), because the agent keeps everything in the run's journal and ships it again
from its marks, and uploads resume.
"""

from __future__ import annotations

import hashlib
import shlex
import shutil
import subprocess
import time
from pathlib import Path

import pytest

from rundock.states import RunStatus
from tests.conftest import require_service, wait_until
from tests.integration.test_server_workspace import Laptop, restart
from tests.server_fixtures import postgres_database, running_server

RESTART_PG = "pg_ctlcluster 15 main restart"

STEADY = """
import os, sys, time
from rundock.context import Run
run = Run.get_context()
for i in range(int(sys.argv[1])):
    run.log("step", i)
    time.sleep(float(sys.argv[2]))
os.makedirs("outputs", exist_ok=True)
with open("outputs/model.bin", "wb") as fh:
    fh.write(bytes(range(256)) * 4096)
"""

BIG_OUTPUT = """
import os, random
from rundock.context import Run
run = Run.get_context()
os.makedirs("outputs", exist_ok=True)
rng = random.Random(7)
with open("outputs/big.bin", "wb") as fh:
    for _ in range(192):
        fh.write(rng.randbytes(1 << 20))
for i in range(20):
    run.log("step", i)
"""


def _digest(path: Path) -> str:
    sha = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            sha.update(block)
    return sha.hexdigest()


def _expected_big_output() -> str:
    """The SHA-256 of what BIG_OUTPUT writes (the same seeded bytes)."""
    import random

    rng, sha = random.Random(7), hashlib.sha256()
    for _ in range(192):
        sha.update(rng.randbytes(1 << 20))
    return sha.hexdigest()


@pytest.mark.integration
def test_postgresql_restarted_under_a_live_run_loses_and_repeats_nothing(tmp_path: Path,
                                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    if shutil.which(shlex.split(RESTART_PG)[0]) is None:
        require_service("POSTGRES", "cannot restart PostgreSQL here: pg_ctlcluster is not installed")
    with postgres_database() as uri, running_server(tmp_path / "server", uri) as server:
        laptop = Laptop.make(tmp_path / "laptop")
        (laptop.project / "steady.py").write_text(STEADY)
        laptop.login(server, "alice")
        run_id = laptop.rundock("submit", ".", "-s", "steady.py", "-e", "pg-restart", "--detach", "--",
                                "80", "0.05").stdout.strip()
        ws = laptop.workspace(monkeypatch)
        wait_until(lambda: len(ws.store.get_metric_records(run_id)) >= 10, timeout=60, message="the first values")
        subprocess.run(shlex.split(RESTART_PG), check=True, timeout=120)
        wait_until(lambda: ws.store.get_run(run_id).status.is_terminal, timeout=180, message="the run to end")
        record = ws.store.get_run(run_id)
        assert record.status == RunStatus.COMPLETED, record.status_detail
        assert [m.value for m in ws.store.get_metric_records(run_id, "step")] == list(range(80))  # each once
        assert ws.store.list_files(run_id)["outputs/model.bin"].size == 256 * 4096
        ws.close()


@pytest.mark.integration
def test_a_server_killed_while_an_output_is_stored_ends_with_the_output_whole(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    server = running_server(tmp_path / "server")
    try:
        laptop = Laptop.make(tmp_path / "laptop")
        (laptop.project / "big.py").write_text(BIG_OUTPUT)
        laptop.login(server, "alice")
        run_id = laptop.rundock("submit", ".", "-s", "big.py", "-e", "kill-server", "--detach").stdout.strip()
        ws = laptop.workspace(monkeypatch)
        wait_until(lambda: ws.store.get_run(run_id).status in (RunStatus.FINALIZING, RunStatus.COMPLETED),
                   timeout=120, interval=0.02, message="the run to store its outputs")
        server.process.kill()  # SIGKILL: no graceful shutdown, an upload may be cut in the middle
        server.process.wait(30)
        time.sleep(1.0)
        server = restart(server)
        wait_until(lambda: ws.store.get_run(run_id).status.is_terminal, timeout=240, message="the run to end")
        record = ws.store.get_run(run_id)
        assert record.status == RunStatus.COMPLETED, record.status_detail
        assert [m.value for m in ws.store.get_metric_records(run_id, "step")] == list(range(20))
        ws.close()
        reader = Laptop.make(tmp_path / "reader")  # a fresh cache: the bytes come from the server
        reader.login(server, "bob")
        other = reader.workspace(monkeypatch)
        from rundock.submitter.run import Run

        got = Path(Run.get(other, run_id).download_file("outputs/big.bin", str(tmp_path / "big.bin")))
        assert got.stat().st_size == 192 << 20
        assert _digest(got) == _expected_big_output() == other.store.list_files(run_id)["outputs/big.bin"].digest
        other.close()
    finally:
        server.stop()
