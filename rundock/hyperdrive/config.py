"""``HyperDriveConfig``: what a sweep runs, how it samples, when it stops (Azure ML v1's class).

The configuration is checked when it is made, with v1's rules and clearer errors: a ``run_config``
(ScriptRunConfig) and nothing else to run (estimators and pipelines are not supported), a sampling, a
primary metric name and goal, ``max_total_runs`` ≥ 1, ``max_concurrent_runs`` between 1 and
``max_total_runs`` (None: ``max_total_runs``), ``max_duration_minutes`` ≥ 1 (above v1's 10080 it is
lowered to 10080 with a warning, as in v1), no early-termination policy with Bayesian sampling, and for
``resume_from`` / ``resume_child_runs`` v1's limits (at most 5 earlier sweeps, each finished, with the
same primary metric and goal, and for Bayesian sampling the same parameter space).

A sampled parameter that also appears in the script's own arguments replaces it (with a warning): the
sweep's value is the one the script gets.

``SweepSpec`` is the stored form: ``to_properties()`` writes it into the sweep's properties (v1's names:
``generator_config``, ``policy_config``, ``primary_metric_config``, ``max_total_jobs``,
``max_concurrent_jobs``, ``max_duration_minutes``, ``resume_from``, ``resume_child_runs``) and
``from_record()`` rebuilds it from the history, so a controller needs nothing but the sweep's run.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import warnings
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from rundock.errors import ConfigError
from rundock.history.records import RunRecord
from rundock.hyperdrive.goal import PrimaryMetricGoal
from rundock.hyperdrive.policies import EarlyTerminationPolicy, NoTerminationPolicy, validate
from rundock.hyperdrive.sampling import BayesianParameterSampling, ParameterSampling
from rundock.runconfig.run_configuration import RunConfiguration
from rundock.runconfig.script_run_config import ScriptRunConfig

if TYPE_CHECKING:
    from rundock.submitter.run import Run

RUN_TYPE = "hyperdrive"
MAX_DURATION_MINUTES = 10080
MAX_RESUME_PARENTS = 5
MAX_RESUME_TOTAL_RUNS = 1000
BAYESIAN_RUNS_PER_PARAMETER = 20
BAYESIAN_MAX_CONCURRENT = 20
TERMINAL = ("Completed", "Failed", "Canceled")


def _positive_int(value: Any, field: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ConfigError(f"expected a whole number of at least 1, got {value!r}", source="HyperDriveConfig",
                          field=field)
    return value


def _as_list(value: Any) -> list[Any]:
    return list(value) if isinstance(value, (list, tuple)) else [value]


def _option_names(arguments: Sequence[Any]) -> dict[str, int]:
    """Positions of the options (``--name``) among a script's arguments."""
    return {str(a): i for i, a in enumerate(arguments) if isinstance(a, str) and a.startswith("-")}


def option_name(name: str) -> str:
    """The command-line option a sampled parameter becomes: ``--lr`` stays, ``lr`` becomes ``--lr``."""
    return name if name.startswith("-") else f"--{name}"


def without_sampled(arguments: Sequence[Any], names: Sequence[str]) -> list[Any]:
    """The script's arguments without the options the sweep samples (each with the value after it)."""
    sampled = {option_name(n) for n in names}
    out: list[Any] = []
    skip = False
    for i, arg in enumerate(arguments):
        if skip:
            skip = False
            continue
        if isinstance(arg, str) and arg in sampled:
            nxt = arguments[i + 1] if i + 1 < len(arguments) else None
            skip = not (isinstance(nxt, str) and nxt.startswith("--"))
            continue
        out.append(arg)
    return out


