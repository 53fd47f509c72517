"""Compute targets a workspace knows: Azure ML's ``ComputeTarget`` / ``RemoteCompute``.

Attached targets live in ``.rundock/targets.yaml``. Passwords and key
passphrases given to ``attach_configuration`` are kept in memory for this
process only, never written: later sessions use ssh-agent or the
``RUNDOCK_SSH_PASSWORD`` / ``RUNDOCK_SSH_KEY_PASSPHRASE`` variables.
"""

from __future__ import annotations

import dataclasses
import os
import re
from typing import TYPE_CHECKING, Any

import yaml

from rundock.errors import ConfigError
from rundock.runconfig.schema import check_numbers, from_mapping, to_mapping

if TYPE_CHECKING:
    from rundock.submitter.workspace import Workspace

TARGETS_FILE = "targets.yaml"
_NAME = re.compile(r"^[A-Za-z][A-Za-z0-9-]{1,31}$")
_SECRETS: dict[tuple[str, str], tuple[str | None, str | None]] = {}  # (workspace, target) -> in-memory credentials


@dataclasses.dataclass
class RemoteComputeAttachConfiguration:
    """How to reach a host over SSH (what is stored: no password, no passphrase)."""

    address: str
    ssh_port: int | None = None
    username: str | None = None
    private_key_file: str | None = None
    root: str = "~/.rundock"
    python: str = "python3"
    max_concurrent_runs: int = 0
    password: str | None = dataclasses.field(default=None, repr=False, metadata={"secret": True})
    private_key_passphrase: str | None = dataclasses.field(default=None, repr=False, metadata={"secret": True})


def _load(workspace: Workspace) -> dict[str, Any]:
    path = os.path.join(workspace.path, TARGETS_FILE)
    if not os.path.exists(path):
        return {}
    with open(path, encoding="utf-8") as fh:
        return dict(yaml.safe_load(fh) or {})


def _save(workspace: Workspace, targets: dict[str, Any]) -> None:
    from rundock.submitter.workspace import write_private

    write_private(os.path.join(workspace.path, TARGETS_FILE), yaml.safe_dump(targets, sort_keys=True))


class RemoteCompute:
    """A host reached over SSH (Azure ML's ``RemoteCompute``)."""

    type = "VirtualMachine"

    def __init__(self, workspace: Workspace, name: str, config: RemoteComputeAttachConfiguration) -> None:
        self.workspace = workspace
        self.name = name
        self.config = config

    @staticmethod
    def attach_configuration(address: str | None = None, ssh_port: int = 22, username: str = "",
                             password: str | None = None, private_key_file: str | None = None,
                             private_key_passphrase: str | None = None, **kwargs: Any
                             ) -> RemoteComputeAttachConfiguration:
        """What ``ComputeTarget.attach`` needs: address, port, user, key file (or a password)."""
        if not address:
            raise ConfigError("give the host's address (a name from ~/.ssh/config works too)", field="address")
        return RemoteComputeAttachConfiguration(address=address, ssh_port=ssh_port, username=username or None,
                                                private_key_file=private_key_file, password=password,
                                                private_key_passphrase=private_key_passphrase, **kwargs)

    def credentials(self) -> tuple[str | None, str | None]:
        return _SECRETS.get((self.workspace.path, self.name), (None, None))

    def detach(self) -> None:
        """Forget this target (runs stay in the history)."""
        targets = _load(self.workspace)
        targets.pop(self.name, None)
        _save(self.workspace, targets)
        _SECRETS.pop((self.workspace.path, self.name), None)

    def wait_for_completion(self, show_output: bool = False) -> None:
        """Attaching finishes at once; kept for Azure ML scripts."""

    def __repr__(self) -> str:
        return f"RemoteCompute(name={self.name!r}, address={self.config.address!r})"


class ComputeTarget:
    """``ComputeTarget(ws, name)`` gives an attached target; ``attach``/``list`` manage them."""

    def __new__(cls, workspace: Workspace, name: str) -> Any:
        data = _load(workspace).get(name)
        if data is None and workspace.is_server and name not in ("local", "docker", "sdk"):
            from rundock.submitter.targets.pool import PoolCompute

            return PoolCompute(workspace, name)  # a pool of the team server
        if data is None:
            known = ", ".join(["local", *sorted(_load(workspace))])
            raise ConfigError(f"compute target {name!r} is not attached; attached targets: {known}. Attach it with "
                              "`rundock target attach NAME --address HOST` or ComputeTarget.attach()", field="target")
        config = from_mapping(RemoteComputeAttachConfiguration, data,
                              source=os.path.join(workspace.path, TARGETS_FILE), prefix=f"{name}.")
        return RemoteCompute(workspace, name, config)

    @staticmethod
    def attach(workspace: Workspace, name: str, attach_configuration: RemoteComputeAttachConfiguration
               ) -> RemoteCompute:
        """Record a target under ``name`` (its host key must be trusted before the first run)."""
        if not _NAME.match(name) or name in ("local", "sdk"):
            raise ConfigError(f"target name {name!r} must be 2-32 letters, digits or '-', starting with a letter, "
                              "and not 'local'", field="name")
        check_numbers(attach_configuration, source="the attach configuration")
        stored = {k: v for k, v in to_mapping(attach_configuration).items()
                  if not any(f.name == k and f.metadata.get("secret")
                             for f in dataclasses.fields(attach_configuration))}
        targets = _load(workspace)
        targets[name] = stored
        _save(workspace, targets)
        _SECRETS[(workspace.path, name)] = (attach_configuration.password, attach_configuration.private_key_passphrase)
        return RemoteCompute(workspace, name, attach_configuration)

    @staticmethod
    def list(workspace: Workspace) -> list[RemoteCompute]:
        return [ComputeTarget(workspace, name) for name in sorted(_load(workspace))]
