"""Local runs and other local users: the warm agent's socket, the job's environment, the workspace's files.

Tests that need a second user run as root (as CI and this project's test machines do) and act as ``nobody``
from a forked child; elsewhere they skip with the reason.
"""

from __future__ import annotations

import hashlib
import json
import os
import pwd
import shutil
import socket
import stat
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import psutil
import pytest

from rundock import Environment, Experiment, Run, ScriptRunConfig
from rundock.agent import daemon
from rundock.submitter.bundle import code_version
from rundock.submitter.workspace import Workspace
from tests.conftest import REPO, wait_until

needs_root = pytest.mark.skipif(os.getuid() != 0, reason="acting as a second local user needs root")

ENV_SCRIPT = """
import json, os
os.makedirs("outputs", exist_ok=True)
with open("outputs/env.json", "w") as fh:
    json.dump(dict(os.environ), fh)
"""


def _other_user() -> tuple[int, int]:
    """(uid, gid) of a second local user: ``nobody``, created if this machine has none."""
    try:
        entry = pwd.getpwnam("nobody")
    except KeyError:
        subprocess.run(["useradd", "--system", "--no-create-home", "nobody"], check=True)
        entry = pwd.getpwnam("nobody")
    return entry.pw_uid, entry.pw_gid


def _as_other_user(action: Callable[[], bytes]) -> bytes:
    """Run ``action`` in a forked child that has become the other user; what it returns (or its error)."""
    uid, gid = _other_user()
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        code = 0
        try:
            os.close(read_end)
            os.setgroups([])
            os.setgid(gid)
            os.setuid(uid)
            result = action()
        except BaseException as exc:
            result, code = f"error: {type(exc).__name__}: {exc}".encode(), 1
        os.write(write_end, result)
        os._exit(code)
    os.close(write_end)
    data = b""
    while chunk := os.read(read_end, 1 << 16):
        data += chunk
    os.close(read_end)
    os.waitpid(pid, 0)
    return data


@pytest.fixture
def shared_tmp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A world-writable sticky temporary folder (like /tmp) that every user can reach, used as this process's
    temporary folder; no XDG_RUNTIME_DIR, so the warm agent's socket goes under it. (It asks for ``tmp_path``
    first, so that pytest's own temporary folders are made before the temporary folder changes.)"""
    top = Path(tempfile.mkdtemp(prefix="rundock-shared-", dir="/tmp"))
    top.chmod(0o1777)
    monkeypatch.delenv("XDG_RUNTIME_DIR", raising=False)
    monkeypatch.setenv("TMPDIR", str(top))
    monkeypatch.setattr(tempfile, "tempdir", str(top))
    yield top
    shutil.rmtree(top, ignore_errors=True)


@pytest.fixture
def open_folder() -> Iterator[Path]:
    """A folder every user may enter and list (0755), as a project folder usually is."""
    folder = Path(tempfile.mkdtemp(prefix="rundock-open-", dir="/tmp"))
    folder.chmod(0o755)
    yield folder
    shutil.rmtree(folder, ignore_errors=True)


def _serve(root: str, env: dict[str, str], version: str = "testversion") -> subprocess.Popen[bytes]:
    return subprocess.Popen([sys.executable, "-m", "rundock.agent", "serve", root, version], cwd=REPO, env=env,
                            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)


def _ask(path: str, data: bytes) -> dict[str, object]:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as conn:
        conn.settimeout(10)
        conn.connect(path)
        try:
            conn.sendall(data)
            conn.shutdown(socket.SHUT_WR)
        except OSError:
            pass  # the daemon may answer (and close) before it reads anything
        reply = b""
        while chunk := conn.recv(65536):
            reply += chunk
    return dict(json.loads(reply))


def _serving(root: str) -> dict[int, int]:
    """{pid: parent pid} of the processes whose command line is the warm agent's of ``root``, and of the agents
    it forked (they keep its command line)."""
    found = {}
    for proc in psutil.process_iter(["cmdline", "ppid"]):
        cmdline = proc.info["cmdline"] or []
        if "rundock.agent" in cmdline and "serve" in cmdline and root in cmdline:
            found[proc.pid] = proc.info["ppid"]
    return found


def _daemon_of(root: str) -> psutil.Process | None:
    """The warm agent of ``root`` (not one of the agents it forked)."""
    serving = _serving(root)
    pid = next((pid for pid, parent in serving.items() if parent not in serving), None)
    try:
        return None if pid is None else psutil.Process(pid)
    except psutil.Error:
        return None


