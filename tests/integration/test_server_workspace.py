"""A workspace whose history is a team server, as users drive it: ``rundock login``, ``rundock submit`` on the
local target, reading from another laptop, a server restarted mid-run, a stopped server, TLS trust, secrets.

Every "laptop" is a project folder with its own ``.rundock`` and its own rundock home (credentials); commands
run as real ``rundock`` processes against a real server process.
"""

from __future__ import annotations

import dataclasses
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests
import yaml

from rundock.history.backends import http_credentials as creds
from rundock.states import RunStatus
from rundock.submitter.experiment import Experiment
from rundock.submitter.model import Model
from rundock.submitter.run import Run
from rundock.submitter.server_secrets import SecretNotReadableError
from rundock.submitter.workspace import Workspace
from tests.conftest import REPO, wait_until
from tests.server_fixtures import ServerHandle, running_server

TRAIN = """
import os, sys, time
from rundock.context import Run
run = Run.get_context()
for i in range(int(sys.argv[1])):
    run.log("step", i)
    print(f"line {i}", flush=True)
    time.sleep(float(sys.argv[2]))
os.makedirs("outputs", exist_ok=True)
os.makedirs("logs", exist_ok=True)
with open("outputs/model.bin", "wb") as fh:
    fh.write(bytes(range(256)) * 4096)
with open("logs/train.log", "w") as fh:
    fh.write("trained\\n")
"""
MODEL = bytes(range(256)) * 4096


@dataclasses.dataclass
class Laptop:
    """A user's machine: a project with its own workspace, and a rundock home of its own."""

    project: Path
    home: Path

    @classmethod
    def make(cls, folder: Path) -> Laptop:
        laptop = cls(folder / "project", folder / "home")
        laptop.project.mkdir(parents=True)
        (laptop.project / "train.py").write_text(TRAIN)
        laptop.rundock("init")
        return laptop

    def env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if k != "RUNDOCK_TOKEN"}
        env.update(RUNDOCK_HOME=str(self.home), RUNDOCK_HEARTBEAT_SECONDS="0.2", RUNDOCK_AGENT_IDLE_SECONDS="10",
                   PYTHONPATH=str(REPO))
        return env

    def rundock(self, *args: str, check: bool = True, timeout: float = 120, stdin: str = "",
                **env: str) -> subprocess.CompletedProcess[str]:
        done = subprocess.run([sys.executable, "-m", "rundock", *args], cwd=self.project, capture_output=True,
                              text=True, timeout=timeout, env={**self.env(), **env}, input=stdin)
        if check:
            assert done.returncode == 0, f"rundock {' '.join(args)}: {done.stdout}\n{done.stderr}"
        return done

    def login(self, server: ServerHandle, name: str) -> str:
        return self.rundock("login", server.url, "--token", server.make_token(name)).stdout

    def workspace(self, monkeypatch: pytest.MonkeyPatch) -> Workspace:
        """This laptop's workspace, opened in the test process (which then reads this laptop's credentials)."""
        monkeypatch.setenv("RUNDOCK_HOME", str(self.home))
        monkeypatch.delenv("RUNDOCK_TOKEN", raising=False)
        return Workspace(str(self.project / ".rundock"))


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerHandle]:
    with running_server(tmp_path_factory.mktemp("server")) as handle:
        yield handle


