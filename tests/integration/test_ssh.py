"""Remote hosts over SSH, against a real OpenSSH server.

The "remote host" is a container of the test base image running sshd on a
loopback port (``--network host``): its own filesystem and Python, nothing of
rundock installed, reached only through SSH.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import docker
import paramiko
import pytest

from rundock import ComputeTarget, Experiment, RemoteCompute, Run, RunConfiguration, ScriptRunConfig
from rundock.submitter.ssh import SshError, fingerprint
from rundock.submitter.targets.remote import RemoteTarget
from rundock.submitter.workspace import Workspace
from tests.conftest import REPO, require_service, wait_until
from tests.hosts import SshHost, free_port, has_sshd, running_ssh_host, start_ssh_host


@pytest.fixture(scope="module")
def ssh_host(tmp_path_factory: pytest.TempPathFactory, docker_base_image: str) -> Iterator[SshHost]:
    with running_ssh_host(docker_base_image, tmp_path_factory.mktemp("sshd")) as host:
        yield host


def attach_box(workspace: Workspace, host: SshHost, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> RemoteTarget:
    """The host attached as target 'box', its key trusted, in a workspace with its own HOME."""
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.delenv("SSH_AUTH_SOCK", raising=False)
    _attach(workspace, host)
    _rundock(workspace, "target", "trust", "box")
    return RemoteTarget(workspace, "box")


@pytest.fixture
def box(workspace: Workspace, ssh_host: SshHost, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> RemoteTarget:
    return attach_box(workspace, ssh_host, tmp_path, monkeypatch)


def _attach(workspace: Workspace, host: SshHost, name: str = "box", **config: object) -> None:
    attach = RemoteCompute.attach_configuration(address="127.0.0.1", ssh_port=host.port, username="root",
                                                private_key_file=host.key_file, **config)
    ComputeTarget.attach(workspace, name, attach)


def _rundock(workspace: Workspace, *args: str) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run([sys.executable, "-m", "rundock", *args], cwd=Path(workspace.path).parent,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    return proc


def _submit(workspace: Workspace, src: Path, target: str = "box", **config: object) -> Run:
    run_config = RunConfiguration(target=target, **config)  # type: ignore[arg-type]
    return Experiment(workspace, "remote").submit(ScriptRunConfig(str(src), "train.py", run_config=run_config))


def _statuses(workspace: Workspace, run: Run) -> list[str]:
    return [c.status.value for c in workspace.store.status_history(run.id)]


def _remote_processes(host: SshHost, run_id: str) -> list[int]:
    return json.loads(host.sh(
        "import json, os\nfound = []\nfor p in filter(str.isdigit, os.listdir('/proc')):\n"
        "    try:\n        env = open(f'/proc/{p}/environ', 'rb').read().split(b'\\0')\n"
        "        state = open(f'/proc/{p}/stat', 'rb').read().rsplit(b')', 1)[1].split()[0]\n"
        "    except OSError:\n        continue\n"
        f"    if b'RUNDOCK_RUN_ID={run_id}' in env and state != b'Z':\n        found.append(int(p))\n"
        "print(json.dumps(found))"))


TRAIN = """
import os, time
from rundock import Run
run = Run.get_context()
for i in range(12):
    run.log("loss", 1.0 / (i + 1))
    print(f"step {i}", flush=True)
    time.sleep(0.15)
