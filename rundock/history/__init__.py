"""The run history: the RunStore interface, its backends, artifacts and sync.

Names are imported on first use, so that a short command on a remote host that
only needs the artifact store does not import the store interface too.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {"ArtifactStore": "rundock.history.artifacts", "RunStore": "rundock.history.store",
            "open_store": "rundock.history.store", "register_backend": "rundock.history.store"}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'rundock.history' has no attribute {name!r}")
