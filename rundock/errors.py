"""Exceptions raised by rundock: one base, a shallow tree."""

from __future__ import annotations

from typing import Any


class RundockError(Exception):
    """Base class of every error rundock raises on purpose."""


class ConfigError(RundockError, ValueError):
    """A run configuration, environment or workspace setting is invalid."""

    def __init__(self, message: str, *, source: str | None = None, field: str | None = None) -> None:
        where = ", ".join(p for p in (source and f"in {source}", field and f"field '{field}'") if p)
        super().__init__(f"{where}: {message}" if where else message)
        self.source = source
        self.field = field


class SnapshotError(RundockError):
    """The source folder cannot be packaged (too big, a link leaving it, unreadable)."""


class RunNotFoundError(RundockError, KeyError):
    """No run with that id in the run history."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else "run not found"


class RunFailedError(RundockError):
    """A run ended Failed; carries its id and error details."""

    def __init__(self, run_id: str, error: dict[str, Any] | None) -> None:
        self.run_id = run_id
        self.error = error or {}
        message = self.error.get("message") or "no error details were recorded"
        super().__init__(f"Run {run_id} failed: {message}")


class StoreError(RundockError):
    """The run history cannot be read or written."""


# Callers that retry tell a transient failure (StoreUnavailableError) from the permanent ones (the others).
class StoreUnavailableError(StoreError):
    """The run history cannot be used now (locked, full, read-only); retrying later may succeed."""


class StoreDamagedError(StoreError):
    """The run history file is damaged; ``rundock doctor --repair`` rebuilds it."""


class StoreVersionError(StoreError):
    """The run history was written by a newer rundock; this one refuses to touch it."""


class StoreReplacedError(StoreError):
    """The run history file was deleted or replaced while open; reopen the store to use the new file."""


class AttemptFencedError(StoreError):
    """The team server no longer takes writes from this attempt of a pool run (its lease ran out, or the run was
    given to another agent): whoever gets it stops the run's job at once and writes nothing more for it."""
