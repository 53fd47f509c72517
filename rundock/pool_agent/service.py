"""``rundock agent install-service``: a systemd unit that keeps ``agent serve`` running with the same arguments.

The token never goes into the unit (units are world-readable): it is written to an environment file of
mode 0600 (``RUNDOCK_TOKEN=...``) that the unit names with ``EnvironmentFile=``. ``KillMode=process``: when
systemd stops or restarts the service, only ``agent serve`` itself is stopped; the per-run agents (each in its
own session) and their jobs go on, and the restarted daemon adopts them.

As root the unit is a system unit (``/etc/systemd/system``, the env file under ``/etc/rundock``); otherwise a
user unit (``~/.config/systemd/user``, the env file under ``~/.config/rundock``; ``loginctl enable-linger``
keeps it running after logout). Where systemd runs, the unit is enabled and started; elsewhere the paths and
the commands to run are printed.
"""

from __future__ import annotations

import dataclasses
import os
import shlex
import shutil
import subprocess
import sys

from rundock.pool_agent.serve import ServeOptions


@dataclasses.dataclass
class Installed:
    unit_path: str
    env_path: str
    commands: list[list[str]]
    started: bool
    output: str = ""


def unit_name(pool: str) -> str:
    return f"rundock-agent-{pool}.service"


def serve_argv(options: ServeOptions) -> list[str]:
    """The ``agent serve`` command line of ``options`` (no token: the unit reads it from its env file)."""
    argv = [sys.executable, "-m", "rundock", "agent", "serve", "--server", options.server, "--pool", options.pool,
            "--work-dir", os.path.abspath(os.path.expanduser(options.work_dir))]
    if options.gpus is not None:
        argv += ["--gpus", ",".join(str(g) for g in options.gpus)]
    if options.slots is not None:
        argv += ["--slots", str(options.slots)]
    if options.docker:
        argv.append("--docker")
    if options.labels:
        argv += ["--labels", ",".join(options.labels)]
    if options.address:
        argv += ["--address", options.address]
    return argv


def unit_text(options: ServeOptions, env_path: str, system: bool) -> str:
    return "\n".join([
        "[Unit]",
        f"Description=rundock agent of pool {options.pool} ({options.server})",
        "Wants=network-online.target",
        "After=network-online.target",
        "",
        "[Service]",
        f"ExecStart={shlex.join(serve_argv(options))}",
        f"EnvironmentFile={env_path}",
        "Restart=always",
        "RestartSec=2",
        "KillMode=process",
        *([f"User={os.getuid()}"] if system and os.getuid() != 0 else []),
        "",
        "[Install]",
        f"WantedBy={'multi-user.target' if system else 'default.target'}",
        "",
    ])


def _write_private(path: str, text: str, mode: int) -> None:
    os.makedirs(os.path.dirname(path), mode=0o700, exist_ok=True)
    tmp = f"{path}.{os.getpid()}.tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    with os.fdopen(fd, "w", encoding="utf-8") as fh:
        fh.write(text)
    os.chmod(tmp, mode)
    os.replace(tmp, path)


def install(options: ServeOptions, token: str, *, root: str | None = None, start: bool | None = None) -> Installed:
    """Write the unit and its env file; enable and start it where systemd runs (``start``: None = detect).

    ``root`` writes under another folder (for a test or an image being built) and never starts anything.
    """
    if not token:
        raise ValueError("no token to install: pass --token or set RUNDOCK_TOKEN (an agent token of the pool)")
    system = os.getuid() == 0
    base = root or ("/" if system else os.path.expanduser("~"))
    if system:
        unit_dir, env_dir = os.path.join(base, "etc/systemd/system"), os.path.join(base, "etc/rundock")
    else:
        unit_dir, env_dir = os.path.join(base, ".config/systemd/user"), os.path.join(base, ".config/rundock")
    name = unit_name(options.pool)
    env_path = os.path.join(env_dir, f"agent-{options.pool}.env")
    unit_path = os.path.join(unit_dir, name)
    _write_private(env_path, f"RUNDOCK_TOKEN={token}\n", 0o600)
    _write_private(unit_path, unit_text(options, env_path, system), 0o644)
    scope = [] if system else ["--user"]
    commands = [["systemctl", *scope, "daemon-reload"], ["systemctl", *scope, "enable", "--now", name]]
    if start is None:
        start = root is None and shutil.which("systemctl") is not None and os.path.isdir("/run/systemd/system")
    if not start:
        return Installed(unit_path, env_path, commands, False)
    output = []
    for command in commands:
        proc = subprocess.run(command, capture_output=True, text=True, timeout=60)
        output.append((proc.stdout + proc.stderr).strip())
        if proc.returncode != 0:
            raise OSError(f"{' '.join(command)} failed (exit status {proc.returncode}): {output[-1]}")
    return Installed(unit_path, env_path, commands, True, "\n".join(o for o in output if o))
