"""Local runs end to end: real agent processes, a real SQLite history, real kills."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from rundock import Environment, Experiment, Run, RunConfiguration, ScriptRunConfig
from rundock.agent.daemon_socket import socket_path
from rundock.errors import RunFailedError
from rundock.states import RunStatus
from rundock.submitter.workspace import Workspace
from tests.conftest import REPO, processes_of_run, wait_until

TRAIN = """
import argparse, os, pickle
from rundock.context import Run
parser = argparse.ArgumentParser()
parser.add_argument("--alpha", type=float)
args = parser.parse_args()
run = Run.get_context()
print("training with alpha", args.alpha)
run.log("alpha", args.alpha)
for i in range(20):
    run.log("mse", 1.0 / (i + 1))
os.makedirs("outputs", exist_ok=True)
with open("outputs/model.pkl", "wb") as fh:
    pickle.dump({"alpha": args.alpha}, fh)
"""


def _submit(workspace: Workspace, src: Path, script: str = "train.py", experiment: str = "local",
            **kwargs: object) -> Run:
    return Experiment(workspace, experiment).submit(ScriptRunConfig(str(src), script, **kwargs))  # type: ignore[arg-type]


def _statuses(run: Run) -> list[str]:
    return [c.status.value for c in run.experiment.workspace.store.status_history(run.id)]


def test_quickstart_flow(workspace: Workspace, source: Callable[..., Path], tmp_path: Path,
                         capsys: pytest.CaptureFixture[str]) -> None:
    src = source(**{"train.py": TRAIN})
    env = Environment("user-managed-env")
    env.python.user_managed_dependencies = True
    env.python.interpreter_path = sys.executable
    run = _submit(workspace, src, arguments=["--alpha", 0.5], environment=env)
    details = run.wait_for_completion(show_output=True)
    out = capsys.readouterr().out
    assert "training with alpha 0.5" in out and "Status: Completed" in out
    assert _statuses(run) == ["NotStarted", "Starting", "Preparing", "Queued", "Running", "Finalizing",
                              "Completed"]
    metrics = run.get_metrics()
    assert metrics["alpha"] == 0.5 and metrics["mse"] == [1.0 / (i + 1) for i in range(20)]
    assert run.get_metrics(name="alpha") == {"alpha": 0.5}
    names = run.get_file_names()
    assert "outputs/model.pkl" in names and "system_logs/driver_log.txt" in names
    target = run.download_file("outputs/model.pkl", str(tmp_path / "model.pkl"), _validate_checksum=True)
    assert Path(target).read_bytes() == (Path(run._record.run_dir or "") / "src/outputs/model.pkl").read_bytes()
    for key in ("runId", "target", "status", "startTimeUtc", "endTimeUtc", "properties", "runDefinition",
                "logFiles", "submittedBy"):
        assert key in details
    assert details["status"] == "Completed" and details["target"] == "local"
    assert details["properties"]["ContentSnapshotId"] == run.get_snapshot_id()
    assert details["runDefinition"]["arguments"] == ["--alpha", 0.5]
    assert run.get_detailed_status() == {"status": "Completed", "details": "script exited with code 0"}
    assert run.number == 1 and _submit(workspace, src, arguments=["--alpha", 1]).number == 2
    logs = run.get_all_logs(str(tmp_path / "logs"))
    assert any(p.endswith("driver_log.txt") for p in logs)
    assert "training with alpha 0.5" in (tmp_path / "logs/system_logs/driver_log.txt").read_text()


def test_the_run_finishes_after_the_submitting_process_exits(workspace: Workspace,
                                                             source: Callable[..., Path]) -> None:
    src = source(**{"train.py": "import time\ntime.sleep(1)\nfrom rundock.context import Run\n"
                                "Run.get_context().log('done', 1)\n"})
    code = (f"import sys; sys.path.insert(0, {str(REPO)!r})\n"
            "from rundock import Workspace, Experiment, ScriptRunConfig\n"
            f"ws = Workspace({workspace.path!r})\n"
            f"run = Experiment(ws, 'detached').submit(ScriptRunConfig({str(src)!r}, 'train.py'))\n"
            "print(run.id)\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    run = Run.get(workspace, proc.stdout.strip())
    assert run.get_status() != "Completed"  # the submitter is gone; the run is still going
    run.wait_for_completion()
    assert run.get_status() == "Completed" and run.get_metrics() == {"done": 1}


def test_non_zero_exit_fails_with_exit_code_and_stderr(workspace: Workspace, source: Callable[..., Path],
                                                       capsys: pytest.CaptureFixture[str]) -> None:
    src = source(**{"train.py": "import sys\nprint('to stdout')\nsys.stderr.write('bad input file\\n')\n"
                                "sys.exit(3)\n"})
    run = _submit(workspace, src)
    with pytest.raises(RunFailedError, match="exited with code 3") as err:
        run.wait_for_completion(show_output=True)
    assert err.value.error["exit_code"] == 3 and err.value.error["stderr_tail"] == ["bad input file"]
    assert "Status: Failed" in capsys.readouterr().out
    details = run.wait_for_completion(raise_on_error=False)
    assert details["status"] == "Failed" and "bad input file" in details["error"]["error"]["message"]
    assert "bad input file" in run.get_detailed_status()["details"]


def test_time_limit_fails_the_run_with_a_timeout(workspace: Workspace, source: Callable[..., Path]) -> None:
    src = source(**{"train.py": "import time, os\nos.makedirs('outputs', exist_ok=True)\n"
                                "open('outputs/partial.txt', 'w').write('p')\ntime.sleep(60)\n"})
    config = RunConfiguration(max_run_duration_seconds=1, cancel_grace_seconds=1)
    run = Experiment(workspace, "limits").submit(ScriptRunConfig(str(src), "train.py", run_config=config))
    started = time.monotonic()
    details = run.wait_for_completion(raise_on_error=False)
    assert time.monotonic() - started < 15
    assert details["status"] == "Failed" and details["error"]["error"]["code"] == "Timeout"
    assert "max_run_duration_seconds=1" in details["error"]["error"]["message"]
    assert "outputs/partial.txt" in run.get_file_names()
    assert processes_of_run(run.id) == []


def test_runs_beyond_the_limit_wait_in_queued(workspace: Workspace, source: Callable[..., Path],
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RUNDOCK_MAX_CONCURRENT_RUNS", "1")
    src = source(**{"train.py": "import time\ntime.sleep(1.5)\n"})
    runs = [_submit(workspace, src) for _ in range(3)]
    wait_until(lambda: sorted(r.get_status() for r in runs) == ["Queued", "Queued", "Running"],
               message="one run Running and two Queued")
    queued = next(r for r in runs if r.get_status() == "Queued")
    assert "all 1 slots" in queued.get_detailed_status()["details"]
    for run in runs:
        run.wait_for_completion()
    store = workspace.store
    spans = sorted((next(c.at for c in store.status_history(r.id) if c.status == RunStatus.RUNNING),
                    store.get_run(r.id).end_at or 0.0) for r in runs)
    for (_, end), (start, _) in zip(spans, spans[1:], strict=False):
        assert start >= end - 0.05, "two runs were Running at once with a limit of 1"
    assert [r.number for r in sorted(runs, key=lambda r: store.get_run(r.id).start_at or 0)] == [1, 2, 3]


CANCEL_SCRIPT = """
import os, signal, subprocess, sys, time
signal.signal(signal.SIGTERM, signal.SIG_IGN)
os.makedirs("outputs", exist_ok=True)
open("outputs/before-cancel.txt", "w").write("kept")
stubborn = "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); time.sleep(300)"
subprocess.Popen([sys.executable, "-c", stubborn])                        # a grandchild in the group
subprocess.Popen([sys.executable, "-c", stubborn], start_new_session=True)  # one that left the group
print("ready", flush=True)
time.sleep(300)
"""


@pytest.mark.parametrize("how", ["sdk", "cli"])
def test_cancel_stops_every_process_and_keeps_outputs(workspace: Workspace, source: Callable[..., Path],
                                                      how: str) -> None:
    src = source(**{"train.py": CANCEL_SCRIPT})
    config = RunConfiguration(cancel_grace_seconds=1)
    run = Experiment(workspace, "cancel").submit(ScriptRunConfig(str(src), "train.py", run_config=config))
    store = workspace.store
    wait_until(lambda: b"ready" in store.read_log(run.id, "system_logs/driver_log.txt"), message="script ready")
    wait_until(lambda: len(processes_of_run(run.id)) >= 3, message="three job processes")
    if how == "sdk":
        run.cancel()
    else:
        proc = subprocess.run([sys.executable, "-m", "rundock.submitter.cli", "cancel", run.id],
                              capture_output=True, text=True, timeout=60, cwd=workspace.path)
        assert proc.returncode == 0, proc.stderr
        assert "Cancel requested" in proc.stderr
    run.wait_for_completion()
    assert run.get_status() == "Canceled"
    statuses = _statuses(run)
    assert statuses[-3:] == ["CancelRequested", "Finalizing", "Canceled"]
    assert "outputs/before-cancel.txt" in run.get_file_names()
    assert processes_of_run(run.id) == []
    run.cancel()  # a finished run: nothing happens
    assert run.get_status() == "Canceled" and _statuses(run) == statuses


def test_cancel_of_a_completed_run_is_a_no_op(workspace: Workspace, source: Callable[..., Path]) -> None:
    run = _submit(workspace, source(**{"train.py": "print('ok')"}))
    run.wait_for_completion()
    run.cancel()
    assert run.get_status() == "Completed"


def test_killed_agent_fails_the_run_as_agent_lost_and_its_job_is_killed(
        workspace: Workspace, source: Callable[..., Path]) -> None:
    src = source(**{"train.py": """
        import subprocess, sys, time
        from rundock.context import Run
        run = Run.get_context()
        subprocess.Popen([sys.executable, "-c", "import time; time.sleep(300)"], start_new_session=True)
        for i in range(50):
            run.log("v", i)
        print('up', flush=True)
        time.sleep(300)
    """})
    run = _submit(workspace, src)
    wait_until(lambda: b"up" in workspace.store.read_log(run.id, "system_logs/driver_log.txt"), message="up")
    run_dir = Path(run._record.run_dir or "")
    info = json.loads((run_dir / "processes.json").read_text())
    os.kill(info["agent_pid"], signal.SIGKILL)
    # The agent's lock is gone with it: the first reader knows at once, whatever the clocks say.
    wait_until(lambda: run.get_status() == "Failed", timeout=10, message="Failed")
    details = run.get_details()
    assert details["error"]["error"]["code"] == "AgentLost"
    assert run.get_detailed_status()["details"].startswith("agent lost")
    assert run.get_metrics()["v"] == list(range(50))  # what the job logged was shipped before ending it
    assert processes_of_run(run.id) == []  # the job and its setsid grandchild were killed before it ended


def test_paused_agent_shows_not_responding_then_finishes(workspace: Workspace, source: Callable[..., Path]) -> None:
    src = source(**{"train.py": "import time\nprint('up', flush=True)\ntime.sleep(3)\n"})
    run = _submit(workspace, src)
    wait_until(lambda: b"up" in workspace.store.read_log(run.id, "system_logs/driver_log.txt"), message="up")
    info = json.loads((Path(run._record.run_dir or "") / "processes.json").read_text())
    os.kill(info["agent_pid"], signal.SIGSTOP)
    try:
        wait_until(lambda: run.get_status() == "NotResponding", timeout=10, message="NotResponding")
        assert "no heartbeat from the agent" in run.get_detailed_status()["details"]
    finally:
        os.kill(info["agent_pid"], signal.SIGCONT)
    run.wait_for_completion()
    assert run.get_status() == "Completed"


def test_outputs_and_logs_arrive_while_the_run_is_live(workspace: Workspace, source: Callable[..., Path]) -> None:
    src = source(**{"train.py": """
        import os, time
        os.makedirs("outputs", exist_ok=True)
        os.makedirs("logs", exist_ok=True)
        with open("outputs/epoch1.txt", "w") as fh:
            fh.write("checkpoint")
        with open("logs/progress.log", "w") as fh:
            fh.write("epoch 1")
        print("written", flush=True)
        time.sleep(30)
    """})
    run = _submit(workspace, src)
    wait_until(lambda: b"written" in workspace.store.read_log(run.id, "system_logs/driver_log.txt"),
               message="the script to write its files")
    seen = time.monotonic()
    wait_until(lambda: {"outputs/epoch1.txt", "logs/progress.log"} <= set(run.get_file_names()), timeout=5,
               message="live outputs")
    assert time.monotonic() - seen < 2.5
    assert run.get_status() == "Running"
    run.cancel()
    run.wait_for_completion()


BULK = """
import os, sys
for d in range(20):
    os.makedirs(f"outputs/d{d}/deeper", exist_ok=True)
    for f in range(10):
        with open(f"outputs/d{d}/deeper/f{f}.txt", "w") as fh:
            fh.write(f"{d}-{f}" * (f + 1))