os.makedirs("outputs", exist_ok=True)
open("outputs/model.bin", "wb").write(os.urandom(4096))
"""


def test_unknown_host_key_is_refused_until_trusted(workspace: Workspace, ssh_host: SshHost, tmp_path: Path,
                                                   source: Callable[..., Path],
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.delenv("SSH_AUTH_SOCK", raising=False)
    _attach(workspace, ssh_host)
    src = source(**{"train.py": "print('hello from the host')"})
    with pytest.raises(SshError, match=r"not known: ssh-rsa SHA256:\S+.*rundock target trust box"):
        _submit(workspace, src)
    assert workspace.store.list_runs() == []  # nothing half-created
    trusted = _rundock(workspace, "target", "trust", "box")
    host_key = paramiko.RSAKey.from_private_key_file(str(ssh_host.folder / "host_key"))
    assert f"[127.0.0.1]:{ssh_host.port} ssh-rsa {fingerprint(host_key)}" in trusted.stderr
    run = _submit(workspace, src)
    run.wait_for_completion()
    assert workspace.store.read_log(run.id, "system_logs/driver_log.txt") == b"hello from the host\n"


def test_first_and_second_run(workspace: Workspace, box: RemoteTarget, ssh_host: SshHost,
                              source: Callable[..., Path], capsys: pytest.CaptureFixture[str]) -> None:
    assert ssh_host.sh("import importlib.util; print(importlib.util.find_spec('rundock'))").strip() == "None"
    src = source(**{"train.py": TRAIN})
    first = _submit(workspace, src)
    first.wait_for_completion(show_output=True)
    out = capsys.readouterr().out
    assert "step 0" in out and "step 11" in out and "Status: Completed" in out
    assert first.get_metrics() == {"loss": [1.0 / (i + 1) for i in range(12)]}
    assert _statuses(workspace, first) == ["NotStarted", "Starting", "Preparing", "Queued", "Running",
                                           "Finalizing", "Completed"]
    assert "outputs/model.bin" in first.get_file_names()
    remote_dir = first._record.run_dir or ""
    remote_hash = ssh_host.sh(f"import hashlib; print(hashlib.sha256(open({remote_dir!r} + '/src/outputs/model.bin',"
                              " 'rb').read()).hexdigest())").strip()
    assert workspace.store.list_files(first.id)["outputs/model.bin"].digest == remote_hash
    conn = box.connect()
    snapshot = workspace.store.get_snapshot(first.get_snapshot_id() or "")
    assert box.send_blobs(conn, [e["digest"] for e in snapshot]) == 0  # unchanged folder: nothing to send
    installed = ssh_host.sh("import os; print(sorted(os.listdir('/root/.rundock/agent')))")
    second = _submit(workspace, src)
    second.wait_for_completion()
    assert ssh_host.sh("import os; print(sorted(os.listdir('/root/.rundock/agent')))") == installed  # reused
    assert second.get_metrics() == first.get_metrics()
    listed = _rundock(workspace, "target", "show", "box").stdout
    assert "Python 3." in listed and "CPUs" in listed


def test_many_small_files_and_large_ones_arrive_intact(workspace: Workspace, box: RemoteTarget, ssh_host: SshHost,
                                                      source: Callable[..., Path]) -> None:
    files = {f"pkg{i % 9}/mod{i}.py": f"value = {i}\n" * (i % 50) for i in range(300)}
    src = source(**{"train.py": """
        import hashlib, json, os
        expected = json.load(open("expected.json"))
        bad = [p for p, d in expected.items() if hashlib.sha256(open(p, "rb").read()).hexdigest() != d]
        print(f"{len(expected) - len(bad)} of {len(expected)} files intact", bad)
    """, **files})
    (src / "weights.bin").write_bytes(os.urandom(3 * 1024 * 1024))  # large and random: sent as it is, stored loose
    (src / "corpus.txt").write_text("the same sentence again\n" * 100_000)  # large and compressible
    expected = {p.relative_to(src).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
                for p in src.rglob("*") if p.is_file() and p.name != "train.py"}
    (src / "expected.json").write_text(json.dumps(expected))
    root = f"/root/fresh-{time.time_ns()}"  # the module's other tests share the host: count this run's blobs only
    _attach(workspace, ssh_host, name="fresh", root=root)
    run = _submit(workspace, src, target="fresh")
    run.wait_for_completion()
    assert workspace.store.read_log(run.id, "system_logs/driver_log.txt") == b"302 of 302 files intact []\n"
    stored = json.loads(ssh_host.sh(
        f"import os, json; root = '{root}/artifacts'\n"
        "print(json.dumps({'packs': sorted(n.rsplit('.', 1)[1] for n in os.listdir(root + '/packs')),\n"
        "  'large': sum(os.path.getsize(os.path.join(d, n)) > 1 << 20 for d, _, ns in os.walk(root)\n"
        "               if not d.endswith('packs') for n in ns)}))"))
    assert stored == {"packs": ["idx", "pack"], "large": 2}  # the small files are one pack on the host too


def _ended_on_host(host: SshHost, run_dir: str) -> bool:
    """Whether the run's agent recorded its end on the host (read there, without pulling)."""
    return host.sh(f"import json, os\np = {run_dir!r} + '/agent_journal/agent.jsonl'\n"
                   "recs = [json.loads(line) for line in open(p)] if os.path.exists(p) else []\n"
                   "print(any(r.get('type') == 'state' and r.get('status') in ('Completed', 'Failed', 'Canceled')"
                   " for r in recs))").strip() == "True"


