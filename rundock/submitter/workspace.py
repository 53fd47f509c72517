"""Workspace: where a user's run history, artifacts and local runs live.

``Workspace.from_config()`` looks for a ``.rundock`` folder in the current
folder and its parents, else uses ``$RUNDOCK_HOME`` or ``~/.rundock``. Its
optional ``config.yaml`` sets the history URI and local target limits.

A workspace is private to its user: its folder is 0700 (a folder found with
permissions for others is tightened when opened, with a warning), and the
files rundock writes directly in it (``config.yaml``, ``secrets.json``,
``history.db``, ``known_hosts``, ``targets.yaml``) are 0600. ``rundock init``
also writes a ``.gitignore`` of ``*`` there, so that ``git add -A`` never
commits the run history or the secrets.

Azure ML v1's descriptive attributes are there with local values, so that
notebook cells printing them run unchanged: ``name`` (``config.yaml``'s name,
else the project folder's name), ``location``, ``subscription_id`` and ``sku``
(``"local"``), ``resource_group`` (the project folder: the one holding
``.rundock``, or the workspace folder itself when it has another name) and
``tags`` (empty).

A workspace whose ``history:`` is a team server (``https://runs.lab:8765``, written by ``rundock login``)
keeps its run history there: the store is the server's (``rundock.history.backends.http``), the local
``artifacts/`` folder is its cache of blobs (what is sent from here is stored there first; what other
machines produced is fetched into it on first read), and ``ws.secrets`` are the server's
(``rundock.submitter.server_secrets``: set and listed from here, read only by runs).
"""

from __future__ import annotations

import dataclasses
import math
import os
import stat
import sys
from typing import TYPE_CHECKING, Any

import yaml

from rundock.errors import ConfigError
from rundock.history.artifacts import ArtifactStore
from rundock.history.store import RunStore, open_store
from rundock.runconfig.schema import from_mapping, positive
from rundock.submitter.secrets import SecretStore
from rundock.submitter.snapshot import SnapshotLimits

if TYPE_CHECKING:
    from rundock.submitter.server_secrets import ServerSecrets

WORKSPACE_DIR = ".rundock"
CONFIG_FILE = "config.yaml"
GITIGNORE = ".gitignore"
ENV_HOME = "RUNDOCK_HOME"
# Files rundock writes directly in the workspace folder: only their owner may read them.
PRIVATE_FILES = (CONFIG_FILE, "secrets.json", "history.db", "history.db-wal", "history.db-shm", "known_hosts",
                 "targets.yaml", "credentials.json")
SERVER_SCHEMES = ("http", "https")


@dataclasses.dataclass
class LocalTargetConfig:
    max_concurrent_runs: int = 0  # 0: one per CPU core
    heartbeat_seconds: float = positive(2.0)


@dataclasses.dataclass
class SnapshotConfig:
    max_mb: float = 300.0
    max_files: int = 2000


@dataclasses.dataclass
class WorkspaceConfig:
    name: str | None = None
    history: str | None = None
    local: LocalTargetConfig = dataclasses.field(default_factory=LocalTargetConfig)
    snapshot: SnapshotConfig = dataclasses.field(default_factory=SnapshotConfig)


def _env_number(name: str, default: float, *, above_zero: bool = False) -> float:
    raw = os.environ.get(name)
    if raw is None:
        return default
    expected = "a finite number " + ("above 0" if above_zero else ">= 0")
    try:
        value = float(raw)
    except ValueError:
        raise ConfigError(f"expected {expected}, got {raw!r}", source="environment", field=name) from None
    if not math.isfinite(value) or value < 0 or (above_zero and value == 0):
        raise ConfigError(f"expected {expected}, got {raw!r}", source="environment", field=name)
    return value


def make_private_folder(path: str) -> None:
    """Create folder ``path`` (0700), or tighten an existing one that others may enter, with a warning."""
    try:
        os.mkdir(path, 0o700)
        return
    except FileExistsError:
        pass
    except FileNotFoundError:
        os.makedirs(os.path.dirname(path), exist_ok=True)
        os.mkdir(path, 0o700)
        return
    st = os.stat(path)
    if st.st_mode & 0o077 and st.st_uid == os.getuid():
        os.chmod(path, 0o700)
        print(f"rundock: warning: {path} was open to other users (mode {stat.S_IMODE(st.st_mode):04o}); "
              "tightened to 0700", file=sys.stderr)


def _tighten_files(folder: str) -> None:
    for name in PRIVATE_FILES:
        path = os.path.join(folder, name)
        try:
            st = os.lstat(path)
            if stat.S_ISREG(st.st_mode) and st.st_mode & 0o077 and st.st_uid == os.getuid():
                os.chmod(path, 0o600)
        except OSError:
            continue


def write_private(path: str, text: str) -> None:
    """Write ``text`` to a new file ``path`` that only its owner may read (0600), replacing it atomically."""
    tmp = f"{path}.{os.getpid()}.tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as fh:
        fh.write(text)
    os.replace(tmp, path)


