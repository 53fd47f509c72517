"""SSH hosts under faults: lost connections, hostile job output, hostile pulls, zip bombs, secrets, trust.

Against a real OpenSSH server in a container (see tests/hosts.py); transient network faults come from a
TCP proxy on 127.0.0.1 that this test drives (it drops or cuts connections when told to), so every fault
happens at a moment the test chooses. Waits poll with a deadline.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import pty
import select
import socket
import stat
import subprocess
import sys
import tarfile
import threading
import time
import zlib
from collections.abc import Callable, Iterator
from pathlib import Path

import paramiko
import pytest

from rundock import ComputeTarget, RemoteCompute
from rundock.submitter.bundle import agent_bundle
from rundock.submitter.ssh import RETRY_DELAYS, SshError, fingerprint
from rundock.submitter.targets.remote import RemoteSyncError, RemoteTarget
from rundock.submitter.workspace import Workspace
from tests.conftest import wait_until
from tests.hosts import SshHost, free_port, running_ssh_host
from tests.integration.test_ssh import _attach, _rundock, _submit, attach_box


@pytest.fixture(scope="module")
def host(tmp_path_factory: pytest.TempPathFactory, docker_base_image: str) -> Iterator[SshHost]:
    with running_ssh_host(docker_base_image, tmp_path_factory.mktemp("sshd-faults")) as started:
        yield started


@pytest.fixture
def box(workspace: Workspace, host: SshHost, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> RemoteTarget:
    return attach_box(workspace, host, tmp_path, monkeypatch)


class Proxy:
    """A TCP proxy in front of the host's sshd that drops connections when told to: ``drop_next(n)`` resets the
    next n connections as soon as they are accepted (sshd restarting, a handshake cut short under load);
    ``cut()`` resets every connection it carries (a connection lost in the middle of a session)."""

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.lock = threading.Lock()
        self.to_drop = 0
        self.dropped = 0
        self.accepted = 0
        self.live: list[socket.socket] = []
        threading.Thread(target=self._accept, daemon=True).start()

    @staticmethod
    def _reset(sock: socket.socket) -> None:
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
            sock.close()
        except OSError:
            pass

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.listener.accept()
            except OSError:
                return
            with self.lock:
                self.accepted += 1
                if self.to_drop:
                    self.to_drop -= 1
                    self.dropped += 1
                    self._reset(conn)
                    continue
                upstream = socket.create_connection(("127.0.0.1", self.target_port))
                self.live += [conn, upstream]
            for a, b in ((conn, upstream), (upstream, conn)):
                threading.Thread(target=self._pump, args=(a, b), daemon=True).start()

    def _pump(self, src: socket.socket, dst: socket.socket) -> None:
        try:
            while data := src.recv(65536):
                dst.sendall(data)
        except OSError:
            pass
        self._reset(dst)

    def drop_next(self, count: int) -> None:
        with self.lock:
            self.to_drop = count

    def cut(self) -> None:
        with self.lock:
            live, self.live = self.live, []
        for sock in live:
            self._reset(sock)

    def close(self) -> None:
        self.listener.close()
        self.cut()


@pytest.fixture
def proxy(host: SshHost) -> Iterator[Proxy]:
    p = Proxy(host.port)
    yield p
    p.close()


TRAIN = """
import time
from rundock import Run
run = Run.get_context()
for i in range(12):
    run.log("loss", 1.0 / (i + 1))
    time.sleep(0.1)
