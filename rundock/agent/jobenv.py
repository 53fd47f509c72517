"""What passes from the submitter's environment to an agent and to a job (standard library only).

A job is untrusted code, and the submitter's environment holds things a job
must never see: the SSH password and key passphrase of remote targets
(``RUNDOCK_SSH_PASSWORD``, ``RUNDOCK_SSH_KEY_PASSPHRASE``), API tokens, cloud
credentials. So nothing passes by default; a job's environment is built from
an allowlist:

- the session basics: ``PATH``, ``HOME``, ``USER``, ``LOGNAME``, ``SHELL``,
  ``LANG``, ``LANGUAGE``, ``LC_*``, ``TZ``, ``TMPDIR`` (and ``TMP``, ``TEMP``),
  ``TERM``, ``LD_LIBRARY_PATH`` (CUDA and MKL libraries are often found
  through it);
- Python's own knobs: ``PYTHONHASHSEED``, ``PYTHONIOENCODING``,
  ``PYTHONUNBUFFERED``, ``PYTHONDONTWRITEBYTECODE``, ``PYTHONUTF8``,
  ``PYTHONWARNINGS``, ``PYTHONNOUSERSITE``, ``PYTHONFAULTHANDLER``, and the
  user's ``PYTHONPATH`` (the one the submitter had: an agent started with its
  own PYTHONPATH carries the user's in ``RUNDOCK_USER_PYTHONPATH``);
- the active environment: ``VIRTUAL_ENV``, ``CONDA_*``;
- what training code commonly reads: ``CUDA_*``, ``NVIDIA_*``, ``NCCL_*``,
  ``CUDNN_*``, ``OMP_*``, ``KMP_*``, ``MKL_*``, ``OPENBLAS_*``, ``TORCH_*``,
  ``PYTORCH_*``, ``TF_*``, ``XLA_*``, ``HF_*``, ``TRANSFORMERS_*``;
- network settings for downloading data: ``HTTP_PROXY``, ``HTTPS_PROXY``,
  ``NO_PROXY``, ``ALL_PROXY`` (either case), ``SSL_CERT_FILE``,
  ``SSL_CERT_DIR``, ``REQUESTS_CA_BUNDLE``, ``CURL_CA_BUNDLE``.

Never passed, even when allowlisted: any name starting ``RUNDOCK_SSH_``, any
``RUNDOCK_`` name containing ``TOKEN``, and any name containing ``PASSWORD``,
``PASSPHRASE``, ``SECRET``, ``TOKEN`` or ``CREDENTIAL`` (in any case): so
``HF_TOKEN`` stays with the submitter too. A job that needs such a value reads
it as a workspace secret (``run.get_secret(NAME)``) or gets it from its run
configuration's ``environment_variables``, which the agent adds on top of this
base, followed by the run's own variables (``RUNDOCK_RUN_ID``, ...).

The agent itself gets a little more (``agent_environment``): the job's base,
``PYTHONPATH`` (it needs it to import rundock), the ``RUNDOCK_*`` settings it
reads (heartbeat interval, lost-after limit, idle time of the warm agent, the
user's PYTHONPATH), the Docker client's settings (``DOCKER_HOST``,
``DOCKER_TLS_VERIFY``, ``DOCKER_CERT_PATH``, ``DOCKER_CONFIG``,
``DOCKER_CONTEXT``) and pip's (``PIP_*``, for building environments) — never
the SSH credentials. The one credential it gets is ``RUNDOCK_TOKEN``, the team
server token its run history needs when the submitter has it in its
environment (rather than in the credentials file ``rundock login`` writes); the
job never gets it. ``job_base_environment(agent_environment(env))`` is
``job_base_environment(env)``, so an agent computes its job's base from its
own ``os.environ``.
"""

from __future__ import annotations

import re
from typing import Mapping

from rundock.agent.job import ENV_USER_PYTHONPATH

