"""Azure ML SDK v1 run configuration files, read unchanged.

v1's ``RunConfiguration.save()`` wrote camelCase YAML (or JSON) to
``.azureml/<name>.runconfig`` or ``aml_config/<name>.runconfig``. Contract:

- ``is_v1(data)``: a mapping is in v1's format when it holds a key that only v1
  uses (``framework``, ``maxRunDurationSeconds``, ``nodeCount``, ``history``,
  ``environment.environmentVariables``, ``environment.python.interpreterPath``
  ...). rundock's own snake_case files are never taken for v1 files, so a typo
  in them is still an error naming the field.
- ``translate(data, source)``: the rundock RunConfiguration mapping for what
  rundock supports: ``script``, ``arguments``, ``target``,
  ``maxRunDurationSeconds`` (null: rundock's default), ``environment``
  (``name``, ``version``, ``environmentVariables``; ``python``:
  ``userManagedDependencies``, ``interpreterPath``, ``condaDependencies`` or
  ``condaDependenciesFile`` (relative to the project folder, the one holding
  ``.azureml``/``aml_config``): conda names and ``pip:`` lists; ``docker``:
  ``enabled``, ``baseImage``, ``baseDockerfile``, ``arguments``, ``shmSize``),
  and the top-level ``docker`` section (``useDocker``, ``arguments``,
  ``shmSize``), which overrides ``environment.docker`` as in v1.
- Packages named ``azureml-*`` are dropped: inside a job ``azureml.core`` is
  rundock's shim, and a real ``azureml`` would take its place.
- Settings rundock has no equivalent for (other frameworks, communicators,
  several nodes, data references, AmlCompute, HDInsight, Spark, ...) are not
  errors: each one set to anything but v1's default or an empty value is named
  in ONE ``V1ConfigWarning`` per file, which lists them all; values at v1's
  defaults (what every saved file holds) are ignored silently.
- A supported field with a value of the wrong kind is a ConfigError naming the
  file and the v1 field.
"""

from __future__ import annotations

import os
import re
import warnings
from collections.abc import Mapping
from typing import Any

import yaml

from rundock.errors import ConfigError

V1_SUFFIX = ".runconfig"
V1_FOLDERS = (".azureml", "aml_config")
ANY = object()  # a setting ignored whatever its value
# v1's default values of the settings rundock ignores: a file holding these loads without a warning.
DEFAULTS: dict[str, Any] = {
    "framework": ("python",), "communicator": ("none",), "nodeCount": (1,),
    "history.outputCollection": (True,), "history.snapshotProject": (True,),
    "history.directoriesToWatch": (["logs"],), "history.enableMLflowTracking": ANY,
    "spark.configuration": ANY, "hdi.yarnDeployMode": ("cluster",),
    "tensorflow.workerCount": (1,), "tensorflow.parameterServerCount": (1,), "mpi.processCountPerNode": (1,),
    "mpi.nodeCount": (1,), "pytorch.communicationBackend": ("nccl",), "pytorch.nodeCount": (1,),
    "paralleltask.maxRetriesPerWorker": (0,), "paralleltask.workerCountPerNode": (1,),
    "amlcompute.clusterMaxNodeCount": (1,), "containerInstance.cpuCores": (2,), "containerInstance.memoryGb": (3.5,),
    "docker.sharedVolumes": ANY, "environment.inferencingStackVersion": ANY, "environment.assetId": ANY,
    "environment.docker.sharedVolumes": ANY, "environment.docker.platform.os": ("linux",),
    "environment.docker.platform.architecture": ("amd64",), "environment.spark.precachePackages": ANY,
    "environment.python.condaDependencies.name": ANY, "environment.python.condaDependencies.channels": ANY,
}
# Keys only v1 files hold (rundock's own format has none of them).
V1_ONLY = frozenset({
    "framework", "communicator", "maxRunDurationSeconds", "nodeCount", "history", "dataReferences", "data",
    "outputData", "datacaches", "sourceDirectoryDataStore", "amlcompute", "hdi", "tensorflow", "mpi", "pytorch",
    "paralleltask", "spark", "containerInstance", "aiSuperComputer", "kubernetescompute", "jobName", "priority",
    "credentialPassthrough", "identity", "instanceTypes", "docker", "command", "environmentVariables",
})
V1_ENVIRONMENT_ONLY = frozenset({"environmentVariables", "spark", "databricks", "r", "inferencingStackVersion",
                                 "assetId"})
