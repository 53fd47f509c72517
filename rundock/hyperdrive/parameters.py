"""Parameter expressions: the search space of a sweep, with Azure ML v1's ten functions and meanings.

| function                      | a value is                                  | JSON form (v1's)                  |
|-------------------------------|---------------------------------------------|-----------------------------------|
| ``choice(*options)``          | one of the options                          | ``["choice", [[16, 32, 64]]]``    |
| ``randint(upper)``            | an integer in ``[0, upper)``                | ``["randint", [10]]``             |
| ``uniform(lo, hi)``           | a float in ``[lo, hi]``                     | ``["uniform", [0.0, 1.0]]``       |
| ``quniform(lo, hi, q)``       | ``round(uniform(lo, hi) / q) * q``          | ``["quniform", [0, 10, 2]]``      |
| ``loguniform(lo, hi)``        | ``exp(uniform(lo, hi))``                    | ``["loguniform", [-6, -1]]``      |
| ``qloguniform(lo, hi, q)``    | ``round(exp(uniform(lo, hi)) / q) * q``     | ``["qloguniform", [0, 5, 1]]``    |
| ``normal(mu, sigma)``         | a normal draw                               | ``["normal", [0, 1]]``            |
| ``qnormal(mu, sigma, q)``     | ``round(normal(mu, sigma) / q) * q``        | ``["qnormal", [10, 2, 1]]``       |
| ``lognormal(mu, sigma)``      | ``exp(normal(mu, sigma))``                  | ``["lognormal", [0, 1]]``         |
| ``qlognormal(mu, sigma, q)``  | ``round(exp(normal(mu, sigma)) / q) * q``   | ``["qlognormal", [0, 1, 1]]``     |

As in v1, the log-scale bounds are exponents (``loguniform(-6, -1)`` gives values in
``[e**-6, e**-1]``) and quantised values are floats. Each expression is a frozen dataclass
that samples from a ``random.Random`` it is given, so callers decide the seeding.
"""

from __future__ import annotations

import abc
import ast
import math
import random
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar, Union

from rundock.errors import ConfigError

Scalar = Union[str, int, float, bool]


