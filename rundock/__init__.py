"""rundock: submit training scripts to compute targets and track their runs.

Importing ``rundock`` loads only the standard library: names are resolved on
first use, so the job-side package (``rundock.context``) works in any image.

``rundock.__version__`` (and Azure ML v1's spelling, ``rundock.VERSION``) is the
installed distribution's version (``importlib.metadata``), or the version this
source tree carries when no ``rundock`` distribution is installed (as in a
job's copy of the package). Both are read on first use.
"""

from __future__ import annotations

import importlib
from typing import Any

SOURCE_VERSION = "0.1.0"  # the version in pyproject.toml: used when rundock is not installed

_EXPORTS = {
    "Workspace": "rundock.submitter.workspace",
    "Experiment": "rundock.submitter.experiment",
    "Run": "rundock.submitter.run",
    "Environment": "rundock.runconfig.environment",
    "RunConfiguration": "rundock.runconfig.run_configuration",
    "ScriptRunConfig": "rundock.runconfig.script_run_config",
    "RunStatus": "rundock.states",
    "Model": "rundock.submitter.model",
    "CondaDependencies": "rundock.runconfig.environment",
    "ComputeTarget": "rundock.submitter.compute",
    "RemoteCompute": "rundock.submitter.compute",
}

__all__ = [*_EXPORTS, "VERSION", "__version__"]


def _installed_version() -> str:
    from importlib.metadata import PackageNotFoundError, version  # Python >= 3.8

    try:
        return version("rundock")
    except PackageNotFoundError:
        return SOURCE_VERSION


def __getattr__(name: str) -> Any:
    if name in ("VERSION", "__version__"):
        found = _installed_version()
        globals().update(VERSION=found, __version__=found)
        return found
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'rundock' has no attribute {name!r}")
    try:
        return getattr(importlib.import_module(module), name)
    except ImportError:
        if name == "Run":  # inside a job only the job-side package is on the path
            return importlib.import_module("rundock.context.run").Run
        if name == "ScriptRunConfig":  # what a job's run.submit_child takes
            return importlib.import_module("rundock.context.config").ScriptRunConfig
        raise
