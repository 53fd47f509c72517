"""Azure ML v1 habits that must work unchanged: VERSION, Workspace attributes, restore_snapshot's folder,
non-UTF-8 names in snapshots, v1 .runconfig files, metric history, and the job-side azureml.core shim."""

from __future__ import annotations

import importlib.metadata
import json
import os
import re
import subprocess
import sys
import tempfile
import warnings
import zipfile
from collections.abc import Callable
from pathlib import Path

import pytest

import rundock
from rundock import Experiment, RunConfiguration
from rundock.agent.joblib import ensure_azureml_shim, ensure_job_lib
from rundock.context import run as job_side
from rundock.errors import ConfigError, SnapshotError
from rundock.runconfig.azureml_v1 import V1ConfigWarning
from rundock.submitter.snapshot import collect, take_snapshot, write_zip
from rundock.submitter.workspace import Workspace

REPO = Path(__file__).resolve().parents[2]
LATIN1 = b"r\xe9sultat.csv"  # a file name that is not UTF-8 (written by a Latin-1 system)

# What Azure ML SDK v1's RunConfiguration.save() wrote (SDK 1.3x, comments and all), for a local run.
V1_RUNCONFIG = """\
# The script to run.
script: train.py
# The arguments to the script file.
arguments: [--alpha, 0.5, --epochs, 3]
# The name of the compute target to use for this run.
target: local
# Framework to execute inside. Allowed values are "Python", "PySpark", "CNTK", "TensorFlow", and "PyTorch".
framework: Python
# Communicator for the given framework. Allowed values are "None", "ParameterServer", "OpenMpi", and "IntelMpi".
communicator: None
# Maximum allowed duration for the run.
maxRunDurationSeconds: 3600
# Number of nodes to use for running job.
nodeCount: 1
# Priority of the job
priority:
# Environment details.
environment:
# Environment name
  name: sklearn-env
# Environment version
  version: '3'
# Environment variables set for the run.
  environmentVariables:
    EXAMPLE_ENV_VAR: EXAMPLE_VALUE
    SEED: 42
# Python details
  python:
# user_managed_dependencies=True indicates that the environmentwill be user managed. False indicates that \
AzureML willmanage the user environment.
    userManagedDependencies: true
# The python interpreter path
    interpreterPath: {interpreter}
# Path to the conda dependencies file to use for this run. If a project
# contains multiple programs with different sets of dependencies, it may be
# convenient to manage those environments with separate files.
    condaDependenciesFile:
# The base conda environment used for incremental environment creation.
    baseCondaEnvironment:
# Conda dependencies
    condaDependencies:
      name: project_environment
      dependencies:
      - python=3.8.10
      - scikit-learn=0.24.2
      - pip:
        - azureml-defaults
        - pandas==1.3.5
      channels:
      - anaconda
      - conda-forge
# Docker details
  docker:
# Set True to perform this run inside a Docker container.
    enabled: false
# Base image used for Docker-based runs.
    baseImage: mcr.microsoft.com/azureml/openmpi3.1.2-ubuntu18.04:20211124.v1
# Platform
    platform:
      os: Linux
      architecture: amd64
# Base Dockerfile used for Docker-based runs. Mutually exclusive with base_image.
    baseDockerfile:
# Set to true if the image is a GPU image
    gpuSupport: false
# Shared memory size for Docker container. Default is 1g.
    shmSize: 2g
# Extra arguments to the Docker run command.
    arguments: []
# Image registry that contains the base image.
    baseImageRegistry:
# DNS name or IP address of azure container registry(ACR)
      address:
# The username for ACR
      username:
# The password for ACR
      password:
      registryIdentity:
# Spark details
  spark:
# List of spark repositories.
    repositories: []
# The packages to use.
    packages: []
# Whether to precache the packages.
    precachePackages: true
# Databricks details
  databricks:
# List of maven libraries.
    mavenLibraries: []
# List of PyPi libraries
    pypiLibraries: []
# List of RCran libraries
    rcranLibraries: []
# List of JAR libraries
    jarLibraries: []
# List of Egg libraries
    eggLibraries: []
# R details
  r:
# Inferencing stack version
  inferencingStackVersion:
# History details.
history:
# Enable history tracking -- this allows status, logs, metrics, and outputs
# to be collected for a run.
  outputCollection: true
# Whether to take snapshots for history.
  snapshotProject: true
# Directories to sync with FileWatcher.
  directoriesToWatch:
  - logs
# Enable MLflow tracking
  enableMLflowTracking: true
# Spark configuration details.
spark:
# The Spark configuration.
  configuration:
    spark.app.name: Azure ML Experiment
    spark.yarn.maxAppAttempts: 1
# Docker configuration details.
docker:
# Set True to perform this run inside a Docker container.
  useDocker: false
# Set False to disable AzureML mounting the source directory.
  sharedVolumes: true
# Extra arguments to the Docker run command.
  arguments: []
# Shared memory size for Docker container. Default is 2g.
  shmSize: 2g
# HDI details.
hdi:
# Yarn deploy mode. Options are cluster and client.
  yarnDeployMode: cluster
# Tensorflow details.
tensorflow:
# The number of worker tasks.
  workerCount: 1
# The number of parameter server tasks.
  parameterServerCount: 1
# Mpi details.
mpi:
# When using MPI, number of processes per node.
  processCountPerNode: 1
# The number of nodes to use for running job.
  nodeCount: 1
# PyTorch details.
pytorch:
# Communication backend
  communicationBackend: nccl
# The number of processes
  processCount:
# The number of nodes to use for running job.
  nodeCount: 1
# Parallel task details.
paralleltask:
  maxRetriesPerWorker: 0
  workerCountPerNode: 1
  terminalExitCodes:
# data reference configuration details
dataReferences: {{}}
# The configuration details for data.
data: {{}}
# The configuration details for outputs.
outputData: {{}}
# The configuration details for datacaches.
datacaches: []
# Project share datastore reference.
sourceDirectoryDataStore:
# AmlCompute details.
amlcompute:
# VM size of the Cluster to be created.Allowed values are Azure vm sizes.
  vmSize:
# VM priority of the Cluster to be created. Allowed values are "dedicated" , "lowpriority".
  vmPriority:
# A bool that indicates if the cluster has to be retained after job completion.
  retainCluster: false
# Name of the cluster to be created. If not specified, runId will be used as cluster name.
  name:
# Maximum number of nodes in the AmlCompute cluster to be created. Minimum number of nodes will always be set to 0.
  clusterMaxNodeCount:
# Kubernetes Compute details.
kubernetescompute:
# The instance type
  instanceType:
credentialPassthrough: false
# Command to run
command: ''
# Environment variables set for the run.
environmentVariables: {{}}
# Application endpoints
applicationEndpoints: {{}}
"""

