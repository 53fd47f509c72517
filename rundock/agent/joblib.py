"""The job-side library: rundock's standard-library files, put on the job's PYTHONPATH.

Only these files are exposed to the job, never the submitter's site-packages,
so the job's own interpreter and packages stay exactly the user's.

When the job's Python has no ``azureml`` package, the ``azureml.core`` shim
(``SHIM``) goes on its path too: ``from azureml.core import Workspace,
Experiment, Run, ScriptRunConfig`` (and ``azureml.core.run``, ``.workspace``,
``.experiment``, ``.script_run_config``) import; ``Run`` is rundock's job-side
run, ``ScriptRunConfig`` what ``run.submit_child`` takes, and
``Workspace``/``Experiment`` are stand-ins that carry names
(``run.experiment.workspace.name``). ``azureml.train.hyperdrive`` gives the
sweeps' parameter expressions, samplings, policies and goal (rundock.hyperdrive's
pure modules, which the job lib carries).
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile

import rundock

_FILES = ("__init__.py", "states.py", "errors.py", "context/__init__.py", "context/config.py", "context/journal.py",
          "context/names.py", "context/recorder.py", "context/records.py", "context/rundir.py",
          "context/run.py", "context/schemas.py",
          # the sweeps' pure parts, for the azureml.train.hyperdrive shim (no __init__: nothing else of the package)
          "hyperdrive/goal.py", "hyperdrive/parameters.py", "hyperdrive/sampling.py", "hyperdrive/policies.py",
          "hyperdrive/_tpe.py",
          # a distributed run's launcher (``python -m rundock.agent.launch``; no __init__, as above)
          "agent/launch.py")


_SHIM_RUN = """\"\"\"rundock's stand-in for Azure ML inside a job: Run maps onto rundock's job-side run.\"\"\"

from rundock.context.run import Run

__all__ = ["Run"]
"""

_SHIM_CLASSES = """\"\"\"rundock's stand-ins for Azure ML's Workspace and Experiment inside a job.

They carry names only (``run.experiment.workspace.name``), not a cloud client: ``Workspace.from_config()``
and ``Workspace.get(name)`` give the job's workspace; anything else they lack raises AttributeError.
\"\"\"

from rundock.context.run import ExperimentRef, WorkspaceRef


class Workspace(WorkspaceRef):
    \"\"\"Azure ML's ``Workspace`` as a job sees it: its name and descriptive attributes.\"\"\"

    def __init__(self, subscription_id=None, resource_group=None, workspace_name=None, **kwargs):
        super().__init__(workspace_name)

    @classmethod
    def from_config(cls, path=None, auth=None, _logger=None, _file_name=None):
        return cls()

    @classmethod
    def get(cls, name, auth=None, subscription_id=None, resource_group=None, **kwargs):
        return cls(workspace_name=name)


class Experiment(ExperimentRef):
    \"\"\"Azure ML's ``Experiment`` as a job sees it: a name and its workspace.\"\"\"

    def __init__(self, workspace, name, **kwargs):
        super().__init__(name)
        self.workspace = workspace
