"""Bayesian sampling through Optuna's TPE, rebuilt from the sweep's trials on every call.

Why Optuna: its TPE sampler is well kept and well tested, and ``Study.add_trial`` lets a fresh in-memory
study be filled from the run history, so the controller keeps no sampler state of its own: a restarted
controller rebuilds the same study and gets the same suggestions.

Trial ``k`` is asked from a study holding the sweep's trials in index order (finished ones with their
results, unfinished ones as running, so TPE's constant liar spreads concurrent trials apart) and a sampler
seeded from (seed, k). Optuna is imported on first use only.
"""

from __future__ import annotations

import logging
import random
import warnings
from collections.abc import Mapping, Sequence
from types import ModuleType
from typing import Any

from rundock.errors import RundockError
from rundock.hyperdrive.goal import PrimaryMetricGoal, Trial
from rundock.hyperdrive.parameters import Choice, ParameterExpression, QUniform, Uniform, quantize

_INSTALL_HINT = "pip install 'rundock[sweeps]'"


class SweepDependencyError(RundockError, ImportError):
    """A sweep feature needs a package that is not installed."""


def require_optuna() -> ModuleType:
    """The ``optuna`` module, or a clear error saying how to install it."""
    try:
        import optuna
    except ImportError:
        raise SweepDependencyError(
            f"BayesianParameterSampling needs Optuna, which is not installed here: {_INSTALL_HINT}"
        ) from None
    return optuna


def _distributions(optuna: ModuleType, space: Mapping[str, ParameterExpression]) -> dict[str, Any]:
    dists: dict[str, Any] = {}
    for name, expr in space.items():
        if isinstance(expr, Choice):
            dists[name] = optuna.distributions.CategoricalDistribution(list(expr.values))
        elif isinstance(expr, QUniform):  # TPE picks the multiple n; the value is n * q
            low, high = round(expr.min_value / expr.q), round(expr.max_value / expr.q)
            dists[name] = optuna.distributions.IntDistribution(low, max(low, high))
        elif isinstance(expr, Uniform):
            dists[name] = optuna.distributions.FloatDistribution(expr.min_value, expr.max_value)
        else:
            raise TypeError(f"no TPE distribution for {expr}")
    return dists


def _to_optuna(space: Mapping[str, ParameterExpression], params: Mapping[str, Any]) -> dict[str, Any] | None:
    """A trial's parameters as the study holds them; None when they do not fit the space (it changed)."""
    out: dict[str, Any] = {}
    for name, expr in space.items():
        if name not in params:
            return None
        value = params[name]
        if isinstance(expr, Choice):
            if value not in expr.values:
                return None
            out[name] = value
        elif isinstance(expr, QUniform):
            out[name] = round(float(value) / expr.q)
        else:
            out[name] = float(value)
    return out


def _from_optuna(space: Mapping[str, ParameterExpression], params: Mapping[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for name, expr in space.items():
        value = params[name]
        out[name] = quantize(value * expr.q, expr.q) if isinstance(expr, QUniform) else value
    return out


def _frozen(
    optuna: ModuleType, trial: Trial, params: dict[str, Any], dists: dict[str, Any], goal: PrimaryMetricGoal
) -> Any:
    states = optuna.trial.TrialState
    score = trial.score(goal)
    if trial.status == "Completed" and score is not None:
        return optuna.trial.create_trial(state=states.COMPLETE, value=score, params=params, distributions=dists)
    if trial.status == "Canceled" and score is not None:  # stopped early: what it reached so far
        steps = dict(enumerate(trial.values))
        return optuna.trial.create_trial(
            state=states.PRUNED, params=params, distributions=dists, intermediate_values=steps
        )
    if trial.status in ("Completed", "Canceled", "Failed"):
        return optuna.trial.create_trial(state=states.FAIL, params=params, distributions=dists)
    return optuna.trial.create_trial(state=states.RUNNING, params=params, distributions=dists)


def suggest(
    space: Mapping[str, ParameterExpression], trials: Sequence[Trial], goal: PrimaryMetricGoal, *, seed: int, index: int
) -> dict[str, Any]:
    """The parameters of trial ``index``, given every earlier trial (later ones are ignored)."""
    optuna = require_optuna()
    dists = _distributions(optuna, space)
    direction = "maximize" if goal is PrimaryMetricGoal.MAXIMIZE else "minimize"
    sampler_seed = random.Random(f"{seed}/{index}").randrange(2**32)
    optuna_logger = logging.getLogger("optuna")
    level = optuna_logger.level
    optuna_logger.setLevel(logging.WARNING)  # no "A new study created in memory" per suggestion
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", category=optuna.exceptions.ExperimentalWarning)
            sampler = optuna.samplers.TPESampler(seed=sampler_seed, multivariate=True, constant_liar=True)
            study = optuna.create_study(direction=direction, sampler=sampler)
            for trial in sorted(trials, key=lambda t: t.index):
                params = _to_optuna(space, trial.params) if trial.index < index else None
                if params is not None:
                    study.add_trial(_frozen(optuna, trial, params, dists, goal))
            asked = study.ask(fixed_distributions=dists)
    finally:
        optuna_logger.setLevel(level)
    return _from_optuna(space, asked.params)
