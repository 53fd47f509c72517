"""Negative controls: each invariant check fails on a run that breaks it (stub history, no agents).

A fault suite whose checks cannot fail proves nothing; these take a second.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import pytest

from rundock.history.records import FileRecord, MetricRecord, RunRecord, StatusChange
from rundock.states import RunStatus
from tests.faults.invariants import (
    Canaries,
    FaultContext,
    OutsideWatch,
    check_i1,
    check_i2,
    check_i3,
    check_i4,
    check_i5,
    check_i6,
)

RUN = "selftest_1_abcdef01"


class _Artifacts:
    def __init__(self, root: str, blobs: dict[str, bytes]) -> None:
        self.root = root
        self.blobs = blobs

    def read(self, digest: str) -> bytes:
        return self.blobs[digest]


class _Store:
    def __init__(self, path: list[str], error: dict[str, Any] | None = None, values: Iterable[Any] = (),
                 files: dict[str, FileRecord] | None = None, children: Iterable[RunRecord] = ()) -> None:
        self.path = path
        self.error = error
        self.values = list(values)
        self.files = files or {}
        self.children = list(children)

    def status_history(self, run_id: str) -> list[StatusChange]:
        return [StatusChange(RunStatus(s), float(i), s.lower()) for i, s in enumerate(self.path)]

    def get_run(self, run_id: str) -> RunRecord:
        return RunRecord(run_id, "selftest", 1, RunStatus(self.path[-1]), 0.0, error=self.error,
                         status_detail=(self.error or {}).get("message", ""))

    def get_metric_records(self, run_id: str, name: str | None = None) -> list[MetricRecord]:
        return [MetricRecord("v", "scalar", v) for v in self.values]

    def list_files(self, run_id: str) -> dict[str, FileRecord]:
        return self.files

    def list_runs(self, parent_id: str | None = None, include_children: bool = True) -> list[RunRecord]:
        return [c for c in self.children if c.parent_id == parent_id]


class _Workspace:
    def __init__(self, tmp: Path, store: _Store, blobs: dict[str, bytes] | None = None) -> None:
        self.path = str(tmp / "ws")
        os.makedirs(self.path, exist_ok=True)
        self.store = store
        self.artifacts = _Artifacts(str(tmp / "ws" / "artifacts"), blobs or {})


def _ctx(tmp: Path, **kw: Any) -> FaultContext:
    run_dir = tmp / "run"
    (run_dir / "src" / "outputs").mkdir(parents=True, exist_ok=True)
    return FaultContext(run_dir=str(run_dir), probe=str(tmp / "probe"), fault="selftest", **kw)


def _probe(tmp: Path, name: str, lines: list[object]) -> None:
    folder = tmp / "probe" / RUN
    folder.mkdir(parents=True, exist_ok=True)
    (folder / name).write_text("".join(f"{line}\n" for line in lines))


def test_i1_catches_two_terminal_states_and_illegal_moves(tmp_path: Path) -> None:
    ok = _Workspace(tmp_path, _Store(["NotStarted", "Starting", "Running", "Finalizing", "Completed"]))
    check_i1(ok, RUN, _ctx(tmp_path))  # type: ignore[arg-type]
    with pytest.raises(AssertionError, match="2 terminal states"):
        check_i1(_Workspace(tmp_path, _Store(["Running", "Completed", "Failed"])), RUN, _ctx(tmp_path))  # type: ignore[arg-type]
    with pytest.raises(AssertionError, match="illegal transition NotStarted -> Completed"):
        check_i1(_Workspace(tmp_path, _Store(["NotStarted", "Completed"])), RUN, _ctx(tmp_path))  # type: ignore[arg-type]
    with pytest.raises(AssertionError, match="illegal transition Running -> Queued"):
        check_i1(_Workspace(tmp_path, _Store(["Running", "Queued", "Failed"])), RUN, _ctx(tmp_path))  # type: ignore[arg-type]


def test_i2_catches_duplicates_and_lost_values(tmp_path: Path) -> None:
    _probe(tmp_path, "values", [0, 1, 2])
    ws = _Workspace(tmp_path, _Store(["Running", "Failed"], values=[0, 0, 1]))
    with pytest.raises(AssertionError, match=r"more than once: \[0\].*missing: \[2\]"):
        check_i2(ws, RUN, _ctx(tmp_path, values_total=3))  # type: ignore[arg-type]
    ws = _Workspace(tmp_path, _Store(["Running", "Completed"], values=[0, 1, 2]))
    check_i2(ws, RUN, _ctx(tmp_path, values_total=3))  # type: ignore[arg-type]


def test_i3_catches_an_output_that_was_not_stored_unless_the_failure_names_it(tmp_path: Path) -> None:
    ctx = _ctx(tmp_path)
    Path(ctx.run_dir, "src", "outputs", "model.bin").write_bytes(b"weights")
    with pytest.raises(AssertionError, match="model.bin.*not stored"):
        check_i3(_Workspace(tmp_path, _Store(["Running", "Completed"])), RUN, ctx)  # type: ignore[arg-type]
    named = _Store(["Running", "Failed"], error={"message": "outputs could not be stored: outputs/model.bin"})
    check_i3(_Workspace(tmp_path, named), RUN, ctx)  # type: ignore[arg-type]


def test_i4_catches_a_surviving_process(tmp_path: Path) -> None:
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"],
                            env={**os.environ, "RUNDOCK_RUN_ID": RUN})
    try:
        time.sleep(0.2)
        ctx = _ctx(tmp_path, survivor_grace_s=0.3)
        with pytest.raises(AssertionError, match=f"pid {proc.pid}"):
            check_i4(_Workspace(tmp_path, _Store(["Running", "Failed"])), RUN, ctx)  # type: ignore[arg-type]
    finally:
        proc.kill()
        proc.wait()


def test_i5_catches_a_second_execution(tmp_path: Path) -> None:
    _probe(tmp_path, "starts", [101, 102])
    with pytest.raises(AssertionError, match="started 2 times"):
        check_i5(_Workspace(tmp_path, _Store(["Running", "Completed"])), RUN, _ctx(tmp_path))  # type: ignore[arg-type]


def test_i6_catches_leaked_secrets_escaping_names_and_writes_outside(tmp_path: Path) -> None:
    marker = b"CANARY-SELFTEST-1234"
    outside = tmp_path / "outside"
    outside.mkdir()
    watch = OutsideWatch([str(outside)], [])
    (outside / "new.txt").write_text("written by a job")
    digest = "ab" * 32
    store = _Store(["Running", "Completed"], files={"../../evil": FileRecord("../../evil", digest, 3, 0.0)},
                   children=[RunRecord("../../etc", "selftest", 2, RunStatus.RUNNING, 0.0, parent_id=RUN)])
    ws = _Workspace(tmp_path, store, blobs={digest: b"secret: " + marker})
    ctx = _ctx(tmp_path, canaries=Canaries([], [marker]), outside=watch)
    with pytest.raises(AssertionError) as err:
        check_i6(ws, RUN, ctx)  # type: ignore[arg-type]
    text = str(err.value)
    for expected in ("canary secret", "'../../evil' leaves", "'../../etc'", "created"):
        assert expected in text, f"I6 did not report {expected!r}: {text}"
