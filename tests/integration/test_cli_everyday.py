"""The everyday CLI, run as a user runs it: a real process per command, a pseudo-terminal for Ctrl-C.

Submitting a .py file, script arguments after ``--``, what following shows, exit statuses, ``--json``
for scripts, ``wait``, ``cancel`` of several runs, the ``runs`` columns and tree, ``experiments``,
shell completion and the history each command read.
"""

from __future__ import annotations

import json
import os
import pty
import re
import select
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from rundock.states import RunStatus
from rundock.submitter.run import Run
from rundock.submitter.workspace import Workspace
from tests.conftest import wait_until

ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")


def rundock(cwd: Path, *args: str, timeout: float = 60, env: dict[str, str] | None = None
            ) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "rundock", *args], cwd=cwd, capture_output=True, text=True,
                          timeout=timeout, env=env)


def strict_json(text: str) -> Any:
    """Parse JSON as a strict parser would: NaN and Infinity are not JSON."""
    def reject(token: str) -> Any:
        raise AssertionError(f"{token} is not valid JSON")
    return json.loads(text, parse_constant=reject)


def run_ids(ws: Workspace) -> list[str]:
    return [r.run_id for r in ws.store.list_runs()]


def ended(ws: Workspace, run_id: str, timeout: float = 30) -> RunStatus:
    return wait_until(lambda: ws.store.get_run(run_id).status if ws.store.get_run(run_id).status.is_terminal
                      else None, timeout=timeout, message=f"{run_id} to end")  # type: ignore[return-value]


FAILING = "import sys\nprint('working', flush=True)\nraise RuntimeError('boom ' + 'x' * 3)\n"
TICKING = """
import sys, time
for i in range(int(sys.argv[1]) if len(sys.argv) > 1 else 30):
    print(f"tick {i}", flush=True)
    time.sleep(0.1)
"""


# -- submitting -----------------------------------------------------------------------------------------
def test_a_py_file_is_the_script_and_script_arguments_come_after_double_dash(
        workspace: Workspace, source: Callable[..., Path]) -> None:
    project = Path(workspace.path).parent
    (project / "train.py").write_text("import sys\nprint('args', sys.argv[1:])\n")
    result = rundock(project, "submit", "train.py", "-e", "shorthand", "--", "--alpha", "0.5", "--detach")
    assert result.returncode == 0, result.stderr
    assert "args ['--alpha', '0.5', '--detach']" in result.stdout  # after --: the script's, even --detach
    record = workspace.store.list_runs(experiment="shorthand")[0]
    assert record.run_definition["script"] == "train.py"
    assert record.run_definition["source_directory"] == str(project)
    assert record.status == RunStatus.COMPLETED

    before = run_ids(workspace)
    typo = rundock(project, "submit", "train.py", "--detatch")
    assert typo.returncode == 2 and "No such option" in typo.stderr and "--detach" in typo.stderr
    assert "after `--`" in typo.stderr
    extra = rundock(project, "submit", "train.py", "0.5")
    assert extra.returncode == 2 and "unexpected extra argument" in extra.stderr and "after `--`" in extra.stderr
    both = rundock(project, "submit", "train.py", "-s", "other.py")
    assert both.returncode == 2 and "give one of them" in both.stderr
    assert run_ids(workspace) == before  # no run was started by a wrong command line


def test_following_shows_the_jobs_output_status_lines_and_the_traceback_once(
        workspace: Workspace, source: Callable[..., Path]) -> None:
    project = Path(workspace.path).parent
    src = source(**{"fail.py": FAILING, "ok.py": "print('all good')\n"})
    failed = rundock(project, "submit", str(src / "fail.py"))
    assert failed.returncode == 1
    both = failed.stdout + failed.stderr
    assert both.count("RuntimeError: boom xxx") == 1, both  # once: in the job's output, not again in the error
    assert "working" in failed.stdout and "Status: Failed" in failed.stdout
    assert "exited with code 1 (its stderr is above)" in failed.stdout
    assert "failed: the script exited with code 1" in failed.stderr
    for status in ("Preparing", "Queued", "Running", "Finalizing"):
        assert f"[rundock] {status}: " in failed.stdout
    for note in ("materialized", "interpreter:", "azureml.core"):  # the agent's notes stay in system_logs/
        assert note not in failed.stdout
    run_id = workspace.store.list_runs()[0].run_id
    assert "materialized" in workspace.store.read_log(run_id, "system_logs/prepare_log.txt").decode()

    verbose = rundock(project, "submit", str(src), "-s", "ok.py", "--verbose")
    assert verbose.returncode == 0 and "all good" in verbose.stdout and "materialized" in verbose.stdout


