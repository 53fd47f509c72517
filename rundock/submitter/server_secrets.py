"""The secrets of a workspace whose history is a team server (``ws.secrets`` there).

The server keeps them, encrypted; from a laptop they can be set, listed and deleted, never read: a value
reaches only a run whose run configuration names it (``run_config.secrets``), handed over by the server to
that run's agent (or to its submitter, for a run on the submitter's own machine) while the run is live.
So a run of a server workspace gets exactly the secrets it lists, none by default.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import quote

from rundock.errors import ConfigError, RundockError
from rundock.history.backends.http import HttpRunStore
from rundock.history.backends.http_client import Retry


class SecretNotReadableError(RundockError, PermissionError):
    """A team server's secret values are read only by runs."""


def _missing(message: str) -> Exception:
    return KeyError(message)


class ServerSecrets:
    """A team server's secrets, with the methods of a workspace's ``SecretStore``."""

    def __init__(self, store: HttpRunStore) -> None:
        self.store = store
        self.path = f"{store.url} (the team server's secrets)"  # where listings say they looked

    def set_secret(self, name: str, value: str) -> None:
        """Add or replace a secret on the server (which checks the name as a workspace does)."""
        if not isinstance(value, str) or not value:
            raise ValueError(f"secret {name!r}: the value must be a non-empty string")
        self.store.client.call("PUT", f"/secrets/{quote(name, safe='')}", body={"value": value},
                               what=f"setting secret {name}")

    def set_secrets(self, secrets_batch: dict[str, str]) -> None:
        for name, value in secrets_batch.items():
            self.set_secret(name, value)

    def get_secret(self, name: str) -> str:
        raise SecretNotReadableError(
            f"secret {name!r} is kept by the team server {self.store.url}, which gives its value only to runs: list "
            f"it in the run configuration (run_config.secrets = [{name!r}]) and read it in the job with "
            f"run.get_secret({name!r})")

    def get_secrets(self, secrets: list[str]) -> dict[str, str | None]:
        raise SecretNotReadableError(
            f"the secrets {', '.join(map(repr, secrets))} are kept by the team server {self.store.url}, which gives "
            "their values only to runs whose run configuration lists them (run_config.secrets)")

    def list_secrets(self) -> list[dict[str, str]]:
        names: Any = self.store.client.get_json("/secrets", what="listing secrets")
        if isinstance(names, dict):
            names = names.get("names", [])
        return [{"name": str(n)} for n in sorted(names)]

    def delete_secret(self, name: str) -> None:
        self.store.client.call("DELETE", f"/secrets/{quote(name, safe='')}", retry=Retry.UNSENT,
                               what=f"deleting secret {name}", not_found=_missing)

    def for_run(self, names: list[str] | None, *, remote: bool, run_id: str | None = None) -> dict[str, str]:
        """The values of the secrets run ``run_id`` lists (``names``), from the server; none when it lists none."""
        if not names:
            return {}
        if run_id is None:
            raise ConfigError(f"the secrets {', '.join(map(repr, names))} are kept by the team server "
                              f"{self.store.url}, which hands them to a run once it exists; this compute target "
                              "cannot receive them", source="run configuration", field="secrets")
        answer = self.store.client.get_json(f"/runs/{quote(run_id, safe='')}/secrets",
                                            params=[("name", n) for n in names],
                                            what=f"reading the secrets of run {run_id}")
        values = answer.get("values", answer) if isinstance(answer, dict) else {}
        missing = [n for n in names if values.get(n) is None]
        if missing:
            raise ConfigError(f"no secret {', '.join(map(repr, missing))} on the team server {self.store.url}; add it "
                              f"with `rundock secret set {missing[0]}`", source="run configuration", field="secrets")
        return {n: str(values[n]) for n in names}
