"""Preparing a run's Python: user-managed as is, or a cached virtual environment.

A system-managed environment is built once per (Python version, packages) in
``<agent root>/envs/<hash>``, under a lock so that runs needing the same one
wait for a single build; later runs reuse it at the cost of a stat. A build
that fails is removed and fails the run in Preparing with pip's error.
Conda package names are installed with pip (``numpy=1.26`` becomes
``numpy==1.26``; ``python`` and ``pip`` entries are left to the interpreter).
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
from typing import Any, Callable

COMPLETE_MARK = ".rundock-complete"
TAIL_LINES = 25
Note = Callable[[str], None]


class PrepareError(Exception):
    """The job cannot start on this host (missing interpreter, failed build, no GPU...)."""


def resolve_interpreter(path: str) -> str | None:
    return shutil.which(path) or (path if os.access(path, os.X_OK) and os.path.isfile(path) else None)


def pip_requirements(python: dict[str, Any]) -> list[str]:
    """Everything to pip-install for a python section (pip packages, then conda names)."""
    wanted = list(python.get("pip_packages") or [])
    for conda in python.get("conda_packages") or []:
        name = re.split(r"[=<>! ]", conda, maxsplit=1)[0]
        if name in ("python", "pip"):
            continue
        wanted.append(re.sub(r"(?<![=<>!])=(?!=)", "==", conda.replace(" ", "")))
    return wanted


def _python_version(interpreter: str) -> str:
    proc = subprocess.run([interpreter, "-c", "import sys; print(sys.version)"], capture_output=True, text=True,
                          timeout=60)
    return proc.stdout.strip()


def system_managed_python(python: dict[str, Any], envs_root: str, log_path: str, note: Note) -> str:
    """The interpreter of the cached environment for ``python``'s packages, built if needed."""
    base = resolve_interpreter(python.get("interpreter_path") or "python") or sys.executable
    packages = pip_requirements(python)
    if not packages:
        note(f"no packages listed: using {base}")
        return base
    key = hashlib.sha256(json.dumps({"python": _python_version(base), "packages": sorted(packages)},
                                    sort_keys=True).encode()).hexdigest()[:16]
    target = os.path.join(envs_root, key)
    interpreter = os.path.join(target, "bin", "python")
    os.makedirs(envs_root, exist_ok=True)
    with open(os.path.join(envs_root, f"{key}.lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # one build per environment; others wait and reuse it
        if os.path.exists(os.path.join(target, COMPLETE_MARK)):
            note(f"reusing cached environment {key} ({', '.join(packages)})")
            return interpreter
        note(f"building environment {key} from {base}: pip install {' '.join(packages)}")
        shutil.rmtree(target, ignore_errors=True)
        try:
            _run_logged([base, "-m", "venv", target], log_path)
            _run_logged([interpreter, "-m", "pip", "install", "--disable-pip-version-check", "--no-input",
                         *packages], log_path)
        except PrepareError:
            shutil.rmtree(target, ignore_errors=True)
            raise
        with open(os.path.join(target, COMPLETE_MARK), "w", encoding="utf-8") as fh:
            json.dump({"packages": packages, "base": base}, fh)
        note(f"environment {key} is ready")
    return interpreter


def _run_logged(argv: list[str], log_path: str) -> None:
    """Run a build step with its output appended to the prepare log; raise with its tail on failure."""
    start = os.path.getsize(log_path) if os.path.exists(log_path) else 0
    with open(log_path, "ab") as log:
        code = subprocess.run(argv, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL).returncode
    if code != 0:
        with open(log_path, "rb") as fh:
            fh.seek(start)
            tail = fh.read().decode("utf-8", errors="replace").rstrip().splitlines()[-TAIL_LINES:]
        raise PrepareError(f"`{' '.join(argv[:4])} ...` failed with exit code {code}:\n" + "\n".join(tail))


def host_gpus() -> list[str]:
    """Indices of the NVIDIA GPUs on this host (empty when there are none or no driver)."""
    if shutil.which("nvidia-smi") is None:
        return []
    proc = subprocess.run(["nvidia-smi", "--query-gpu=index", "--format=csv,noheader"], capture_output=True,
                          text=True, timeout=60)
    if proc.returncode != 0:
        return []
    fields = (line.split(",", 1)[0].strip() for line in proc.stdout.splitlines())
    return [index for index in fields if index.isdigit()]


def pick_gpus(count: int, device_ids: list[str], available: list[str]) -> list[str]:
    """The GPUs a run gets: exactly ``device_ids``, or the first ``count``; PrepareError if not there."""
    if not count and not device_ids:
        return []
    if not available:
        raise PrepareError("this run asks for GPUs, but this host has none (no NVIDIA driver or nvidia-smi "
                           "lists no GPU); submit it to a GPU host or remove the GPU request "
                           "(environment.docker.gpu_count / gpu_device_ids)")
    if device_ids:
        missing = [d for d in device_ids if d not in available]
        if missing:
            raise PrepareError(f"GPUs {', '.join(missing)} are not on this host; it has {', '.join(available)}")
        return list(device_ids)
    if count > len(available):
        raise PrepareError(f"this run asks for {count} GPUs; this host has {len(available)}")
    return available[:count]