@dataclasses.dataclass(frozen=True)
class SweepSpec:
    """A sweep as stored: everything its controller needs to go on (see the module docstring)."""

    sampling: ParameterSampling
    policy: EarlyTerminationPolicy
    primary_metric_name: str
    goal: PrimaryMetricGoal
    max_total_runs: int
    max_concurrent_runs: int
    max_duration_minutes: int
    resume_from: tuple[str, ...] = ()
    resume_child_runs: tuple[str, ...] = ()

    def to_properties(self) -> dict[str, str]:
        return {
            "generator_config": json.dumps(self.sampling.to_json(), sort_keys=True),
            "policy_config": json.dumps(self.policy.to_json(), sort_keys=True),
            "primary_metric_config": json.dumps({"name": self.primary_metric_name, "goal": self.goal.value.lower()}),
            "max_total_jobs": str(self.max_total_runs),
            "max_concurrent_jobs": str(self.max_concurrent_runs),
            "max_duration_minutes": str(self.max_duration_minutes),
            "resume_from": json.dumps(list(self.resume_from)),
            "resume_child_runs": json.dumps(list(self.resume_child_runs)),
        }

    @classmethod
    def from_record(cls, record: RunRecord) -> SweepSpec:
        """The sweep ``record`` describes (a run of type ``hyperdrive``)."""
        props = record.properties
        if record.run_type != RUN_TYPE or "generator_config" not in props:
            raise ConfigError(f"run {record.run_id} is not a sweep (its type is {record.run_type!r}, not "
                              f"{RUN_TYPE!r})", field="run_id")
        metric = json.loads(props["primary_metric_config"])
        policy = EarlyTerminationPolicy.from_json(json.loads(props["policy_config"])) or NoTerminationPolicy()
        return cls(sampling=ParameterSampling.from_json(json.loads(props["generator_config"])), policy=policy,
                   primary_metric_name=str(metric["name"]), goal=PrimaryMetricGoal.parse(metric["goal"]),
                   max_total_runs=int(props["max_total_jobs"]),
                   max_concurrent_runs=int(props["max_concurrent_jobs"]),
                   max_duration_minutes=int(props["max_duration_minutes"]),
                   resume_from=tuple(json.loads(props.get("resume_from") or "[]")),
                   resume_child_runs=tuple(json.loads(props.get("resume_child_runs") or "[]")))


class HyperDriveConfig:
    """Azure ML v1's ``HyperDriveConfig`` (same parameters, same order); submit it with ``Experiment.submit``."""

    def __init__(self, hyperparameter_sampling: ParameterSampling, primary_metric_name: str,
                 primary_metric_goal: PrimaryMetricGoal | str, max_total_runs: int,
                 max_concurrent_runs: int | None = None, max_duration_minutes: int = MAX_DURATION_MINUTES,
                 policy: EarlyTerminationPolicy | None = None, estimator: Any = None,
                 run_config: ScriptRunConfig | None = None, resume_from: Any = None, resume_child_runs: Any = None,
                 pipeline: Any = None, debug_flag: Any = None) -> None:
        if estimator is not None:
            raise ConfigError("estimators are not supported: describe the trial with run_config=ScriptRunConfig("
                              "source_directory, script, arguments, compute_target, environment)",
                              source="HyperDriveConfig", field="estimator")
        if pipeline is not None:
            raise ConfigError("pipelines are not supported: give run_config=ScriptRunConfig(...)",
                              source="HyperDriveConfig", field="pipeline")
        if run_config is None:
            raise ConfigError("give run_config=ScriptRunConfig(...): the script each trial runs",
                              source="HyperDriveConfig", field="run_config")
        if not isinstance(run_config, ScriptRunConfig):
            raise ConfigError(f"expected a ScriptRunConfig, got {type(run_config).__name__}",
                              source="HyperDriveConfig", field="run_config")
        if not isinstance(hyperparameter_sampling, ParameterSampling):
            raise ConfigError("give a RandomParameterSampling, GridParameterSampling or BayesianParameterSampling, "
                              f"not {type(hyperparameter_sampling).__name__}", source="HyperDriveConfig",
                              field="hyperparameter_sampling")
        if not isinstance(primary_metric_name, str) or not primary_metric_name.strip():
            raise ConfigError("give the name of the metric your script logs (run.log(name, value)), e.g. "
                              "primary_metric_name='accuracy'", source="HyperDriveConfig",
                              field="primary_metric_name")
        validate(hyperparameter_sampling, policy)
        goal = PrimaryMetricGoal.parse(primary_metric_goal)
        total = _positive_int(max_total_runs, "max_total_runs")
        concurrent = total if max_concurrent_runs is None else _positive_int(max_concurrent_runs,
                                                                            "max_concurrent_runs")
        minutes = _positive_int(max_duration_minutes, "max_duration_minutes")
        if minutes > MAX_DURATION_MINUTES:
            warnings.warn(f"max_duration_minutes {minutes} is above the limit of {MAX_DURATION_MINUTES} minutes; "
                          f"the sweep stops after {MAX_DURATION_MINUTES}", stacklevel=2)
            minutes = MAX_DURATION_MINUTES
        if isinstance(hyperparameter_sampling, BayesianParameterSampling):
            _bayesian_advice(hyperparameter_sampling, total, concurrent)
        self.run_config = _trial_config(run_config, list(hyperparameter_sampling.parameter_space))
        self.estimator = None
        self.pipeline = None
        self._spec = SweepSpec(sampling=hyperparameter_sampling, policy=policy or NoTerminationPolicy(),
                               primary_metric_name=primary_metric_name, goal=goal, max_total_runs=total,
                               max_concurrent_runs=min(concurrent, total), max_duration_minutes=minutes)
        parents = _check_resume_from(self._spec, _as_list(resume_from) if resume_from is not None else [])
        children = _check_resume_child_runs(self._spec, _as_list(resume_child_runs)
                                            if resume_child_runs is not None else [])
        self._spec = dataclasses.replace(self._spec, resume_from=tuple(parents), resume_child_runs=tuple(children))

    # -- v1's read-only attributes ----------------------------------------------------------------
    @property
    def source_directory(self) -> str:
        return self.run_config.source_directory

    @property
    def hyperparameter_sampling(self) -> ParameterSampling:
        return self._spec.sampling

    @property
    def policy(self) -> EarlyTerminationPolicy:
        return self._spec.policy

    @property
    def primary_metric_name(self) -> str:
        return self._spec.primary_metric_name

    @property
    def primary_metric_goal(self) -> PrimaryMetricGoal:
        return self._spec.goal

    @property
    def max_total_runs(self) -> int:
        return self._spec.max_total_runs

    @property
    def max_concurrent_runs(self) -> int:
        return self._spec.max_concurrent_runs

    @property
    def max_duration_minutes(self) -> int:
        return self._spec.max_duration_minutes

    @property
    def spec(self) -> SweepSpec:
        return self._spec

    def __repr__(self) -> str:
        return (f"HyperDriveConfig(script={self.run_config.script!r}, sampling={type(self._spec.sampling).__name__}, "
                f"primary_metric={self._spec.primary_metric_name!r} ({self._spec.goal.value}), "
                f"max_total_runs={self._spec.max_total_runs}, max_concurrent_runs={self._spec.max_concurrent_runs})")


