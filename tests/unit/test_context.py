from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from rundock.agent.joblib import ensure_job_lib
from rundock.context import Run
from tests.conftest import REPO

# Imports rundock's job side with no site-packages at all (-S -I), then lists every
# module that came from outside the standard library.
_PROBE = """
import sys, sysconfig
sys.path.insert(0, {root!r})
import rundock
from rundock import Run
from rundock.context import Run as JobRun
run = JobRun.get_context()
run.log("a", 1)
stdlib = sysconfig.get_paths()["stdlib"]
foreign = sorted(n for n, m in sys.modules.items()
                 if getattr(m, "__file__", None) and not m.__file__.startswith(stdlib)
                 and not n.startswith("rundock"))
print("FOREIGN", foreign)
print("RUN", Run is JobRun or Run.__module__)
"""


def _probe(root: str) -> str:
    proc = subprocess.run([sys.executable, "-S", "-I", "-c", _PROBE.format(root=root)], capture_output=True,
                          text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


def test_job_side_imports_only_the_standard_library() -> None:
    out = _probe(str(REPO))
    assert "FOREIGN []" in out
    assert "Attempted to log scalar metric a:\n1" in out


def test_job_lib_folder_is_enough_for_the_job_side(tmp_path: Path) -> None:
    lib = ensure_job_lib(str(tmp_path / "lib"))
    assert ensure_job_lib(str(tmp_path / "lib")) == lib  # built once per content
    out = _probe(lib)
    assert "FOREIGN []" in out
    assert "RUN True" in out  # inside a job, rundock.Run is the job-side run


def test_offline_run_prints_what_is_logged(capsys: pytest.CaptureFixture[str],
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("RUNDOCK_RUN_ID", raising=False)
    Run._context = None
    run = Run.get_context()
    assert run.id.startswith("OfflineRun_")
    run.log("acc", 0.9)
    run.log_row("citrus", fruit="lime", size=3)
    run.tag("kind", "test")
    out = capsys.readouterr().out
    assert "Attempted to log scalar metric acc:\n0.9" in out
    assert "row metric citrus" in out and "kind" in out
    with pytest.raises(RuntimeError, match="outside a rundock job"):
        Run._context = None
        Run.get_context(allow_offline=False)


def test_job_side_checks_its_input() -> None:
    run = Run("r", "e", lambda *a, **k: None)
    run.log("m", 1, step=0)
    with pytest.raises(ValueError, match="step"):
        run.log("m", 2)
    with pytest.raises(TypeError, match="log_list or log_table"):
        run.log("m2", [1, 2])
    with pytest.raises(ValueError, match="different lengths"):
        run.log_table("t", {"x": [1, 2], "y": [1]})
    with pytest.raises(ValueError, match="leaves the run's namespace"):
        run.upload_file("../x", __file__)
    run.add_properties({"p": "1"})
    with pytest.raises(ValueError, match="immutable"):
        run.add_properties({"p": "2"})