def test_target_and_docker_image_options(workspace: Workspace, source: Callable[..., Path], tmp_path: Path) -> None:
    project = Path(workspace.path).parent
    src = source(**{"train.py": "print('here')\n"})
    unknown = rundock(project, "submit", str(src / "train.py"), "--target", "nowhere")
    assert unknown.returncode == 2 and "'nowhere' is not attached" in unknown.stderr
    assert workspace.store.list_runs() == []
    local = rundock(project, "submit", str(src / "train.py"), "--target", "local", "-e", "here")
    assert local.returncode == 0 and "here" in local.stdout

    env_file = tmp_path / "env.yml"
    env_file.write_text("name: with-vars\nenvironment_variables: {COLOR: blue}\n")
    docker = rundock(project, "submit", str(src / "train.py"), "--docker-image", "python:3.12-slim",
                     "--environment", str(env_file), "-e", "in-docker", "--detach")
    assert docker.returncode == 0, docker.stderr
    record = workspace.store.get_run(docker.stdout.strip())
    environment = record.run_definition["environment"]
    assert environment["docker"]["enabled"] is True and environment["docker"]["base_image"] == "python:3.12-slim"
    assert environment["environment_variables"] == {"COLOR": "blue"}
    rundock(project, "cancel", record.run_id)


# -- listing ------------------------------------------------------------------------------------------
def test_status_filter_is_case_insensitive_and_lists_valid_values(workspace: Workspace,
                                                                  source: Callable[..., Path]) -> None:
    project = Path(workspace.path).parent
    src = source(**{"fail.py": FAILING})
    rundock(project, "submit", str(src / "fail.py"), "-e", "statuses")
    run_id = workspace.store.list_runs()[0].run_id
    for spelling in ("failed", "FAILED", "Failed"):
        assert run_id in rundock(project, "runs", "--status", spelling).stdout
    assert run_id not in rundock(project, "runs", "--status", "completed").stdout
    wrong = rundock(project, "runs", "--status", "finished")
    assert wrong.returncode == 2
    for status in RunStatus:
        assert status.value in wrong.stderr


def test_json_output_is_strict_json(workspace: Workspace, source: Callable[..., Path]) -> None:
    project = Path(workspace.path).parent
    src = source(**{"train.py": """
        import os
        from rundock.context import Run
        run = Run.get_context()
        run.log("acc", 0.5)
        run.log("acc", float("nan"))
        run.log("best", float("inf"))
        os.makedirs("outputs", exist_ok=True)
        open("outputs/model.txt", "w").write("w")
        """})
    done = rundock(project, "submit", str(src / "train.py"), "-e", "json", "-t", "team=nlp")
    assert done.returncode == 0, done.stderr
    run_id = workspace.store.list_runs()[0].run_id
    Run.get(workspace, run_id).register_model("m", model_path="outputs/model.txt", tags={"stage": "dev"})

    listed = strict_json(rundock(project, "runs", "--json", "-c", "metric:acc,metric:best").stdout)
    assert [r["run_id"] for r in listed] == [run_id]
    assert listed[0]["status"] == "Completed" and listed[0]["tags"] == {"team": "nlp"}
    assert listed[0]["columns"] == {"metric:acc": "NaN", "metric:best": "Infinity"}
    shown = strict_json(rundock(project, "show", run_id, "--json").stdout)
    assert shown["metrics"] == {"acc": [0.5, "NaN"], "best": "Infinity"}
    assert "outputs/model.txt" in shown["files"] and shown["status_history"][-1]["status"] == "Completed"
    models = strict_json(rundock(project, "models", "--json").stdout)
    assert [(m["name"], m["version"], m["run_id"], m["tags"]) for m in models] == [("m", 1, run_id, {"stage": "dev"})]

    assert rundock(project, "secret", "set", "db-password", "--value", "hunter2").returncode == 0
    secrets = rundock(project, "secret", "list", "--json")
    assert strict_json(secrets.stdout) == [{"name": "db-password"}] and "hunter2" not in secrets.stdout
    attached = rundock(project, "target", "attach", "gpu-box", "--address", "10.0.0.7", "--user", "me")
    assert attached.returncode == 0, attached.stderr
    targets = strict_json(rundock(project, "target", "list", "--json").stdout)
    assert [(t["name"], t["type"], t["address"], t["user"]) for t in targets] == [
        ("local", "local", None, None), ("gpu-box", "ssh", "10.0.0.7", "me")]