# The same run, with settings only Azure could honour.
CLOUD_ONLY = {
    "framework": "PyTorch", "communicator": "OpenMpi", "nodeCount": 4,
    "dataReferences": {"workspaceblobstore": {"dataStoreName": "workspaceblobstore", "mode": "mount"}},
    "amlcompute": {"vmSize": "STANDARD_NC6", "vmPriority": "lowpriority", "clusterMaxNodeCount": 4},
    "history": {"outputCollection": True, "snapshotProject": True, "directoriesToWatch": ["logs", "tb"]},
}


def _v1_file(folder: Path, name: str = "train", interpreter: str = "python", **overrides: object) -> Path:
    import yaml

    text = V1_RUNCONFIG.format(interpreter=interpreter)
    if overrides:
        data = yaml.safe_load(text)
        data.update(overrides)
        text = yaml.safe_dump(data)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{name}.runconfig"
    path.write_text(text)
    return path


# -- 1. VERSION and the workspace's descriptive attributes -------------------------------------------------
def test_version_is_the_package_version() -> None:
    assert rundock.VERSION == rundock.__version__ == importlib.metadata.version("rundock")
    declared = re.search(r'^version = "([^"]+)"', (REPO / "pyproject.toml").read_text(), re.MULTILINE)
    assert declared is not None and declared.group(1) == rundock.SOURCE_VERSION


def test_version_falls_back_to_the_source_version_when_not_installed(monkeypatch: pytest.MonkeyPatch) -> None:
    def missing(name: str) -> str:
        raise importlib.metadata.PackageNotFoundError(name)

    monkeypatch.setattr(importlib.metadata, "version", missing)
    assert rundock._installed_version() == rundock.SOURCE_VERSION


def test_workspace_has_v1_descriptive_attributes(tmp_path: Path) -> None:
    ws = Workspace.create(str(tmp_path / "project"))
    line = "Workspace: " + ws.name + ", " + ws.location + ", " + ws.subscription_id + ", " + ws.resource_group
    assert line == f"Workspace: project, local, local, {tmp_path / 'project'}"
    assert ws.sku == "local" and ws.tags == {}


