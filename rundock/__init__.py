"""rundock: submit training scripts to compute targets and track their runs.

Importing ``rundock`` loads only the standard library: names are resolved on
first use, so the job-side package (``rundock.context``) works in any image.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

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

__all__ = [*_EXPORTS, "__version__"]


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'rundock' has no attribute {name!r}")
    try:
        return getattr(importlib.import_module(module), name)
    except ImportError:
        if name == "Run":  # inside a job only the job-side package is on the path
            return importlib.import_module("rundock.context.run").Run
        raise
