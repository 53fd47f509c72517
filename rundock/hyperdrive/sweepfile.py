"""A sweep described in a YAML file (``rundock sweep sweep.yaml``): HyperDriveConfig's fields, as YAML.

```yaml
experiment: tune                 # default: the source folder's name
source_directory: .              # relative to this file's folder
script: train.py
arguments: [--epochs, 5]         # fixed arguments; the sampled ones are appended
compute_target: local            # local, an attached host, or a team server's pool
environment: env.yml             # optional: an Environment YAML file (relative to this file)
run_config: train.runconfig.yml  # optional: a RunConfiguration YAML file (script/arguments above override it)
sampling:
  type: random                   # random | grid | bayesian
  seed: 7                        # optional (random, bayesian)
  parameter_space:
    --lr: loguniform(-6, -1)     # any of the ten expressions, as text or v1's JSON form
    --batch: choice(16, 32, 64)
policy:                          # optional: bandit | median_stopping | truncation_selection | none
  type: bandit
  evaluation_interval: 1
  slack_factor: 0.1
primary_metric_name: accuracy
primary_metric_goal: maximize    # maximize | minimize
max_total_runs: 20
max_concurrent_runs: 4           # default: max_total_runs
max_duration_minutes: 60         # default: 10080
tags: {team: vision}             # optional, on the sweep's run
```
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

import yaml

from rundock.errors import ConfigError
from rundock.hyperdrive.config import MAX_DURATION_MINUTES, HyperDriveConfig
from rundock.hyperdrive.policies import (
    BanditPolicy,
    EarlyTerminationPolicy,
    MedianStoppingPolicy,
    TruncationSelectionPolicy,
)
from rundock.hyperdrive.sampling import (
    BayesianParameterSampling,
    GridParameterSampling,
    ParameterSampling,
    RandomParameterSampling,
)
from rundock.runconfig.environment import Environment
from rundock.runconfig.run_configuration import RunConfiguration
from rundock.runconfig.script_run_config import ScriptRunConfig

FIELDS = ("experiment", "source_directory", "script", "arguments", "compute_target", "environment", "run_config",
          "sampling", "policy", "primary_metric_name", "primary_metric_goal", "max_total_runs",
          "max_concurrent_runs", "max_duration_minutes", "tags")
POLICIES: dict[str, type[EarlyTerminationPolicy]] = {
    "bandit": BanditPolicy, "median_stopping": MedianStoppingPolicy, "truncation_selection": TruncationSelectionPolicy}


class SweepFile:
    """What ``rundock sweep FILE`` submits: the experiment's name, the configuration, the sweep's tags."""

    def __init__(self, experiment: str | None, config: HyperDriveConfig, tags: dict[str, str]) -> None:
        self.experiment = experiment
        self.config = config
        self.tags = tags


def _mapping(value: Any, path: str, field: str) -> dict[str, Any]:
    if not isinstance(value, Mapping):
        raise ConfigError(f"expected a mapping, got {type(value).__name__}", source=path, field=field)
    return dict(value)


def _sampling(data: dict[str, Any], path: str) -> ParameterSampling:
    kind = str(data.pop("type", "random")).lower()
    space = data.pop("parameter_space", None)
    seed = data.pop("seed", None)
    if data:
        raise ConfigError(f"unknown keys {sorted(data)}; expected type, parameter_space, seed", source=path,
                          field="sampling")
    try:
        if kind == "grid":
            if seed is not None:
                raise ConfigError("grid sampling takes no seed", source=path, field="sampling.seed")
            return GridParameterSampling(space or {})
        if kind == "random":
            return RandomParameterSampling(space or {}, seed=seed)
        if kind == "bayesian":
            return BayesianParameterSampling(space or {}, seed=seed)
    except ConfigError as exc:
        if exc.source:
            raise
        raise ConfigError(str(exc), source=path, field="sampling") from None
    raise ConfigError(f"unknown sampling type {kind!r}; expected random, grid or bayesian", source=path,
                      field="sampling.type")


def _policy(data: dict[str, Any] | None, path: str) -> EarlyTerminationPolicy | None:
    if data is None:
        return None
    kind = str(data.pop("type", "")).lower().replace("-", "_")
    if kind in ("none", "no_termination"):
        return None
    policy = POLICIES.get(kind)
    if policy is None:
        raise ConfigError(f"unknown policy type {kind!r}; expected {', '.join(POLICIES)} or none", source=path,
                          field="policy.type")
    try:
        return policy(**data)
    except TypeError as exc:
        raise ConfigError(f"{policy.__name__}: {exc}", source=path, field="policy") from None
    except ConfigError as exc:
        raise ConfigError(str(exc), source=path, field="policy") from None


def load(path: str) -> SweepFile:
    """Read and check a sweep file (paths in it are relative to its folder)."""
    try:
        with open(path, encoding="utf-8") as fh:
            data = yaml.safe_load(fh)
    except yaml.YAMLError as exc:
        raise ConfigError(f"not valid YAML: {exc}", source=path) from None
    data = _mapping(data or {}, path, "(top level)")
    unknown = sorted(set(data) - set(FIELDS))
    if unknown:
        raise ConfigError(f"unknown fields {unknown}; known: {', '.join(FIELDS)}", source=path)
    for field in ("sampling", "primary_metric_name", "primary_metric_goal", "max_total_runs"):
        if data.get(field) is None:
            raise ConfigError("this field is required", source=path, field=field)
    base = os.path.dirname(os.path.abspath(path))
    run_config = RunConfiguration.load(os.path.join(base, data["run_config"])) if data.get("run_config") else None
    environment = None
    if isinstance(data.get("environment"), str):
        env_path = os.path.join(base, data["environment"])
        with open(env_path, encoding="utf-8") as fh:
            environment = Environment.from_mapping(yaml.safe_load(fh) or {}, source=env_path)
    elif data.get("environment") is not None:
        environment = Environment.from_mapping(_mapping(data["environment"], path, "environment"), source=path)
    arguments = data.get("arguments")
    if arguments is not None and not isinstance(arguments, list):
        raise ConfigError("expected a list", source=path, field="arguments")
    src = ScriptRunConfig(os.path.join(base, str(data.get("source_directory") or ".")), script=data.get("script"),
                          arguments=arguments, run_config=run_config, compute_target=data.get("compute_target"),
                          environment=environment)
    sampling = _sampling(_mapping(data["sampling"], path, "sampling"), path)
    policy = _policy(_mapping(data["policy"], path, "policy") if data.get("policy") is not None else None, path)
    try:
        config = HyperDriveConfig(
            run_config=src, hyperparameter_sampling=sampling, policy=policy,
            primary_metric_name=data["primary_metric_name"], primary_metric_goal=str(data["primary_metric_goal"]),
            max_total_runs=data["max_total_runs"], max_concurrent_runs=data.get("max_concurrent_runs"),
            max_duration_minutes=data.get("max_duration_minutes", MAX_DURATION_MINUTES))
    except ConfigError as exc:
        raise ConfigError(str(exc), source=path) from None
    tags = {str(k): str(v) for k, v in _mapping(data.get("tags") or {}, path, "tags").items()}
    experiment = data.get("experiment")
    return SweepFile(str(experiment) if experiment else None, config, tags)
