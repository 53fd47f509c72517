"""The pieces of ``rundock agent serve`` and pool targets that need no server: GPU detection, requirements from
a run configuration, the systemd unit, adoption of per-run agents, the attempt a history client sends."""

from __future__ import annotations

import fcntl
import os
import stat
from pathlib import Path

import pytest

from rundock.agent.job import MODE_STORE, JobSpec
from rundock.context import rundir
from rundock.errors import ConfigError, StoreError
from rundock.history.backends.http import ENV_ATTEMPT, HttpRunStore
from rundock.history.backends.http_client import ATTEMPT_HEADER
from rundock.pool_agent import adopt, gpus, service
from rundock.pool_agent.client import Attempt
from rundock.pool_agent.serve import ServeOptions
from rundock.runconfig.environment import DockerSection, Environment
from rundock.runconfig.run_configuration import Resources, RunConfiguration
from rundock.submitter.targets.pool import requirements

SMI = """#!/bin/sh
printf '0, NVIDIA A100-SXM4-80GB, 81920\\n1, NVIDIA A100-SXM4-80GB, 81920\\n2, Tesla T4, 15360\\n'
"""


@pytest.fixture()
def fake_smi(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    path = tmp_path / "bin" / "nvidia-smi"
    path.parent.mkdir()
    path.write_text(SMI)
    path.chmod(0o755)
    monkeypatch.setenv("PATH", f"{path.parent}{os.pathsep}{os.environ['PATH']}")
    return path


def test_gpus_are_read_from_nvidia_smi_and_restricted_by_gpus(fake_smi: Path) -> None:
    assert gpus.detect() == [gpus.Gpu(0, "NVIDIA A100-SXM4-80GB", 81920), gpus.Gpu(1, "NVIDIA A100-SXM4-80GB", 81920),
                             gpus.Gpu(2, "Tesla T4", 15360)]
    assert [g.index for g in gpus.detect(gpus.parse_selection("2,0"))] == [2, 0]
    with pytest.raises(gpus.GpuError, match="names GPU 7, which this box does not have; it has 0, 1, 2"):
        gpus.detect([0, 7])


def test_a_box_without_nvidia_smi_has_no_gpus_and_bad_selections_are_named(monkeypatch: pytest.MonkeyPatch,
                                                                            tmp_path: Path) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))
    assert gpus.detect() == []
    with pytest.raises(gpus.GpuError, match="does not have; it has none"):
        gpus.detect([0])
    with pytest.raises(gpus.GpuError, match="indices separated by commas"):
        gpus.parse_selection("0,x")
    with pytest.raises(gpus.GpuError, match="line 1 is not"):
        gpus.parse("garbage\n")
    assert gpus.parse_selection(None) is None and gpus.parse_selection("all") is None


def test_requirements_come_from_resources_and_the_docker_section() -> None:
    config = RunConfiguration(resources=Resources(gpu_count=2, gpu_memory_mb=40000, labels=["nvlink"]))
    assert requirements(config, None) == {"gpus": 2, "gpu_memory_mb": 40000, "labels": ["nvlink"]}
    docker = Environment(name="d", docker=DockerSection(enabled=True, base_image="img", gpu_count=1))
    assert requirements(RunConfiguration(), docker) == {"gpus": 1, "labels": ["docker"]}
    assert requirements(RunConfiguration(), None) == {}


def test_resources_in_a_run_configuration_file_are_checked_field_by_field() -> None:
    config = RunConfiguration.from_mapping({"target": "a100", "resources": {"gpu_count": 4, "priority": 3}})
    assert config.resources == Resources(gpu_count=4, priority=3)
    assert RunConfiguration.from_mapping(config.to_mapping()) == config
    with pytest.raises(ConfigError, match=r"field 'resources.gpu_count': expected an integer >= 0"):
        RunConfiguration.from_mapping({"resources": {"gpu_count": -1}})
    with pytest.raises(ConfigError, match=r"field 'resources.labels\[0\]': expected a label"):
        RunConfiguration.from_mapping({"resources": {"labels": ["has space"]}})
    with pytest.raises(ConfigError, match=r"field 'resources.gpus'"):
        RunConfiguration.from_mapping({"resources": {"gpus": 2}})


def test_the_service_unit_restarts_agent_serve_and_keeps_the_token_out_of_the_unit(tmp_path: Path) -> None:
    options = ServeOptions(server="https://runs.lab:8765", pool="a100", work_dir=str(tmp_path / "work"), gpus=[0, 1],
                           slots=2, docker=True, labels=["nvlink"])
    installed = service.install(options, "rdk_secret", root=str(tmp_path / "root"))
    assert not installed.started
    unit = Path(installed.unit_path).read_text()
    assert "rdk_secret" not in unit
    assert f"EnvironmentFile={installed.env_path}" in unit
    assert "Restart=always" in unit and "KillMode=process" in unit  # a restart leaves running jobs alone
    assert "agent serve --server https://runs.lab:8765 --pool a100" in unit
    assert "--gpus 0,1 --slots 2 --docker --labels nvlink" in unit
    env = Path(installed.env_path)
    assert env.read_text() == "RUNDOCK_TOKEN=rdk_secret\n"
    assert stat.S_IMODE(env.stat().st_mode) == 0o600
    assert installed.commands[-1][-1] == "rundock-agent-a100.service"
    with pytest.raises(ValueError, match="no token"):
        service.install(options, "", root=str(tmp_path / "root"))


def _run_dir(work: Path, run_id: str, attempt: int, pool: str = "a100") -> Path:
    run_dir = work / "runs" / run_id
    run_dir.mkdir(parents=True)
    JobSpec(run_id=run_id, experiment="e", mode=MODE_STORE, store_uri="http://127.0.0.1:1", artifacts_root="/x",
            snapshot_id="s", script="t.py", interpreter="python3", attempt=attempt, target=pool,
            environment={"docker": {"gpu_device_ids": ["1", "3"]}}).save(str(run_dir))
    return run_dir


def test_adoption_finds_live_per_run_agents_and_ended_attempts_not_yet_reported(tmp_path: Path) -> None:
    work = tmp_path / "work"
    live = _run_dir(work, "live", 1)
    _run_dir(work, "ended", 2)
    _run_dir(work, "other-pool", 1, pool="t4")
    fd = os.open(live / rundir.AGENT_LOCK, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)  # as its per-run agent holds it (another open file description)
        found = {f.attempt.run_id: f for f in adopt.scan(str(work), "a100")}
        assert set(found) == {"live", "ended"}
        assert found["live"].alive and found["live"].gpus == [1, 3]
        assert not found["ended"].alive and found["ended"].attempt == Attempt("ended", 2)
        adopt.mark_reported(str(work), Attempt("ended", 2))
        assert [f.attempt.run_id for f in adopt.scan(str(work), "a100")] == ["live"]
    finally:
        os.close(fd)


def test_a_history_client_for_an_attempt_sends_it_with_every_request(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(ENV_ATTEMPT, "3")
    store = HttpRunStore.from_uri("http://127.0.0.1:1")
    assert store.attempt == 3 and store.client.session.headers[ATTEMPT_HEADER] == "3"
    monkeypatch.delenv(ENV_ATTEMPT)
    assert ATTEMPT_HEADER not in HttpRunStore.from_uri("http://127.0.0.1:1").client.session.headers
    monkeypatch.setenv(ENV_ATTEMPT, "zero")
    with pytest.raises(StoreError, match="RUNDOCK_ATTEMPT must be a whole number"):
        HttpRunStore.from_uri("http://127.0.0.1:1")