def test_runs_columns_relative_times_children_tree_and_experiments(
        workspace: Workspace, source: Callable[..., Path]) -> None:
    project = Path(workspace.path).parent
    src = source(**{"train.py": """
        from rundock.context import Run
        run = Run.get_context()
        run.log("acc", 0.25)
        run.log("acc", 0.75)
        for fold in ("a", "b"):
            with run.child_run(name=fold) as child:
                child.log("acc", 0.5)
        """, "fail.py": FAILING})
    first = rundock(project, "submit", str(src / "train.py"), "-e", "sweep", "-t", "team=nlp", "--",
                    "--alpha", "0.5", "--fast")
    assert first.returncode == 0, first.stderr
    rundock(project, "submit", str(src / "fail.py"), "-e", "sweep")
    rundock(project, "submit", str(src / "train.py"), "-e", "other")
    parent = workspace.store.list_runs(experiment="sweep", include_children=False)[1]
    kids = sorted(workspace.store.list_runs(parent_id=parent.run_id), key=lambda r: r.number)

    table = rundock(project, "runs", "-e", "sweep", "-c", "tag:team,arg:--alpha,arg:fast", "-c", "metric:acc",
                    "--children").stdout
    lines = table.splitlines()
    header = lines[0].split()
    assert header[-4:] == ["tag:team", "arg:--alpha", "arg:fast", "metric:acc"] and "created" in header
    row = next(line for line in lines if line.strip().startswith(parent.run_id))
    assert row.split()[-4:] == ["nlp", "0.5", "yes", "0.75"]
    assert "just now" in row or " s ago" in row
    at = lines.index(row)
    assert [line.split()[:2] for line in lines[at + 1:at + 3]] == [["└", kid.run_id] for kid in kids]  # under it
    assert kids[0].run_id not in rundock(project, "runs", "-e", "sweep").stdout  # no children without --children

    experiments = rundock(project, "experiments")
    assert experiments.returncode == 0, experiments.stderr
    sweep_row = next(line.split() for line in experiments.stdout.splitlines() if line.split()[:1] == ["sweep"])
    assert sweep_row[1:6] == ["2", "0", "1", "1", "0"]  # runs, live, completed, failed, canceled
    summary = {e["experiment"]: e for e in strict_json(rundock(project, "experiments", "--json").stdout)}
    assert summary["sweep"]["runs"] == 2 and summary["sweep"]["failed"] == 1 and summary["other"]["completed"] == 1
    assert summary["sweep"]["last_run"].endswith("Z")