def _number(name: str, value: Any, what: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ConfigError(f"{name}(): {what} must be a finite number, not {value!r}")
    return float(value)


def _ordered(name: str, lo: float, hi: float) -> None:
    if not lo < hi:
        raise ConfigError(f"{name}({lo:g}, {hi:g}): min_value must be below max_value")


def _positive(name: str, value: float, what: str) -> None:
    if value <= 0:
        raise ConfigError(f"{name}(): {what} must be above 0, not {value:g}")


def quantize(value: float, q: float) -> float:
    """``round(value / q) * q``, with the float noise of the multiplication trimmed (0.1 * 3 gives 0.3)."""
    return float(round(round(value / q) * q, 10))


class ParameterExpression(abc.ABC):
    """Base of the ten expressions: ``sample(rng)``, ``to_json()`` in v1's form, ``from_json``."""

    name: ClassVar[str]

    @abc.abstractmethod
    def sample(self, rng: random.Random) -> Any:
        """One value, drawn with ``rng``."""

    @abc.abstractmethod
    def arguments(self) -> list[Any]:
        """The arguments in v1's JSON form (the second element of ``to_json()``)."""

    @abc.abstractmethod
    def __post_init__(self) -> None:
        """Check the arguments: a clear ConfigError naming the expression and the argument."""

    def to_json(self) -> list[Any]:
        return [self.name, self.arguments()]

    def __str__(self) -> str:
        return f"{self.name}({', '.join(repr(a) for a in self.arguments())})"


class Quantized(ParameterExpression):
    """``round(value / q) * q`` of the expression it is mixed into (before it in the bases): one more argument,
    ``q`` (a dataclass field each quantised expression declares last, default 1)."""

    q: float

    # super() is the concrete expression after this mixin in the bases, never the abstract base.
    def __post_init__(self) -> None:
        super().__post_init__()  # type: ignore[safe-super]
        _positive(self.name, _number(self.name, self.q, "q"), "q")

    def sample(self, rng: random.Random) -> float:
        return quantize(super().sample(rng), self.q)  # type: ignore[safe-super]

    def arguments(self) -> list[Any]:
        return [*super().arguments(), self.q]  # type: ignore[safe-super]


@dataclass(frozen=True)
class Choice(ParameterExpression):
    """One of a discrete set of values (numbers, strings or booleans)."""

    name: ClassVar[str] = "choice"
    values: tuple[Scalar, ...]

    def __post_init__(self) -> None:
        if not self.values:
            raise ConfigError("choice() needs at least one value")
        for value in self.values:
            if not isinstance(value, (str, int, float, bool)) or (
                isinstance(value, float) and not math.isfinite(value)
            ):
                raise ConfigError(f"choice(): {value!r} is not allowed; options must be numbers, strings or booleans")

    def sample(self, rng: random.Random) -> Scalar:
        return self.values[rng.randrange(len(self.values))]

    def arguments(self) -> list[Any]:
        return [list(self.values)]

    def __str__(self) -> str:
        return f"choice({', '.join(repr(v) for v in self.values)})"


@dataclass(frozen=True)
class RandInt(ParameterExpression):
    """An integer in ``[0, upper)``: for values whose neighbours are unrelated (random seeds, say)."""

    name: ClassVar[str] = "randint"
    upper: int

    def __post_init__(self) -> None:
        if isinstance(self.upper, bool) or not isinstance(self.upper, int) or self.upper < 1:
            raise ConfigError(f"randint({self.upper!r}): upper must be an integer of at least 1")

    def sample(self, rng: random.Random) -> int:
        return rng.randrange(self.upper)

    def arguments(self) -> list[Any]:
        return [self.upper]


@dataclass(frozen=True)
class Uniform(ParameterExpression):
    """A float drawn uniformly from ``[min_value, max_value]``."""

    name: ClassVar[str] = "uniform"
    min_value: float
    max_value: float

    def __post_init__(self) -> None:
        lo = _number(self.name, self.min_value, "min_value")
        hi = _number(self.name, self.max_value, "max_value")
        _ordered(self.name, lo, hi)

    def sample(self, rng: random.Random) -> float:
        return rng.uniform(self.min_value, self.max_value)

    def arguments(self) -> list[Any]:
        return [self.min_value, self.max_value]


@dataclass(frozen=True)
class QUniform(Quantized, Uniform):
    """``round(uniform(min_value, max_value) / q) * q``: bounded, evenly spaced values."""

    name: ClassVar[str] = "quniform"
    q: float = 1


@dataclass(frozen=True)
class LogUniform(Uniform):
    """``exp(uniform(min_value, max_value))``: the bounds are natural-log exponents."""

    name: ClassVar[str] = "loguniform"

    def sample(self, rng: random.Random) -> float:
        return math.exp(rng.uniform(self.min_value, self.max_value))


@dataclass(frozen=True)
class QLogUniform(Quantized, LogUniform):
    """``round(exp(uniform(min_value, max_value)) / q) * q``."""

    name: ClassVar[str] = "qloguniform"
    q: float = 1


@dataclass(frozen=True)
class Normal(ParameterExpression):
    """A normal draw with mean ``mu`` and standard deviation ``sigma`` (unbounded)."""

    name: ClassVar[str] = "normal"
    mu: float
    sigma: float

    def __post_init__(self) -> None:
        _number(self.name, self.mu, "mu")
        _positive(self.name, _number(self.name, self.sigma, "sigma"), "sigma")

    def sample(self, rng: random.Random) -> float:
        return rng.gauss(self.mu, self.sigma)

    def arguments(self) -> list[Any]:
        return [self.mu, self.sigma]


@dataclass(frozen=True)
class QNormal(Quantized, Normal):
    """``round(normal(mu, sigma) / q) * q``."""

    name: ClassVar[str] = "qnormal"
    q: float = 1


@dataclass(frozen=True)
class LogNormal(Normal):
    """``exp(normal(mu, sigma))``: positive values whose logarithm is normal."""

    name: ClassVar[str] = "lognormal"

    def sample(self, rng: random.Random) -> float:
        return math.exp(rng.gauss(self.mu, self.sigma))


@dataclass(frozen=True)
class QLogNormal(Quantized, LogNormal):
    """``round(exp(normal(mu, sigma)) / q) * q``."""

    name: ClassVar[str] = "qlognormal"
    q: float = 1


# v1's functions: build the expressions with v1's parameter names.
def choice(*options: Any) -> Choice:
    """One of ``options``; ``choice(1, 2, 3)``, ``choice([1, 2, 3])`` and ``choice(range(3))`` are the same."""
    if len(options) == 1 and isinstance(options[0], (list, tuple, range)):
        options = tuple(options[0])
    return Choice(tuple(options))


def randint(upper: int) -> RandInt:
    return RandInt(upper)


def uniform(min_value: float, max_value: float) -> Uniform:
    return Uniform(min_value, max_value)


def quniform(min_value: float, max_value: float, q: float) -> QUniform:
    return QUniform(min_value, max_value, q)


def loguniform(min_value: float, max_value: float) -> LogUniform:
    return LogUniform(min_value, max_value)


def qloguniform(min_value: float, max_value: float, q: float) -> QLogUniform:
    return QLogUniform(min_value, max_value, q)


def normal(mu: float, sigma: float) -> Normal:
    return Normal(mu, sigma)


def qnormal(mu: float, sigma: float, q: float) -> QNormal:
    return QNormal(mu, sigma, q)


def lognormal(mu: float, sigma: float) -> LogNormal:
    return LogNormal(mu, sigma)


def qlognormal(mu: float, sigma: float, q: float) -> QLogNormal:
    return QLogNormal(mu, sigma, q)


_FUNCTIONS: dict[str, Any] = {
    f.__name__: f
    for f in (choice, randint, uniform, quniform, loguniform, qloguniform, normal, qnormal, lognormal, qlognormal)
}


def from_json(data: Any) -> ParameterExpression:
    """The expression for v1's JSON form, e.g. ``["uniform", [0.0, 1.0]]`` or ``["choice", [[16, 32]]]``."""
    if not (isinstance(data, (list, tuple)) and len(data) == 2 and isinstance(data[1], (list, tuple))):
        raise ConfigError(f"{data!r} is not a parameter expression; expected e.g. ['uniform', [0.0, 1.0]]")
    name, args = data
    function = _FUNCTIONS.get(name) if isinstance(name, str) else None
    if function is None:
        raise ConfigError(f"unknown parameter expression {name!r}; known: {', '.join(_FUNCTIONS)}")
    try:
        result: ParameterExpression = function(*args)
    except TypeError as exc:
        raise ConfigError(f"{name}(): wrong arguments {list(args)!r} ({exc})") from None
    return result


def parse(value: Any) -> ParameterExpression:
    """An expression from a config file: v1's JSON form, or text such as ``"loguniform(-6, -1)"``.

    Text is read with ``ast.literal_eval`` on the arguments only, so nothing in it is executed.
    """
    if isinstance(value, ParameterExpression):
        return value
    if not isinstance(value, str):
        return from_json(value)
    text = value.strip()
    name, sep, rest = text.partition("(")
    if not sep or not rest.endswith(")"):
        raise ConfigError(f"{value!r} is not a parameter expression; expected e.g. 'uniform(0, 1)'")
    try:
        args = ast.literal_eval(f"({rest[:-1]},)") if rest[:-1].strip() else ()
    except (ValueError, SyntaxError):
        raise ConfigError(f"{value!r}: the arguments must be numbers, strings or lists") from None
    return from_json([name.strip(), list(args)])


def check_space(parameter_space: Mapping[str, Any], *, what: str) -> dict[str, ParameterExpression]:
    """Validate a parameter space: a non-empty mapping of names to expressions (text/JSON forms accepted)."""
    if not isinstance(parameter_space, Mapping) or not parameter_space:
        raise ConfigError(f"{what} needs a parameter space: a non-empty dict such as {{'--lr': uniform(0.001, 0.1)}}")
    space: dict[str, ParameterExpression] = {}
    for key, expression in parameter_space.items():
        if not isinstance(key, str) or not key.strip():
            raise ConfigError(f"{what}: parameter names must be non-empty strings, not {key!r}")
        try:
            space[key] = parse(expression)
        except ConfigError as exc:
            raise ConfigError(f"{what}: parameter {key!r}: {exc}") from None
    return space
