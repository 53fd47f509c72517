"""Workspace secrets: a file only its owner can read, never in the run history.

Azure ML keeps these in the workspace's key vault; ``ws.get_default_keyvault()``
returns this store with the same methods. Jobs read them with
``run.get_secret(name)``; the agent hands them over in a file inside the run
directory that is deleted when the run ends, and masks their values in logs.

Which secrets a run gets is ``SecretStore.for_run(run_config.secrets, remote=...)``:
the names the run configuration lists, or when it lists none, every secret for
a run on this machine (they never leave it) and none for a remote host.
"""

from __future__ import annotations

import json
import os
import re

from rundock.errors import ConfigError

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,126}$")


class SecretStore:
    def __init__(self, path: str) -> None:
        self.path = path

    def _load(self) -> dict[str, str]:
        try:
            with open(self.path, encoding="utf-8") as fh:
                return dict(json.load(fh))
        except FileNotFoundError:
            return {}

    def _save(self, secrets: dict[str, str]) -> None:
        tmp = f"{self.path}.{os.getpid()}.tmp"  # writers in other processes never share a temporary file
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            json.dump(secrets, fh)
        os.replace(tmp, self.path)

    def set_secret(self, name: str, value: str) -> None:
        """Add or replace a secret."""
        if not _NAME.match(name):
            raise ValueError(f"secret name {name!r} must be letters, digits, '-' or '_' (at most 127)")
        if not isinstance(value, str) or not value:
            raise ValueError(f"secret {name!r}: the value must be a non-empty string")
        secrets = self._load()
        secrets[name] = value
        self._save(secrets)

    def set_secrets(self, secrets_batch: dict[str, str]) -> None:
        for name, value in secrets_batch.items():
            self.set_secret(name, value)

    def get_secret(self, name: str) -> str:
        secrets = self._load()
        if name not in secrets:
            raise KeyError(f"no secret {name!r} in the workspace; add it with `rundock secret set {name}`")
        return secrets[name]

    def get_secrets(self, secrets: list[str]) -> dict[str, str | None]:
        """Values of the named secrets; None for each name not found."""
        known = self._load()
        return {name: known.get(name) for name in secrets}

    def list_secrets(self) -> list[dict[str, str]]:
        return [{"name": name} for name in sorted(self._load())]

    def delete_secret(self, name: str) -> None:
        secrets = self._load()
        if secrets.pop(name, None) is None:
            raise KeyError(f"no secret {name!r} in the workspace")
        self._save(secrets)

    def for_run(self, names: list[str] | None, *, remote: bool) -> dict[str, str]:
        """The secrets a run may read: ``names`` (the run configuration's ``secrets``), or when None, all of them
        for a local run and none for a remote one. A name that is not a secret of the workspace is a ConfigError."""
        if names is None:
            return {} if remote else self._load()
        known = self._load()
        missing = [name for name in names if name not in known]
        if missing:
            shown = ", ".join(repr(name) for name in missing)
            raise ConfigError(f"no secret {shown} in the workspace; add it with `rundock secret set {missing[0]}`",
                              source="run configuration", field="secrets")
        return {name: known[name] for name in names}