class Workspace:
    """A folder holding the run history (``history.db``), artifacts and local runs."""

    def __init__(self, path: str) -> None:
        self.path = os.path.abspath(path)
        make_private_folder(self.path)
        _tighten_files(self.path)
        config_path = os.path.join(self.path, CONFIG_FILE)
        data: Any = None
        if os.path.exists(config_path):
            try:
                with open(config_path, encoding="utf-8") as fh:
                    data = yaml.safe_load(fh)
            except yaml.YAMLError as exc:
                raise ConfigError(f"not valid YAML: {exc}", source=config_path) from None
        self.config = from_mapping(WorkspaceConfig, data, source=config_path)
        self.name = self.config.name or os.path.basename(os.path.dirname(self.path)) or "default"
        # Azure ML v1's descriptive attributes, with local values
        self.location = self.subscription_id = self.sku = "local"
        self.resource_group = os.path.dirname(self.path) if os.path.basename(self.path) == WORKSPACE_DIR \
            else self.path
        self.tags: dict[str, str] = {}
        self.history_uri = self.config.history or f"sqlite:///{os.path.join(self.path, 'history.db')}"
        self.local_root = os.path.join(self.path, "local")
        self._store: RunStore | None = None
        self._artifacts: ArtifactStore | None = None

    @classmethod
    def from_config(cls, path: str | None = None) -> Workspace:
        """The workspace of ``path`` (default: the current folder), searching parent folders."""
        start = os.path.abspath(path or os.getcwd())
        if os.path.basename(start) == WORKSPACE_DIR and os.path.isdir(start):
            return cls(start)
        current = start
        while True:
            candidate = os.path.join(current, WORKSPACE_DIR)
            if os.path.isdir(candidate):
                return cls(candidate)
            parent = os.path.dirname(current)
            if parent == current:
                break
            current = parent
        return cls(os.environ.get(ENV_HOME) or os.path.join(os.path.expanduser("~"), WORKSPACE_DIR))

    @classmethod
    def create(cls, path: str = ".", name: str | None = None) -> Workspace:
        """Make ``<path>/.rundock`` with a config file; return its workspace."""
        folder = os.path.join(os.path.abspath(path), WORKSPACE_DIR)
        make_private_folder(folder)
        config = os.path.join(folder, CONFIG_FILE)
        if not os.path.exists(config):
            write_private(config, yaml.safe_dump({"name": name or os.path.basename(os.path.abspath(path)),
                                                  "local": {"max_concurrent_runs": 0}}, sort_keys=False))
        gitignore = os.path.join(folder, GITIGNORE)
        if not os.path.exists(gitignore):  # `git add -A` never commits the history or the secrets
            with open(gitignore, "w", encoding="utf-8") as fh:
                fh.write("# written by `rundock init`: nothing in this folder belongs in version control\n*\n")
        return cls(folder)

    @property
    def is_server(self) -> bool:
        """Whether the run history is a team server's (an ``http(s)://`` history URI)."""
        return self.history_uri.split(":", 1)[0].lower() in SERVER_SCHEMES

    @property
    def store(self) -> RunStore:
        if self._store is None and self.is_server:
            try:
                self._store = open_store(self.history_uri, artifacts_root=os.path.join(self.path, "artifacts"))
            except ValueError as exc:  # a URL that is not one, a damaged credentials file
                raise ConfigError(str(exc), source=os.path.join(self.path, CONFIG_FILE), field="history") from None
            if self._artifacts is not None:
                self._artifacts.remote = self._remote_blobs(self._store)
        if self._store is None:
            if self.config.history is None:  # the default history file: created private before SQLite opens it
                db = os.path.join(self.path, "history.db")
                # Only a file that does not exist yet is opened here: closing any descriptor of an existing
                # history would drop the SQLite locks another connection of this process holds on it.
                try:
                    os.close(os.open(db, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
                except FileExistsError:
                    pass
            self._store = open_store(self.history_uri)
        return self._store

    @property
    def artifacts(self) -> ArtifactStore:
        if self._artifacts is None:
            self._artifacts = ArtifactStore(os.path.join(self.path, "artifacts"))
            if self.is_server:  # blobs other machines sent are fetched from the server on first read
                self._artifacts.remote = self._remote_blobs(self.store)
        return self._artifacts

    @staticmethod
    def _remote_blobs(store: RunStore) -> Any:
        from rundock.history.backends.http import HttpRunStore

        return store.remote_blobs() if isinstance(store, HttpRunStore) else None

    @property
    def secrets(self) -> SecretStore | ServerSecrets:
        """The workspace's secrets (Azure ML: its key vault); a team server's for a server workspace."""
        if self.is_server:
            from rundock.history.backends.http import HttpRunStore
            from rundock.submitter.server_secrets import ServerSecrets

            store = self.store
            if isinstance(store, HttpRunStore):
                return ServerSecrets(store)
        return SecretStore(os.path.join(self.path, "secrets.json"))

    def get_default_keyvault(self) -> SecretStore | ServerSecrets:
        """Azure ML's name for the workspace's secrets."""
        return self.secrets

    def set_secret(self, name: str, value: str) -> None:
        self.secrets.set_secret(name, value)

    @property
    def compute_targets(self) -> dict[str, Any]:
        """The compute targets of this workspace by name."""
        from rundock.submitter.targets import get_target

        return {"local": get_target(self, "local")}

    @property
    def max_concurrent_runs(self) -> int:
        value = int(_env_number("RUNDOCK_MAX_CONCURRENT_RUNS", self.config.local.max_concurrent_runs))
        return value if value > 0 else (os.cpu_count() or 1)

    @property
    def heartbeat_seconds(self) -> float:
        return _env_number("RUNDOCK_HEARTBEAT_SECONDS", self.config.local.heartbeat_seconds, above_zero=True)

    @property
    def snapshot_limits(self) -> SnapshotLimits:
        max_mb = _env_number("RUNDOCK_SNAPSHOT_MAX_MB", self.config.snapshot.max_mb)
        max_files = int(_env_number("RUNDOCK_SNAPSHOT_MAX_FILES", self.config.snapshot.max_files))
        return SnapshotLimits(max_bytes=int(max_mb * 1024 * 1024), max_files=max_files)

    def close(self) -> None:
        if self._store is not None:
            self._store.close()
            self._store = None

    def __repr__(self) -> str:
        return f"Workspace(name={self.name!r}, path={self.path!r})"
