"""Small JSON caches that agents of runs starting at once share (standard library only)."""

from __future__ import annotations

import json
import os
from typing import Any


def read_json(path: str) -> dict[str, Any]:
    """The cached object, or {} when the file is missing or unreadable."""
    try:
        with open(path, encoding="utf-8") as fh:
            value = json.load(fh)
    except (OSError, ValueError):
        return {}
    return value if isinstance(value, dict) else {}


def write_json(path: str, value: dict[str, Any]) -> None:
    """Written whole or not at all: other agents read these files while one writes them."""
    os.makedirs(os.path.dirname(path), exist_ok=True)
    tmp = f"{path}.{os.getpid()}.tmp"
    with open(tmp, "w", encoding="utf-8") as fh:
        json.dump(value, fh)
    os.replace(tmp, path)