"""


# -- 1. transient failures are retried, permanent ones are not -----------------------------------------
def test_a_command_that_exits_before_reading_its_input_is_not_a_lost_connection(
        workspace: Workspace, box: RemoteTarget, host: SshHost) -> None:
    """The "Socket is closed" of a first command on a fresh host: the host's check exits at once (no agent
    yet) while its input is still being sent. That is an answer, not a failure."""
    conn = box.connect()
    assert conn.run("exit 75", stdin=b"x" * (16 << 20)) == (75, b"", b"")
    assert conn.run("head -c 3 >/dev/null; echo -n read; exit 3", stdin=b"y" * (16 << 20))[:2] == (3, b"read")
    _attach(workspace, host, name="fresh", root=f"/root/fresh-{time.time_ns()}")
    digests = [hashlib.sha256(str(i).encode()).hexdigest() for i in range(200_000)]  # a 200k-file snapshot
    info, lacking = RemoteTarget(workspace, "fresh")._prepare_host(digests)
    assert lacking == digests and info["python"].startswith("3.")


def test_transient_failures_are_retried_on_a_new_connection(workspace: Workspace, box: RemoteTarget, host: SshHost,
                                                            proxy: Proxy, source: Callable[..., Path]) -> None:
    ComputeTarget.attach(workspace, "flaky", RemoteCompute.attach_configuration(
        address="127.0.0.1", ssh_port=proxy.port, username="root", private_key_file=host.key_file))
    _rundock(workspace, "target", "trust", "flaky")
    proxy.drop_next(2)  # sshd "restarting": the first two connections are reset at once
    shown = _rundock(workspace, "target", "show", "flaky")
    assert "Python 3." in shown.stdout and proxy.dropped == 2

    run = _submit(workspace, source(**{"train.py": TRAIN}), target="flaky")
    proxy.cut()  # the cached connection dies between two commands
    wait_until(lambda: run.get_status() in ("Running", "Completed"), timeout=30, message="Running")
    proxy.cut()
    proxy.drop_next(1)  # and the first reconnection fails too
    run.wait_for_completion()
    assert run.get_status() == "Completed"
    assert run.get_metrics() == {"loss": [1.0 / (i + 1) for i in range(12)]}
    assert proxy.dropped == 3


def test_permanent_failures_are_reported_at_once(workspace: Workspace, box: RemoteTarget, host: SshHost,
                                                 proxy: Proxy, tmp_path: Path, source: Callable[..., Path]) -> None:
    """A refused login, a host without Python, an unknown host key: one connection, no retry, no wait."""
    src = source(**{"train.py": "print(1)"})
    wrong = tmp_path / "wrong_key"
    paramiko.RSAKey.generate(2048).write_private_key_file(str(wrong))
    for name, address, key, python in (("wrongkey", "127.0.0.1", str(wrong), "python3"),
                                       ("nopython", "127.0.0.1", host.key_file, "/usr/bin/python9"),
                                       ("stranger", "localhost", host.key_file, "python3")):  # no key known for it
        ComputeTarget.attach(workspace, name, RemoteCompute.attach_configuration(
            address=address, ssh_port=proxy.port, username="root", private_key_file=key, python=python))
    _rundock(workspace, "target", "trust", "wrongkey")  # the key of [127.0.0.1]:PROXY
    backoff = sum(RETRY_DELAYS)
    for target, expected in (("wrongkey", "refused the login"), ("nopython", "no usable Python"),
                             ("stranger", "is not known")):
        before, started = proxy.accepted, time.monotonic()
        with pytest.raises(SshError, match=expected) as raised:
            _submit(workspace, src, target=target)
        assert proxy.accepted - before == 1, target  # one connection: never tried again
        assert time.monotonic() - started < backoff, target
        assert "tried" not in str(raised.value)
    assert workspace.store.list_runs() == []
    # a host that stays unreachable is retried, boundedly, and then named
    ComputeTarget.attach(workspace, "offline", RemoteCompute.attach_configuration(
        address="127.0.0.1", ssh_port=free_port(), username="root", private_key_file=host.key_file))
    started = time.monotonic()
    with pytest.raises(SshError, match=rf"cannot connect to .*\(target offline\).*tried {len(RETRY_DELAYS) + 1} "):
        _submit(workspace, src, target="offline")
    assert time.monotonic() - started >= backoff


def test_a_repeated_start_answers_with_the_first_agent(workspace: Workspace, box: RemoteTarget, host: SshHost,
                                                       source: Callable[..., Path]) -> None:
    src = source(**{"train.py": "import time\nprint('once', flush=True)\ntime.sleep(1)\n"})
    run = _submit(workspace, src)
    run_dir = run._record.run_dir or ""
    files = json.loads(host.sh(f"import json; d = {run_dir!r}\nprint(json.dumps({{n: open(d + '/' + n).read() "
                               "for n in ('job.json', 'manifest.json', 'agent.pid')}))"))
    request = {"job": json.loads(files["job.json"]), "manifest": json.loads(files["manifest.json"]), "secrets": {}}
    code, out, err = _host_command(box, "start", run.id, stdin=json.dumps(request).encode())
    assert code == 0, err
    again = json.loads(out)  # what a retried start gets
    assert again["already_started"] is True and again["agent_pid"] == int(files["agent.pid"])
    run.wait_for_completion()
    assert workspace.store.read_log(run.id, "system_logs/driver_log.txt") == b"once\n"


# -- 2. hostile journal lines, and pulls that cannot be applied, never wedge a run -----------------------
def test_malformed_journal_lines_never_wedge_a_run(workspace: Workspace, box: RemoteTarget,
                                                   source: Callable[..., Path]) -> None:
    src = source(**{"train.py": """
        import os
        journal = os.path.join(os.environ["RUNDOCK_RUN_DIR"], "journal")
        os.makedirs(journal, exist_ok=True)
        bad = ["garbage", "42", '"text"', "[1, 2]", "{", '{"type": "file"}', '{"type": "metric", "name": "x"}',
               '{"seq": 1, "type": "file", "digest": ["x"], "size": 1}',
               '{"seq": 2, "type": "file", "name": "p", "path": "../../../etc/passwd"}',
               '{"seq": 3, "type": "file", "name": "j", "path": "journal/job-1.jsonl"}']
        for name in (f"job-{os.getpid()}.jsonl", "job-999999.jsonl"):
            with open(os.path.join(journal, name), "a") as fh:
                fh.write("\\n".join(bad) + "\\n")
        from rundock import Run
        run = Run.get_context()
        for i in range(10):
            run.log("loss", float(i))
        print("done", flush=True)
    """})
    run = _submit(workspace, src)
    run.wait_for_completion()
    assert run.get_status() == "Completed", run.get_details().get("error")
    assert run.get_metrics() == {"loss": [float(i) for i in range(10)]}
    assert workspace.store.read_log(run.id, "system_logs/driver_log.txt") == b"done\n"


def _agent_records(host: SshHost, run_dir: str) -> list[dict[str, object]]:
    text = host.sh(f"import os; p = {run_dir!r} + '/agent_journal/agent.jsonl'\n"
                   "print(open(p).read() if os.path.exists(p) else '')")
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def test_a_pull_that_cannot_be_applied_is_reported_and_the_run_still_ends(workspace: Workspace, box: RemoteTarget,
                                                                          host: SshHost,
                                                                          source: Callable[..., Path]) -> None:
    src = source(**{"train.py": """
        import os
        from rundock import Run
        run = Run.get_context()
        for i in range(5):
            run.log("v", i)
        os.makedirs("outputs", exist_ok=True)
        open("outputs/model.bin", "wb").write(os.urandom(4096))
    """})
    run = _submit(workspace, src)
    run_dir = run._record.run_dir or ""
    wait_until(lambda: any(r.get("type") == "state" and r.get("status") == "Completed"
                           for r in _agent_records(host, run_dir)), timeout=60, message="the run to end on the host")
    digest = next(str(r["digest"]) for r in _agent_records(host, run_dir)
                  if r.get("type") == "file" and r.get("name") == "outputs/model.bin")
    host.sh(f"import os; p = '/root/.rundock/artifacts/{digest[:2]}/{digest}'; os.chmod(p, 0o644)\n"
            "fh = open(p, 'r+b'); fh.write(b'damaged'); fh.close()")  # the host's copy no longer matches its name
    with pytest.raises(RemoteSyncError, match=rf"run {run.id} on target box .*blobs/{digest}.*damaged"):
        run.wait_for_completion()
    assert run.get_status() == "Completed"  # everything else was applied: the run is not stuck
    assert run.get_metrics() == {"v": list(range(5))}
    assert not workspace.artifacts.has(digest)


def _host_command(box: RemoteTarget, command: str, *args: str, stdin: bytes = b"") -> tuple[int, bytes, bytes]:
    conn = box.connect()
    return conn.run(box._agent_command(conn, command, *args), stdin=stdin)


def _pull(box: RemoteTarget, run_id: str, offsets: dict[str, object]) -> tuple[dict[str, object], dict[str, bytes]]:
    code, out, err = _host_command(box, "pull", run_id, stdin=json.dumps(offsets).encode())
    assert code == 0, err
    with tarfile.open(fileobj=io.BytesIO(out), mode="r:gz") as tar:
        members = {m.name: (tar.extractfile(m) or io.BytesIO()).read() for m in tar if m.isfile()}
    return json.loads(members.pop("state.json")), members


def test_offsets_a_file_cannot_have_are_answered_from_its_start(workspace: Workspace, box: RemoteTarget,
                                                                host: SshHost, source: Callable[..., Path]) -> None:
    src = source(**{"train.py": """
        import os, time
        from rundock import Run
        run = Run.get_context()
        for i in range(5):
            run.log("v", i)
        print("half", flush=True)
        while not os.path.exists("go"):
            time.sleep(0.05)
        for i in range(5, 10):
            run.log("v", i)
    """})
    run = _submit(workspace, src)
    wait_until(lambda: run.get_status() and b"half" in workspace.store.read_log(run.id, "system_logs/driver_log.txt")
               and len(run.get_metrics().get("v", [])) == 5, timeout=30, message="the first half")
    mirror = Path(box.mirror_dir(run.id))
    job_file = next((mirror / "journal").glob("job-*.jsonl"))
    rel = f"journal/{job_file.name}"
    state, members = _pull(box, run.id, {rel: 10**12, "system_logs/driver_log.txt": -5,
                                         "agent_journal/agent.jsonl": "x"})
    for name in (rel, "system_logs/driver_log.txt", "agent_journal/agent.jsonl"):
        assert state["files"][name]["reset"] is True and state["files"][name]["offset"] == 0, name  # type: ignore
    assert members[f"data/{rel}"] == job_file.read_bytes()
    os.truncate(job_file, 10**12)  # a damaged mirror claims a terabyte (sparse): the host starts it over
    host.sh(f"open({run._record.run_dir!r} + '/src/go', 'w').close()")
    run.wait_for_completion()
    assert run.get_metrics() == {"v": list(range(10))}  # every value once
    assert job_file.stat().st_size < 1 << 20


# -- 3. bounded decompression ------------------------------------------------------------------------------
ZEROS = 200 * 1024 * 1024


def _tar(name: str, data: bytes) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        info = tarfile.TarInfo(name)
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


def _host_receive(host: SshHost, stream: Path) -> dict[str, object]:
    """``receive`` run on the host from a file, with the peak memory of its process."""
    agent_dir = f"/root/.rundock/agent/{agent_bundle()[0]}"
    return json.loads(host.sh(
        "import json, os, resource, subprocess, sys\n"
        f"env = dict(os.environ, PYTHONPATH={agent_dir!r})\n"
        f"with open('/sshtest/{stream.name}', 'rb') as fh:\n"
        "    p = subprocess.run([sys.executable, '-m', 'rundock.agent.remote', 'receive', '/root/.rundock'],\n"
        "                       stdin=fh, capture_output=True, env=env)\n"
        "print(json.dumps({'rc': p.returncode, 'err': p.stderr.decode()[-600:],\n"
        "                  'rss_mb': resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024}))"))


def _artifact_files(host: SshHost) -> list[str]:
    return json.loads(host.sh("import json, os; r = '/root/.rundock/artifacts'\n"
                              "print(json.dumps(sorted(os.path.relpath(os.path.join(d, n), r)\n"
                              "      for d, _, ns in os.walk(r) for n in ns)))"))


def test_a_zip_bomb_is_refused_in_bounded_memory_and_leaves_nothing(workspace: Workspace, box: RemoteTarget,
                                                                    host: SshHost) -> None:
    box.ensure_agent(box.connect())
    zeros = b"\0" * ZEROS
    digest = hashlib.sha256(zeros).hexdigest()
    bomb = zlib.compress(zeros, 9)
    del zeros
    assert len(bomb) < 1 << 20
    before = _artifact_files(host)
    cases = {"no-size.tar": (f"{digest}.z", "not named"),  # what a submitter of an older version would send
             "declared-small.tar": (f"{digest}.1000.z", "larger than the 1000 bytes"),
             "honest.tar": (f"{digest}.{ZEROS}.z", None)}
    for file_name, (member, refusal) in cases.items():
        stream = host.folder / file_name  # the host sees this folder at /sshtest
        stream.write_bytes(_tar(member, bomb))
        answer = _host_receive(host, stream)
        assert answer["rss_mb"] < 64, (file_name, answer)  # far below the 200 MB it inflates to
        if refusal is None:
            assert answer["rc"] == 0, answer
        else:
            assert answer["rc"] != 0 and refusal in str(answer["err"]), answer
            assert _artifact_files(host) == before, file_name  # no partial file, no pack, nothing
    host.sh(f"import os; os.chmod('/root/.rundock/artifacts/{digest[:2]}/{digest}', 0o644); "
            f"os.unlink('/root/.rundock/artifacts/{digest[:2]}/{digest}')")
    code, _, err = _host_command(box, "receive", stdin=_tar(f"{digest}.1000.z", bomb))  # the same over SSH
    assert code != 0 and b"larger than the 1000 bytes" in err
    assert _artifact_files(host) == before


# -- 4. secrets, and private files on the host -------------------------------------------------------------
def _host_files_containing(host: SshHost, text: str) -> list[str]:
    return json.loads(host.sh(
        "import json, os\nfound = []\n"
        "for d, dirs, names in os.walk('/'):\n"
        "    dirs[:] = [x for x in dirs if os.path.join(d, x) not in ('/proc', '/sys', '/dev')]\n"
        "    for n in names:\n"
        "        p = os.path.join(d, n)\n"
        "        try:\n"
        "            if os.path.isfile(p) and not os.path.islink(p) and os.path.getsize(p) < 1 << 26 and "
        f"{text.encode()!r} in open(p, 'rb').read():\n"
        "                found.append(p)\n"
        "        except OSError:\n"
        "            pass\n"
        "print(json.dumps(found))"))


def _mode(host: SshHost, path: str) -> int:
    return int(host.sh(f"import os; print(os.stat({path!r}).st_mode & 0o777)"))


SECRET_JOB = """
import hashlib, os, time
from rundock import Run
run = Run.get_context()
try:
    print("token", hashlib.sha256(run.get_secret("api-token").encode()).hexdigest()[:12], flush=True)
