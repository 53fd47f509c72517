"""Environments: which Python runs the job, with what packages, in which image."""

from __future__ import annotations

import dataclasses
import sys
from typing import Any

from rundock.runconfig.schema import from_mapping, to_mapping

DEFAULT_CPU_IMAGE = "python:3.11-slim"


@dataclasses.dataclass
class PythonSection:
    """The Python side of an environment.

    ``user_managed_dependencies=True`` runs ``interpreter_path`` as it is; with
    False the packages listed are installed into an environment built for the run.
    """

    user_managed_dependencies: bool = False
    interpreter_path: str = "python"
    pip_packages: list[str] = dataclasses.field(default_factory=list)
    conda_packages: list[str] = dataclasses.field(default_factory=list)


@dataclasses.dataclass
class DockerSection:
    """Running the job in a container (``enabled=True``)."""

    enabled: bool = False
    base_image: str = DEFAULT_CPU_IMAGE
    base_dockerfile: str | None = None
    arguments: list[str] = dataclasses.field(default_factory=list)
    shm_size: str = "2g"
    gpu_count: int = 0


@dataclasses.dataclass
class Environment:
    """A named environment (Azure ML's ``Environment``)."""

    name: str = "default"
    version: str | None = None
    python: PythonSection = dataclasses.field(default_factory=PythonSection)
    docker: DockerSection = dataclasses.field(default_factory=DockerSection)
    environment_variables: dict[str, str] = dataclasses.field(default_factory=dict)

    @classmethod
    def from_mapping(cls, data: dict[str, Any], source: str | None = None, prefix: str = "") -> Environment:
        return from_mapping(cls, data, source=source, prefix=prefix)

    def to_mapping(self) -> dict[str, Any]:
        return dict(to_mapping(self))

    @classmethod
    def submitting_interpreter(cls) -> Environment:
        """The environment of a run submitted without one: this Python, as it is."""
        return cls(name="rundock-submitting-python",
                   python=PythonSection(user_managed_dependencies=True, interpreter_path=sys.executable))