V1_PYTHON_ONLY = frozenset({"userManagedDependencies", "interpreterPath", "condaDependencies",
                            "condaDependenciesFile", "baseCondaEnvironment"})
SHIMMED = frozenset({"azureml-core", "azureml-defaults"})  # what the job's azureml.core shim stands in for


class V1ConfigWarning(UserWarning):
    """An Azure ML v1 run configuration held settings rundock does not support; they were ignored."""


def is_v1(data: Any) -> bool:
    """Whether mapping ``data`` is an Azure ML v1 run configuration (camelCase keys only v1 uses)."""
    if not isinstance(data, Mapping):
        return False
    if any(key in V1_ONLY for key in data):
        return True
    env = data.get("environment")
    if not isinstance(env, Mapping):
        return False
    python, docker = env.get("python"), env.get("docker")
    return (any(key in V1_ENVIRONMENT_ONLY for key in env)
            or (isinstance(python, Mapping) and any(key in V1_PYTHON_ONLY for key in python))
            or (isinstance(docker, Mapping) and any(key in ("baseImage", "baseDockerfile", "shmSize", "gpuSupport",
                                                            "baseImageRegistry") for key in docker)))


def project_folder(source: str | None) -> str:
    """The project folder of a v1 file: the one holding its ``.azureml``/``aml_config`` folder."""
    folder = os.path.dirname(os.path.abspath(source)) if source else os.getcwd()
    return os.path.dirname(folder) if os.path.basename(folder) in V1_FOLDERS else folder


class _Reader:
    """Reads one v1 mapping: typed values by dotted v1 field, and the ignored settings."""

    def __init__(self, source: str | None) -> None:
        self.source = source
        self.ignored: list[str] = []

    def fail(self, field: str, expected: str, value: Any) -> ConfigError:
        shown = repr(value) if len(repr(value)) < 60 else repr(value)[:57] + "..."
        return ConfigError(f"expected {expected}, got {shown} ({type(value).__name__})", source=self.source,
                           field=field)

    def text(self, value: Any, field: str) -> str | None:
        if value is None or isinstance(value, str):
            return value
        raise self.fail(field, "a string", value)

    def flag(self, value: Any, field: str) -> bool | None:
        if value is None or isinstance(value, bool):
            return value
        raise self.fail(field, "a boolean (true or false)", value)

    def texts(self, value: Any, field: str) -> list[str]:
        if value is None:
            return []
        if isinstance(value, list) and all(isinstance(v, (str, int, float)) and not isinstance(v, bool)
                                           for v in value):
            return [str(v) for v in value]
        raise self.fail(field, "a list of strings", value)

    def section(self, value: Any, field: str) -> Mapping[str, Any]:
        if value is None:
            return {}
        if isinstance(value, Mapping):
            return value
        raise self.fail(field, "a mapping", value)

    def ignore(self, value: Any, field: str) -> None:
        """Note ``field`` as ignored unless its value is v1's default or empty (a mapping: key by key)."""
        default = DEFAULTS.get(field)
        if default is ANY or value is None or value is False or value == "" or value == [] or value == {}:
            return
        if default is not None and (value.lower() if isinstance(value, str) else value) in default:
            return
        if isinstance(value, Mapping) and field not in ("dataReferences", "data", "outputData"):
            for key, sub in value.items():
                self.ignore(sub, f"{field}.{key}")
            return
        shown = f"{len(value)} entries" if isinstance(value, (list, Mapping)) else repr(value)
        self.ignored.append(f"{field} ({shown[:60]})")