def _trial_config(run_config: ScriptRunConfig, names: list[str]) -> ScriptRunConfig:
    """A copy of ``run_config`` whose arguments leave out the options the sweep samples (with a warning)."""
    config = copy.deepcopy(run_config)
    arguments = list(config.run_config.arguments)
    clash = sorted(set(_option_names(arguments)) & {option_name(n) for n in names})
    if clash:
        warnings.warn(f"the script's arguments set {', '.join(clash)}, which the sweep samples: each trial gets the "
                      "sampled value instead", stacklevel=3)
        config.run_config.arguments = without_sampled(arguments, names)
    return config


def _bayesian_advice(sampling: BayesianParameterSampling, total: int, concurrent: int) -> None:
    recommended = BAYESIAN_RUNS_PER_PARAMETER * len(sampling.parameter_space)
    if total < recommended:
        warnings.warn(f"Bayesian sampling works best with max_total_runs of at least {BAYESIAN_RUNS_PER_PARAMETER} "
                      f"per parameter tuned ({recommended} here)", stacklevel=3)
    if concurrent > BAYESIAN_MAX_CONCURRENT:
        warnings.warn(f"Bayesian sampling learns from finished trials: keep max_concurrent_runs at "
                      f"{BAYESIAN_MAX_CONCURRENT} or fewer", stacklevel=3)


def _sweep_of(run: Any, field: str) -> tuple[RunRecord, SweepSpec]:
    record = getattr(run, "_record", None)
    if not isinstance(record, RunRecord):
        raise ConfigError(f"expected a run of this workspace, got {type(run).__name__}", source="HyperDriveConfig",
                          field=field)
    record = run.refresh()._record
    if record.run_type != RUN_TYPE:
        raise ConfigError(f"run {record.run_id} is not a sweep (type {record.run_type!r}); give HyperDriveRuns",
                          source="HyperDriveConfig", field=field)
    return record, SweepSpec.from_record(record)