JOB_NAMES = frozenset((
    "PATH", "HOME", "USER", "LOGNAME", "SHELL", "LANG", "LANGUAGE", "TZ", "TMPDIR", "TMP", "TEMP", "TERM",
    "LD_LIBRARY_PATH",
    "PYTHONHASHSEED", "PYTHONIOENCODING", "PYTHONUNBUFFERED", "PYTHONDONTWRITEBYTECODE", "PYTHONUTF8",
    "PYTHONWARNINGS", "PYTHONNOUSERSITE", "PYTHONFAULTHANDLER",
    "VIRTUAL_ENV",
    "HTTP_PROXY", "HTTPS_PROXY", "NO_PROXY", "ALL_PROXY", "http_proxy", "https_proxy", "no_proxy", "all_proxy",
    "SSL_CERT_FILE", "SSL_CERT_DIR", "REQUESTS_CA_BUNDLE", "CURL_CA_BUNDLE",
))
JOB_PREFIXES = ("LC_", "CONDA_", "CUDA_", "NVIDIA_", "NCCL_", "CUDNN_", "OMP_", "KMP_", "MKL_", "OPENBLAS_",
                "TORCH_", "PYTORCH_", "TF_", "XLA_", "HF_", "TRANSFORMERS_", "TOKENIZERS_")

AGENT_NAMES = frozenset((
    "PYTHONPATH", ENV_USER_PYTHONPATH, "RUNDOCK_HEARTBEAT_SECONDS", "RUNDOCK_AGENT_LOST_AFTER_SECONDS",
    "RUNDOCK_AGENT_IDLE_SECONDS", "RUNDOCK_MAX_CONCURRENT_RUNS", "RUNDOCK_HOME",
    "DOCKER_HOST", "DOCKER_TLS_VERIFY", "DOCKER_CERT_PATH", "DOCKER_CONFIG", "DOCKER_CONTEXT",
))
AGENT_PREFIXES = ("PIP_",)
AGENT_CREDENTIALS = frozenset(("RUNDOCK_TOKEN",))  # the agent's own: it writes the run to a team server's history

_SECRET = re.compile(r"PASSWORD|PASSPHRASE|SECRET|TOKEN|CREDENTIAL|APIKEY|ACCESSKEY|PRIVATEKEY", re.IGNORECASE)
# Words of a name (split at "_") that mark a credential: NVIDIA_API_KEY, HF_HUB_ACCESS, CONDA_AUTH, AWS_SESSION...
_SECRET_WORDS = frozenset(("KEY", "KEYS", "AUTH", "ACCESS", "PASS", "PASSWD", "PWD_HASH", "SESSION", "COOKIE",
                           "SIGNATURE", "PRIVATE"))
NOT_SECRETS = frozenset(("TOKENIZERS_PARALLELISM",))  # settings whose names merely contain a secret word


def is_secret_name(name: str) -> bool:
    """Whether a variable of this name may hold a credential (and so never leaves the submitter)."""
    upper = name.upper()
    if upper in NOT_SECRETS:
        return False
    return (upper.startswith("RUNDOCK_SSH_") or _SECRET.search(name) is not None
            or any(word in _SECRET_WORDS for word in upper.split("_")))


def _for_jobs(name: str) -> bool:
    return name in JOB_NAMES or name.startswith(JOB_PREFIXES)


def _for_agents(name: str) -> bool:
    return _for_jobs(name) or name in AGENT_NAMES or name.startswith(AGENT_PREFIXES)


def job_base_environment(env: Mapping[str, str]) -> dict[str, str]:
    """What passes from ``env`` (the submitter's, or an agent's own) to a job, before its run's variables.

    ``PYTHONPATH`` is the user's: ``RUNDOCK_USER_PYTHONPATH`` when present (an empty one: none), else
    ``PYTHONPATH`` as it is.
    """
    job = {k: v for k, v in env.items() if _for_jobs(k) and not is_secret_name(k)}
    user_path = env.get(ENV_USER_PYTHONPATH)
    if user_path is None:
        user_path = env.get("PYTHONPATH")
    if user_path:
        job["PYTHONPATH"] = user_path
    return job


def agent_environment(env: Mapping[str, str]) -> dict[str, str]:
    """What the submitter sends to an agent from its environment ``env``: the job's base plus the agent's settings."""
    return {k: v for k, v in env.items() if (_for_agents(k) and not is_secret_name(k)) or k in AGENT_CREDENTIALS}