def _packages(reader: _Reader, conda: Mapping[str, Any], field: str) -> tuple[list[str], list[str]]:
    """Conda and pip package lists of a v1 ``condaDependencies`` mapping, without azureml's own packages."""
    conda_packages: list[str] = []
    pip_packages: list[str] = []
    for i, dep in enumerate(conda.get("dependencies") or []):
        if isinstance(dep, Mapping) and set(dep) == {"pip"}:
            pip_packages.extend(reader.texts(dep["pip"], f"{field}.dependencies[{i}].pip"))
        elif isinstance(dep, str):
            conda_packages.append(dep)
        else:
            raise reader.fail(f"{field}.dependencies[{i}]", "a package name or a 'pip:' list", dep)
    for key, value in conda.items():
        if key != "dependencies":
            reader.ignore(value, f"{field}.{key}")
    dropped = {p for p in [*conda_packages, *pip_packages] if re.match(r"azureml[-_.]", p, re.IGNORECASE)}
    unshimmed = sorted(p for p in dropped if re.split(r"[=<>!~\[ ;]", p, maxsplit=1)[0].lower() not in SHIMMED)
    if unshimmed:
        reader.ignored.append(f"{field}: {', '.join(unshimmed)} (Azure ML packages are not installed)")
    return [p for p in conda_packages if p not in dropped], [p for p in pip_packages if p not in dropped]


def _conda_file(reader: _Reader, name: str, project: str, field: str) -> Mapping[str, Any]:
    path = name if os.path.isabs(name) else os.path.join(project, name)
    try:
        with open(path, encoding="utf-8") as fh:
            data = yaml.safe_load(fh)
    except OSError as exc:
        raise ConfigError(f"cannot read the conda file {path}: {exc.strerror or exc}", source=reader.source,
                          field=field) from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"the conda file {path} is not valid YAML: {exc}", source=reader.source,
                          field=field) from None
    return reader.section(data, field)


def _python(reader: _Reader, python: Mapping[str, Any], project: str) -> dict[str, Any]:
    out: dict[str, Any] = {}
    f = "environment.python"
    user_managed = reader.flag(python.get("userManagedDependencies"), f"{f}.userManagedDependencies")
    if user_managed is not None:
        out["user_managed_dependencies"] = user_managed
    interpreter = reader.text(python.get("interpreterPath"), f"{f}.interpreterPath")
    if interpreter:
        out["interpreter_path"] = interpreter
    conda = reader.section(python.get("condaDependencies"), f"{f}.condaDependencies")
    conda_field = f"{f}.condaDependencies"
    conda_file = reader.text(python.get("condaDependenciesFile"), f"{f}.condaDependenciesFile")
    if not conda and conda_file and not user_managed:
        conda, conda_field = _conda_file(reader, conda_file, project, f"{f}.condaDependenciesFile"), conda_file
    if conda:
        out["conda_packages"], out["pip_packages"] = _packages(reader, conda, conda_field)
    for key, value in python.items():
        if key not in V1_PYTHON_ONLY - {"baseCondaEnvironment"}:
            reader.ignore(value, f"{f}.{key}")
    return out