def _same_metric(spec: SweepSpec, other: SweepSpec, run_id: str, field: str) -> None:
    if other.primary_metric_name != spec.primary_metric_name or other.goal != spec.goal:
        raise ConfigError(f"sweep {run_id} tuned {other.primary_metric_name!r} ({other.goal.value}), this one "
                          f"{spec.primary_metric_name!r} ({spec.goal.value}): warm starts need the same primary "
                          "metric and goal", source="HyperDriveConfig", field=field)
    if isinstance(spec.sampling, BayesianParameterSampling) and \
            other.sampling.to_json()["parameter_space"] != spec.sampling.to_json()["parameter_space"]:
        raise ConfigError(f"sweep {run_id} searched another parameter space: a Bayesian warm start needs the same "
                          "space", source="HyperDriveConfig", field=field)


def _check_resume_from(spec: SweepSpec, runs: list[Any]) -> list[str]:
    if len(runs) > MAX_RESUME_PARENTS:
        raise ConfigError(f"at most {MAX_RESUME_PARENTS} sweeps, got {len(runs)}", source="HyperDriveConfig",
                          field="resume_from")
    ids: list[str] = []
    total = spec.max_total_runs
    for run in runs:
        record, other = _sweep_of(run, "resume_from")
        if record.run_id in ids:
            raise ConfigError(f"sweep {record.run_id} is given twice", source="HyperDriveConfig", field="resume_from")
        if record.status.value not in ("Completed", "Canceled"):
            raise ConfigError(f"sweep {record.run_id} is {record.status.value}: warm starts take Completed or Canceled "
                              "sweeps", source="HyperDriveConfig", field="resume_from")
        _same_metric(spec, other, record.run_id, "resume_from")
        total += other.max_total_runs
        ids.append(record.run_id)
    if total > MAX_RESUME_TOTAL_RUNS:
        raise ConfigError(f"this sweep and those it resumes from may have at most {MAX_RESUME_TOTAL_RUNS} runs in all, "
                          f"not {total}", source="HyperDriveConfig", field="resume_from")
    return ids


def _check_resume_child_runs(spec: SweepSpec, runs: list[Any]) -> list[str]:
    if len(runs) > spec.max_total_runs:
        raise ConfigError(f"{len(runs)} runs to resume is more than max_total_runs ({spec.max_total_runs})",
                          source="HyperDriveConfig", field="resume_child_runs")
    ids: list[str] = []
    parents: dict[str, Run] = {}
    for run in runs:
        record = getattr(run, "_record", None)
        if not isinstance(record, RunRecord):
            raise ConfigError(f"expected a Run, got {type(run).__name__}", source="HyperDriveConfig",
                              field="resume_child_runs")
        record = run.refresh()._record
        if record.run_id in ids:
            raise ConfigError(f"run {record.run_id} is given twice", source="HyperDriveConfig",
                              field="resume_child_runs")
        if not record.status.is_terminal:
            raise ConfigError(f"run {record.run_id} is {record.status.value}; only finished runs can be resumed",
                              source="HyperDriveConfig", field="resume_child_runs")
        parent = run.parent
        if parent is None or "hyperparameters" not in record.tags:
            raise ConfigError(f"run {record.run_id} is not a trial of a sweep", source="HyperDriveConfig",
                              field="resume_child_runs")
        parents[parent.id] = parent
        ids.append(record.run_id)
    if len(parents) > MAX_RESUME_PARENTS:
        raise ConfigError(f"the runs come from {len(parents)} sweeps; at most {MAX_RESUME_PARENTS}",
                          source="HyperDriveConfig", field="resume_child_runs")
    for parent in parents.values():
        record, other = _sweep_of(parent, "resume_child_runs")
        _same_metric(spec, other, record.run_id, "resume_child_runs")
    return ids


def trial_run_config(definition: Mapping[str, Any], source: str) -> RunConfiguration:
    """The trials' run configuration as the sweep stored it (its run definition)."""
    data = {k: v for k, v in definition.items() if k != "source_directory"}
    return RunConfiguration.from_mapping(data, source=source)