def test_the_run_survives_the_submitter_and_resyncs_exactly_once(workspace: Workspace, box: RemoteTarget,
                                                                 ssh_host: SshHost,
                                                                 source: Callable[..., Path]) -> None:
    src = source(**{"train.py": TRAIN})
    code = (f"import sys; sys.path.insert(0, {str(REPO)!r})\n"
            "from rundock import Workspace, Experiment, RunConfiguration, ScriptRunConfig\n"
            f"ws = Workspace({workspace.path!r})\n"
            f"config = ScriptRunConfig({str(src)!r}, 'train.py', run_config=RunConfiguration(target='box'))\n"
            "print(Experiment(ws, 'remote').submit(config).id)\n")
    submitted = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                               env=dict(os.environ))
    assert submitted.returncode == 0, submitted.stderr
    run = Run.get(workspace, submitted.stdout.strip())  # the submitting process has exited
    wait_until(lambda: run.get_status() == "Running", timeout=30, message="Running")  # pulls while it is live
    wait_until(lambda: _ended_on_host(ssh_host, run._record.run_dir or ""), timeout=60,
               message="the run to end on its host")  # and none until it has ended there
    assert run._record.status.value == "Running"
    followed = _rundock(workspace, "logs", run.id, "--follow")  # reconnects, pulls, follows to the end
    assert followed.stdout == "".join(f"step {i}\n" for i in range(12))
    _rundock(workspace, "sync", run.id, "--wait")
    run.refresh()
    assert run.status == "Completed"
    assert run.get_metrics() == {"loss": [1.0 / (i + 1) for i in range(12)]}
    log = workspace.store.read_log(run.id, "system_logs/driver_log.txt").decode()
    assert log == "".join(f"step {i}\n" for i in range(12))
    _rundock(workspace, "sync", run.id)
    run.get_status()
    assert len(workspace.store.get_metric_records(run.id)) == 12  # replays change nothing
    assert _statuses(workspace, run).count("Running") == 1


def test_cancel_reaches_the_remote_agent(workspace: Workspace, box: RemoteTarget, ssh_host: SshHost,
                                         source: Callable[..., Path]) -> None:
    src = source(**{"train.py": """
        import os, signal, subprocess, sys, time
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        os.makedirs("outputs", exist_ok=True)
        open("outputs/partial.txt", "w").write("kept")
        subprocess.Popen([sys.executable, "-c", "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN);"
                          " time.sleep(300)"], start_new_session=True)
        print("ready", flush=True)
        time.sleep(300)
    """})
    run = _submit(workspace, src, cancel_grace_seconds=1)
    wait_until(lambda: run.get_status() == "Running" and b"ready" in workspace.store.read_log(
        run.id, "system_logs/driver_log.txt"), timeout=30, message="ready")
    assert len(_remote_processes(ssh_host, run.id)) >= 2
    run.cancel()
    run.wait_for_completion()
    assert run.get_status() == "Canceled"
    assert _statuses(workspace, run)[-3:] == ["CancelRequested", "Finalizing", "Canceled"]
    assert "outputs/partial.txt" in run.get_file_names()
    assert _remote_processes(ssh_host, run.id) == []


def _host_path_exists(host: SshHost, path: str) -> bool:
    return host.sh(f"import os; print(os.path.lexists({path!r}))").strip() == "True"


