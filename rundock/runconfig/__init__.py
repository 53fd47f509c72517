"""What to run: ScriptRunConfig, RunConfiguration and Environment (no I/O beyond config files).

Names resolve on first use, so the agent can import ``rundock.runconfig.docker_args``
on a host without the submitter's packages.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "CondaDependencies": "rundock.runconfig.environment",
    "DockerSection": "rundock.runconfig.environment",
    "Environment": "rundock.runconfig.environment",
    "PythonSection": "rundock.runconfig.environment",
    "MpiConfiguration": "rundock.runconfig.distributed",
    "PyTorchConfiguration": "rundock.runconfig.distributed",
    "RunConfiguration": "rundock.runconfig.run_configuration",
    "ScriptRunConfig": "rundock.runconfig.script_run_config",
    "V1ConfigWarning": "rundock.runconfig.azureml_v1",
}

__all__ = list(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'rundock.runconfig' has no attribute {name!r}")
    return getattr(importlib.import_module(_EXPORTS[name]), name)
