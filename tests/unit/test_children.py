"""submit_child inside a job: the job's request, the agent's checks and answers (no real submit here)."""

from __future__ import annotations

import json
import os
import stat
import threading
from pathlib import Path

import pytest

from rundock.agent.children import NOT_ON_SSH, ChildSubmitter
from rundock.agent.job import MODE_JOURNAL, MODE_STORE, JobSpec
from rundock.context import Run
from rundock.context import ScriptRunConfig as JobScriptRunConfig
from rundock.context.config import child_request
from rundock.runconfig.script_run_config import ScriptRunConfig


def _agent(run_dir: Path, mode: str) -> ChildSubmitter:
    spec = JobSpec(run_id="p_1", experiment="e", mode=mode, store_uri="sqlite:///x" if mode == MODE_STORE else "",
                   artifacts_root="", snapshot_id="", script="driver.py", interpreter="python")
    (run_dir / "src").mkdir(parents=True, exist_ok=True)
    (run_dir / "requests").mkdir(exist_ok=True)
    return ChildSubmitter(str(run_dir), spec, str(run_dir))


def test_requests_from_both_kinds_of_config(tmp_path: Path) -> None:
    class Target:
        name = "gpu-box"

    real = child_request(ScriptRunConfig(str(tmp_path), "t.py", arguments=["--lr", 0.1], compute_target=Target()),
                         {"lr": 0.1})
    assert real == {"source_directory": os.path.realpath(tmp_path), "script": "t.py", "arguments": ["--lr", "0.1"],
                    "target": "gpu-box", "tags": {"lr": "0.1"}}
    stand_in = child_request(JobScriptRunConfig(tmp_path, "t.py", environment=object()))
    assert stand_in["target"] is None and stand_in["arguments"] == [] and stand_in["tags"] is None
    with pytest.raises(TypeError, match="ScriptRunConfig"):
        child_request(JobScriptRunConfig(tmp_path))


def test_offline_and_child_runs_cannot_submit(tmp_path: Path) -> None:
    offline = Run("OfflineRun_1", "offline", lambda *a, **k: None)
    with pytest.raises(RuntimeError, match="offline run"):
        offline.submit_child(JobScriptRunConfig(".", "t.py"))
    child = Run("p_1", "e", lambda *a, **k: None, run_dir=str(tmp_path)).child_run()
    with pytest.raises(RuntimeError, match="a child run"):
        child.submit_child(JobScriptRunConfig(".", "t.py"))


def test_bad_requests_are_answered_with_their_error(tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    agent = _agent(run_dir, MODE_STORE)
    (run_dir / "src" / "sub").mkdir()
    (run_dir / "src" / "sub" / "t.py").write_text("")
    (run_dir / "src" / "escape").symlink_to("/etc")
    base = {"script": "t.py", "arguments": [], "target": None, "tags": None}
    cases = {
        "submit-outside": ({**base, "source_directory": "/etc"}, "not inside the job's working directory"),
        "submit-link": ({**base, "source_directory": str(run_dir / "src" / "escape")}, "not inside"),
        "submit-noscript": ({**base, "source_directory": str(run_dir / "src" / "sub"), "script": "x.py"},
                            "not a file inside"),
        "submit-dotdot": ({**base, "source_directory": str(run_dir / "src" / "sub"), "script": "../../job.json"},
                          "not a file inside"),
        "submit-args": ({**base, "source_directory": str(run_dir / "src" / "sub"), "arguments": [1]},
                        "arguments must be"),
    }
    for name, (request, _) in cases.items():
        (run_dir / "requests" / f"{name}.json").write_text(json.dumps(request))
    os.symlink("/etc/hostname", run_dir / "requests" / "submit-symlink.json")
    agent.poll()
    for name, (_, error) in cases.items():
        answer = json.loads((run_dir / "requests" / f"{name}.answer.json").read_text())
        assert error in answer["error"], (name, answer)
    assert "error" in json.loads((run_dir / "requests" / "submit-symlink.answer.json").read_text())
    assert stat.S_IMODE((run_dir / "requests" / "submit-outside.answer.json").stat().st_mode) == 0o600
    agent.poll()  # answered once: nothing changes, nothing raises


def test_a_job_on_an_ssh_host_gets_a_clear_refusal(tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    agent = _agent(run_dir, MODE_JOURNAL)
    stop = threading.Event()

    def serve() -> None:
        while not stop.is_set():
            agent.poll()
            stop.wait(0.02)

    thread = threading.Thread(target=serve)
    thread.start()
    try:
        run = Run("p_1", "e", lambda *a, **k: None, run_dir=str(run_dir))
        with pytest.raises(RuntimeError, match="not supported yet"):
            run.submit_child(JobScriptRunConfig(str(run_dir / "src"), "t.py"))
    finally:
        stop.set()
        thread.join()
    assert NOT_ON_SSH.startswith("submit_child from a job on an SSH host")
