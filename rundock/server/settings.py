"""The team server's settings: from flags, the environment and a YAML file, in that order of precedence.

Every setting has a flag (``--store``), an environment variable (``RUNDOCK_SERVER_STORE``) and a key in the
configuration file (``store:``). A flag wins over the environment, which wins over the file, which wins over
the default. ``rundock server init`` writes the file, so ``rundock server --config FILE`` is enough afterwards.
Relative paths in the file are relative to the file's folder.

The secrets key is the exception: the file (and ``--secrets-key-file``) name a key *file*, while the
environment variable ``RUNDOCK_SECRETS_KEY`` holds the key itself (for hosts that inject secrets that way).

A value that is wrong raises ConfigError naming the setting and where it came from.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable, Mapping
from typing import Any

import yaml

from rundock.errors import ConfigError

ENV_PREFIX = "RUNDOCK_SERVER_"
ENV_SECRETS_KEY = "RUNDOCK_SECRETS_KEY"
ENV_CONFIG = "RUNDOCK_SERVER_CONFIG"
MIB = 1 << 20


@dataclasses.dataclass(frozen=True)
class ServerSettings:
    """What a server needs to start; ``store`` and ``artifacts`` have no default."""

    store: str
    artifacts: str
    host: str = "127.0.0.1"
    port: int = 8765
    tls_cert: str | None = None
    tls_key: str | None = None
    secrets_key_file: str | None = None
    secrets_key: str | None = dataclasses.field(default=None, repr=False)  # the key itself (environment)
    max_request_bytes: int = 64 * MIB
    max_metrics_per_batch: int = 100_000
    shutdown_grace_seconds: float = 30.0
    request_timeout_seconds: float = 60.0  # a client sending nothing more mid-request is cut off after this
    max_connections: int = 1000  # open connections (and requests) past this are answered 503
    lease_seconds: float = 30.0  # a pool attempt not renewed for this long is fenced (``pools_sweeper``)
    config_path: str | None = None

    def key_text(self) -> str:
        """The secrets key (base64 text): from the environment, else read from the key file."""
        if self.secrets_key:
            return self.secrets_key
        if not self.secrets_key_file:
            raise ConfigError(f"no secrets key: give --secrets-key-file (`rundock server init` makes one) or set "
                              f"{ENV_SECRETS_KEY}", field="secrets_key_file")
        try:
            with open(self.secrets_key_file, encoding="ascii") as fh:
                return fh.read().strip()
        except (OSError, UnicodeDecodeError) as exc:
            raise ConfigError(f"cannot read the secrets key file {self.secrets_key_file}: {exc}",
                              field="secrets_key_file") from None


def _text(value: Any) -> str:
    if not isinstance(value, str) or not value.strip():
        raise ValueError("expected a non-empty string")
    return value.strip()


def _whole(low: int, high: int | None = None) -> Callable[[Any], int]:
    def parse(value: Any) -> int:
        try:
            number = int(str(value).replace("_", ""))
        except ValueError:
            raise ValueError(f"expected a whole number, got {value!r}") from None
        if number < low or (high is not None and number > high):
            raise ValueError(f"expected a number from {low} to {high}" if high else f"expected at least {low}")
        return number
    return parse


def _seconds(value: Any) -> float:
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"expected a number of seconds, got {value!r}") from None
    if not number >= 0 or number == float("inf"):
        raise ValueError("expected a number of seconds, at least 0")
    return number


def _positive_seconds(value: Any) -> float:
    number = _seconds(value)
    if number == 0:
        raise ValueError("expected a number of seconds above 0")
    return number


# setting -> (parser, whether it is a path resolved against the configuration file's folder)
_FIELDS: dict[str, tuple[Callable[[Any], Any], bool]] = {
    "store": (_text, False), "artifacts": (_text, True), "host": (_text, False), "port": (_whole(1, 65535), False),
    "tls_cert": (_text, True), "tls_key": (_text, True), "secrets_key_file": (_text, True),
    "max_request_bytes": (_whole(1024), False), "max_metrics_per_batch": (_whole(1), False),
    "shutdown_grace_seconds": (_seconds, False), "request_timeout_seconds": (_positive_seconds, False),
    "max_connections": (_whole(1), False), "lease_seconds": (_positive_seconds, False),
}


def env_name(field: str) -> str:
    return ENV_PREFIX + field.upper()


def read_config_file(path: str) -> dict[str, Any]:
    """The settings of a YAML configuration file (paths made absolute); ConfigError naming the key if wrong."""
    try:
        with open(path, encoding="utf-8") as fh:
            data = yaml.safe_load(fh)
    except FileNotFoundError:
        raise ConfigError("file not found; `rundock server init --config FILE` writes one", source=path) from None
    except (OSError, yaml.YAMLError) as exc:
        raise ConfigError(f"cannot read it: {exc}", source=path) from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"expected a mapping of settings, got {type(data).__name__}", source=path)
    folder = os.path.dirname(os.path.abspath(path))
    out: dict[str, Any] = {}
    for key, value in data.items():
        if key not in _FIELDS:
            raise ConfigError(f"unknown setting; expected one of: {', '.join(sorted(_FIELDS))}", source=path,
                              field=str(key))
        if value is None:
            continue
        value = _parse(key, value, path)
        out[key] = os.path.join(folder, value) if _FIELDS[key][1] else value
    return out


def _parse(field: str, value: Any, source: str) -> Any:
    try:
        return _FIELDS[field][0](value)
    except ValueError as exc:
        raise ConfigError(str(exc), source=source, field=field) from None


def load_settings(flags: Mapping[str, Any], environ: Mapping[str, str] | None = None,
                  config_path: str | None = None) -> ServerSettings:
    """Settings from ``flags`` (None: not given), then ``environ``, then the file at ``config_path`` (or the one
    ``RUNDOCK_SERVER_CONFIG`` names)."""
    environ = os.environ if environ is None else environ
    config_path = config_path or environ.get(ENV_CONFIG) or None
    values: dict[str, Any] = read_config_file(config_path) if config_path else {}
    for field in _FIELDS:
        raw = environ.get(env_name(field))
        if raw:
            values[field] = _parse(field, raw, f"environment variable {env_name(field)}")
    secrets_key = environ.get(ENV_SECRETS_KEY) or None
    for field, raw in flags.items():
        if raw is None:
            continue
        if field not in _FIELDS:
            raise ConfigError(f"unknown setting {field!r}", source="command line")
        values[field] = _parse(field, raw, f"--{field.replace('_', '-')}")
        if field == "secrets_key_file":
            secrets_key = None  # a key file named on the command line wins over the environment's key
    for field in ("store", "artifacts"):
        if field not in values:
            raise ConfigError(f"not set: give --{field}, set {env_name(field)} or write it in the configuration file "
                              "(`rundock server init` writes one)", field=field)
    if ("tls_cert" in values) != ("tls_key" in values):
        raise ConfigError("a TLS certificate needs its key and a key its certificate: give both --tls-cert and "
                          "--tls-key", field="tls_key" if "tls_cert" in values else "tls_cert")
    for field in ("tls_cert", "tls_key"):
        if field in values and not os.path.isfile(values[field]):
            raise ConfigError(f"no such file: {values[field]}", field=field)
    return ServerSettings(**values, secrets_key=secrets_key,
                          config_path=os.path.abspath(config_path) if config_path else None)


def write_config_file(path: str, settings: Mapping[str, Any]) -> None:
    """Write ``settings`` (field -> value, None left out) as the YAML configuration file ``path``, mode 0600."""
    unknown = sorted(set(settings) - set(_FIELDS))
    if unknown:
        raise ConfigError(f"unknown settings {', '.join(unknown)}", source=path)
    data = {k: v for k, v in settings.items() if v is not None}
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    tmp = f"{path}.{os.getpid()}.tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as fh:
        fh.write("# rundock team server; flags and RUNDOCK_SERVER_* variables override these\n")
        yaml.safe_dump(data, fh, sort_keys=False)
    os.replace(tmp, path)


def resolve_store(flag: str | None, config_path: str | None, environ: Mapping[str, str] | None = None) -> str:
    """The history URI alone (for commands that need nothing else): ``--store``, then the environment, then the
    configuration file."""
    environ = os.environ if environ is None else environ
    if flag:
        return str(_parse("store", flag, "--store"))
    if environ.get(env_name("store")):
        return str(_parse("store", environ[env_name("store")], f"environment variable {env_name('store')}"))
    config_path = config_path or environ.get(ENV_CONFIG) or None
    if config_path:
        found = read_config_file(config_path).get("store")
        if found:
            return str(found)
    raise ConfigError(f"not set: give --store or --config, or set {env_name('store')}", field="store")
