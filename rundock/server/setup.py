"""Preparing a server's database and files: ``rundock server init`` and ``rundock server upgrade``.

``init_server`` brings the history's schema and the server's tables up to date, makes the artifacts folder
and the secrets key file (0600, never replaced: losing it loses the secrets), writes the configuration file
(0600) and, while no admin token is active, makes one named ``admin``: its token is returned once and
stored only as a hash. Running it again is harmless; it changes only the settings given.

The history's schema: an SQLite file is created and migrated when it is opened; a PostgreSQL database by its
backend's ``migrate`` (opening one never upgrades it: that is the admin's decision, taken here).
"""

from __future__ import annotations

import dataclasses
import os
import time
from collections.abc import Mapping
from typing import Any

from rundock.history.artifacts import ArtifactStore
from rundock.history.store import open_store
from rundock.server.crypto import write_key_file
from rundock.server.settings import read_config_file, write_config_file
from rundock.server.state import ServerState, open_state
from rundock.server.tokens import issue_token

DEFAULT_CONFIG = "rundock-server.yaml"
ADMIN_NAME = "admin"


@dataclasses.dataclass(frozen=True)
class InitResult:
    config_path: str
    secrets_key_file: str
    key_created: bool
    history: str  # what happened to the history's schema, in words
    admin_token: str | None  # None when an admin token existed already


def key_file_for(config_path: str) -> str:
    """Where ``init`` puts the secrets key of a configuration file: beside it, ``<name>.secrets.key``."""
    return os.path.splitext(os.path.abspath(config_path))[0] + ".secrets.key"


def migrate_history(store_uri: str) -> str:
    """Bring the history's schema to this rundock's version; say what was done."""
    scheme = store_uri.split(":", 1)[0]
    if scheme in ("postgresql", "postgres"):
        from rundock.history.backends.postgres import migrate
        from rundock.history.backends.postgres_conn import redact

        before, after = migrate(store_uri)
        where = redact(store_uri)
        return f"history schema {where}: version {before} -> {after}" if before != after else \
            f"history schema {where}: version {after}, up to date"
    with open_store(store_uri):  # SQLite migrates a file when it opens it
        pass
    return f"history {store_uri}: up to date"


def migrate_state(state: ServerState) -> str:
    before, after = state.migrate()
    return f"server tables in {state.where}: version {before} -> {after}" if before != after else \
        f"server tables in {state.where}: version {after}, up to date"


def upgrade_server(store_uri: str) -> list[str]:
    """``rundock server upgrade``: migrate the history and the server's tables; lines saying what was done."""
    lines = [migrate_history(store_uri)]
    state = open_state(store_uri)
    try:
        lines.append(migrate_state(state))
    finally:
        state.close()
    return lines


def active_admins(state: ServerState, now: float | None = None) -> int:
    now = time.time() if now is None else now
    return sum(1 for t in state.list_tokens() if t.role == "admin" and t.revoked_at is None
               and (t.expires_at is None or t.expires_at > now))


def init_server(store_uri: str, artifacts: str, config_path: str | None = None, *,
                secrets_key_file: str | None = None, extra: Mapping[str, Any] | None = None) -> InitResult:
    """``rundock server init``: prepare the database, folders, key and configuration file (see the module doc)."""
    config_path = os.path.abspath(config_path or DEFAULT_CONFIG)
    key_path = os.path.abspath(secrets_key_file or key_file_for(config_path))
    history = migrate_history(store_uri)
    state = open_state(store_uri)
    try:
        migrate_state(state)
        state.history_id()
        token = None
        if not active_admins(state):
            token = issue_token(state, ADMIN_NAME, "admin", [], None)[1]
    finally:
        state.close()
    ArtifactStore(os.path.abspath(artifacts))
    key_created = write_key_file(key_path)
    settings: dict[str, Any] = read_config_file(config_path) if os.path.exists(config_path) else {}
    settings.update({k: v for k, v in (extra or {}).items() if v is not None})
    settings.update(store=store_uri, artifacts=os.path.abspath(artifacts), secrets_key_file=key_path)
    write_config_file(config_path, settings)
    return InitResult(config_path, key_path, key_created, history, token)
