"""Jobs written to break out of their run: links, FIFOs, crafted journal records, escaping processes.

Each test is an attack that once worked; the run must end with a sensible status, keep what it
legitimately logged, and nothing from outside the run may reach the history.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest

from rundock import Environment, Experiment, Run, RunConfiguration, ScriptRunConfig
from rundock.submitter.workspace import Workspace
from tests.conftest import processes_of_run, wait_until
from tests.integration.test_docker import _env as docker_env

MARKER = "CANARY-8f1d2c-NOT-FOR-RUNS"


def _submit(workspace: Workspace, src: Path, env: Environment | None = None) -> Run:
    config = RunConfiguration(environment=env) if env is not None else None
    return Experiment(workspace, "hostile").submit(ScriptRunConfig(str(src), "train.py", run_config=config))


def _canary(tmp_path: Path) -> Path:
    canary = tmp_path / "outside" / "canary.txt"
    canary.parent.mkdir()
    canary.write_text(MARKER)
    return canary


def _leaked(workspace: Workspace, run: Run) -> list[str]:
    """Where the marker from outside the run turned up: stored blobs, the run's files, its logs, its error."""
    found = [str(p) for p in Path(workspace.artifacts.root).rglob("*") if p.is_file() and MARKER.encode() in
             p.read_bytes()]
    store = workspace.store
    found += [f"log {n}" for n in store.log_names(run.id) if MARKER.encode() in store.read_log(run.id, n)]
    if MARKER in json.dumps(store.get_run(run.id).error or {}):
        found.append("the run's error")
    return found


def test_a_container_cannot_make_the_agent_copy_host_files(workspace: Workspace, source: Callable[..., Path],
                                                           tmp_path: Path, docker_base_image: str) -> None:
    canary = _canary(tmp_path)
    src = source(**{"train.py": f"""
        import os, shutil
        from rundock.context import Run
        run = Run.get_context()
        run.log("before", 1)
        shutil.rmtree("outputs", ignore_errors=True)
        os.symlink({str(canary.parent)!r}, "outputs")            # outputs/ replaced by a link out of the run
        os.symlink({str(canary)!r}, "/rundock/run/journal/job-1.jsonl")   # a journal that is a link
        os.symlink({str(canary)!r}, "/rundock/run/requests/fail.json")   # a fail request that is a link
        os.symlink({str(tmp_path / 'created-by-job')!r}, "/rundock/run/requests/cancel")
        run.log("after", 2)
    """})
    run = _submit(workspace, src, docker_env(docker_base_image))
    run.wait_for_completion(raise_on_error=False)
    assert run.get_status() in ("Failed", "Canceled", "Completed")
    assert run.get_metrics().get("before") == 1 and run.get_metrics().get("after") == 2
    assert _leaked(workspace, run) == []
    assert not [n for n in run.get_file_names() if "canary" in n]
    run.cancel()  # a cancel request must never follow the job's link
    assert not (tmp_path / "created-by-job").exists()


def test_a_fifo_for_a_fail_request_does_not_hang_the_agent(workspace: Workspace, source: Callable[..., Path]) -> None:
    src = source(**{"train.py": """
        import os
        os.makedirs(os.path.join(os.environ["RUNDOCK_RUN_DIR"], "requests"), exist_ok=True)
        os.mkfifo(os.path.join(os.environ["RUNDOCK_RUN_DIR"], "requests", "fail.json"))
    """})
    run = _submit(workspace, src)
    run.wait_for_completion(raise_on_error=False)  # it would wait forever if the agent blocked on the FIFO
    assert run.get_status() == "Failed"