def _stop(proc: subprocess.Popen[bytes] | psutil.Process | None) -> None:
    if proc is not None:
        try:
            proc.kill()
            proc.wait(10)
        except (psutil.Error, ProcessLookupError, subprocess.TimeoutExpired):
            pass


# -- 1. the socket folder and the peer's user ------------------------------------------------------------------

@needs_root
def test_a_socket_folder_squatted_by_another_user_is_never_used(shared_tmp: Path, tmp_path: Path,
                                                                workspace: Workspace,
                                                                source: Callable[..., Path],
                                                                monkeypatch: pytest.MonkeyPatch,
                                                                capfd: pytest.CaptureFixture[str]) -> None:
    """Another user creates /tmp/rundock-<uid> first (0777) and listens where the warm agent's socket goes."""
    root, version = workspace.local_root, code_version()
    folder = shared_tmp / f"rundock-{os.getuid()}"
    sock_name = f"{hashlib.sha256(os.path.abspath(root).encode()).hexdigest()[:16]}-{version}.sock"  # as before
    monkeypatch.setenv("RUNDOCK_SSH_PASSWORD", "hunter2-squat")
    received: list[bytes] = []

    def squat() -> bytes:
        os.mkdir(folder, 0o777)
        os.chmod(folder, 0o777)
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as listener:
            listener.bind(str(folder / sock_name))
            os.chmod(folder / sock_name, 0o777)
            listener.listen(8)
            listener.settimeout(8)
            got = b""
            try:
                while True:
                    conn, _ = listener.accept()
                    with conn:
                        conn.settimeout(2)
                        try:
                            while chunk := conn.recv(65536):
                                got += chunk
                        except OSError:
                            pass
            except OSError:
                return got or b"-"

    thread = threading.Thread(target=lambda: received.append(_as_other_user(squat)))
    thread.start()
    wait_until(lambda: (folder / sock_name).exists(), message="the squatter's socket")
    time.sleep(0.2)  # and it listens
    assert os.lstat(folder).st_uid != os.getuid()
    assert daemon.request_agent(root, version, str(tmp_path), {"RUNDOCK_SSH_PASSWORD": "hunter2-squat"}) is None
    run = Experiment(workspace, "squat").submit(ScriptRunConfig(str(source(**{"train.py": "print('ok')"})),
                                                                "train.py"))
    run.wait_for_completion()  # a one-off agent ran it
    assert run.get_status() == "Completed"
    thread.join(20)
    assert received == [b"-"], f"the other user's socket received {received!r}"
    assert "not using the warm agent's folder" in capfd.readouterr().err
    assert _daemon_of(root) is None  # no daemon was started on a folder that is not ours


@needs_root
def test_the_client_sends_nothing_to_a_daemon_of_another_user(shared_tmp: Path, tmp_path: Path) -> None:
    """The folder is ours, but the process listening on the socket is not: SO_PEERCRED tells."""
    root, version = str(tmp_path / "root"), "testversion"
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(daemon.socket_path(root, version))

    def listen_as_other() -> bytes:  # SO_PEERCRED reports the credentials in effect at listen()
        listener.listen(8)
        listener.settimeout(20)
        conn, _ = listener.accept()
        with conn:
            conn.settimeout(5)
            data = b""
            try:
                while chunk := conn.recv(65536):
                    data += chunk
            except OSError:
                pass
        return data or b"-"

    received: list[bytes] = []
    thread = threading.Thread(target=lambda: received.append(_as_other_user(listen_as_other)))
    thread.start()
    try:  # the child shares the socket: it listens once SO_ACCEPTCONN says so
        wait_until(lambda: listener.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN), message="listening")
        pid = daemon.request_agent(root, version, str(tmp_path), {"PATH": "/usr/bin", "RUNDOCK_SSH_PASSWORD": "x"})
        thread.join(30)
    finally:
        listener.close()
    assert pid is None
    assert received == [b"-"], f"a daemon of another user received {received!r}"


