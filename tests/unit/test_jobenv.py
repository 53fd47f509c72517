"""What passes from the submitter's environment to an agent and to a job."""

from __future__ import annotations

import pytest

from rundock.agent.jobenv import agent_environment, is_secret_name, job_base_environment

SUBMITTER = {
    "PATH": "/usr/bin", "HOME": "/home/me", "USER": "me", "LANG": "C.UTF-8", "LC_ALL": "C", "TZ": "UTC",
    "CUDA_VISIBLE_DEVICES": "0", "OMP_NUM_THREADS": "4", "NCCL_DEBUG": "INFO", "CONDA_PREFIX": "/opt/conda",
    "VIRTUAL_ENV": "/venv", "PYTHONHASHSEED": "0", "PYTHONPATH": "/my/libs", "HTTPS_PROXY": "http://proxy:3128",
    "RUNDOCK_SSH_PASSWORD": "hunter2", "RUNDOCK_SSH_KEY_PASSPHRASE": "open", "RUNDOCK_SERVER_TOKEN": "t",
    "RUNDOCK_TOKEN": "rdk_team", "MY_API_TOKEN": "tok", "HF_TOKEN": "hf", "AWS_SECRET_ACCESS_KEY": "aws",
    "DB_PASSWORD": "db",
    "GOOGLE_APPLICATION_CREDENTIALS": "/key.json", "CUDA_passphrase": "x", "db_password": "y",
    "RUNDOCK_HEARTBEAT_SECONDS": "0.5", "RUNDOCK_AGENT_LOST_AFTER_SECONDS": "60", "DOCKER_HOST": "unix:///d.sock",
    "PIP_INDEX_URL": "https://pypi.example/simple", "SSH_AUTH_SOCK": "/tmp/agent.sock", "EDITOR": "vim",
    "UNRELATED": "x",
}
NEVER = {"RUNDOCK_SSH_PASSWORD", "RUNDOCK_SSH_KEY_PASSPHRASE", "RUNDOCK_SERVER_TOKEN", "MY_API_TOKEN", "HF_TOKEN",
         "AWS_SECRET_ACCESS_KEY", "DB_PASSWORD", "GOOGLE_APPLICATION_CREDENTIALS", "CUDA_passphrase", "db_password"}


def test_a_job_gets_the_allowlist_and_nothing_secret() -> None:
    job = job_base_environment(SUBMITTER)
    assert set(job) == {"PATH", "HOME", "USER", "LANG", "LC_ALL", "TZ", "CUDA_VISIBLE_DEVICES", "OMP_NUM_THREADS",
                        "NCCL_DEBUG", "CONDA_PREFIX", "VIRTUAL_ENV", "PYTHONHASHSEED", "PYTHONPATH", "HTTPS_PROXY"}
    assert job["PYTHONPATH"] == "/my/libs" and job["PATH"] == "/usr/bin"


def test_the_agent_gets_its_settings_but_never_credentials() -> None:
    agent = agent_environment(SUBMITTER)
    assert not NEVER & set(agent)
    for name in ("PATH", "PYTHONPATH", "RUNDOCK_HEARTBEAT_SECONDS", "RUNDOCK_AGENT_LOST_AFTER_SECONDS", "DOCKER_HOST",
                 "PIP_INDEX_URL", "CUDA_VISIBLE_DEVICES"):
        assert agent[name] == SUBMITTER[name]
    assert "SSH_AUTH_SOCK" not in agent and "EDITOR" not in agent and "UNRELATED" not in agent
    assert agent["RUNDOCK_TOKEN"] == "rdk_team"  # its run history's (a team server's) token: the agent's own
    assert "RUNDOCK_TOKEN" not in job_base_environment(agent) and "RUNDOCK_TOKEN" not in job_base_environment(SUBMITTER)


def test_the_agents_own_environment_gives_the_same_job_base() -> None:
    """The agent computes its job's base from its own os.environ (what the submitter sent it)."""
    agent = agent_environment(SUBMITTER)
    assert job_base_environment(agent) == job_base_environment(SUBMITTER)
    assert "RUNDOCK_HEARTBEAT_SECONDS" not in job_base_environment(agent) and "DOCKER_HOST" not in \
        job_base_environment(agent)


@pytest.mark.parametrize(("user_path", "expected"), [("/my/libs", "/my/libs"), ("", None)])
def test_the_job_gets_the_users_pythonpath_not_the_agents(user_path: str, expected: str | None) -> None:
    agent = {"PATH": "/usr/bin", "PYTHONPATH": "/rundock:/site-packages", "RUNDOCK_USER_PYTHONPATH": user_path}
    assert job_base_environment(agent).get("PYTHONPATH") == expected
    assert "RUNDOCK_USER_PYTHONPATH" not in job_base_environment(agent)


@pytest.mark.parametrize("name", sorted(NEVER) + ["RUNDOCK_SSH_ANYTHING", "x_Secret_y", "MyCredentialFile"])
def test_secret_names(name: str) -> None:
    assert is_secret_name(name)


@pytest.mark.parametrize("name", ["PATH", "CUDA_VISIBLE_DEVICES", "RUNDOCK_HEARTBEAT_SECONDS", "HF_HOME"])
def test_ordinary_names(name: str) -> None:
    assert not is_secret_name(name)