# -- 2. restore_snapshot writes <id>.zip in a folder; names that are not UTF-8 -------------------------------
def test_restore_snapshot_path_is_a_folder_created_when_missing(workspace: Workspace, source: Callable[..., Path],
                                                                tmp_path: Path,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    src = source(**{"train.py": "print(1)", "pkg/util.py": "X = 1"})
    run = Experiment(workspace, "restore").start_logging(snapshot_directory=str(src))
    snapshot_id = run.get_snapshot_id()
    path = run.restore_snapshot(path="snapshots")
    assert path == os.path.join("snapshots", f"{snapshot_id}.zip") and os.path.isdir("snapshots")
    with zipfile.ZipFile(path) as zf:
        assert sorted(zf.namelist()) == ["pkg/util.py", "train.py"]
    assert run.restore_snapshot(path="snapshots") == path  # again: replaced, not nested
    temp = tmp_path / "tmp"
    temp.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(temp))
    assert run.restore_snapshot() == str(temp / f"{snapshot_id}.zip")  # default: the temp folder
    os.symlink(tmp_path / "victim", temp / "other.zip")
    assert run.restore_snapshot(path=str(temp / "other.zip")) == str(temp / "other.zip")  # a .zip path: the file
    assert not (tmp_path / "victim").exists() and zipfile.is_zipfile(temp / "other.zip")  # the link was replaced
    Path("afile").write_text("x")
    with pytest.raises(NotADirectoryError, match="afile.*is a file"):
        run.restore_snapshot(path="afile")


