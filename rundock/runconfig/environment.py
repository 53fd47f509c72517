"""Environments: which Python runs the job, with what packages, in which image."""

from __future__ import annotations

import dataclasses
import os
import sys
from typing import TYPE_CHECKING, Any

import yaml

from rundock.errors import ConfigError
from rundock.runconfig.schema import from_mapping, to_mapping

if TYPE_CHECKING:
    from rundock.submitter.workspace import Workspace

DEFAULT_CPU_IMAGE = "python:3.11-slim"
DEFINITION_FILE = "environment.yml"
DOCKERFILE = "Dockerfile"


class CondaDependencies:
    """Azure ML's package lists: ``CondaDependencies.create(conda_packages=, pip_packages=)``."""

    def __init__(self, conda_packages: list[str] | None = None, pip_packages: list[str] | None = None,
                 python_version: str | None = None) -> None:
        self.conda_packages = list(conda_packages or [])
        self.pip_packages = list(pip_packages or [])
        self.python_version = python_version

    @classmethod
    def create(cls, conda_packages: list[str] | None = None, pip_packages: list[str] | None = None,
               python_version: str | None = None, **kwargs: Any) -> CondaDependencies:
        return cls(conda_packages, pip_packages, python_version)

    def add_pip_package(self, pip_package: str) -> None:
        if pip_package not in self.pip_packages:
            self.pip_packages.append(pip_package)

    def add_conda_package(self, conda_package: str) -> None:
        if conda_package not in self.conda_packages:
            self.conda_packages.append(conda_package)

    def __repr__(self) -> str:
        return f"CondaDependencies(conda_packages={self.conda_packages}, pip_packages={self.pip_packages})"


@dataclasses.dataclass
class PythonSection:
    """The Python side of an environment.

    ``user_managed_dependencies=True`` runs ``interpreter_path`` as it is; with
    False the agent builds a virtual environment (or an image layer) with the
    packages listed, cached by what goes into it.
    """

    user_managed_dependencies: bool = False
    interpreter_path: str = "python"
    pip_packages: list[str] = dataclasses.field(default_factory=list)
    conda_packages: list[str] = dataclasses.field(default_factory=list)

    @property
    def conda_dependencies(self) -> CondaDependencies:
        return CondaDependencies(self.conda_packages, self.pip_packages)

    @conda_dependencies.setter
    def conda_dependencies(self, deps: CondaDependencies) -> None:
        self.pip_packages = list(deps.pip_packages)
        self.conda_packages = list(deps.conda_packages)


@dataclasses.dataclass
class DockerSection:
    """Running the job in a container (``enabled=True``).

    ``gpu_count`` asks for that many GPUs; ``gpu_device_ids`` for exactly those
    devices. ``arguments`` takes ``docker run`` options (see
    rundock.agent.executors.docker for the ones understood).
    """

    enabled: bool = False
    base_image: str | None = DEFAULT_CPU_IMAGE
    base_dockerfile: str | None = None
    arguments: list[str] = dataclasses.field(default_factory=list)
    shm_size: str = "2g"
    gpu_count: int = 0
    gpu_device_ids: list[str] = dataclasses.field(default_factory=list)


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

    # -- Azure ML constructors --------------------------------------------------------------
    @classmethod
    def from_pip_requirements(cls, name: str, file_path: str) -> Environment:
        """An environment built from a pip requirements file."""
        try:
            with open(file_path, encoding="utf-8") as fh:
                lines = [ln.split("#", 1)[0].strip() for ln in fh]
        except FileNotFoundError:
            raise ConfigError("requirements file not found", source=file_path) from None
        return cls(name=name, python=PythonSection(pip_packages=[ln for ln in lines if ln]))

    @classmethod
    def from_dockerfile(cls, name: str, dockerfile: str, conda_specification: str | None = None,
                        pip_requirements: str | None = None) -> Environment:
        """A Docker environment built from a Dockerfile (its path or its text)."""
        if conda_specification:
            raise ConfigError("conda specifications are not supported; list the packages in pip_requirements",
                              source=conda_specification)
        text = dockerfile
        if os.path.isfile(dockerfile):
            with open(dockerfile, encoding="utf-8") as fh:
                text = fh.read()
        env = cls.from_pip_requirements(name, pip_requirements) if pip_requirements else cls(name=name)
        env.docker = DockerSection(enabled=True, base_image=None, base_dockerfile=text)
        return env

    def save_to_directory(self, path: str, overwrite: bool = False) -> None:
        """Write the definition (and the Dockerfile, if any) into folder ``path``."""
        target = os.path.join(path, DEFINITION_FILE)
        if os.path.exists(target) and not overwrite:
            raise FileExistsError(f"{target} exists; pass overwrite=True to replace it")
        os.makedirs(path, exist_ok=True)
        data = self.to_mapping()
        if self.docker.base_dockerfile:
            with open(os.path.join(path, DOCKERFILE), "w", encoding="utf-8") as fh:
                fh.write(self.docker.base_dockerfile)
            data["docker"]["base_dockerfile"] = DOCKERFILE
        with open(target, "w", encoding="utf-8") as fh:
            yaml.safe_dump(data, fh, sort_keys=False)

    @classmethod
    def load_from_directory(cls, path: str) -> Environment:
        """Read an environment written by ``save_to_directory``."""
        source = os.path.join(path, DEFINITION_FILE)
        try:
            with open(source, encoding="utf-8") as fh:
                data = yaml.safe_load(fh) or {}
        except FileNotFoundError:
            raise ConfigError("no environment definition here; write one with save_to_directory()",
                              source=source) from None
        env = cls.from_mapping(data, source=source)
        if env.docker.base_dockerfile == DOCKERFILE:
            with open(os.path.join(path, DOCKERFILE), encoding="utf-8") as fh:
                env.docker.base_dockerfile = fh.read()
        return env

    # -- the workspace's registry ----------------------------------------------------------
    def register(self, workspace: Workspace) -> Environment:
        """Store this definition as the next version of its name; return the registered copy."""
        version = workspace.store.register_environment(self.name, self.to_mapping())
        return Environment.get(workspace, self.name, str(version))

    @staticmethod
    def get(workspace: Workspace, name: str, version: str | None = None) -> Environment:
        """A registered environment (the latest version by default)."""
        number, data = workspace.store.get_environment(name, int(version) if version else None)
        env = Environment.from_mapping(data, source=f"registered environment {name}")
        env.version = str(number)
        return env

    @staticmethod
    def list(workspace: Workspace) -> dict[str, Environment]:
        """The latest version of every registered environment, by name."""
        return {name: Environment.get(workspace, name) for name in workspace.store.environment_names()}