@needs_root
def test_the_daemon_serves_only_its_own_user(open_folder: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    runtime = open_folder / "runtime"
    runtime.mkdir(mode=0o700)
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(runtime))
    root = open_folder / "root"
    run_dir = root / "runs" / "run-1"
    run_dir.mkdir(parents=True)
    (run_dir / "job.json").write_text("{}")
    root.chmod(0o755)
    path = Path(daemon.socket_path(str(root), "testversion"))
    proc = _serve(str(root), {**os.environ, "RUNDOCK_AGENT_IDLE_SECONDS": "30"})
    folder_mode = stat.S_IMODE(os.stat(path.parent).st_mode)
    try:
        wait_until(lambda: path.exists(), timeout=30, message="the daemon's socket")
        for folder in {runtime, path.parent}:  # a careless setup: the other user can reach the socket
            folder.chmod(0o711)
        path.chmod(0o777)
        request = json.dumps({"run_dir": str(run_dir), "env": {"PATH": "/usr/bin"}}).encode()
        reply = _as_other_user(lambda: json.dumps(_ask(str(path), request)).encode())
        assert json.loads(reply) == {"error": "this agent serves only its own user"}
        assert psutil.Process(proc.pid).children() == []  # no agent was forked for it
    finally:
        _stop(proc)
        path.parent.chmod(folder_mode)


# -- 2. the daemon's robustness ---------------------------------------------------------------------------------

def _warm_daemon(workspace: Workspace, src: Path) -> tuple[psutil.Process, str]:
    Experiment(workspace, "warm").submit(ScriptRunConfig(str(src), "train.py")).wait_for_completion()
    found = wait_until(lambda: _daemon_of(workspace.local_root), message="the warm agent")
    assert isinstance(found, psutil.Process)
    path = daemon.socket_path(workspace.local_root, found.cmdline()[-1])
    wait_until(lambda: os.path.exists(path), message="its socket")
    return found, path


def _agent_parent(run: Run) -> int:
    def agent_pid() -> int | None:
        try:
            return int(json.loads((Path(run._record.run_dir or "") / "processes.json").read_text())["agent_pid"])
        except (OSError, ValueError, KeyError):
            return None

    pid = wait_until(agent_pid, message="the run's agent")
    assert isinstance(pid, int)
    return psutil.Process(pid).ppid()


def test_a_silent_client_does_not_stall_the_daemon(workspace: Workspace, source: Callable[..., Path]) -> None:
    src = source(**{"train.py": "import time\ntime.sleep(1)\n"})
    warm, path = _warm_daemon(workspace, src)
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as silent:
            silent.connect(path)  # and sends nothing
            started = time.monotonic()
            run = Experiment(workspace, "warm").submit(ScriptRunConfig(str(src), "train.py"))
            assert time.monotonic() - started < 4
            assert _agent_parent(run) == warm.pid  # served by the warm agent, not by a fallback
            run.wait_for_completion()
            assert run.get_status() == "Completed"
    finally:
        _stop(warm)


def test_malformed_requests_get_an_error_and_the_daemon_keeps_serving(workspace: Workspace,
                                                                      source: Callable[..., Path]) -> None:
    src = source(**{"train.py": "import time\ntime.sleep(1)\n"})
    warm, path = _warm_daemon(workspace, src)
    try:
        outside = Path(workspace.local_root).parent.parent / "elsewhere"
        outside.mkdir()
        (outside / "job.json").write_text("{}")
        for request in (b"\x00\xffgarbage{", b"[1, 2]", json.dumps({"env": {}}).encode(),
                        json.dumps({"run_dir": os.path.join(workspace.local_root, "runs", "nope"), "env": {}}).encode(),
                        json.dumps({"run_dir": str(outside), "env": {}}).encode(),
                        json.dumps({"run_dir": os.path.join(workspace.local_root, "runs"), "env": "x"}).encode()):
            reply = _ask(path, request)
            assert set(reply) == {"error"}, (request, reply)
        assert warm.is_running()
        run = Experiment(workspace, "warm").submit(ScriptRunConfig(str(src), "train.py"))
        assert _agent_parent(run) == warm.pid
        run.wait_for_completion()
        assert run.get_status() == "Completed"
    finally:
        _stop(warm)


def test_an_exiting_daemon_leaves_a_newer_daemons_socket(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    runtime = Path(tempfile.mkdtemp(prefix="rd-", dir="/tmp"))  # short: socket paths have about 100 characters
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(runtime))
    root = tmp_path / "root"
    root.mkdir()
    path = Path(daemon.socket_path(str(root), "testversion"))
    proc = _serve(str(root), {**os.environ, "RUNDOCK_AGENT_IDLE_SECONDS": "1"})
    try:
        wait_until(lambda: path.exists(), timeout=30, message="the socket")
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as newer:  # a newer daemon's, at the same name
            staging = path.parent / "newer.tmp"
            newer.bind(str(staging))
            newer.listen(1)
            os.rename(staging, path)
            inode = os.lstat(path).st_ino
            assert proc.wait(30) == 0  # the old daemon idles out
            assert path.exists() and os.lstat(path).st_ino == inode
    finally:
        _stop(proc)
        path.unlink(missing_ok=True)
        shutil.rmtree(runtime, ignore_errors=True)


