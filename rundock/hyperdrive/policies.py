"""Early-termination policies: which running trials of a sweep to cancel now (Azure ML v1's classes).

An *interval* is one logged value of the primary metric: a trial that has logged n values has reached
interval n. A policy is applied at the intervals ``N`` that are multiples of ``evaluation_interval`` and
at least ``delay_evaluation`` (v1's rule). ``to_stop`` is stateless: each running trial is judged at the
latest such interval it has reached, against every trial (of any status) that reached that interval too,
so a restarted controller decides exactly as before from the history alone. A trial's performance at
``N`` is its best value among its first ``N`` values, as v1 compared runs.

- ``BanditPolicy``: cancel a trial outside the slack of the best trial at ``N``. With ``slack_factor``
  the limit is ``best / (1 + slack_factor)`` when maximizing and ``best * (1 + slack_factor)`` when
  minimizing (the distance is taken on ``|best|``, so negative metrics work); with ``slack_amount`` it is
  ``best - slack_amount`` / ``best + slack_amount``.
- ``MedianStoppingPolicy``: cancel a trial whose best value up to ``N`` is worse than the median of the
  running averages (mean of the first ``N`` values) of the trials that reached ``N``.
- ``TruncationSelectionPolicy``: rank the trials that reached ``N`` and cancel those in the lowest
  ``truncation_percentage`` percent (``floor(count * percentage / 100)`` trials; ties rank the newer
  trial lower).
- ``NoTerminationPolicy``: never cancels (``policy=None`` means the same).
"""

from __future__ import annotations

import abc
import math
import statistics
from collections.abc import Mapping, Sequence
from typing import Any, ClassVar

from rundock.errors import ConfigError
from rundock.hyperdrive.goal import PrimaryMetricGoal, Trial
from rundock.hyperdrive.sampling import BayesianParameterSampling, ParameterSampling

__all__ = [
    "BanditPolicy",
    "EarlyTerminationPolicy",
    "MedianStoppingPolicy",
    "NoTerminationPolicy",
    "TruncationSelectionPolicy",
    "validate",
]

_RUNNING = "Running"


def _count(kind: str, name: str, value: Any, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ConfigError(f"{kind}: {name} must be an integer of at least {minimum}, not {value!r}")
    return value


def _fmt(value: float) -> str:
    return f"{value:.4g}"


class EarlyTerminationPolicy(abc.ABC):
    """Base of the policies: when to evaluate (``evaluation_interval``, ``delay_evaluation``) and ``to_stop``."""

    json_name: ClassVar[str]

    def __init__(self, evaluation_interval: int = 1, delay_evaluation: int = 0) -> None:
        kind = type(self).__name__
        self.evaluation_interval = _count(kind, "evaluation_interval", evaluation_interval, 1)
        self.delay_evaluation = _count(kind, "delay_evaluation", delay_evaluation, 0)

    def properties(self) -> dict[str, Any]:
        return {"evaluation_interval": self.evaluation_interval, "delay_evaluation": self.delay_evaluation}

    def to_json(self) -> dict[str, Any]:
        """v1's form, stored in the sweep's properties: ``{"name": "Bandit", "properties": {...}}``."""
        return {"name": self.json_name, "properties": self.properties()}

    @classmethod
    def from_json(cls, data: Mapping[str, Any] | None) -> EarlyTerminationPolicy | None:
        """The policy ``to_json()`` described; None for None (no policy)."""
        if data is None:
            return None
        kinds: dict[str, type[EarlyTerminationPolicy]] = {
            k.json_name: k for k in (BanditPolicy, MedianStoppingPolicy, TruncationSelectionPolicy, NoTerminationPolicy)
        }
        kind = kinds.get(str(data.get("name"))) if isinstance(data, Mapping) else None
        if kind is None:
            raise ConfigError(f"unknown early-termination policy {data!r}; expected one named {', '.join(kinds)}")
        properties = dict(data.get("properties") or {})
        try:
            return kind(**properties)
        except TypeError as exc:
            raise ConfigError(f"{kind.__name__}: wrong properties {properties!r} ({exc})") from None

    def evaluation_point(self, reached: int) -> int | None:
        """The latest interval at or before ``reached`` at which the policy applies, or None."""
        point = reached - reached % self.evaluation_interval
        return point if point >= max(1, self.delay_evaluation) else None

    def to_stop(
        self, trials: Sequence[Trial], goal: PrimaryMetricGoal, *, metric: str = "primary metric"
    ) -> list[tuple[int, str]]:
        """The running trials to cancel now, each with a reason naming the policy and the numbers.

        ``metric`` is the primary metric's name, used in the reasons only.
        """
        goal = PrimaryMetricGoal.parse(goal)
        decisions: list[tuple[int, str]] = []
        for trial in sorted(trials, key=lambda t: t.index):
            point = self.evaluation_point(len(trial.values)) if trial.status == _RUNNING else None
            if point is None:
                continue
            peers = [t for t in trials if len(t.values) >= point]
            reason = self._judge(trial, point, peers, goal, metric)
            if reason is not None:
                decisions.append((trial.index, f"{type(self).__name__}: {reason}"))
        return decisions

    @abc.abstractmethod
    def _judge(
        self, trial: Trial, point: int, peers: Sequence[Trial], goal: PrimaryMetricGoal, metric: str
    ) -> str | None:
        """Why ``trial`` should stop at interval ``point`` (without the policy name), or None to keep it."""

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.properties().items())
        return f"{type(self).__name__}({args})"

    def __eq__(self, other: object) -> bool:
        return (
            type(other) is type(self)
            and isinstance(other, EarlyTerminationPolicy)
            and (other.properties() == self.properties())
        )

    def __hash__(self) -> int:
        return hash((type(self).__name__, tuple(sorted(self.properties().items()))))


