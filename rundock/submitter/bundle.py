"""The agent bundle: rundock's standard-library files that run on a remote host.

Installed once per content under ``<host root>/agent/<hash>/`` and reused by
every later run, so a host needs nothing but Python >= 3.8. It also carries
docker-py and what it needs (pure Python, copied from this environment), so
Docker runs work on a host that has a Docker engine and nothing else; only the
agent sees them, never the job.
"""

from __future__ import annotations

import functools
import hashlib
import importlib.util
import io
import os
import tarfile

import rundock

_TOP = ("__init__.py", "states.py", "errors.py", "runconfig/__init__.py", "runconfig/docker_args.py",
        # read (never imported) by the agent for the job lib's azureml.train.hyperdrive shim (rundock.agent.joblib)
        "hyperdrive/goal.py", "hyperdrive/parameters.py", "hyperdrive/sampling.py", "hyperdrive/policies.py",
        "hyperdrive/_tpe.py")
_TREES = ("context", "agent", "history")
_VENDORED = ("docker", "requests", "urllib3", "idna", "certifi", "charset_normalizer")
_VENDORED_FILES = (".py", ".pem")  # sources and certifi's CA bundle; compiled speedups stay behind

# Unpacks the bundle from stdin on the host (no rundock there yet): regular files, relative names only.
UNPACK = (
    "import os, shutil, sys, tarfile\n"
    "dest = sys.argv[1]; tmp = dest + '.tmp'\n"
    "shutil.rmtree(tmp, True)\n"
    "with tarfile.open(fileobj=sys.stdin.buffer, mode='r|gz') as tar:\n"
    "    for m in tar:\n"
    "        parts = m.name.split('/')\n"
    "        if not m.isfile() or m.name.startswith('/') or '..' in parts: raise SystemExit('bad entry ' + m.name)\n"
    "        path = os.path.join(tmp, *parts); os.makedirs(os.path.dirname(path), exist_ok=True)\n"
    "        with open(path, 'wb') as out: shutil.copyfileobj(tar.extractfile(m), out)\n"
    "open(os.path.join(tmp, '.complete'), 'w').close()\n"
    "shutil.rmtree(dest, True); os.rename(tmp, dest)\n"
)


def _files() -> list[tuple[str, str]]:
    package = os.path.dirname(os.path.abspath(rundock.__file__))
    found = [(f"rundock/{rel}", os.path.join(package, rel)) for rel in _TOP]
    for tree in _TREES:
        for root, _dirs, files in os.walk(os.path.join(package, tree)):
            for name in sorted(files):
                if name.endswith(".py"):
                    full = os.path.join(root, name)
                    found.append(("rundock/" + os.path.relpath(full, package).replace(os.sep, "/"), full))
    for name in _VENDORED:
        spec = importlib.util.find_spec(name)
        if spec is None or not spec.submodule_search_locations:
            continue
        top = list(spec.submodule_search_locations)[0]
        for root, _dirs, files in os.walk(top):
            for fname in sorted(files):
                if fname.endswith(_VENDORED_FILES):
                    full = os.path.join(root, fname)
                    found.append((f"{name}/" + os.path.relpath(full, top).replace(os.sep, "/"), full))
    return sorted(found)


@functools.lru_cache(maxsize=1)
def code_version() -> str:
    """A hash of rundock's own agent files: names the local warm agent (no archive is built)."""
    digest = hashlib.sha256()
    for name, path in _files():
        if name.startswith("rundock/"):
            with open(path, "rb") as fh:
                digest.update(name.encode() + b"\0" + fh.read())
    return digest.hexdigest()[:16]


@functools.lru_cache(maxsize=1)
def agent_bundle() -> tuple[str, bytes]:
    """(content hash, gzip tar) of the agent bundle."""
    digest = hashlib.sha256()
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz", compresslevel=6) as tar:
        for name, path in _files():
            with open(path, "rb") as fh:
                data = fh.read()
            digest.update(name.encode() + b"\0" + data)
            info = tarfile.TarInfo(name)
            info.size, info.mode = len(data), 0o644
            tar.addfile(info, io.BytesIO(data))
    return digest.hexdigest()[:16], buffer.getvalue()