def test_concurrent_cold_submits_start_one_daemon(workspace: Workspace, source: Callable[..., Path],
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RUNDOCK_AGENT_IDLE_SECONDS", "60")
    src = source(**{"train.py": "print('ok')"})
    root = workspace.local_root
    seen: set[int] = set()  # warm agents, not the agents they fork (which keep their command line)
    done = threading.Event()

    def watch() -> None:
        while not done.is_set():
            serving = _serving(root)
            seen.update(pid for pid, parent in serving.items() if parent not in serving)
            time.sleep(0.01)

    watcher = threading.Thread(target=watch)
    watcher.start()
    try:
        procs = [subprocess.Popen([sys.executable, "-m", "rundock.submitter.cli", "submit", str(src), "-s",
                                   "train.py", "--detach"], cwd=Path(workspace.path).parent,
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(10)]
        outputs = [p.communicate(timeout=180) for p in procs]
        assert all(p.returncode == 0 for p in procs), [err for _, err in outputs]
        run_ids = [out.strip().splitlines()[-1] for out, _ in outputs]
        runs = [Run.get(workspace, run_id) for run_id in run_ids]
        for run in runs:
            run.wait_for_completion()
        assert [r.get_status() for r in runs] == ["Completed"] * 10
        time.sleep(0.2)
    finally:
        done.set()
        watcher.join()
        for pid in seen:
            try:
                _stop(psutil.Process(pid))
            except psutil.Error:
                pass
    assert len(seen) == 1, f"{len(seen)} warm agents were started for one workspace"


# -- 3. the job's environment -----------------------------------------------------------------------------------

def test_the_job_gets_no_credentials_from_the_submitter(workspace: Workspace, source: Callable[..., Path],
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RUNDOCK_SSH_PASSWORD", "hunter2")
    monkeypatch.setenv("RUNDOCK_SSH_KEY_PASSPHRASE", "open-sesame")
    monkeypatch.setenv("MY_API_TOKEN", "tok-123")
    monkeypatch.setenv("UNLISTED_SETTING", "x")
    monkeypatch.setenv("OMP_NUM_THREADS", "3")
    src = source(**{"train.py": ENV_SCRIPT})
    env = Environment("env-test")
    env.python.user_managed_dependencies = True
    env.python.interpreter_path = sys.executable
    env.environment_variables = {"FROM_RUN_CONFIG": "yes"}
    for attempt in ("first", "second"):  # the second one surely by the warm agent
        run = Experiment(workspace, "env").submit(ScriptRunConfig(str(src), "train.py", environment=env))
        run.wait_for_completion()
        assert run.get_status() == "Completed", attempt
        seen = json.loads((Path(run._record.run_dir or "") / "src/outputs/env.json").read_text())
        for name in ("RUNDOCK_SSH_PASSWORD", "RUNDOCK_SSH_KEY_PASSPHRASE", "MY_API_TOKEN", "UNLISTED_SETTING"):
            assert name not in seen, (attempt, name)
        assert not {"hunter2", "open-sesame", "tok-123"} & set(seen.values()), attempt
        assert seen["PATH"] == os.environ["PATH"] and seen["FROM_RUN_CONFIG"] == "yes", attempt
        assert seen["OMP_NUM_THREADS"] == "3" and seen["RUNDOCK_RUN_ID"] == run.id, attempt
        wait_until(lambda: _daemon_of(workspace.local_root), message="the warm agent")
    warm = _daemon_of(workspace.local_root)
    assert warm is not None
    try:
        daemon_env = warm.environ()
        assert "RUNDOCK_SSH_PASSWORD" not in daemon_env and "MY_API_TOKEN" not in daemon_env
    finally:
        _stop(warm)


# -- 4. the workspace's files -----------------------------------------------------------------------------------

def _mode(path: Path | str) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


def test_workspace_files_are_private(open_folder: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RUNDOCK_HEARTBEAT_SECONDS", "0.2")
    ws = Workspace.create(str(open_folder / "project"))
    try:
        ws.secrets.set_secret("db", "s3cret")
        ws.store.list_runs()
        folder = Path(ws.path)
        assert _mode(folder) == 0o700
        for name in ("config.yaml", "secrets.json", "history.db"):
            assert _mode(folder / name) == 0o600, name
        assert (folder / ".gitignore").read_text().splitlines()[-1] == "*"
    finally:
        ws.close()


def test_an_open_workspace_folder_is_tightened_with_a_warning(open_folder: Path,
                                                              capfd: pytest.CaptureFixture[str]) -> None:
    folder = open_folder / ".rundock"
    folder.mkdir()
    folder.chmod(0o755)
    (folder / "config.yaml").write_text("name: old\n")
    (folder / "config.yaml").chmod(0o644)
    Workspace(str(folder)).close()
    assert _mode(folder) == 0o700 and _mode(folder / "config.yaml") == 0o600
    err = capfd.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "tightened to 0700" in err and str(folder) in err


def test_the_default_workspace_in_home_is_private(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.delenv("RUNDOCK_HOME", raising=False)
    elsewhere = tmp_path / "no-workspace-here"
    elsewhere.mkdir()
    if any((p / ".rundock").is_dir() for p in (elsewhere, *elsewhere.parents)):
        pytest.skip("a .rundock folder above the temporary folder would be found first")
    ws = Workspace.from_config(str(elsewhere))
    ws.close()
    assert ws.path == str(home / ".rundock") and _mode(ws.path) == 0o700


@needs_root
def test_another_user_cannot_read_the_workspace(open_folder: Path, workspace: Workspace,
                                                source: Callable[..., Path]) -> None:
    project = open_folder / "project"
    project.mkdir()
    project.chmod(0o755)
    init = subprocess.run([sys.executable, "-m", "rundock.submitter.cli", "init"], cwd=project, capture_output=True,
                          text=True, timeout=60)
    assert init.returncode == 0, init.stderr
    ws = Workspace(str(project / ".rundock"))
    try:
        ws.secrets.set_secret("db", "s3cret")
        run = Experiment(ws, "private").submit(ScriptRunConfig(str(source(**{"train.py": "print('ok')"})),
                                                               "train.py"))
        run.wait_for_completion()
        for target in ("config.yaml", "secrets.json", "history.db", f"local/runs/{run.id}/src/train.py"):
            path = project / ".rundock" / target
            assert path.exists(), target
            result = subprocess.run(["su", "nobody", "-s", "/bin/sh", "-c", f"cat '{path}'"], capture_output=True,
                                    text=True, timeout=30)
            assert result.returncode != 0 and "Permission denied" in result.stderr, (target, result)
        listing = subprocess.run(["su", "nobody", "-s", "/bin/sh", "-c", f"ls '{project / '.rundock'}'"],
                                 capture_output=True, text=True, timeout=30)
        assert listing.returncode != 0 and "Permission denied" in listing.stderr
    finally:
        warm = _daemon_of(ws.local_root)
        _stop(warm)
        ws.close()


@pytest.mark.skipif(shutil.which("git") is None, reason="needs git")
def test_git_add_all_leaves_the_workspace_out(tmp_path: Path) -> None:
    project = tmp_path / "repo"
    project.mkdir()
    (project / "train.py").write_text("print(1)\n")
    subprocess.run(["git", "init", "-q"], cwd=project, check=True)
    init = subprocess.run([sys.executable, "-m", "rundock.submitter.cli", "init"], cwd=project, capture_output=True,
                          text=True, timeout=60)
    assert init.returncode == 0, init.stderr
    Workspace(str(project / ".rundock")).secrets.set_secret("db", "s3cret")
    added = subprocess.run(["git", "add", "-A", "--dry-run"], cwd=project, capture_output=True, text=True,
                           check=True).stdout
    assert "train.py" in added and ".rundock" not in added


# -- 7. `rundock show` with a long tag --------------------------------------------------------------------------

def test_show_prints_a_100_kb_tag_in_linear_time(workspace: Workspace, source: Callable[..., Path]) -> None:
    value = "x" * 100_000
    run = Experiment(workspace, "tags").submit(ScriptRunConfig(str(source(**{"train.py": "print(1)"})), "train.py"),
                                               tags={"big": value, "markup": "[bold]not markup[/]"})
    run.wait_for_completion()
    started = time.monotonic()
    shown = subprocess.run([sys.executable, "-m", "rundock.submitter.cli", "show", run.id],
                           cwd=Path(workspace.path).parent, capture_output=True, text=True, timeout=60)
    elapsed = time.monotonic() - started
    assert shown.returncode == 0, shown.stderr
    assert elapsed < 10, f"rundock show took {elapsed:.1f} s"
    assert f"big={value}" in shown.stdout and "markup=[bold]not markup[/]" in shown.stdout

