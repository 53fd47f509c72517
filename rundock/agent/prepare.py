"""Preparing: from a job's environment to what to execute (a host process or a container).

User-managed Python runs as it is; a system-managed one gets a cached virtual
environment; a Docker environment gets its image (built and cached). GPUs are
checked against the host. Whether the job's Python has a real ``azureml``
package decides whether rundock's ``azureml.core`` shim goes on its path
(probed once per image for containers).

A distributed run on one node (``JobSpec.distributed``) runs its script through the launcher:
``distribute`` rewrites the plan right before the job starts, so that the rendezvous port is picked then.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import socket
import subprocess
from typing import Any, Callable

from rundock.agent import launch
from rundock.agent.cachefile import read_json, write_json
from rundock.agent.environments import PrepareError, host_gpus, pick_gpus, resolve_interpreter, system_managed_python
from rundock.agent.job import JobSpec
from rundock.runconfig.docker_args import parse_docker_arguments

HAS_AZUREML = ("import importlib.util, sys\n"
               "try:\n    found = importlib.util.find_spec('azureml.core') is not None\n"
               "except ImportError:\n    found = False\nsys.exit(0 if found else 1)\n")
Note = Callable[[str], None]


@dataclasses.dataclass
class Plan:
    """What Running will execute."""

    argv: list[str]
    image: str | None = None  # None: a host process
    azureml_shim: bool = True
    gpus: list[str] = dataclasses.field(default_factory=list)
    docker_settings: dict[str, Any] = dataclasses.field(default_factory=dict)
    docker_client: Any = None
    interpreter: str = ""  # the job's Python and script, as the job sees them (``distribute`` uses them)
    script: str = ""


def _command(interpreter: str, script: str, script_on_host: str, arguments: list[str]) -> list[str]:
    direct = not script.endswith(".py") and os.access(script_on_host, os.X_OK)
    return ([script] if direct else [interpreter, script]) + [str(a) for a in arguments]


def prepare(spec: JobSpec, src: str, agent_root: str, prepare_log: str, note: Note) -> Plan:
    """Get the run's Python (or image) ready; PrepareError says what is missing and how to fix it."""
    environment = spec.environment or {"python": {"user_managed_dependencies": True,
                                                  "interpreter_path": spec.interpreter}}
    python, docker_section = environment.get("python") or {}, environment.get("docker") or {}
    requested = int(docker_section.get("gpu_count") or 0), list(docker_section.get("gpu_device_ids") or [])
    gpus = pick_gpus(*requested, host_gpus()) if any(requested) else []
    if gpus:
        note(f"GPUs for this run: {', '.join(gpus)}")
    if docker_section.get("enabled"):
        return _prepare_docker(spec, environment, agent_root, gpus, note)
    if python.get("user_managed_dependencies"):
        interpreter = resolve_interpreter(python.get("interpreter_path") or spec.interpreter)
        if interpreter is None:
            raise PrepareError(f"the Python interpreter {python.get('interpreter_path')!r} was not found on "
                               f"{socket.gethostname()}; set environment.python.interpreter_path to an "
                               "existing interpreter (for example the output of `which python3`)")
    else:
        interpreter = system_managed_python(python, os.path.join(agent_root, "envs"), prepare_log, note)
    note(f"interpreter: {interpreter}")
    shim = _interpreter_lacks_azureml(interpreter, os.path.join(agent_root, "interpreters"))
    _note_shim(note, shim)
    script = os.path.join(src, spec.script)
    return Plan(_command(interpreter, script, script, spec.arguments), azureml_shim=shim, gpus=gpus,
                interpreter=interpreter, script=script)


