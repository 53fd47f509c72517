"""Downloads never write outside the folder asked for, whatever names a damaged or hostile history holds."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import pytest

from rundock.submitter.experiment import Experiment
from rundock.submitter.model import Model
from rundock.submitter.workspace import Workspace


def test_a_run_file_named_to_escape_is_refused_on_download(workspace: Workspace, tmp_path: Path) -> None:
    run = Experiment(workspace, "e").start_logging()
    model = tmp_path / "model.bin"
    model.write_bytes(b"weights")
    run.upload_file("outputs/model.bin", str(model))
    with pytest.raises(ValueError):
        run.upload_file("../../evil", str(model))  # refused at the door
    registered = run.register_model("m", "outputs/model.bin")
    run.complete()
    db = sqlite3.connect(workspace.store.path)  # type: ignore[attr-defined]
    with db:  # a history written by something else (an old version, a hand edit): check again on the way out
        db.execute("UPDATE files SET name = '../../evil.bin' WHERE run_id = ?", (run.id,))
        db.execute("UPDATE models SET files = ? WHERE name = 'm'",
                   (json.dumps([{"name": "outputs/../../../evil.bin", "size": 7,
                                 "digest": registered._record.files[0]["digest"]}]),))
    db.close()
    out = tmp_path / "deep" / "out"
    with pytest.raises(ValueError, match="outside|leaves"):
        run.download_files(output_directory=str(out))
    with pytest.raises(ValueError, match="outside|leaves"):
        Model(workspace, "m").download(str(out), exist_ok=True)
    assert not list(tmp_path.rglob("evil.bin"))


def test_a_store_refuses_a_run_file_name_that_leaves_the_run(workspace: Workspace) -> None:
    run = Experiment(workspace, "e").start_logging()
    with pytest.raises(ValueError):
        workspace.store.add_file(run.id, "../x", "0" * 64, 1)
    with pytest.raises(ValueError):
        run.child_run(run_id="../../etc")
