"""The ``docker run`` options rundock understands in ``environment.docker.arguments``.

Parsed at submit time, so an option rundock cannot honour is an error before
anything is created rather than something silently dropped.
"""

from __future__ import annotations

from typing import Any

from rundock.errors import ConfigError

# option -> (container setting, whether it may repeat)
_OPTIONS = {
    "--network": ("network_mode", False), "--net": ("network_mode", False),
    "--memory": ("mem_limit", False), "-m": ("mem_limit", False),
    "--cpus": ("cpus", False), "--ipc": ("ipc_mode", False), "--shm-size": ("shm_size", False),
    "--env": ("environment", True), "-e": ("environment", True), "--cap-add": ("cap_add", True),
    "--user": ("user", False), "-u": ("user", False),
}
FIELD = "environment.docker.arguments"


def parse_docker_arguments(arguments: list[str], source: str | None = None) -> dict[str, Any]:
    """Container settings from ``docker run`` style options, e.g. ``["--network", "none", "--cpus=2"]``."""
    settings: dict[str, Any] = {}
    items = list(arguments)
    i = 0
    while i < len(items):
        option, _, value = items[i].partition("=")
        if option not in _OPTIONS:
            raise ConfigError(f"unsupported option {items[i]!r}; supported: {', '.join(sorted(_OPTIONS))}",
                              source=source, field=FIELD)
        if not _:
            if i + 1 >= len(items):
                raise ConfigError(f"option {option} needs a value", source=source, field=FIELD)
            i += 1
            value = items[i]
        key, repeats = _OPTIONS[option]
        if key == "cpus":
            try:
                settings["nano_cpus"] = int(float(value) * 1e9)
            except ValueError:
                raise ConfigError(f"--cpus takes a number, got {value!r}", source=source, field=FIELD) from None
        elif key == "environment":
            name, eq, val = value.partition("=")
            if not eq:
                raise ConfigError(f"{option} takes NAME=VALUE, got {value!r}", source=source, field=FIELD)
            settings.setdefault("environment", {})[name] = val
        elif repeats:
            settings.setdefault(key, []).append(value)
        else:
            settings[key] = value
        i += 1
    return settings
