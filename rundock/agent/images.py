"""Images for Docker runs: the base (an image or a Dockerfile) plus the run's packages.

Each image is tagged by a hash of what goes into it (``rundock-env:<hash>``)
and reused while it exists; build output goes to the prepare log. Builds run
on the host network and reach the package index the way the host does: its
proxy variables are passed as build arguments and its CA bundle (``PIP_CERT``,
``REQUESTS_CA_BUNDLE`` or ``SSL_CERT_FILE``, for TLS-inspecting proxies) is
given to pip.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import tarfile
from typing import Any, Callable

import docker
import docker.errors

from rundock.agent.cachefile import read_json, write_json
from rundock.agent.environments import PrepareError, pip_requirements

Note = Callable[[str], None]
DEFAULT_PYTHON = "python3"


def connect(cache_dir: str | None = None) -> docker.DockerClient:
    """A client of the local Docker engine; PrepareError with what to do when there is none.

    Asking the engine for its version costs several milliseconds on every run (the engine asks its runtime
    for theirs), so the API version is remembered in ``cache_dir`` and checked with a ping instead.
    """
    cache = os.path.join(cache_dir, "engine-api.json") if cache_dir else None
    engine = os.environ.get("DOCKER_HOST", "default")
    known = read_json(cache).get(engine) if cache else None
    if isinstance(known, str):
        try:
            client = docker.from_env(timeout=120, version=known)
            client.ping()
            return client
        except docker.errors.DockerException:
            pass  # the engine changed (or is gone): ask it again, and say why if it is gone
    try:
        client = docker.from_env(timeout=120)  # asks the engine for its API version: fails here if there is none
    except docker.errors.DockerException as exc:
        raise PrepareError(f"cannot reach a Docker engine ({exc}); start it (e.g. `sudo systemctl start docker`), "
                           "check DOCKER_HOST and that this user may use the Docker socket, or set "
                           "environment.docker.enabled = False") from None
    if cache:
        write_json(cache, {**read_json(cache), engine: client.api.api_version})
    return client


CA_IN_CONTEXT = "rundock-host-ca.crt"
_PROXY_VARS = ("HTTP_PROXY", "HTTPS_PROXY", "NO_PROXY", "http_proxy", "https_proxy", "no_proxy")


def host_ca_bundle() -> str | None:
    """The CA bundle the host's pip trusts, if one is configured."""
    for var in ("PIP_CERT", "REQUESTS_CA_BUNDLE", "SSL_CERT_FILE"):
        path = os.environ.get(var)
        if path and os.path.isfile(path):
            return path
    return None


def _context(dockerfile: str, ca_bundle: str | None) -> io.BytesIO:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        files = [("Dockerfile", dockerfile.encode())]
        if ca_bundle:
            with open(ca_bundle, "rb") as fh:
                files.append((CA_IN_CONTEXT, fh.read()))
        for name, data in files:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    buffer.seek(0)
    return buffer


def _build(client: docker.DockerClient, dockerfile: str, tag: str, log: Callable[[str], None],
           ca_bundle: str | None = None) -> None:
    log(f"building image {tag}")
    buildargs = {k: v for k, v in os.environ.items() if k in _PROXY_VARS}
    try:
        for chunk in client.api.build(fileobj=_context(dockerfile, ca_bundle), custom_context=True, tag=tag,
                                      rm=True, forcerm=True, decode=True, network_mode="host", buildargs=buildargs,
                                      labels={"rundock.managed": "1"}):
            if "stream" in chunk:
                log(chunk["stream"].rstrip("\n"))
            if "error" in chunk:
                raise PrepareError(f"building the image failed: {chunk['error'].strip()}\n"
                                   "(the full build output is in system_logs/prepare_log.txt)")
    except docker.errors.APIError as exc:
        raise PrepareError(f"building the image failed: {exc.explanation or exc}") from None


def _ensure_base(client: docker.DockerClient, image: str, note: Note) -> str:
    try:
        return str(client.images.get(image).id)
    except docker.errors.ImageNotFound:
        pass
    note(f"base image {image} is not on this host: pulling it")
    try:
        return str(client.images.pull(image).id)
    except docker.errors.DockerException as exc:
        raise PrepareError(f"the base image {image!r} is not on this host and could not be pulled ({exc}); "
                           f"pull or load it (`docker pull {image}`, `docker load`), or set "
                           "environment.docker.base_image to an image this host has") from None


def ensure_image(client: docker.DockerClient, environment: dict[str, Any], note: Note,
                 log: Callable[[str], None]) -> tuple[str, str]:
    """(tag, image id) of the image a run's environment asks for, built if it is not there yet."""
    docker_section, python = environment.get("docker") or {}, environment.get("python") or {}
    if docker_section.get("base_dockerfile"):
        dockerfile = docker_section["base_dockerfile"]
        base = "rundock-base:" + hashlib.sha256(dockerfile.encode()).hexdigest()[:16]
        if not client.images.list(name=base):
            _build(client, dockerfile, base, log)
        base_id = str(client.images.get(base).id)
    else:
        base = docker_section.get("base_image") or ""
        base_id = _ensure_base(client, base, note)
    packages = [] if python.get("user_managed_dependencies") else pip_requirements(python)
    if not packages:
        note(f"image {base} ({base_id[:19]})")
        return base, base_id
    key = hashlib.sha256(json.dumps({"base": base_id, "packages": sorted(packages)}).encode()).hexdigest()[:16]
    tag = f"rundock-env:{key}"
    found = client.images.list(name=tag)
    if found:
        note(f"reusing image {tag} ({base} + {', '.join(packages)})")
        return tag, str(found[0].id)
    interpreter = python_in_image(python)
    quoted = " ".join(json.dumps(p) for p in packages)
    ca_bundle = host_ca_bundle()
    lines = [f"FROM {base}"]
    pip = f"{interpreter} -m pip install --no-cache-dir --disable-pip-version-check {quoted}"
    if ca_bundle:
        lines.append(f"COPY {CA_IN_CONTEXT} /tmp/{CA_IN_CONTEXT}")
        pip = f"PIP_CERT=/tmp/{CA_IN_CONTEXT} {pip} && rm /tmp/{CA_IN_CONTEXT}"
    _build(client, "\n".join([*lines, f"RUN {pip}"]) + "\n", tag, log, ca_bundle)
    return tag, str(client.images.get(tag).id)


def python_in_image(python: dict[str, Any]) -> str:
    """The interpreter to run inside the container (``python3`` unless one was named)."""
    path = python.get("interpreter_path") or "python"
    return DEFAULT_PYTHON if path == "python" else path