class NoTerminationPolicy(EarlyTerminationPolicy):
    """No early termination: every trial runs to its end."""

    json_name = "Default"

    def __init__(self) -> None:
        super().__init__()

    def properties(self) -> dict[str, Any]:
        return {}

    def to_stop(
        self, trials: Sequence[Trial], goal: PrimaryMetricGoal, *, metric: str = "primary metric"
    ) -> list[tuple[int, str]]:
        return []

    def _judge(
        self, trial: Trial, point: int, peers: Sequence[Trial], goal: PrimaryMetricGoal, metric: str
    ) -> str | None:
        return None


class BanditPolicy(EarlyTerminationPolicy):
    """Cancel trials whose metric falls outside a slack of the best trial's (give a factor or an amount)."""

    json_name = "Bandit"

    def __init__(
        self,
        evaluation_interval: int = 1,
        slack_factor: float | None = None,
        slack_amount: float | None = None,
        delay_evaluation: int = 0,
    ) -> None:
        super().__init__(evaluation_interval, delay_evaluation)
        if (slack_factor is None) == (slack_amount is None):
            raise ConfigError("BanditPolicy needs exactly one of slack_factor (a ratio) or slack_amount (a distance)")
        for name, value in (("slack_factor", slack_factor), ("slack_amount", slack_amount)):
            if value is not None and (
                isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0
            ):
                raise ConfigError(f"BanditPolicy: {name} must be a number above 0, not {value!r}")
        self.slack_factor = None if slack_factor is None else float(slack_factor)
        self.slack_amount = None if slack_amount is None else float(slack_amount)

    def properties(self) -> dict[str, Any]:
        props = super().properties()
        if self.slack_factor is not None:
            props["slack_factor"] = self.slack_factor
        if self.slack_amount is not None:
            props["slack_amount"] = self.slack_amount
        return props

    def limit(self, best: float, goal: PrimaryMetricGoal) -> float:
        """The worst value still inside the slack of ``best``."""
        sign = 1.0 if goal is PrimaryMetricGoal.MAXIMIZE else -1.0
        if self.slack_factor is not None:
            distance = abs(best) * self.slack_factor
            if goal is PrimaryMetricGoal.MAXIMIZE:
                distance /= 1 + self.slack_factor
            return best - sign * distance
        assert self.slack_amount is not None
        return best - sign * self.slack_amount

    def _judge(
        self, trial: Trial, point: int, peers: Sequence[Trial], goal: PrimaryMetricGoal, metric: str
    ) -> str | None:
        value = trial.best_until(point, goal)
        best = goal.best([p.best_until(point, goal) for p in peers])
        limit = self.limit(best, goal)
        if not goal.is_better(limit, value):
            return None
        slack = (
            f"slack_factor {self.slack_factor:g}"
            if self.slack_factor is not None
            else f"slack_amount {self.slack_amount:g}"
        )
        return (
            f"{metric} {_fmt(value)} at interval {point} is outside {slack} of the best {_fmt(best)} "
            f"(limit {_fmt(limit)})"
        )