def test_a_killed_remote_agent_fails_the_run_and_leaves_nothing_behind(workspace: Workspace, box: RemoteTarget,
                                                                      ssh_host: SshHost,
                                                                      source: Callable[..., Path]) -> None:
    workspace.set_secret("api-token", "tok-killed-agent-s3cret")
    src = source(**{"train.py": """
        import subprocess, sys, time
        from rundock import Run
        run = Run.get_context()
        assert run.get_secret("api-token") == "tok-killed-agent-s3cret"
        subprocess.Popen([sys.executable, "-c", "import time; time.sleep(300)"], start_new_session=True)
        for i in range(20):
            run.log("v", i)
        print("up", flush=True)
        time.sleep(300)
    """})
    run = _submit(workspace, src, secrets=["api-token"])
    wait_until(lambda: run.get_status() == "Running" and b"up" in workspace.store.read_log(
        run.id, "system_logs/driver_log.txt"), timeout=30, message="up")
    run_dir = run._record.run_dir or ""
    assert _host_path_exists(ssh_host, f"{run_dir}/secrets.json")
    assert len(_remote_processes(ssh_host, run.id)) >= 2
    ssh_host.sh(f"import os, signal; os.kill(int(open({run_dir!r} + '/agent.pid').read()), signal.SIGKILL)")
    # The host sees at once that the agent's lock is free: the next pull ships, reaps, then ends the run.
    wait_until(lambda: run.get_status() == "Failed", timeout=15, message="Failed")
    assert run.get_details()["error"]["error"]["code"] == "AgentLost"
    assert run.get_metrics()["v"] == list(range(20))  # what the job logged was shipped before ending it
    assert _remote_processes(ssh_host, run.id) == []  # the job and its setsid grandchild were killed first
    assert not _host_path_exists(ssh_host, f"{run_dir}/secrets.json")


def test_a_changed_host_key_is_refused_loudly(workspace: Workspace, box: RemoteTarget, ssh_host: SshHost,
                                              source: Callable[..., Path]) -> None:
    other = paramiko.RSAKey.generate(2048)
    Path(box.known_hosts).write_text(f"[127.0.0.1]:{ssh_host.port} ssh-rsa {other.get_base64()}\n")
    _attach(workspace, ssh_host, name="moved", root="/tmp/never-created")
    with pytest.raises(SshError, match="HAS CHANGED.*Nothing was sent"):
        _submit(workspace, source(**{"train.py": "print(1)"}), target="moved")
    assert workspace.store.list_runs() == []
    assert ssh_host.sh("import os; print(os.path.exists('/tmp/never-created'))").strip() == "False"


def test_clear_errors_name_the_host_and_the_fix(workspace: Workspace, box: RemoteTarget, ssh_host: SshHost,
                                               source: Callable[..., Path]) -> None:
    src = source(**{"train.py": "print(1)"})
    _attach(workspace, ssh_host, name="nopython", python="/usr/bin/python9")
    with pytest.raises(SshError, match=r"no usable Python on root@127\.0\.0\.1:\d+ \(target nopython\)"):
        _submit(workspace, src, target="nopython")
    ComputeTarget.attach(workspace, "wronguser", RemoteCompute.attach_configuration(
        address="127.0.0.1", ssh_port=ssh_host.port, username="nobody", private_key_file=ssh_host.key_file))
    with pytest.raises(SshError, match=r"nobody@127\.0\.0\.1:\d+ \(target wronguser\) refused the login"):
        _submit(workspace, src, target="wronguser")
    ComputeTarget.attach(workspace, "offline", RemoteCompute.attach_configuration(
        address="127.0.0.1", ssh_port=free_port(), username="root", private_key_file=ssh_host.key_file))
    with pytest.raises(SshError, match=r"cannot connect to root@127\.0\.0\.1:\d+ \(target offline\).*sshd runs"):
        _submit(workspace, src, target="offline")
    big = source(name="big", **{"train.py": "print(1)"})
    (big / "weights.bin").write_bytes(os.urandom(3 * 1024 * 1024))
    _attach(workspace, ssh_host, name="tiny", root="/small/rundock")  # no room for the agent itself
    with pytest.raises(SshError, match=r"\(target tiny\) has no space left under /small/rundock.*free some space"):
        _submit(workspace, big, target="tiny")
    _attach(workspace, ssh_host, name="small", root="/medium/rundock")  # room for the agent, not for the run
    with pytest.raises(SshError, match=r"MB free under /medium/rundock.*free some space"):
        _submit(workspace, big, target="small")
    assert workspace.store.list_runs() == []


