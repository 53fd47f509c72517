"""ScriptRunConfig: a script in a source folder, with its run configuration."""

from __future__ import annotations

import copy
import dataclasses
import os
from collections.abc import Callable
from typing import Any

from rundock.errors import ConfigError
from rundock.runconfig.docker_args import parse_docker_arguments
from rundock.runconfig.environment import Environment
from rundock.runconfig.run_configuration import DEFAULT_MAX_RUN_DURATION, RunConfiguration

SOURCE = "ScriptRunConfig"


class ScriptRunConfig:
    """Azure ML's ``ScriptRunConfig``: source folder + script + arguments + configuration."""

    def __init__(self, source_directory: str | os.PathLike[str] = ".", script: str | None = None,
                 arguments: list[Any] | None = None, run_config: RunConfiguration | None = None,
                 compute_target: Any = None, environment: Environment | None = None,
                 max_run_duration_seconds: int | None = None, distributed_job_config: Any = None) -> None:
        self.source_directory = os.fspath(source_directory)
        self.run_config = copy.deepcopy(run_config) if run_config is not None else RunConfiguration()
        if script is not None:
            self.run_config.script = script
        if arguments is not None:
            self.run_config.arguments = list(arguments)
        if compute_target is not None:
            self.run_config.target = compute_target if isinstance(compute_target, str) else compute_target.name
        if environment is not None:
            self.run_config.environment = environment
        if distributed_job_config is not None:  # ``rundock.runconfig.distributed``
            self.run_config.distributed = dict(distributed_job_config.to_mapping())
        if max_run_duration_seconds is not None:
            self.run_config.max_run_duration_seconds = max_run_duration_seconds
        elif run_config is None:
            self.run_config.max_run_duration_seconds = DEFAULT_MAX_RUN_DURATION

    @property
    def script(self) -> str | None:
        return self.run_config.script

    @property
    def arguments(self) -> list[Any]:
        return self.run_config.arguments

    @property
    def environment(self) -> Environment | None:
        return self.run_config.environment

    def job_environment(self, default: Callable[[], Environment]) -> Environment:
        """The environment the job runs in: the run configuration's (``default()`` when it names none), with the
        run configuration's own ``environment_variables`` added on top."""
        env = self.run_config.environment or default()
        extra = self.run_config.environment_variables
        if not extra:
            return env
        return dataclasses.replace(env, environment_variables={**env.environment_variables, **extra})

    def validate(self) -> None:
        """Check everything that can be checked before a run is created."""
        if not os.path.isdir(self.source_directory):
            raise ConfigError(f"{self.source_directory!r} is not a folder; give the folder that holds your script",
                              source=SOURCE, field="source_directory")
        script = self.run_config.script
        if not script:
            raise ConfigError("no script given; pass script='train.py'", source=SOURCE, field="script")
        root = os.path.realpath(self.source_directory)
        full = os.path.realpath(os.path.join(root, script))
        if os.path.commonpath([root, full]) != root:
            raise ConfigError(f"{script!r} is outside the source folder {self.source_directory!r}; "
                              "scripts must be inside source_directory (they travel in its snapshot)",
                              source=SOURCE, field="script")
        if not os.path.isfile(full):
            raise ConfigError(f"{script!r} was not found in {self.source_directory!r}", source=SOURCE, field="script")
        self.run_config.validate(SOURCE)
        env = self.run_config.environment
        if env is not None:
            parse_docker_arguments(env.docker.arguments, SOURCE)
            if env.docker.enabled and not (env.docker.base_image or env.docker.base_dockerfile):
                raise ConfigError("a Docker environment needs base_image or base_dockerfile", source=SOURCE,
                                  field="environment.docker.base_image")
            if env.docker.gpu_count < 0:
                raise ConfigError("expected zero or more GPUs", source=SOURCE, field="environment.docker.gpu_count")

    def __repr__(self) -> str:
        return f"ScriptRunConfig(source_directory={self.source_directory!r}, script={self.script!r})"