except KeyError as exc:
    print("no token:", exc, flush=True)
try:
    run.get_secret("db-password")
    print("db-password readable", flush=True)
except KeyError:
    print("no db-password", flush=True)
while not os.path.exists("go"):
    time.sleep(0.05)
"""


def test_only_the_secrets_a_run_names_reach_the_host(workspace: Workspace, host: SshHost, tmp_path: Path,
                                                      source: Callable[..., Path],
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.delenv("SSH_AUTH_SOCK", raising=False)
    root = f"/root/private-{time.time_ns()}"
    host.sh(f"import os; os.makedirs({root!r}); os.chmod({root!r}, 0o755)")  # an existing root others may enter
    _attach(workspace, host, name="vault", root=root)
    _rundock(workspace, "target", "trust", "vault")
    workspace.set_secret("api-token", "tok-named-s3cret-value")
    workspace.set_secret("db-password", "db-unnamed-s3cret-value")
    src = source(**{"train.py": SECRET_JOB})
    named = _submit(workspace, src, target="vault", secrets=["api-token"])
    default = _submit(workspace, src, target="vault")
    for run in (named, default):
        wait_until(lambda r=run: r.get_status() == "Running" and b"db-password" in workspace.store.read_log(  # type: ignore
            r.id, "system_logs/driver_log.txt"), timeout=30, message="the job to read its secrets")
    secrets_file = f"{named._record.run_dir}/secrets.json"
    assert _host_files_containing(host, "db-unnamed-s3cret-value") == []
    assert _host_files_containing(host, "tok-named-s3cret-value") == [secrets_file]
    for path, mode in ((root, 0o700), (f"{root}/runs", 0o700), (named._record.run_dir or "", 0o700),
                       (secrets_file, 0o600), (f"{root}/artifacts", 0o700)):
        assert _mode(host, path) == mode, path
    assert stat.S_IMODE(os.stat(RemoteTarget(workspace, "vault").mirror_dir(named.id)).st_mode) == 0o700
    for run in (named, default):
        host.sh(f"open({run._record.run_dir!r} + '/src/go', 'w').close()")
        run.wait_for_completion()
    token = hashlib.sha256(b"tok-named-s3cret-value").hexdigest()[:12]
    assert workspace.store.read_log(named.id, "system_logs/driver_log.txt").decode().splitlines() == [
        f"token {token}", "no db-password"]
    assert workspace.store.read_log(default.id, "system_logs/driver_log.txt").decode().startswith("no token:")
    assert _host_files_containing(host, "tok-named-s3cret-value") == []  # removed when the run ended


# -- 5. trusting a changed host key --------------------------------------------------------------------------
def _trust_in_a_terminal(project: Path, name: str, answer: str) -> tuple[int, str]:
    """``rundock target trust NAME`` with a terminal on stdin, answering its question with ``answer``."""
    parent, child = pty.openpty()
    proc = subprocess.Popen([sys.executable, "-m", "rundock", "target", "trust", name], cwd=project, stdin=child,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    os.close(child)
    shown = b""
    deadline = time.monotonic() + 60
    while b"[y/N]" not in shown and proc.poll() is None and time.monotonic() < deadline:
        if select.select([proc.stdout], [], [], 0.1)[0]:
            shown += os.read(proc.stdout.fileno(), 65536)  # type: ignore[union-attr]
    os.write(parent, answer.encode() + b"\n")
    rest, _ = proc.communicate(timeout=60)
    os.close(parent)
    return proc.returncode, (shown + rest).decode()


def test_trust_shows_a_changed_key_and_asks_before_replacing_it(workspace: Workspace, box: RemoteTarget,
                                                                host: SshHost, source: Callable[..., Path]) -> None:
    project = Path(workspace.path).parent
    current = paramiko.RSAKey.from_private_key_file(str(host.folder / "host_key"))
    assert "Already trusted" in _rundock(workspace, "target", "trust", "box").stderr
    other = paramiko.RSAKey.generate(2048)
    known = Path(box.known_hosts)
    known.write_text(f"[127.0.0.1]:{host.port} ssh-rsa {other.get_base64()}\n")
    refused = subprocess.run([sys.executable, "-m", "rundock", "target", "trust", "box"], cwd=project,
                             stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=60)
    assert refused.returncode != 0
    assert fingerprint(other) in refused.stderr and fingerprint(current) in refused.stderr
    assert "HAS CHANGED" in refused.stderr and "--yes" in refused.stderr
    assert other.get_base64() in known.read_text()  # nothing replaced

    code, shown = _trust_in_a_terminal(project, "box", "n")
    assert code != 0 and fingerprint(other) in shown and fingerprint(current) in shown
    assert other.get_base64() in known.read_text()
    code, shown = _trust_in_a_terminal(project, "box", "y")
    assert code == 0, shown
    assert current.get_base64() in known.read_text() and other.get_base64() not in known.read_text()

    known.write_text(f"[127.0.0.1]:{host.port} ssh-rsa {other.get_base64()}\n")
    accepted = _rundock(workspace, "target", "trust", "box", "--yes")
    assert fingerprint(other) in accepted.stderr and f"Trusted [127.0.0.1]:{host.port}" in accepted.stderr
    assert known.read_text().count("\n") == 1 and current.get_base64() in known.read_text()
    assert stat.S_IMODE(known.stat().st_mode) == 0o600
    run = _submit(workspace, source(**{"train.py": "print('trusted again')"}))
    run.wait_for_completion()
    assert run.get_status() == "Completed"
