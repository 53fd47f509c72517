"""RunConfiguration: what to run and where, saved and loaded as YAML.

``load`` also reads Azure ML v1's run configuration files unchanged (camelCase
YAML or JSON, ``.azureml/<name>.runconfig`` or ``aml_config/<name>.runconfig``):
see rundock.runconfig.azureml_v1 for what is mapped and what is ignored with a
warning.
"""

from __future__ import annotations

import dataclasses
import os
import re
from typing import Any

import yaml

from rundock.errors import ConfigError
from rundock.runconfig import azureml_v1
from rundock.runconfig.environment import Environment
from rundock.runconfig.schema import check_numbers, from_mapping, positive, to_mapping

DEFAULT_MAX_RUN_DURATION = 30 * 24 * 3600
RUNCONFIG_SUFFIX = ".runconfig.yml"
_LABEL = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")


@dataclasses.dataclass
class Resources:
    """What a run needs from the agent that takes it, for a run submitted to a team server's pool.

    ``gpu_count`` GPUs (0: the run's ``environment.docker.gpu_count``), each with at least ``gpu_memory_mb``
    MiB; an agent with at least ``cpus`` CPUs, ``memory_mb`` MiB of memory and every label in ``labels``.
    Among queued runs of a pool, a higher ``priority`` is started first. 0 means "no requirement".
    ``max_retries``: how many times the run goes back to its pool's queue when the agent running it is lost
    (0: it fails "agent lost"). A retried run starts over; values the lost attempt already stored stay.
    """

    gpu_count: int = 0
    gpu_memory_mb: int = 0
    cpus: int = 0
    memory_mb: int = 0
    labels: list[str] = dataclasses.field(default_factory=list)
    priority: int = 0
    max_retries: int = 0

    def validate(self, source: str | None = None) -> None:
        check_numbers(self, source=source, prefix="resources.")
        for i, label in enumerate(self.labels):
            if not isinstance(label, str) or not _LABEL.match(label):
                raise ConfigError(f"expected a label (letters, digits, '.', '_' or '-', at most 64), got {label!r}",
                                  source=source, field=f"resources.labels[{i}]")


@dataclasses.dataclass
class RunConfiguration:
    """The run definition (Azure ML's ``RunConfiguration``).

    ``secrets`` names the workspace secrets the run may read with ``run.get_secret``: None means every
    workspace secret for a run on this machine (they never leave it) and none for a remote host.
    ``environment_variables`` (Azure ML v1's ``RunConfiguration.environment_variables``) are set for the job on
    top of its environment's own (these win on a clash).
    """

    script: str | None = None
    arguments: list[Any] = dataclasses.field(default_factory=list)
    target: str = "local"
    environment: Environment | None = None
    max_run_duration_seconds: int = positive(DEFAULT_MAX_RUN_DURATION)
    cancel_grace_seconds: float = 10.0
    secrets: list[str] | None = None
    resources: Resources = dataclasses.field(default_factory=Resources)
    environment_variables: dict[str, str] = dataclasses.field(default_factory=dict)
    distributed: dict[str, Any] = dataclasses.field(default_factory=dict)  # ``runconfig.distributed``

    def to_mapping(self) -> dict[str, Any]:
        return dict(to_mapping(self))

    @classmethod
    def from_mapping(cls, data: dict[str, Any], source: str | None = None) -> RunConfiguration:
        """A configuration from rundock's mapping, or from an Azure ML v1 one (camelCase keys)."""
        if azureml_v1.is_v1(data):
            data = azureml_v1.translate(data, source)
        config = from_mapping(cls, data, source=source)
        config.validate(source)
        return config

    def validate(self, source: str | None = None) -> None:
        """Check values that types alone do not catch (every number: finite, and not below zero)."""
        check_numbers(self, source=source)
        if not isinstance(self.resources, Resources):
            raise ConfigError("expected a Resources (gpu_count, gpu_memory_mb, cpus, memory_mb, labels, priority, "
                              f"max_retries), got {type(self.resources).__name__}", source=source, field="resources")
        self.resources.validate(source)
        if self.secrets is not None:
            if not isinstance(self.secrets, list):
                raise ConfigError(f"expected a list of secret names, got {type(self.secrets).__name__}",
                                  source=source, field="secrets")
            for i, name in enumerate(self.secrets):
                if not isinstance(name, str) or not name.strip():
                    raise ConfigError(f"expected a secret's name (a non-empty string), got {name!r}", source=source,
                                      field=f"secrets[{i}]")
        if not isinstance(self.environment_variables, dict) or not all(
                isinstance(k, str) and k and isinstance(v, str) for k, v in self.environment_variables.items()):
            raise ConfigError("expected environment variables as NAME: value strings, e.g. {SEED: \"1\"}",
                              source=source, field="environment_variables")
        for i, arg in enumerate(self.arguments):
            if not isinstance(arg, (str, int, float, bool)):
                raise ConfigError(f"expected a string or number, got {type(arg).__name__}", source=source,
                                  field=f"arguments[{i}]")

    def save(self, path: str | None = None, name: str | None = None) -> str:
        """Write the configuration as YAML; return the file's path.

        ``path`` is a file, or a folder in which ``<name>.runconfig.yml`` is written.
        """
        target = _resolve(path or ".", name)
        os.makedirs(os.path.dirname(os.path.abspath(target)), exist_ok=True)
        with open(target, "w", encoding="utf-8") as fh:
            yaml.safe_dump(self.to_mapping(), fh, sort_keys=False)
        return target

    @classmethod
    def load(cls, path: str | None = None, name: str | None = None) -> RunConfiguration:
        """Read a configuration written by ``save``, by hand, or by Azure ML v1's ``RunConfiguration.save()``;
        errors name the file and field.

        ``path`` is a file (read as it is) or a project folder, in which ``name`` (default ``runconfig``) is
        looked for as ``<name>.runconfig.yml`` (rundock's ``save``), then ``.azureml/<name>.runconfig`` and
        ``aml_config/<name>.runconfig`` (v1's).
        """
        source = _find(path or ".", name)
        try:
            with open(source, encoding="utf-8") as fh:
                data = yaml.safe_load(fh)
        except FileNotFoundError:
            raise ConfigError("file not found; create it with RunConfiguration.save() or `rundock submit`",
                              source=source) from None
        except yaml.YAMLError as exc:
            raise ConfigError(f"not valid YAML: {exc}", source=source) from None
        return cls.from_mapping(data, source=source)


def _find(path: str, name: str | None) -> str:
    if os.path.isfile(path) or not (os.path.isdir(path) or name is not None):
        return path
    base = name or "runconfig"
    for suffix in (RUNCONFIG_SUFFIX, azureml_v1.V1_SUFFIX):
        base = base[:-len(suffix)] if base.endswith(suffix) else base
    candidates = [os.path.join(path, base + RUNCONFIG_SUFFIX),
                  *(os.path.join(path, folder, base + azureml_v1.V1_SUFFIX) for folder in azureml_v1.V1_FOLDERS)]
    found = next((c for c in candidates if os.path.isfile(c)), None)
    if found is None:
        raise ConfigError(f"no run configuration named {base!r}; looked for {', '.join(candidates)}. Create one with "
                          "RunConfiguration.save()", source=path)
    return found


def _resolve(path: str, name: str | None) -> str:
    if os.path.isdir(path) or name is not None:
        return os.path.join(path, (name or "runconfig") + RUNCONFIG_SUFFIX)
    return path