def test_ssh_config_aliases_proxyjump_and_agent_keys(workspace: Workspace, ssh_host: SshHost, tmp_path: Path,
                                                     source: Callable[..., Path],
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    home = tmp_path / "home"
    (home / ".ssh").mkdir(parents=True)
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.delenv("SSH_AUTH_SOCK", raising=False)
    (home / ".ssh" / "config").write_text(
        f"Host gpubox\n  HostName 127.0.0.1\n  Port {ssh_host.port}\n  User root\n  IdentityFile {ssh_host.key_file}\n"
        f"Host behind-jump\n  HostName 127.0.0.1\n  Port {ssh_host.port}\n  User root\n"
        f"  IdentityFile {ssh_host.key_file}\n  ProxyJump gpubox\n")
    src = source(**{"train.py": "print('via', __import__('socket').gethostname() != '')"})
    for name, address in (("alias", "gpubox"), ("jumped", "behind-jump")):
        ComputeTarget.attach(workspace, name, RemoteCompute.attach_configuration(address=address, ssh_port=None))
        _rundock(workspace, "target", "trust", name)
        run = _submit(workspace, src, target=name)
        run.wait_for_completion()
        assert workspace.store.read_log(run.id, "system_logs/driver_log.txt") == b"via True\n", name
    if not (shutil.which("ssh-agent") and shutil.which("ssh-add")):
        pytest.skip("no ssh-agent on this machine")
    agent = subprocess.run(["ssh-agent", "-s"], capture_output=True, text=True, check=True).stdout
    env = dict(part.split("=", 1) for part in agent.replace(";", "\n").split() if "=" in part)
    try:
        monkeypatch.setenv("SSH_AUTH_SOCK", env["SSH_AUTH_SOCK"])
        subprocess.run(["ssh-add", ssh_host.key_file], check=True, capture_output=True,
                       env={**os.environ, "SSH_AUTH_SOCK": env["SSH_AUTH_SOCK"]})
        ComputeTarget.attach(workspace, "agentkeys", RemoteCompute.attach_configuration(
            address="127.0.0.1", ssh_port=ssh_host.port, username="root"))  # no key file: the agent has it
        run = _submit(workspace, src, target="agentkeys")
        run.wait_for_completion()
        assert run.get_status() == "Completed"
    finally:
        os.kill(int(env["SSH_AGENT_PID"]), 15)


def test_passwords_are_never_written(workspace: Workspace, ssh_host: SshHost) -> None:
    ComputeTarget.attach(workspace, "withpw", RemoteCompute.attach_configuration(
        address="127.0.0.1", ssh_port=ssh_host.port, username="root", password="pw-s3cret",
        private_key_passphrase="phrase-s3cret"))
    stored = Path(workspace.path, "targets.yaml").read_text()
    assert "withpw" in stored and "s3cret" not in stored
    assert all(b"s3cret" not in p.read_bytes() for p in Path(workspace.path).rglob("*") if p.is_file())
    assert ComputeTarget(workspace, "withpw").credentials() == ("pw-s3cret", "phrase-s3cret")  # this process only
    ComputeTarget(workspace, "withpw").detach()
    assert [t.name for t in ComputeTarget.list(workspace)] == []


@pytest.fixture(scope="module")
def docker_host(tmp_path_factory: pytest.TempPathFactory, docker_base_image: str) -> Iterator[tuple[SshHost, Path]]:
    """A host with a Docker engine: the test engine's socket, and its rundock root at the same path on both
    sides, so the containers its agent starts see the run directories it bind-mounts."""
    client = docker.from_env()
    if not has_sshd(client, docker_base_image):
        require_service("SSH", f"the test base image {docker_base_image} has no sshd; .ci/services.sh builds one")
    shared = tmp_path_factory.mktemp("remote-root")
    host = start_ssh_host(client, docker_base_image, tmp_path_factory.mktemp("sshd-docker"), volumes={
        "/var/run/docker.sock": {"bind": "/var/run/docker.sock", "mode": "rw"},
        str(shared): {"bind": str(shared), "mode": "rw"}})
    try:
        yield host, shared
    finally:
        client.containers.get(host.container).remove(force=True)


def test_docker_runs_on_a_remote_host(workspace: Workspace, docker_host: tuple[SshHost, Path], tmp_path: Path,
                                      source: Callable[..., Path], docker_base_image: str,
                                      monkeypatch: pytest.MonkeyPatch) -> None:
    from rundock import Environment
    from rundock.agent.executors.docker import LABEL

    host, shared = docker_host
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.delenv("SSH_AUTH_SOCK", raising=False)
    _attach(workspace, host, name="dockerbox", root=str(shared / "rundock"))
    _rundock(workspace, "target", "trust", "dockerbox")
    assert "Docker: yes" in _rundock(workspace, "target", "show", "dockerbox").stdout
    env = Environment("remote-docker")
    env.docker.enabled, env.docker.base_image = True, docker_base_image
    env.docker.arguments = ["--network", "none"]
    env.python.user_managed_dependencies = True
    src = source(**{"train.py": """
        import os
        from azureml.core import Run
        run = Run.get_context()
        run.log("pid1", open("/proc/1/cmdline").read().split("\\0")[0])
        os.makedirs("outputs", exist_ok=True)
        open("outputs/where.txt", "w").write(os.getcwd())
        print("in a container on the remote host", flush=True)
    """})
    run = _submit(workspace, src, target="dockerbox", environment=env)
    run.wait_for_completion()
    assert run.get_status() == "Completed", run.get_details().get("error")
    assert "init" in run.get_metrics()["pid1"]
    assert workspace.store.read_log(run.id, "system_logs/driver_log.txt") == b"in a container on the remote host\n"
    assert "outputs/where.txt" in run.get_file_names()
    assert docker.from_env().containers.list(all=True, filters={"label": f"{LABEL}={run.id}"}) == []
    assert host.sh("import importlib.util; print(importlib.util.find_spec('docker'))").strip() == "None"


def _wheel(folder: Path) -> Path:
    """A one-module wheel, so a remote environment can be built without reaching a package index."""
    import zipfile

    path = folder / "rundockprobe-1.0-py3-none-any.whl"
    files = {"rundockprobe/__init__.py": "VALUE = 42\n",
             "rundockprobe-1.0.dist-info/METADATA": "Metadata-Version: 2.1\nName: rundockprobe\nVersion: 1.0\n",
             "rundockprobe-1.0.dist-info/WHEEL": "Wheel-Version: 1.0\nGenerator: rundock-tests\n"
                                                "Root-Is-Purelib: true\nTag: py3-none-any\n"}
    record = "rundockprobe-1.0.dist-info/RECORD"
    files[record] = "".join(f"{name},,\n" for name in [*files, record])
    with zipfile.ZipFile(path, "w") as zf:
        for name, text in files.items():
            zf.writestr(name, text)
    return path


def test_a_cached_environment_on_a_remote_host(workspace: Workspace, box: RemoteTarget, ssh_host: SshHost,
                                               source: Callable[..., Path]) -> None:
    from rundock import Environment

    wheel = _wheel(ssh_host.folder)  # the host sees this folder at /sshtest
    env = Environment("remote-venv")
    env.python.pip_packages = [f"/sshtest/{wheel.name}"]
    src = source(**{"train.py": "import sys, rundockprobe\nprint(rundockprobe.VALUE, sys.prefix, flush=True)\n"})
    first = _submit(workspace, src, environment=env)
    first.wait_for_completion()
    assert first.get_status() == "Completed", first.get_details().get("error")
    value, prefix = workspace.store.read_log(first.id, "system_logs/driver_log.txt").decode().split()
    assert value == "42" and prefix.startswith("/root/.rundock/envs/")
    second = _submit(workspace, src, environment=env)
    second.wait_for_completion()
    assert "reusing cached environment" in workspace.store.read_log(second.id, "system_logs/prepare_log.txt").decode()
    assert workspace.store.read_log(second.id, "system_logs/driver_log.txt").decode().split()[1] == prefix


def test_a_live_run_is_followed_after_rundock_is_upgraded_here(workspace: Workspace, box: RemoteTarget,
                                                               ssh_host: SshHost, source: Callable[..., Path],
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    """A run submitted by one version of rundock is followed by the next: the host gets the new agent on demand
    instead of `pull` failing with "No module named 'rundock'"."""
    from rundock.submitter.targets import remote

    src = source(**{"train.py": "import time\nfrom rundock.context import Run\nrun = Run.get_context()\n"
                                "for i in range(30):\n    run.log('i', i)\n    time.sleep(0.1)\n"})
    run = _submit(workspace, src)
    wait_until(lambda: run.get_status() == "Running", timeout=60, message="Running")
    digest, bundle = remote.agent_bundle()
    monkeypatch.setattr(remote, "agent_bundle", lambda: ("upgraded-" + digest, bundle))  # this side upgraded
    run.wait_for_completion(raise_on_error=True)
    assert run.get_metrics()["i"] == list(range(30))
    installed = ssh_host.sh("import os; print(sorted(os.listdir('/root/.rundock/agent')))")
    assert f"upgraded-{digest}" in installed and digest in installed.replace(f"upgraded-{digest}", "")
