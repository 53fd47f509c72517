"""Hyperparameter sweeps with Azure ML SDK v1's HyperDrive API.

Parameter expressions, samplers, early-termination policies and the primary-metric goal are pure logic
(no I/O); Bayesian sampling imports Optuna only when used (``pip install 'rundock[sweeps]'``).
"""

from __future__ import annotations

from rundock.hyperdrive.config import HyperDriveConfig
from rundock.hyperdrive.goal import PrimaryMetricGoal, Trial
from rundock.hyperdrive.parameters import (
    choice,
    lognormal,
    loguniform,
    normal,
    qlognormal,
    qloguniform,
    qnormal,
    quniform,
    randint,
    uniform,
)
from rundock.hyperdrive.policies import (
    BanditPolicy,
    EarlyTerminationPolicy,
    MedianStoppingPolicy,
    NoTerminationPolicy,
    TruncationSelectionPolicy,
    validate,
)
from rundock.hyperdrive.run import HyperDriveRun
from rundock.hyperdrive.sampling import (
    BayesianParameterSampling,
    GridParameterSampling,
    ParameterSampling,
    RandomParameterSampling,
)

__all__ = [
    "BanditPolicy",
    "BayesianParameterSampling",
    "EarlyTerminationPolicy",
    "GridParameterSampling",
    "HyperDriveConfig",
    "HyperDriveRun",
    "MedianStoppingPolicy",
    "NoTerminationPolicy",
    "ParameterSampling",
    "PrimaryMetricGoal",
    "RandomParameterSampling",
    "Trial",
    "TruncationSelectionPolicy",
    "choice",
    "lognormal",
    "loguniform",
    "normal",
    "qlognormal",
    "qloguniform",
    "qnormal",
    "quniform",
    "randint",
    "uniform",
    "validate",
]
