"""How a sweep picks each trial's hyperparameters: random, grid and Bayesian sampling (Azure ML v1's classes).

Every sampler is deterministic: the parameters of trial ``k`` follow from the sampler's seed, ``k`` and the
results of the trials finished so far, so a sweep controller that restarts and rebuilds its trials from the
run history proposes exactly the trials it would have proposed had it never stopped.

- ``RandomParameterSampling``: each parameter of trial ``k`` is drawn from its own ``random.Random`` seeded
  with (seed, k, name). Without a seed one is chosen at construction and kept in ``to_json()``.
- ``GridParameterSampling``: ``choice`` only; trial ``k`` is combination ``k`` of all the choices, in the
  order the parameters and their options were given (the last parameter varies fastest).
- ``BayesianParameterSampling``: ``choice``, ``uniform`` and ``quniform`` only (v1's limits), through
  Optuna's TPE sampler. Optuna is imported only here, so random and grid sweeps need nothing beyond rundock.
"""

from __future__ import annotations

import abc
import itertools
import math
import random
from collections.abc import Mapping, Sequence
from typing import Any, ClassVar

from rundock.errors import ConfigError
from rundock.hyperdrive import _tpe
from rundock.hyperdrive.goal import PrimaryMetricGoal, Trial
from rundock.hyperdrive.parameters import Choice, ParameterExpression, QUniform, Uniform, check_space

__all__ = [
    "BayesianParameterSampling",
    "GridParameterSampling",
    "ParameterSampling",
    "RandomParameterSampling",
    "Trial",
]


def _next_index(trials: Sequence[Trial]) -> int:
    return max((t.index for t in trials), default=-1) + 1


def _resolve_seed(kind: str, properties: Mapping[str, Any] | None, seed: int | None) -> int:
    """The seed from v1's ``properties={"rngSeed": 7}`` or the ``seed=`` keyword; a fresh one when neither."""
    props = dict(properties or {})
    unknown = sorted(set(props) - {"rngSeed"})
    if unknown:
        raise ConfigError(f"{kind}: unknown properties {unknown}; the one known property is 'rngSeed'")
    given = props.get("rngSeed")
    if given is not None and seed is not None and given != seed:
        raise ConfigError(f"{kind}: properties rngSeed={given!r} and seed={seed!r} disagree; give one of them")
    value = seed if seed is not None else given
    if value is None:
        return random.SystemRandom().randrange(2**31)
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ConfigError(f"{kind}: the seed must be a non-negative integer, not {value!r}")
    return value