def test_names_that_are_not_utf8_are_stored_escaped(workspace: Workspace, tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    (src / "train.py").write_text("print(1)")
    with open(os.path.join(os.fsencode(src), LATIN1), "wb") as fh:
        fh.write(b"a,b\n")
    snap = take_snapshot(str(src), workspace.store, workspace.artifacts)
    assert [e["path"] for e in snap.manifest] == ["r%E9sultat.csv", "train.py"]
    with zipfile.ZipFile(write_zip(workspace.store.get_snapshot(snap.snapshot_id), workspace.artifacts,
                                   str(tmp_path / "s.zip"))) as zf:
        assert zf.read("r%E9sultat.csv") == b"a,b\n"
    (src / "r%E9sultat.csv").write_text("clash")
    with pytest.raises(SnapshotError, match="would both be stored as 'r%E9sultat.csv'"):
        collect(str(src))


def test_get_metric_history_gives_values_steps_and_times(workspace: Workspace) -> None:
    run = Experiment(workspace, "history").start_logging()
    for step, loss in ((1, 0.5), (2, 0.25), (3, float("nan"))):
        run.log("loss", loss, step=step)
    run.log("acc", 0.9)
    run.log("acc", 0.95)
    run.flush()
    history = run.get_metric_history("loss")
    assert [h["step"] for h in history] == [1, 2, 3] and history[0]["value"] == 0.5
    assert all(h["time"].endswith("Z") and h["time"][:2] == "20" for h in history)
    assert [h["time"] for h in history] == sorted(h["time"] for h in history)
    assert [(h["value"], h["step"]) for h in run.get_metric_history("acc")] == [(0.9, None), (0.95, None)]
    assert run.get_metric_history("never") == []
    assert run.get_metrics()["acc"] == [0.9, 0.95]  # v1's shapes are unchanged


# -- 3. Azure ML v1 run configuration files -------------------------------------------------------------------
def test_v1_runconfig_loads_unchanged_from_dot_azureml(tmp_path: Path) -> None:
    _v1_file(tmp_path / ".azureml", interpreter="/opt/py/bin/python")
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # every cloud setting is at v1's default: no warning
        config = RunConfiguration.load(path=str(tmp_path), name="train")
    assert config.script == "train.py" and config.arguments == ["--alpha", 0.5, "--epochs", 3]
    assert config.target == "local" and config.max_run_duration_seconds == 3600
    env = config.environment
    assert env is not None and env.name == "sklearn-env" and env.version == "3"
    assert env.environment_variables == {"EXAMPLE_ENV_VAR": "EXAMPLE_VALUE", "SEED": "42"}
    assert env.python.user_managed_dependencies and env.python.interpreter_path == "/opt/py/bin/python"
    assert env.python.conda_packages == ["python=3.8.10", "scikit-learn=0.24.2"]
    assert env.python.pip_packages == ["pandas==1.3.5"]  # azureml-defaults: the job's azureml.core is the shim
    assert not env.docker.enabled and env.docker.shm_size == "2g"
    assert env.docker.base_image == "mcr.microsoft.com/azureml/openmpi3.1.2-ubuntu18.04:20211124.v1"


def test_v1_runconfig_is_found_in_aml_config_and_by_file(tmp_path: Path) -> None:
    path = _v1_file(tmp_path / "aml_config", name="local")
    assert RunConfiguration.load(str(tmp_path), "local").script == "train.py"
    assert RunConfiguration.load(str(tmp_path), "local.runconfig").script == "train.py"
    assert RunConfiguration.load(str(path)).script == "train.py"
    with pytest.raises(ConfigError, match=r"no run configuration named 'gpu'.*\.azureml/gpu\.runconfig"):
        RunConfiguration.load(str(tmp_path), "gpu")


def test_v1_runconfig_in_json_with_a_conda_file_and_docker_configuration(tmp_path: Path) -> None:
    (tmp_path / "aml_config").mkdir()
    (tmp_path / "aml_config" / "conda_dependencies.yml").write_text(
        "name: project_environment\ndependencies:\n- python=3.6.2\n- numpy\n- pip:\n  - azureml-sdk\n  - torch\n")
    data = {"script": "train.py", "framework": "Python", "maxRunDurationSeconds": None,
            "environment": {"python": {"userManagedDependencies": False,
                                       "condaDependenciesFile": "aml_config/conda_dependencies.yml"},
                            "docker": {"enabled": False, "baseImage": "python:3.10-slim"}},
            "docker": {"useDocker": True, "arguments": ["--cpus", "2"], "shmSize": "1g"}}
    path = tmp_path / "aml_config" / "gpu.runconfig"
    path.write_text(json.dumps(data))
    with pytest.warns(V1ConfigWarning) as caught:
        config = RunConfiguration.load(str(tmp_path), "gpu")
    assert len(caught) == 1 and "azureml-sdk" in str(caught[0].message)
    env = config.environment
    assert env is not None and env.python.conda_packages == ["python=3.6.2", "numpy"]
    assert env.python.pip_packages == ["torch"] and env.docker.enabled and env.docker.arguments == ["--cpus", "2"]
    assert env.docker.shm_size == "1g" and env.docker.base_image == "python:3.10-slim"


def test_cloud_only_v1_settings_are_named_in_one_warning(tmp_path: Path) -> None:
    path = _v1_file(tmp_path / ".azureml", **CLOUD_ONLY)
    with pytest.warns(V1ConfigWarning) as caught:
        config = RunConfiguration.load(str(path))
    assert len(caught) == 1
    text = str(caught[0].message)
    assert str(path) in text
    for name in ("framework ('PyTorch')", "communicator ('OpenMpi')", "nodeCount (4)", "dataReferences (1 entries)",
                 "amlcompute.vmSize ('STANDARD_NC6')", "amlcompute.vmPriority", "amlcompute.clusterMaxNodeCount",
                 "history.directoriesToWatch"):
        assert name in text
    assert "outputCollection" not in text and "spark" not in text  # at v1's defaults
    assert config.script == "train.py"


def test_v1_fields_of_the_wrong_kind_name_the_file_and_the_v1_field(tmp_path: Path) -> None:
    path = tmp_path / "bad.runconfig"
    path.write_text("script: train.py\nframework: Python\n"
                    "environment:\n  python:\n    userManagedDependencies: maybe\n")
    with pytest.raises(ConfigError, match=r"bad\.runconfig.*environment\.python\.userManagedDependencies.*boolean"):
        RunConfiguration.load(str(path))
    path.write_text("script: train.py\nmaxRunDurationSeconds: soon\n")
    with pytest.raises(ConfigError, match="field 'maxRunDurationSeconds'"):
        RunConfiguration.load(str(path))


# -- 4. the job side: run.experiment.workspace and the azureml.core shim --------------------------------------
def test_job_side_run_has_an_experiment_workspace(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(job_side.ENV_WORKSPACE_NAME, raising=False)
    monkeypatch.setattr(job_side.Run, "_context", None)
    ws = job_side.Run.get_context().experiment.workspace
    assert (ws.name, ws.location, ws.subscription_id) == ("local", "local", "local")
    monkeypatch.setenv(job_side.ENV_WORKSPACE_NAME, "team-ws")
    monkeypatch.setattr(job_side.Run, "_context", None)
    assert job_side.Run.get_context().experiment.workspace.name == "team-ws"


def test_azureml_core_shim_imports_v1_names(tmp_path: Path) -> None:
    script = ("from azureml.core import Workspace, Experiment, Run\n"
              "from azureml.core.run import Run as R2\n"
              "from azureml.core.experiment import Experiment as E2\n"
              "run = Run.get_context()\n"
              "ws = run.experiment.workspace\n"
              "exp = Experiment(Workspace.from_config(), 'exp')\n"
              "print(ws.name, ws.location, exp.workspace.name, exp.name, R2 is Run, E2 is Experiment)\n")
    path = os.pathsep.join([ensure_job_lib(str(tmp_path / "lib")), ensure_azureml_shim(str(tmp_path / "lib"))])
    env = {"PATH": os.environ.get("PATH", ""), "PYTHONPATH": path, "RUNDOCK_WORKSPACE_NAME": "my-ws"}
    proc = subprocess.run([sys.executable, "-S", "-c", script], env=env, capture_output=True,
                          text=True, timeout=60, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "my-ws local my-ws exp True True"
