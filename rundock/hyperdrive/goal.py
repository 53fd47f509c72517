"""Which way a sweep's primary metric should go, and the trial record every sweep part shares.

``PrimaryMetricGoal`` keeps Azure ML v1's names (``MAXIMIZE``/``MINIMIZE``, stored as those strings).
``Trial`` is what the sweep controller knows about one child run; it is rebuilt from the run history
after a restart, so samplers and policies must decide from it alone.
"""

from __future__ import annotations

import enum
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from rundock.errors import ConfigError


class PrimaryMetricGoal(str, enum.Enum):
    """Whether a larger or a smaller value of the primary metric is better."""

    MAXIMIZE = "MAXIMIZE"
    MINIMIZE = "MINIMIZE"

    def __str__(self) -> str:
        return self.value

    @classmethod
    def parse(cls, value: PrimaryMetricGoal | str) -> PrimaryMetricGoal:
        """Accept the enum or its name in any case (``"maximize"``, ``"MINIMIZE"``)."""
        if isinstance(value, PrimaryMetricGoal):
            return value
        try:
            return cls(str(value).upper())
        except ValueError:
            raise ConfigError(
                f"primary_metric_goal {value!r} is not a goal: use PrimaryMetricGoal.MAXIMIZE or "
                "PrimaryMetricGoal.MINIMIZE",
                field="primary_metric_goal",
            ) from None

    def is_better(self, a: float, b: float) -> bool:
        """Whether ``a`` is strictly better than ``b``."""
        return a > b if self is PrimaryMetricGoal.MAXIMIZE else a < b

    def best(self, values: Sequence[float]) -> float:
        """The best of ``values`` (which must not be empty)."""
        return max(values) if self is PrimaryMetricGoal.MAXIMIZE else min(values)

    def worst(self, values: Sequence[float]) -> float:
        """The worst of ``values`` (which must not be empty)."""
        return min(values) if self is PrimaryMetricGoal.MAXIMIZE else max(values)


@dataclass(frozen=True)
class Trial:
    """One child run of a sweep as the controller sees it.

    ``index`` counts children in order of creation (0, 1, 2, …); ``status`` is a ``RunStatus`` value;
    ``values`` are the primary metric's logged values in order, one per log call: the n-th value is
    "interval n" for the early-termination policies.
    """

    index: int
    params: dict[str, Any]
    status: str
    values: tuple[float, ...] = field(default=())

    def score(self, goal: PrimaryMetricGoal) -> float | None:
        """The trial's result: its best logged value of the primary metric, or None when it logged none."""
        return goal.best(self.values) if self.values else None

    def best_until(self, interval: int, goal: PrimaryMetricGoal) -> float:
        """The best value among the first ``interval`` logged values (the trial must have reached it)."""
        return goal.best(self.values[:interval])