with open("outputs/d0/deeper/f0.txt", "w") as fh:
    fh.write("rewritten at the end")
print("bulk done", flush=True)
mode = sys.argv[1]
if mode == "fail":
    sys.exit(1)
if mode in ("hang", "cancel"):
    import time
    time.sleep(120)
"""


@pytest.mark.parametrize("mode", ["ok", "fail", "hang", "cancel"])
def test_every_output_is_stored_with_a_matching_hash(workspace: Workspace, source: Callable[..., Path],
                                                     mode: str) -> None:
    src = source(**{"train.py": BULK})
    config = RunConfiguration(arguments=[mode], cancel_grace_seconds=1,
                              max_run_duration_seconds=3 if mode == "hang" else 600)
    run = Experiment(workspace, "bulk").submit(ScriptRunConfig(str(src), "train.py", run_config=config))
    if mode == "cancel":
        wait_until(lambda: b"bulk done" in workspace.store.read_log(run.id, "system_logs/driver_log.txt"),
                   message="files written")
        run.cancel()
    run.wait_for_completion(raise_on_error=False)
    expected = {"ok": "Completed", "fail": "Failed", "hang": "Failed", "cancel": "Canceled"}[mode]
    assert run.get_status() == expected
    outputs = Path(run._record.run_dir or "") / "src"
    on_disk = {p.relative_to(outputs).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
               for p in (outputs / "outputs").rglob("*") if p.is_file()}
    stored = {n: f.digest for n, f in workspace.store.list_files(run.id).items() if n.startswith("outputs/")}
    assert len(on_disk) == 200 and stored == on_disk


def test_job_side_api_and_durability(workspace: Workspace, source: Callable[..., Path], tmp_path: Path) -> None:
    src = source(**{"train.py": """
        import os, signal
        from rundock.context import Run
        run = Run.get_context()
        run.log("loss", 0.5, step=1)
        run.log("loss", 0.25, step=2)
        run.log_list("classes", [1, 2, 3])
        for e in range(3):
            run.log_row("perf", epoch=e, error=1.0 / (e + 1))
        run.log_table("curve", {"x": [1, 2], "y": [0.5, 0.7]})
        run.tag("stage", "train")
        run.set_tags({"owner": "me", "flag": None})
        run.add_properties({"dataset": "v1"})
        with open("notes.txt", "w") as fh:
            fh.write("uploaded by the job")
        run.upload_file("extras/notes.txt", "notes.txt")
        print(run.id, run.experiment.name, flush=True)
        run.log("last", 1)
        os.kill(os.getpid(), signal.SIGKILL)  # crash right after logging
    """})
    run = _submit(workspace, src, experiment="jobside")
    run.wait_for_completion(raise_on_error=False)
    assert run.get_status() == "Failed" and "signal 9" in run.get_details()["error"]["error"]["message"]
    metrics = run.get_metrics()
    assert metrics["loss"] == [0.5, 0.25] and metrics["classes"] == [1, 2, 3]
    assert metrics["perf"] == {"epoch": [0, 1, 2], "error": [1.0, 0.5, 1.0 / 3]}
    assert metrics["curve"] == {"x": [1, 2], "y": [0.5, 0.7]} and metrics["last"] == 1
    assert [m.step for m in workspace.store.get_metric_records(run.id, "loss")] == [1, 2]
    assert run.get_tags() == {"stage": "train", "owner": "me", "flag": None}
    assert run.get_properties()["dataset"] == "v1"
    run.download_file("extras/notes.txt", str(tmp_path / "n.txt"))
    assert (tmp_path / "n.txt").read_text() == "uploaded by the job"
    assert f"{run.id} jobside" in workspace.store.read_log(run.id, "system_logs/driver_log.txt").decode()


def test_missing_interpreter_fails_in_preparing(workspace: Workspace, source: Callable[..., Path]) -> None:
    env = Environment("broken")
    env.python.user_managed_dependencies = True
    env.python.interpreter_path = "/no/such/python3"
    run = _submit(workspace, source(**{"train.py": "print(1)"}), environment=env)
    details = run.wait_for_completion(raise_on_error=False)
    assert details["error"]["error"]["code"] == "SetupError"
    assert "/no/such/python3" in details["error"]["error"]["message"]
    assert "Running" not in _statuses(run) and _statuses(run)[-2:] == ["Finalizing", "Failed"]


def test_listing_and_filters(workspace: Workspace, source: Callable[..., Path]) -> None:
    src = source(**{"train.py": "print(1)"})
    exp = Experiment(workspace, "listing")
    a = exp.submit(ScriptRunConfig(str(src), "train.py"), tags={"team": "a"})
    b = exp.submit(ScriptRunConfig(str(src), "fail.py" if False else "train.py"), tags={"team": "b"})
    a.wait_for_completion()
    b.wait_for_completion()
    b.add_properties({"release": "yes"})
    assert [r.id for r in Run.list(exp)] == [b.id, a.id]
    assert [r.id for r in Run.list(exp, tags={"team": "a"})] == [a.id]
    assert [r.id for r in Run.list(exp, properties="release")] == [b.id]
    assert [r.id for r in Run.list(exp, status="Completed")] == [b.id, a.id]
    assert Run.list(exp, status="Running") == []
    assert Run.get(workspace, a.id).number == 1


def test_restore_snapshot_gives_the_submitted_files(workspace: Workspace, source: Callable[..., Path],
                                                    tmp_path: Path) -> None:
    import zipfile

    src = source(**{"train.py": "print(1)", "pkg/util.py": "X = 1", ".gitignore": "*.ckpt\n",
                    "big.ckpt": "weights"})
    run = _submit(workspace, src)
    run.wait_for_completion()
    path = run.restore_snapshot(path=str(tmp_path))
    with zipfile.ZipFile(path) as zf:
        assert sorted(zf.namelist()) == [".gitignore", "pkg/util.py", "train.py"]


def test_the_warm_agent_forks_runs_with_the_submitters_environment(workspace: Workspace,
                                                                  source: Callable[..., Path],
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    import psutil

    # LC_* variables pass to jobs (rundock.agent.jobenv); the second submit's environment must reach its job
    src = source(**{"train.py": "import os, time\nprint(os.environ.get('LC_ONLY_FOR_SECOND', '-'), flush=True)\n"
                                "time.sleep(float(os.environ.get('LC_SLEEP', '0')))\n"})
    _submit(workspace, src).wait_for_completion()  # starts the warm agent
    local = workspace.local_root

    def warm_agent() -> psutil.Process | None:
        return next((p for p in psutil.process_iter(["cmdline"])
                     if "serve" in (p.info["cmdline"] or []) and local in (p.info["cmdline"] or [])), None)

    daemon = wait_until(warm_agent, message="the warm agent")
    assert isinstance(daemon, psutil.Process)
    version = daemon.cmdline()[-1]
    wait_until(lambda: os.path.exists(socket_path(local, version)), message="its socket")
    monkeypatch.setenv("LC_ONLY_FOR_SECOND", "yes")
    monkeypatch.setenv("LC_SLEEP", "2")
    second = _submit(workspace, src)
    wait_until(lambda: second.get_status() == "Running", message="Running")
    agent = json.loads((Path(second._record.run_dir or "") / "processes.json").read_text())["agent_pid"]
    assert psutil.Process(agent).ppid() == daemon.pid  # forked by the warm agent, not started afresh
    daemon.kill()  # the run does not depend on the daemon staying up
    second.wait_for_completion()
    assert workspace.store.read_log(second.id, "system_logs/driver_log.txt") == b"yes\n"
    third = _submit(workspace, src)  # no daemon answering: a fresh agent (and a new daemon) take over
    third.wait_for_completion()
    assert third.get_status() == "Completed"


def test_runs_preparing_at_once_share_the_interpreter_probe(workspace: Workspace, source: Callable[..., Path],
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RUNDOCK_MAX_CONCURRENT_RUNS", "4")
    src = source(**{"train.py": "print('ok')"})
    for _ in range(3):  # each round starts from a cold probe cache, with four agents preparing together
        shutil.rmtree(Path(workspace.local_root) / "interpreters", ignore_errors=True)
        runs = [_submit(workspace, src) for _ in range(4)]
        for run in runs:
            run.wait_for_completion()
        assert [r.get_status() for r in runs] == ["Completed"] * 4


def test_the_job_gets_the_users_pythonpath_not_the_agents(workspace: Workspace, source: Callable[..., Path],
                                                          tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import site

    mine = tmp_path / "my-libs"
    mine.mkdir()
    monkeypatch.setenv("PYTHONPATH", str(mine))
    src = source(**{"train.py": "import os\nprint(os.environ['PYTHONPATH'])\n"})
    for _ in range(2):  # a freshly started agent, then one forked by the warm agent
        run = _submit(workspace, src)
        run.wait_for_completion()
        entries = workspace.store.read_log(run.id, "system_logs/driver_log.txt").decode().strip().split(os.pathsep)
        assert entries[-1] == str(mine)  # the user's own, after rundock's job library (and azureml shim)
        assert all(e.startswith(os.path.join(workspace.local_root, "lib")) for e in entries[:-1])
        assert not set(site.getsitepackages()) & set(entries)


def test_run_configuration_environment_variables_reach_the_job(workspace: Workspace,
                                                                source: Callable[..., Path]) -> None:
    """Azure ML v1's ``run_config.environment_variables``: set for the job, over its environment's own."""
    src = source(**{"train.py": "import os\nprint('SEED=' + os.environ['SEED'] + ' MODE=' + os.environ['MODE'])\n"})
    config = ScriptRunConfig(str(src), "train.py")
    env = Environment.submitting_interpreter()
    env.environment_variables = {"SEED": "1", "MODE": "env"}
    config.run_config.environment = env
    config.run_config.environment_variables = {"SEED": "42"}
    run = Experiment(workspace, "vars").submit(config)
    run.wait_for_completion(raise_on_error=True)
    log = workspace.store.read_log(run.id, "system_logs/driver_log.txt").decode()
    assert "SEED=42 MODE=env" in log, log
    assert env.environment_variables == {"SEED": "1", "MODE": "env"}  # the user's object is left as it was