def _docker(reader: _Reader, docker: Mapping[str, Any], top: Mapping[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    f = "environment.docker"
    for key, name, read in (("enabled", "enabled", reader.flag), ("baseImage", "base_image", reader.text),
                            ("baseDockerfile", "base_dockerfile", reader.text), ("shmSize", "shm_size", reader.text)):
        value = read(docker.get(key), f"{f}.{key}")
        if value is not None:
            out[name] = value
    if "base_dockerfile" in out and "base_image" not in out:
        out["base_image"] = None
    out["arguments"] = reader.texts(docker.get("arguments"), f"{f}.arguments")
    for key, value in docker.items():
        if key not in ("enabled", "baseImage", "baseDockerfile", "shmSize", "arguments"):
            reader.ignore(value, f"{f}.{key}")
    # v1's top-level DockerConfiguration (SDK >= 1.19) takes precedence over the environment's docker section
    if reader.flag(top.get("useDocker"), "docker.useDocker"):
        out["enabled"] = True
    if top.get("arguments"):
        out["arguments"] = reader.texts(top.get("arguments"), "docker.arguments")
    shm = reader.text(top.get("shmSize"), "docker.shmSize")
    if shm:
        out["shm_size"] = shm
    for key, value in top.items():
        if key not in ("useDocker", "arguments", "shmSize"):
            reader.ignore(value, f"docker.{key}")
    return out


def _variables(reader: _Reader, variables: Mapping[str, Any], field: str) -> dict[str, str]:
    for key, value in variables.items():
        if not isinstance(value, (str, int, float, bool)):
            raise reader.fail(f"{field}.{key}", "a string", value)
    return {str(k): str(v) for k, v in variables.items()}


def _environment(reader: _Reader, env: Mapping[str, Any], top_docker: Mapping[str, Any],
                 project: str) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key in ("name", "version"):
        value = env.get(key)
        if value is not None:
            out[key] = reader.text(str(value) if isinstance(value, (int, float)) else value, f"environment.{key}")
    variables = reader.section(env.get("environmentVariables"), "environment.environmentVariables")
    out["environment_variables"] = _variables(reader, variables, "environment.environmentVariables")
    out["python"] = _python(reader, reader.section(env.get("python"), "environment.python"), project)
    out["docker"] = _docker(reader, reader.section(env.get("docker"), "environment.docker"), top_docker)
    for key, value in env.items():
        if key not in ("name", "version", "environmentVariables", "python", "docker"):
            reader.ignore(value, f"environment.{key}")
    return out


def translate(data: Mapping[str, Any], source: str | None = None) -> dict[str, Any]:
    """rundock's RunConfiguration mapping for v1 mapping ``data`` (from file ``source``); warns once, listing
    every setting that was ignored."""
    reader = _Reader(source)
    out: dict[str, Any] = {}
    script = reader.text(data.get("script"), "script")
    if script is not None:
        out["script"] = script
    arguments = data.get("arguments")
    if arguments is not None:
        if not isinstance(arguments, list):
            raise reader.fail("arguments", "a list", arguments)
        out["arguments"] = arguments
    target = reader.text(data.get("target"), "target")
    if target:
        out["target"] = target
    duration = data.get("maxRunDurationSeconds")
    if duration is not None:
        if isinstance(duration, bool) or not isinstance(duration, int) or duration <= 0:
            raise reader.fail("maxRunDurationSeconds", "an integer above 0", duration)
        out["max_run_duration_seconds"] = duration
    top_docker = reader.section(data.get("docker"), "docker")
    env = data.get("environment")
    if env is not None or top_docker.get("useDocker"):
        out["environment"] = _environment(reader, reader.section(env, "environment"), top_docker,
                                          project_folder(source))
        # the run configuration's own variables (v1 SDK >= 1.2x) come on top of the environment's
        variables = reader.section(data.get("environmentVariables"), "environmentVariables")
        out["environment"]["environment_variables"].update(_variables(reader, variables, "environmentVariables"))
    mapped = ("script", "arguments", "target", "maxRunDurationSeconds", "environment", "docker",
              *(("environmentVariables",) if "environment" in out else ()))
    for key, value in data.items():
        if key not in mapped:
            reader.ignore(value, str(key))
    if reader.ignored:
        warnings.warn(f"{source or 'run configuration'}: Azure ML v1 settings that rundock does not support were "
                      f"ignored: {'; '.join(reader.ignored)}", V1ConfigWarning, stacklevel=4)
    return out