class MedianStoppingPolicy(EarlyTerminationPolicy):
    """Cancel trials whose best value is worse than the median of all trials' running averages."""

    json_name = "MedianStopping"

    def __init__(self, evaluation_interval: int = 1, delay_evaluation: int = 0) -> None:
        super().__init__(evaluation_interval, delay_evaluation)

    def _judge(
        self, trial: Trial, point: int, peers: Sequence[Trial], goal: PrimaryMetricGoal, metric: str
    ) -> str | None:
        value = trial.best_until(point, goal)
        median = statistics.median(statistics.fmean(p.values[:point]) for p in peers)
        if not goal.is_better(median, value):
            return None
        return (
            f"best {metric} {_fmt(value)} up to interval {point} is worse than {_fmt(median)}, the median of the "
            f"running averages of {len(peers)} trials"
        )


class TruncationSelectionPolicy(EarlyTerminationPolicy):
    """At each evaluation, cancel the lowest-ranked ``truncation_percentage`` percent of the trials."""

    json_name = "TruncationSelection"

    def __init__(self, truncation_percentage: int, evaluation_interval: int = 1, delay_evaluation: int = 0) -> None:
        super().__init__(evaluation_interval, delay_evaluation)
        if (
            isinstance(truncation_percentage, bool)
            or not isinstance(truncation_percentage, int)
            or not (1 <= truncation_percentage <= 99)
        ):
            raise ConfigError(
                f"TruncationSelectionPolicy: truncation_percentage must be an integer from 1 to 99, "
                f"not {truncation_percentage!r}"
            )
        self.truncation_percentage = truncation_percentage

    def properties(self) -> dict[str, Any]:
        return {"truncation_percentage": self.truncation_percentage, **super().properties()}

    def _judge(
        self, trial: Trial, point: int, peers: Sequence[Trial], goal: PrimaryMetricGoal, metric: str
    ) -> str | None:
        cut = len(peers) * self.truncation_percentage // 100
        sign = 1.0 if goal is PrimaryMetricGoal.MAXIMIZE else -1.0
        # Worst first; among equal values the newer trial ranks lower.
        ranking = sorted(peers, key=lambda p: (sign * p.best_until(point, goal), -p.index))
        position = next(i for i, p in enumerate(ranking) if p.index == trial.index)
        if position >= cut:
            return None
        value = trial.best_until(point, goal)
        return (
            f"{metric} {_fmt(value)} at interval {point} ranks {len(peers) - position} of {len(peers)}, in the "
            f"lowest {self.truncation_percentage}% ({cut} of {len(peers)} trials)"
        )


def validate(sampling: ParameterSampling, policy: EarlyTerminationPolicy | None) -> None:
    """Check that a sampling and a policy may be used together in one sweep; raise ConfigError if not."""
    if not isinstance(sampling, ParameterSampling):
        raise ConfigError(
            f"hyperparameter_sampling must be RandomParameterSampling, GridParameterSampling or "
            f"BayesianParameterSampling, not {type(sampling).__name__}",
            field="hyperparameter_sampling",
        )
    if policy is not None and not isinstance(policy, EarlyTerminationPolicy):
        raise ConfigError(
            f"policy must be BanditPolicy, MedianStoppingPolicy, TruncationSelectionPolicy, NoTerminationPolicy "
            f"or None, not {type(policy).__name__}",
            field="policy",
        )
    if (
        isinstance(sampling, BayesianParameterSampling)
        and policy is not None
        and (not isinstance(policy, NoTerminationPolicy))
    ):
        raise ConfigError(
            f"BayesianParameterSampling does not support early termination (got {type(policy).__name__}): "
            "pass policy=None or NoTerminationPolicy()",
            field="policy",
        )
