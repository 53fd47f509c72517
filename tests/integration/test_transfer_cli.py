"""``rundock export`` / ``rundock import`` through the real command line, between two workspaces."""

from __future__ import annotations

import io
import json
import subprocess
import sys
import tarfile
from collections.abc import Callable
from pathlib import Path

from rundock.history import transfer_format as fmt
from rundock.submitter.workspace import Workspace


def rundock(cwd: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "rundock", *args], cwd=cwd, capture_output=True, text=True,
                          timeout=120)


def _one_error_line(result: subprocess.CompletedProcess[str], *needles: str) -> None:
    assert result.returncode == 2, result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "Traceback" not in result.stderr, result.stderr
    for needle in needles:
        assert needle in lines[0], lines[0]


def test_export_then_import_into_another_workspace_once(workspace: Workspace, source: Callable[..., Path],
                                                        tmp_path: Path) -> None:
    laptop = Path(workspace.path).parent
    src = source(**{"train.py": """
        import os
        from rundock.context import Run
        run = Run.get_context()
        run.log("acc", 0.5)
        with run.child_run(name="fold") as child:
            child.log("acc", 0.75)
        os.makedirs("outputs", exist_ok=True)
        open("outputs/model.txt", "w").write("weights")
        print("done")
        """})
    submitted = rundock(laptop, "submit", str(src / "train.py"), "-e", "sweep")
    assert submitted.returncode == 0, submitted.stderr
    run_id = workspace.store.list_runs(include_children=False)[0].run_id
    archive = tmp_path / "runs.tar"

    _one_error_line(rundock(laptop, "export", "nope", "-o", str(archive)), "no run 'nope'", "rundock runs --children")
    exported = rundock(laptop, "export", "--experiment", "sweep", "-o", str(archive))
    assert exported.returncode == 0, exported.stderr
    assert exported.stdout.startswith("Exported 2 run(s) and 0 model version(s)") and str(archive) in exported.stdout
    _one_error_line(rundock(laptop, "export", run_id, "-o", str(archive)), "exists", "--force")

    server = tmp_path / "server"
    server.mkdir()
    Workspace.create(str(server)).close()
    first = rundock(server, "import", str(archive))
    assert first.returncode == 0, first.stderr
    assert first.stdout.strip().endswith("2 imported, 0 already present; model versions: 0 imported, "
                                         "0 already present")
    again = rundock(server, "import", str(archive))
    assert again.stdout.strip().endswith("0 imported, 2 already present; model versions: 0 imported, "
                                         "0 already present")
    shown = json.loads(rundock(server, "show", run_id, "--json").stdout)
    assert shown["status"] == "Completed" and "outputs/model.txt" in shown["files"]
    assert shown["properties"][fmt.PROP_NUMBER] == "1"
    logs = rundock(server, "logs", run_id)
    assert logs.returncode == 0 and "done" in logs.stdout

    _one_error_line(rundock(server, "import", str(tmp_path / "missing.tar")), "missing.tar not found")
    (tmp_path / "notes.txt").write_text("not an archive")
    _one_error_line(rundock(server, "import", str(tmp_path / "notes.txt")), "not a rundock export archive")
    newer = tmp_path / "newer.tar"
    with tarfile.open(archive) as src_tar, tarfile.open(newer, "w") as out:
        info = src_tar.getmember(fmt.MANIFEST)
        doc = json.loads(src_tar.extractfile(info).read())  # type: ignore[union-attr]
        doc["version"] = fmt.VERSION + 1
        data = json.dumps(doc).encode()
        info.size = len(data)
        out.addfile(info, io.BytesIO(data))
    _one_error_line(rundock(server, "import", str(newer)), "newer rundock", "upgrade rundock")