"""

_SHIM_CORE = """\"\"\"rundock's stand-in for ``azureml.core`` inside a job: ``Run`` is rundock's job-side run;
``Workspace`` and ``Experiment`` are light stand-ins carrying names (see azureml.core.workspace);
``ScriptRunConfig`` is what ``run.submit_child`` takes (the child runs in the parent's environment).\"\"\"

from azureml.core.workspace import Experiment, Workspace
from rundock.context.config import ScriptRunConfig
from rundock.context.run import Run

__all__ = ["Experiment", "Run", "ScriptRunConfig", "Workspace"]
"""

_SHIM_SCRIPT_RUN_CONFIG = """\"\"\"rundock's stand-in for ``azureml.core.script_run_config``.\"\"\"

from rundock.context.config import ScriptRunConfig

__all__ = ["ScriptRunConfig"]
"""

_SHIM_EXPERIMENT = """\"\"\"rundock's stand-in for ``azureml.core.experiment``.\"\"\"

from azureml.core.workspace import Experiment

__all__ = ["Experiment"]
"""

_SHIM_HYPERDRIVE = """\"\"\"rundock's stand-in for ``azureml.train.hyperdrive`` inside a job: the parameter expressions,
samplings, policies and PrimaryMetricGoal. A sweep is submitted from a notebook or a shell
(``from rundock.hyperdrive import HyperDriveConfig``), not from inside a job.\"\"\"

from rundock.hyperdrive.goal import PrimaryMetricGoal
from rundock.hyperdrive.parameters import (choice, lognormal, loguniform, normal, qlognormal, qloguniform, qnormal,
                                           quniform, randint, uniform)
from rundock.hyperdrive.policies import (BanditPolicy, EarlyTerminationPolicy, MedianStoppingPolicy,
                                         NoTerminationPolicy, TruncationSelectionPolicy)
from rundock.hyperdrive.sampling import BayesianParameterSampling, GridParameterSampling
from rundock.hyperdrive.sampling import ParameterSampling as HyperParameterSampling
from rundock.hyperdrive.sampling import RandomParameterSampling


class _SubmittedOutsideJobs:
    def __init__(self, *args, **kwargs):
        raise RuntimeError(type(self).__name__ + " is not available inside a job: submit sweeps from a notebook or "
                           "a shell (from rundock.hyperdrive import HyperDriveConfig; exp.submit(config))")


class HyperDriveConfig(_SubmittedOutsideJobs):
    \"\"\"Not available inside a job (see the module docstring).\"\"\"


class HyperDriveRun(_SubmittedOutsideJobs):
    \"\"\"Not available inside a job (see the module docstring).\"\"\"
"""

SHIM = {
    "azureml/__init__.py": "",
    "azureml/core/__init__.py": _SHIM_CORE,
    "azureml/core/run.py": _SHIM_RUN,
    "azureml/core/workspace.py": _SHIM_CLASSES,
    "azureml/core/experiment.py": _SHIM_EXPERIMENT,
    "azureml/core/script_run_config.py": _SHIM_SCRIPT_RUN_CONFIG,
    "azureml/train/__init__.py": "",
    "azureml/train/hyperdrive/__init__.py": _SHIM_HYPERDRIVE,
}


def ensure_azureml_shim(root: str) -> str:
    """A folder holding the ``azureml.core`` shim; put it on PYTHONPATH after the job lib."""
    digest = hashlib.sha256(repr(sorted(SHIM.items())).encode()).hexdigest()[:12]
    target = os.path.join(root, f"azureml-shim-{digest}")
    if not os.path.isdir(target):
        _build(root, target, {k: v.encode() for k, v in SHIM.items()})
    return target


def _build(root: str, target: str, contents: dict[str, bytes]) -> None:
    os.makedirs(root, exist_ok=True)
    staging = tempfile.mkdtemp(dir=root, prefix=".building-")
    for rel, data in contents.items():
        path = os.path.join(staging, rel)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "wb") as fh:
            fh.write(data)
    try:
        os.rename(staging, target)
    except OSError:  # another agent built it first
        shutil.rmtree(staging, ignore_errors=True)


def ensure_job_lib(root: str) -> str:
    """A folder holding the job-side ``rundock`` package, built once per content; return it."""
    package = os.path.dirname(os.path.abspath(rundock.__file__))
    digest = hashlib.sha256()
    contents = {}
    for rel in _FILES:
        with open(os.path.join(package, rel), "rb") as fh:
            contents[rel] = fh.read()
        digest.update(rel.encode() + b"\0" + contents[rel])
    target = os.path.join(root, digest.hexdigest()[:16])
    if not os.path.isdir(target):
        _build(root, target, {f"rundock/{rel}": data for rel, data in contents.items()})
    return target