def test_records_the_history_cannot_hold_are_set_aside_and_the_rest_kept(workspace: Workspace,
                                                                       source: Callable[..., Path]) -> None:
    src = source(**{"train.py": """
        import json, os
        from rundock.context import Run
        run = Run.get_context()
        run.log("before", 1)
        path = os.path.join(os.environ["RUNDOCK_RUN_DIR"], "journal", "job-999999.jsonl")
        with open(path, "w") as fh:
            fh.write('{"seq":1,"type":"metric","name":"deep","value":' + "[" * 200000 + "]" * 200000 + '}\\n')
            fh.write(json.dumps({"seq": 2, "type": "metric", "name": "big", "value": 1, "step": 2 ** 70}) + "\\n")
            fh.write(json.dumps({"seq": 3, "type": "metric", "name": "huge", "value": 10 ** 400}) + "\\n")
            fh.write("x" * (3 << 20) + "\\n")
            fh.write(json.dumps({"seq": 5, "type": "metric", "name": "fine", "value": 5}) + "\\n")
        run.log("after", 2)
    """})
    run = _submit(workspace, src)
    run.wait_for_completion()
    metrics = run.get_metrics()
    assert (metrics["before"], metrics["after"], metrics["fine"]) == (1, 2, 5)
    assert "deep" not in metrics and "big" not in metrics
    rejected = workspace.store.read_log(run.id, "system_logs/rejected_records.txt").decode()
    assert "job-999999" in rejected


def test_children_logged_from_a_worker_process_are_kept(workspace: Workspace, source: Callable[..., Path]) -> None:
    src = source(**{"train.py": """
        import os, subprocess, sys
        from rundock.context import Run
        run = Run.get_context()
        child = run.child_run(name="trial")
        child.log("from_parent", 1)
        for _ in range(200):  # burn pids so the worker's may sort before ours as text
            subprocess.run([sys.executable, "-c", "pass"])
        pid = os.fork()
        if pid == 0:
            child.log("from_worker", 2)
            os._exit(0)
        os.waitpid(pid, 0)
        child.complete()
    """})
    run = _submit(workspace, src)
    run.wait_for_completion()
    (child,) = run.get_children()
    assert child.get_metrics() == {"from_parent": 1, "from_worker": 2}


def test_a_process_that_drops_its_environment_is_still_reaped(workspace: Workspace, source: Callable[..., Path],
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    src = source(**{"train.py": """
        import os, time
        if os.fork() == 0:
            os.setsid()
            if os.fork() == 0:
                os.execve("/bin/sleep", ["sleep", "300"], {"PATH": "/bin"})
            os._exit(0)
        os.makedirs("outputs", exist_ok=True)
        print("started", flush=True)
        time.sleep(1)
        open("outputs/late.txt", "w").write("written while the agent was gone")
        time.sleep(300)
    """})
    run = _submit(workspace, src)
    wait_until(lambda: b"started" in workspace.store.read_log(run.id, "system_logs/driver_log.txt"), message="start")
    run_dir = Path(run._record.run_dir or "")
    agent = json.loads((run_dir / "processes.json").read_text())["agent_pid"]
    os.kill(agent, signal.SIGKILL)
    wait_until(lambda: (run_dir / "src" / "outputs" / "late.txt").exists(), message="the late output")
    wait_until(lambda: run.get_status() == "Failed", timeout=15, message="Failed")
    assert "outputs/late.txt" in run.get_file_names()  # the final scan its agent never made
    sleepers = subprocess.run(["pgrep", "-f", "^sleep 300$"], capture_output=True, text=True).stdout.split()
    holders = [p for p in sleepers if _holds_members(int(p), run_dir)]
    assert holders == [] and processes_of_run(run.id) == []


def _holds_members(pid: int, run_dir: Path) -> bool:
    try:
        return any(os.readlink(f"/proc/{pid}/fd/{fd}") == str((run_dir / "members").resolve())
                   for fd in os.listdir(f"/proc/{pid}/fd"))
    except OSError:
        return False


def test_an_output_whose_name_has_a_backslash_is_stored(workspace: Workspace, source: Callable[..., Path]) -> None:
    src = source(**{"train.py": """
        import os
        os.makedirs("outputs", exist_ok=True)
        open("outputs/win\\\\style.txt", "w").write("kept")
    """})
    run = _submit(workspace, src)
    run.wait_for_completion()
    assert "outputs/win%5Cstyle.txt" in run.get_file_names()
