"""Checks of request values that every route shares: whole numbers a history can hold, finite times, run ids.

The run history stores whole numbers (log offsets, sequence numbers, attempts, steps, versions) as signed 64-bit
integers and times as finite floats: anything else is bad input (400) here, before it reaches a store that would
fail on it (SQLite with an OverflowError, PostgreSQL with an out-of-range error, NaN where a time belongs).
"""

from __future__ import annotations

import math
from typing import Any

from rundock.context.records import MAX_INT, run_id_error
from rundock.server.errors import ApiError

MIN_INT = -MAX_INT - 1

__all__ = ["MAX_INT", "MIN_INT", "check_finite", "check_run_id"]


def check_finite(value: Any, field: str) -> None:
    """400 unless ``value`` is None or a finite number (a time)."""
    if value is None:
        return
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ApiError(400, f"field {field!r}: expected a finite number (unix seconds), got {value!r}")


def check_run_id(run_id: str, field: str = "run_id") -> str:
    """``run_id`` when it can be a run id (it becomes a folder name on compute hosts); 400 naming ``field``."""
    problem = run_id_error(run_id)
    if problem:
        raise ApiError(400, f"field {field!r}: {problem}")
    return run_id