class ParameterSampling(abc.ABC):
    """Base of the samplers: keeps v1's ``parameter_space`` and proposes the next trials' parameters."""

    json_name: ClassVar[str]

    def __init__(self, parameter_space: Mapping[str, Any]) -> None:
        self._space = check_space(parameter_space, what=type(self).__name__)

    @property
    def parameter_space(self) -> dict[str, ParameterExpression]:
        """The search space: parameter name to expression (a copy)."""
        return dict(self._space)

    def properties(self) -> dict[str, Any]:
        """Sampler settings kept with the space in ``to_json()`` (the seed, for the seeded samplers)."""
        return {}

    def to_json(self) -> dict[str, Any]:
        """v1's form, stored in the sweep's properties: name, parameter_space and properties."""
        return {
            "name": self.json_name,
            "parameter_space": {key: expr.to_json() for key, expr in self._space.items()},
            "properties": self.properties(),
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> ParameterSampling:
        """The sampler that ``to_json()`` described."""
        kinds: dict[str, type[ParameterSampling]] = {
            k.json_name: k for k in (RandomParameterSampling, GridParameterSampling, BayesianParameterSampling)
        }
        kind = kinds.get(str(data.get("name"))) if isinstance(data, Mapping) else None
        if kind is None:
            raise ConfigError(f"unknown sampling {data!r}; expected one named {', '.join(kinds)}")
        space = data.get("parameter_space") or {}
        properties = data.get("properties") or {}
        if kind is GridParameterSampling:
            return GridParameterSampling(space)
        return kind(space, properties=properties)  # type: ignore[call-arg]

    @abc.abstractmethod
    def suggest(self, trials: Sequence[Trial], count: int, goal: PrimaryMetricGoal) -> list[dict[str, Any]]:
        """The parameters of the next ``count`` trials (fewer when the space is used up; [] = no more).

        ``trials`` are all the sweep's trials so far; the new ones get the indexes after the highest one.
        Finished trials of earlier sweeps (a warm start) may be passed with negative indexes: Bayesian
        sampling learns from them, and they take no index of this sweep.
        """

    def max_trials(self) -> int | None:
        """How many distinct trials the space holds, when it is finite (grid); otherwise None."""
        return None

    def __repr__(self) -> str:
        space = ", ".join(f"{k!r}: {v}" for k, v in self._space.items())
        return f"{type(self).__name__}({{{space}}}, properties={self.properties()!r})"


class _Seeded(ParameterSampling):
    """A sampling drawn with a seed: v1's ``properties={"rngSeed": 7}`` or ``seed=7`` (chosen once and kept in
    ``to_json()`` when neither is given, so a restarted controller draws the same trials)."""

    def __init__(
        self,
        parameter_space: Mapping[str, Any],
        properties: Mapping[str, Any] | None = None,
        *,
        seed: int | None = None,
    ) -> None:
        super().__init__(parameter_space)
        self.seed = _resolve_seed(type(self).__name__, properties, seed)

    def properties(self) -> dict[str, Any]:
        return {"rngSeed": self.seed}


class RandomParameterSampling(_Seeded):
    """Each parameter drawn at random from its expression; any of the ten expressions may be used.

    ``properties={"rngSeed": 7}`` (v1's spelling) or ``seed=7`` makes the sweep repeatable.
    """

    json_name = "RANDOM"

    def sample(self, index: int) -> dict[str, Any]:
        """The parameters of trial ``index``: a pure function of (seed, index)."""
        return {name: expr.sample(random.Random(f"{self.seed}/{index}/{name}")) for name, expr in self._space.items()}

    def suggest(self, trials: Sequence[Trial], count: int, goal: PrimaryMetricGoal) -> list[dict[str, Any]]:
        start = _next_index(trials)
        return [self.sample(start + i) for i in range(max(count, 0))]


class GridParameterSampling(ParameterSampling):
    """Every combination of the ``choice`` options once, in a stable order; the sweep ends when all are tried."""

    json_name = "GRID"

    def __init__(self, parameter_space: Mapping[str, Any]) -> None:
        super().__init__(parameter_space)
        for key, expr in self._space.items():
            if not isinstance(expr, Choice):
                raise ConfigError(
                    f"GridParameterSampling supports only choice(); parameter {key!r} is {expr}. "
                    "List its values with choice(...) or use RandomParameterSampling."
                )

    def combination(self, index: int) -> dict[str, Any]:
        """Combination ``index`` of the grid (the last parameter varies fastest)."""
        params: dict[str, Any] = {}
        rest = index
        for key, expr in reversed(self._space.items()):
            assert isinstance(expr, Choice)
            rest, position = divmod(rest, len(expr.values))
            params[key] = expr.values[position]
        return {key: params[key] for key in self._space}

    def suggest(self, trials: Sequence[Trial], count: int, goal: PrimaryMetricGoal) -> list[dict[str, Any]]:
        """The next ``count`` combinations in grid order that no trial of this sweep has run yet (a sweep that
        reran earlier runs' values with ``resume_child_runs`` still covers the whole grid, each point once)."""
        done = [t.params for t in trials if t.index >= 0]  # each trial accounts for one grid point
        picks: list[dict[str, Any]] = []
        for i in range(self.max_trials()):
            if len(picks) >= count:
                break
            combination = self.combination(i)
            if combination in done:
                done.remove(combination)  # once: a grid that lists a value twice runs it twice
            else:
                picks.append(combination)
        return picks

    def max_trials(self) -> int:
        return math.prod(len(expr.values) for expr in self._space.values() if isinstance(expr, Choice))

    def all_combinations(self) -> list[dict[str, Any]]:
        """Every combination in trial order."""
        keys = list(self._space)
        options = [expr.values for expr in self._space.values() if isinstance(expr, Choice)]
        return [dict(zip(keys, combo)) for combo in itertools.product(*options)]  # noqa: B905  (3.8 on job hosts)


class BayesianParameterSampling(_Seeded):
    """Tree-structured Parzen Estimator (Optuna's TPE): each trial is chosen from the results so far.

    Only ``choice``, ``uniform`` and ``quniform`` are allowed, and no early-termination policy (both as in
    v1). It learns from finished trials only, so keep ``max_concurrent_runs`` small: v1 advised that
    ``max_total_runs`` be at least 20 times the number of parameters. Needs Optuna:
    ``pip install 'rundock[sweeps]'``.
    """

    json_name = "BayesianOptimization"

    def __init__(
        self,
        parameter_space: Mapping[str, Any],
        properties: Mapping[str, Any] | None = None,
        *,
        seed: int | None = None,
    ) -> None:
        super().__init__(parameter_space, properties, seed=seed)
        for key, expr in self._space.items():
            if type(expr) not in (Choice, Uniform, QUniform):
                raise ConfigError(
                    f"BayesianParameterSampling supports only choice(), uniform() and quniform(); "
                    f"parameter {key!r} is {expr}. Use RandomParameterSampling for other expressions."
                )
        _tpe.require_optuna()

    def suggest(self, trials: Sequence[Trial], count: int, goal: PrimaryMetricGoal) -> list[dict[str, Any]]:
        # Each new trial sees the ones before it in this batch as pending, exactly as a restarted
        # controller would find them in the history, so batch size does not change the suggestions.
        goal = PrimaryMetricGoal.parse(goal)
        known, start = list(trials), _next_index(trials)
        suggestions: list[dict[str, Any]] = []
        for index in range(start, start + max(count, 0)):
            params = _tpe.suggest(self._space, known, goal, seed=self.seed, index=index)
            suggestions.append(params)
            known.append(Trial(index=index, params=params, status="Queued"))
        return suggestions