# -- scripting: wait, cancel ----------------------------------------------------------------------------
def test_wait_exits_with_the_runs_outcome_and_cancel_takes_several_runs(
        workspace: Workspace, source: Callable[..., Path], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RUNDOCK_MAX_CONCURRENT_RUNS", "4")  # the runs that wait to be canceled leave room
    project = Path(workspace.path).parent
    src = source(**{"ok.py": "print('ok')\n", "fail.py": FAILING, "tick.py": TICKING})

    def detached(script: str, experiment: str, *args: str) -> str:
        result = rundock(project, "submit", str(src / script), "-e", experiment, "--detach", *args)
        assert result.returncode == 0, result.stderr
        return result.stdout.strip()

    ok, bad = detached("ok.py", "w"), detached("fail.py", "w")
    waited = rundock(project, "wait", ok)
    assert (waited.returncode, waited.stdout.strip()) == (0, "Completed")
    waited = rundock(project, "wait", bad)
    assert (waited.returncode, waited.stdout.strip()) == (1, "Failed") and "exited with code 1" in waited.stderr
    slow = detached("tick.py", "w", "--", "600")
    waited = rundock(project, "wait", slow, "--timeout", "0.5")
    assert waited.returncode == 3 and "still" in waited.stderr

    other = detached("tick.py", "w", "--", "600")
    canceled = rundock(project, "cancel", slow, other)
    assert canceled.returncode == 0 and canceled.stderr.count("Cancel requested") == 2, canceled.stderr
    waited = rundock(project, "wait", slow)
    assert (waited.returncode, waited.stdout.strip()) == (2, "Canceled")
    assert ended(workspace, other) == RunStatus.CANCELED

    finished = detached("ok.py", "grid")
    assert ended(workspace, finished) == RunStatus.COMPLETED
    grid = [detached("tick.py", "grid", "--", "600") for _ in range(2)]
    by_experiment = rundock(project, "cancel", "--experiment", "grid")
    assert by_experiment.returncode == 0 and by_experiment.stderr.count("Cancel requested") == 2
    for run_id in grid:
        assert ended(workspace, run_id) == RunStatus.CANCELED
    assert workspace.store.get_run(finished).status == RunStatus.COMPLETED
    nothing = rundock(project, "cancel", "-e", "grid")
    assert nothing.returncode == 0 and f"no live runs of experiment grid in {workspace.path}" in nothing.stderr
    unknown = rundock(project, "cancel", ok, "no-such-run")
    assert unknown.returncode == 2 and "no run 'no-such-run'" in unknown.stderr


# -- where the history is --------------------------------------------------------------------------------
def test_commands_name_the_history_they_read_and_the_fallback_workspace(workspace: Workspace,
                                                                        tmp_path: Path) -> None:
    project = Path(workspace.path).parent
    history = os.path.join(workspace.path, "history.db")
    empty = rundock(project, "runs")
    assert empty.returncode == 0 and f"no runs in {history}" in empty.stderr
    assert f"no runs matching these filters in {history}" in rundock(project, "runs", "-e", "x").stderr
    assert f"no experiments in {history}" in rundock(project, "experiments").stderr
    assert f"no models in {history}" in rundock(project, "models").stderr
    assert "no secrets in " + os.path.join(workspace.path, "secrets.json") in rundock(project, "secret",
                                                                                      "list").stderr
    assert rundock(project, "runs").stderr.count("rundock init") == 0  # a workspace of its own: no note

    elsewhere = tmp_path / "elsewhere" / "project"
    elsewhere.mkdir(parents=True)
    home = tmp_path / "home"
    env = {**os.environ, "HOME": str(home)}
    env.pop("RUNDOCK_HOME", None)
    if any((p / ".rundock").is_dir() for p in elsewhere.parents):
        pytest.skip("a parent of the test folder has a .rundock/ of its own")
    fell_back = rundock(elsewhere, "runs", env=env)
    assert fell_back.returncode == 0, fell_back.stderr
    assert f"no .rundock/ of its own in {elsewhere}: using {home / '.rundock'}" in fell_back.stderr
    assert "rundock init" in fell_back.stderr
    assert f"no runs in {home / '.rundock' / 'history.db'}" in fell_back.stderr
    env["RUNDOCK_HOME"] = str(tmp_path / "team-home")
    assert f"using {tmp_path / 'team-home'} ($RUNDOCK_HOME)" in rundock(elsewhere, "runs", env=env).stderr


# -- shell completion ------------------------------------------------------------------------------------
def complete(cwd: Path, words: str) -> list[str]:
    env = {**os.environ, "_RUNDOCK_COMPLETE": "bash_complete", "COMP_WORDS": words,
           "COMP_CWORD": str(len(words.split()) - (0 if words.endswith(" ") else 1))}
    result = subprocess.run([sys.executable, "-m", "rundock"], cwd=cwd, env=env, capture_output=True, text=True,
                            timeout=30)
    assert result.returncode == 0, result.stderr
    return [line.split(",", 1)[1] for line in result.stdout.splitlines() if "," in line]


def test_shell_completion_offers_run_ids_experiments_and_targets(workspace: Workspace,
                                                                 source: Callable[..., Path]) -> None:
    project = Path(workspace.path).parent
    src = source(**{"ok.py": "print(1)\n"})
    for experiment in ("alpha-exp", "beta-exp"):
        assert rundock(project, "submit", str(src / "ok.py"), "-e", experiment).returncode == 0
    rundock(project, "target", "attach", "gpu-box", "--address", "10.0.0.7")
    ids = run_ids(workspace)

    assert sorted(complete(project, "rundock show ")) == sorted(ids)
    assert complete(project, "rundock logs alpha") == [i for i in ids if i.startswith("alpha")]
    assert complete(project, "rundock cancel beta") == [i for i in ids if i.startswith("beta")]
    assert sorted(complete(project, "rundock runs -e ")) == ["alpha-exp", "beta-exp"]
    assert complete(project, "rundock submit ok.py --target ") == ["local", "gpu-box"]
    assert complete(project, "rundock runs --status fa") == ["Failed"]
    source_script = subprocess.run([sys.executable, "-m", "rundock"], cwd=project, capture_output=True, text=True,
                                   env={**os.environ, "_RUNDOCK_COMPLETE": "bash_source"}, timeout=30)
    assert "_RUNDOCK_COMPLETE=bash_complete" in source_script.stdout
    nowhere = project.parent / "no-workspace"
    nowhere.mkdir()
    env_home = {**os.environ, "HOME": str(project.parent / "empty-home")}
    env_home.pop("RUNDOCK_HOME", None)
    quiet = subprocess.run([sys.executable, "-m", "rundock"], cwd=nowhere, capture_output=True, text=True,
                           timeout=30, env={**env_home, "_RUNDOCK_COMPLETE": "bash_complete",
                                            "COMP_WORDS": "rundock show ", "COMP_CWORD": "2"})
    assert quiet.returncode == 0 and quiet.stdout.strip() == "" and quiet.stderr == ""
    assert not (project.parent / "empty-home" / ".rundock").exists()  # completing creates no workspace


# -- Ctrl-C in a terminal ----------------------------------------------------------------------------------
def in_terminal(cwd: Path, args: list[str], until: str, timeout: float = 60) -> tuple[int, str]:
    """Run the CLI on a pseudo-terminal, press Ctrl-C once ``until`` is on the screen; (exit status, screen)."""
    pid, fd = pty.fork()
    if pid == 0:  # the child: the terminal is its controlling terminal, as in a shell
        try:
            os.chdir(cwd)
            os.execv(sys.executable, [sys.executable, "-m", "rundock", *args])
        finally:
            os._exit(127)
    screen, pressed = b"", False
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            ready, _, _ = select.select([fd], [], [], 0.1)
            if ready:
                try:
                    chunk = os.read(fd, 65536)
                except OSError:  # EIO: the child closed the terminal
                    break
                if not chunk:
                    break
                screen += chunk
            if not pressed and until.encode() in screen:
                os.write(fd, b"\x03")  # the terminal turns it into SIGINT for the foreground process group
                pressed = True
        else:
            os.kill(pid, signal.SIGKILL)
            pytest.fail(f"no exit within {timeout} s; screen:\n{screen.decode(errors='replace')}")
    finally:
        _, status = os.waitpid(pid, 0)
        os.close(fd)
    assert pressed, screen.decode(errors="replace")
    return os.waitstatus_to_exitcode(status), ANSI.sub("", screen.decode(errors="replace")).replace("\r", "")


def test_ctrl_c_stops_following_not_the_run(workspace: Workspace, source: Callable[..., Path]) -> None:
    project = Path(workspace.path).parent
    src = source(**{"tick.py": TICKING})
    code, screen = in_terminal(project, ["submit", str(src / "tick.py"), "-e", "ctrlc", "--", "40"], until="tick 3")
    run_id = workspace.store.list_runs(experiment="ctrlc")[0].run_id
    assert code == 130, screen
    assert f"Stopped following {run_id}; the run goes on." in screen
    assert f"rundock logs {run_id} -f" in screen and f"rundock cancel {run_id}" in screen
    assert "Traceback" not in screen
    assert ended(workspace, run_id) == RunStatus.COMPLETED  # the run went on to its end
    assert workspace.store.read_log(run_id, "system_logs/driver_log.txt").decode().count("tick") == 40

    detached = rundock(project, "submit", str(src / "tick.py"), "-e", "ctrlc", "--detach", "--", "40")
    second = detached.stdout.strip()
    code, screen = in_terminal(project, ["logs", second, "-f"], until="tick 2")
    assert code == 130 and f"Stopped following {second}; the run goes on." in screen, screen
    assert f"rundock cancel {second}" in screen
    assert ended(workspace, second) == RunStatus.COMPLETED


def test_logs_of_a_finished_run_that_printed_nothing_say_so(workspace: Workspace, source: Callable[..., Path]) -> None:
    project = Path(workspace.path).parent
    src = source(**{"quiet.py": "x = 1\n"})
    run_id = rundock(project, "submit", str(src / "quiet.py"), "-e", "quiet", "--detach").stdout.strip()
    assert ended(workspace, run_id) == RunStatus.COMPLETED
    shown = rundock(project, "logs", run_id)
    assert shown.returncode == 0 and shown.stdout == ""
    assert "is empty: its job printed nothing" in shown.stderr and "(yet)" not in shown.stderr
