"""The run history: the RunStore interface, its backends, artifacts and sync."""

from rundock.history.artifacts import ArtifactStore
from rundock.history.store import RunStore, open_store, register_backend

__all__ = ["ArtifactStore", "RunStore", "open_store", "register_backend"]