def distribute(plan: Plan, spec: JobSpec) -> dict[str, str]:
    """For a distributed run on this one node: point ``plan.argv`` at the launcher (``python -m
    rundock.agent.launch``, from the job lib on the job's path) and return the variables the job gets (node 0
    of 1, ``MASTER_ADDR`` 127.0.0.1, a port free now). Nothing for any other run."""
    if not spec.distributed:
        return {}
    command, variables = launch.node_command(spec.distributed, 0, 1, "127.0.0.1", launch.free_port(),
                                             ["-m", launch.MODULE], plan.interpreter, plan.script, spec.arguments)
    if command is not None:
        plan.argv = [plan.interpreter, *command]
    return variables


def _package_dirs(interpreter: str) -> list[str]:
    """The site-/dist-packages folders of a Python installation or virtual environment."""
    lib = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(interpreter))), "lib")
    found = []
    for version in sorted(os.listdir(lib)) if os.path.isdir(lib) else []:
        for kind in ("site-packages", "dist-packages"):
            if os.path.isdir(os.path.join(lib, version, kind)):
                found.append(os.path.join(lib, version, kind))
    return found


def _interpreter_lacks_azureml(interpreter: str, cache_dir: str) -> bool:
    """Whether ``interpreter`` has no ``azureml.core``, remembered per interpreter and per state of its
    package folders (installing or removing a package changes their modification time)."""
    st = os.stat(interpreter)
    stamp = [os.path.realpath(interpreter), st.st_size, st.st_mtime_ns,
             *[(d, os.stat(d).st_mtime_ns) for d in _package_dirs(interpreter)]]
    cache = os.path.join(cache_dir, hashlib.sha256(json.dumps(stamp).encode()).hexdigest()[:20] + ".json")
    known = _read_cache(cache)
    if known is not None:
        return known
    shim = subprocess.run([interpreter, "-c", HAS_AZUREML], capture_output=True, timeout=60).returncode != 0
    write_json(cache, {"azureml_shim": shim, "interpreter": interpreter})
    return shim


def _read_cache(path: str) -> bool | None:
    known = read_json(path).get("azureml_shim")
    return None if known is None else bool(known)


def _note_shim(note: Note, shim: bool) -> None:
    note("azureml.core: " + ("not installed; rundock's shim is on the path" if shim
                             else "installed in the environment; used as is"))


def _prepare_docker(spec: JobSpec, environment: dict[str, Any], agent_root: str, gpus: list[str],
                    note: Note) -> Plan:
    from rundock.agent import images

    client = images.connect(os.path.join(agent_root, "images"))
    image, image_id = images.ensure_image(client, environment, note, log=note)
    python = environment.get("python") or {}
    interpreter = images.python_in_image(python)
    settings = parse_docker_arguments(list((environment.get("docker") or {}).get("arguments") or []))
    settings.setdefault("shm_size", (environment.get("docker") or {}).get("shm_size") or "2g")
    shim = _image_lacks_azureml(client, image, image_id, interpreter, os.path.join(agent_root, "images"))
    _note_shim(note, shim)
    return Plan(_command(interpreter, spec.script, "", spec.arguments), image=image, azureml_shim=shim, gpus=gpus,
                docker_settings=settings, docker_client=client, interpreter=interpreter, script=spec.script)


def _image_lacks_azureml(client: Any, image: str, image_id: str, interpreter: str, cache_dir: str) -> bool:
    cache = os.path.join(cache_dir, f"{image_id.replace(':', '_')}.json")
    known = _read_cache(cache)
    if known is not None:
        return known
    import docker.errors

    try:
        client.containers.run(image, [interpreter, "-c", HAS_AZUREML], remove=True, network_mode="none")
        shim = False
    except docker.errors.ContainerError as exc:
        if exc.exit_status != 1:
            raise PrepareError(f"{interpreter!r} does not run in image {image!r} (exit status {exc.exit_status}); "
                               "the image needs Python: set environment.python.interpreter_path") from None
        shim = True
    except docker.errors.DockerException as exc:
        raise PrepareError(f"cannot run {interpreter!r} in image {image!r}: {exc}; the image needs Python "
                           "(set environment.python.interpreter_path to its interpreter)") from None
    write_json(cache, {"azureml_shim": shim, "image": image})
    return shim