def restart(handle: ServerHandle) -> ServerHandle:
    """Start the stopped server again: same configuration, same store, same port."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("RUNDOCK_SERVER_")}
    env["PYTHONPATH"] = str(REPO)
    with open(handle.log_path, "ab") as log:
        process = subprocess.Popen([sys.executable, "-m", "rundock.server", "--config", str(handle.config_path),
                                    "--host", "127.0.0.1", "--port", handle.url.rsplit(":", 1)[1]],
                                   stdout=log, stderr=subprocess.STDOUT, env=env, cwd=str(handle.config_path.parent))
    again = dataclasses.replace(handle, process=process)

    def ready() -> bool:
        try:
            return requests.get(f"{again.url}/readyz", timeout=2).status_code == 200
        except requests.RequestException:
            return False

    wait_until(ready, timeout=30, message="the server to start again")
    return again


def test_runs_submitted_from_one_laptop_are_read_whole_from_another(server: ServerHandle, tmp_path: Path,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    alice = Laptop.make(tmp_path / "alice")
    assert "as alice (role user)" in alice.login(server, "alice")
    config = yaml.safe_load((alice.project / ".rundock" / "config.yaml").read_text())
    assert config["history"] == server.url
    assert oct((alice.home / "credentials.json").stat().st_mode & 0o777) == "0o600"

    submitted = alice.rundock("submit", ".", "-s", "train.py", "-e", "team", "--", "5", "0.05")
    assert "Status: Completed" in submitted.stdout and "line 4" in submitted.stdout
    run_id = alice.rundock("runs", "-e", "team", "--json").stdout
    run_id = yaml.safe_load(run_id)[0]["run_id"]

    bob = Laptop.make(tmp_path / "bob")
    bob.login(server, "bob")
    ws = bob.workspace(monkeypatch)
    run = Run.get(ws, run_id)
    assert run.get_status() == RunStatus.COMPLETED.value
    assert run.get_metrics() == {"step": [0, 1, 2, 3, 4]}
    assert {"outputs/model.bin", "logs/train.log"} <= set(run.get_file_names())
    target = run.download_file("outputs/model.bin", str(tmp_path / "model.bin"))
    assert Path(target).read_bytes() == MODEL  # fetched from the server: it ran on alice's laptop
    assert b"line 4" in ws.store.read_log(run_id, "system_logs/driver_log.txt")
    assert run_id in bob.rundock("runs").stdout
    shown = bob.rundock("logs", run_id)
    assert "line 0" in shown.stdout
    assert run.register_model("tiny", "outputs/model.bin").version == 1  # bob registers alice's output
    weights = tmp_path / "weights.bin"
    weights.write_bytes(os.urandom(4096))
    Model.register(ws, str(weights), "weights")  # and a file of his own: sent from his cache
    ws.close()

    alices = alice.workspace(monkeypatch)
    Model(alices, "weights").download(str(tmp_path / "alice-dl"))
    assert (tmp_path / "alice-dl" / "weights.bin").read_bytes() == weights.read_bytes()
    assert Model(alices, "tiny").run_id == run_id
    alices.close()

    from_bob = bob.rundock("submit", ".", "-s", "train.py", "-e", "team", "--detach", "--", "1", "0")
    bobs_run = from_bob.stdout.strip()
    assert bobs_run in alice.rundock("runs", "-e", "team").stdout  # the first laptop sees the second's run
    alice.rundock("wait", bobs_run)


def test_a_run_in_a_container_lands_on_the_server(server: ServerHandle, tmp_path: Path, docker_base_image: str,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    laptop = Laptop.make(tmp_path / "laptop")
    laptop.login(server, "hana")
    done = laptop.rundock("submit", ".", "-s", "train.py", "-e", "docker", "--docker-image", docker_base_image,
                          "--", "3", "0", timeout=300)
    assert "Status: Completed" in done.stdout
    ws = laptop.workspace(monkeypatch)
    (run,) = ws.store.list_runs(experiment="docker")
    assert [m.value for m in ws.store.get_metric_records(run.run_id, "step")] == [0, 1, 2]
    assert ws.store.list_files(run.run_id)["outputs/model.bin"].size == len(MODEL)
    ws.close()


def test_a_run_on_an_ssh_host_lands_on_the_server(server: ServerHandle, tmp_path: Path, docker_base_image: str,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    from rundock import ComputeTarget, RemoteCompute, RunConfiguration, ScriptRunConfig
    from tests.hosts import running_ssh_host

    monkeypatch.setenv("HOME", str(tmp_path / "user-home"))  # no ~/.ssh of the machine running the tests
    monkeypatch.delenv("SSH_AUTH_SOCK", raising=False)
    laptop, reader = Laptop.make(tmp_path / "laptop"), Laptop.make(tmp_path / "reader")
    laptop.login(server, "ivan")
    reader.login(server, "judy")
    with running_ssh_host(docker_base_image, tmp_path) as host:
        ws = laptop.workspace(monkeypatch)
        ComputeTarget.attach(ws, "box", RemoteCompute.attach_configuration(
            address="127.0.0.1", ssh_port=host.port, username="root", private_key_file=host.key_file))
        laptop.rundock("target", "trust", "box")
        run = Experiment(ws, "remote").submit(ScriptRunConfig(str(laptop.project), "train.py", arguments=[3, 0],
                                                              run_config=RunConfiguration(target="box")))
        run.wait_for_completion()
        # A team secret the run configuration lists reaches the job on the host, fetched for that run.
        ws.set_secret("BOX_TOKEN", "s3cr3t")
        (laptop.project / "peek.py").write_text(
            "import os\nfrom rundock.context import Run\nrun = Run.get_context()\n"
            "run.log('secret_ok', run.get_secret('BOX_TOKEN') == 's3cr3t')\n"
            "run.log('mlflow_run', os.environ.get('MLFLOW_RUN_ID') == run.id)\n")
        peek = Experiment(ws, "remote").submit(ScriptRunConfig(str(laptop.project), "peek.py", run_config=(
            RunConfiguration(target="box", secrets=["BOX_TOKEN"]))))
        peek.wait_for_completion()
        assert peek.get_metrics() == {"secret_ok": True, "mlflow_run": True}  # MLflow's variables reach the host
        ws.close()
    other = Run.get(reader.workspace(monkeypatch), run.id)  # the host is gone: everything is on the server
    assert other.get_status() == "Completed" and other.get_metrics() == {"step": [0, 1, 2]}
    assert Path(other.download_file("outputs/model.bin", str(tmp_path / "m.bin"))).read_bytes() == MODEL
    other.experiment.workspace.close()


def test_a_server_restarted_mid_run_loses_and_repeats_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    handle = running_server(tmp_path / "server")
    try:
        laptop = Laptop.make(tmp_path / "laptop")
        laptop.login(handle, "alice")
        run_id = laptop.rundock("submit", ".", "-s", "train.py", "-e", "restart", "--detach", "--",
                                "60", "0.1").stdout.strip()
        ws = laptop.workspace(monkeypatch)
        wait_until(lambda: len(ws.store.get_metric_records(run_id)) >= 10, timeout=60, message="the first metrics")
        assert handle.stop() == 0
        time.sleep(2)  # the run goes on meanwhile: its agent keeps everything in the journal
        handle = restart(handle)
        wait_until(lambda: ws.store.get_run(run_id).status.is_terminal, timeout=120, message="the run to end")
        assert ws.store.get_run(run_id).status == RunStatus.COMPLETED
        assert [m.value for m in ws.store.get_metric_records(run_id, "step")] == list(range(60))  # each once
        assert "outputs/model.bin" in ws.store.list_files(run_id)
        ws.close()
    finally:
        handle.stop()


def test_a_stopped_server_is_a_clear_error_in_bounded_time(tmp_path: Path) -> None:
    handle = running_server(tmp_path / "server")
    laptop = Laptop.make(tmp_path / "laptop")
    laptop.login(handle, "alice")
    handle.stop()
    started = time.monotonic()
    failed = laptop.rundock("runs", check=False, RUNDOCK_HTTP_RETRY_SECONDS="2")
    assert time.monotonic() - started < 30
    assert failed.returncode == 2
    assert handle.url in failed.stderr and "rundock server" in failed.stderr and "history:" in failed.stderr


def test_an_unknown_certificate_is_refused_until_trusted_and_a_changed_one_again(tmp_path: Path) -> None:
    with running_server(tmp_path / "a", tls=True) as first, running_server(tmp_path / "b", tls=True) as second:
        laptop = Laptop.make(tmp_path / "laptop")
        token = first.make_token("erin")
        first_fp = creds.fingerprint(Path(str(first.verify)).read_text())
        second_fp = creds.fingerprint(Path(str(second.verify)).read_text())

        refused = laptop.rundock("login", first.url, "--token", token, check=False)
        assert refused.returncode == 2
        assert first_fp in refused.stderr and f"rundock login {first.url} --token TOKEN --trust-cert" in refused.stderr
        assert token not in refused.stderr + refused.stdout

        declined = laptop.rundock("login", first.url, "--token", token, "--trust-cert", check=False, stdin="n\n")
        assert declined.returncode != 0 and first_fp in declined.stderr
        assert not (laptop.home / "trusted_certs").exists() or not any((laptop.home / "trusted_certs").iterdir())

        trusted = laptop.rundock("login", first.url, "--token", token, "--trust-cert", "--yes")
        assert first_fp in trusted.stderr and "as erin (role user)" in trusted.stdout
        assert laptop.rundock("whoami").stdout.startswith("erin (role user")
        assert laptop.rundock("runs").returncode == 0

        # This laptop trusted `first`'s certificate for `second`'s address: `second` presents another one.
        cert_file = laptop.home / "trusted_certs" / Path(creds.cert_path(second.url)).name
        cert_file.write_text(Path(str(first.verify)).read_text())
        changed = laptop.rundock("login", second.url, "--token", second.make_token("erin"), check=False)
        assert changed.returncode == 2 and "CHANGED" in changed.stderr
        assert first_fp in changed.stderr and second_fp in changed.stderr


def test_server_secrets_are_set_from_a_laptop_and_read_only_by_runs(server: ServerHandle, tmp_path: Path,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    laptop = Laptop.make(tmp_path / "laptop")
    laptop.login(server, "frank")
    laptop.rundock("secret", "set", "API_KEY", "--value", "s3cret-value")
    assert "API_KEY" in laptop.rundock("secret", "list").stdout
    ws = laptop.workspace(monkeypatch)
    with pytest.raises(SecretNotReadableError, match="only to runs"):
        ws.secrets.get_secret("API_KEY")
    (laptop.project / "uses_secret.py").write_text(
        "from rundock.context import Run\n"
        "assert Run.get_context().get_secret('API_KEY') == 's3cret-value'\n"
        "print('the secret arrived')\n")
    (laptop.project / "secret.runconfig.yml").write_text("script: uses_secret.py\nsecrets: [API_KEY]\n")
    done = laptop.rundock("submit", ".", "-c", str(laptop.project / "secret.runconfig.yml"), "-e", "secrets")
    assert "the secret arrived" in done.stdout and "s3cret-value" not in done.stdout
    ws.close()


def test_a_notebooks_values_and_outputs_reach_the_server_once(server: ServerHandle, tmp_path: Path,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    alice, bob = Laptop.make(tmp_path / "alice"), Laptop.make(tmp_path / "bob")
    alice.login(server, "alice")
    bob.login(server, "bob")
    outputs = tmp_path / "nb-outputs"
    outputs.mkdir()
    (outputs / "table.csv").write_text("a,b\n1,2\n")
    ws = alice.workspace(monkeypatch)
    run = Experiment(ws, "notebook").start_logging(outputs=str(outputs))
    for i in range(2000):
        run.log("loss", i * 0.5)
    run.tag("stage", "done")
    run.complete()
    ws.close()

    other = Run.get(bob.workspace(monkeypatch), run.id)
    assert other.get_status() == "Completed" and other.get_tags()["stage"] == "done"
    assert other.get_metrics()["loss"] == [i * 0.5 for i in range(2000)]
    assert Path(other.download_file("outputs/table.csv", str(tmp_path / "t.csv"))).read_text() == "a,b\n1,2\n"
    other.experiment.workspace.close()


def test_logout_forgets_the_token_and_the_workspace_goes_back_to_its_own_history(server: ServerHandle,
                                                                                 tmp_path: Path) -> None:
    laptop = Laptop.make(tmp_path / "laptop")
    laptop.login(server, "gina")
    laptop.rundock("logout")
    config = yaml.safe_load((laptop.project / ".rundock" / "config.yaml").read_text())
    assert "history" not in config
    assert creds.server_key(server.url) not in (laptop.home / "credentials.json").read_text()
    assert laptop.rundock("whoami", check=False).returncode == 2


def test_a_token_in_the_environment_is_enough_for_a_local_run(server: ServerHandle, tmp_path: Path,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    """No `rundock login`: `history:` in the config and RUNDOCK_TOKEN in the environment. The run's agent needs the
    token too (it writes the run to the server); the job never sees it."""
    laptop = Laptop.make(tmp_path / "ci")
    (laptop.project / ".rundock" / "config.yaml").write_text(f"history: {server.url}\n")
    (laptop.project / "env.py").write_text(
        "import os\nfrom rundock.context import Run\n"
        "Run.get_context().log('token_seen', 'RUNDOCK_TOKEN' in os.environ)\n")
    token = server.make_token("ci-bot")
    done = laptop.rundock("submit", ".", "-s", "env.py", "-e", "env-token", RUNDOCK_TOKEN=token)
    assert "Status: Completed" in done.stdout, done.stdout + done.stderr
    monkeypatch.setenv("RUNDOCK_TOKEN", token)
    ws = Workspace(str(laptop.project / ".rundock"))
    (run,) = ws.store.list_runs(experiment="env-token")
    assert run.submitted_by == "ci-bot"
    assert [m.value for m in ws.store.get_metric_records(run.run_id, "token_seen")] == [False]
    ws.close()


def test_login_to_a_url_where_no_server_answers_fails_fast_and_says_what_to_check(tmp_path: Path) -> None:
    from tests.server_fixtures import free_port

    laptop = Laptop.make(tmp_path / "typo")
    began = time.monotonic()
    done = laptop.rundock("login", f"http://127.0.0.1:{free_port()}", "--token", "rdk_x", check=False)
    assert done.returncode == 2 and time.monotonic() - began < 20
    assert "cannot log in" in done.stderr and "Check the URL and the port" in done.stderr
    assert "config.yaml" not in done.stderr  # the URL was typed just now: nothing to check in a file
    assert "history:" not in (laptop.project / ".rundock" / "config.yaml").read_text()
