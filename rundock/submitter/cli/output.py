"""What the CLI prints for people and for programs: strict JSON, relative times, short values.

``--json`` output is parsed by other programs, so it is strict JSON: a metric that is NaN or infinite
(Python's ``json`` would write the invalid tokens ``NaN`` / ``Infinity``) becomes the string
``"NaN"``, ``"Infinity"`` or ``"-Infinity"``.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Mapping
from typing import Any

import click

from rundock.history.records import RunRecord, iso_utc
from rundock.states import RunStatus


def jsonable(value: Any) -> Any:
    """``value`` with every non-finite float as a string, tuples as lists and unknown objects as text."""
    if isinstance(value, float) and not math.isfinite(value):
        return "NaN" if math.isnan(value) else ("Infinity" if value > 0 else "-Infinity")
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    if isinstance(value, Mapping):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, set, frozenset)):
        return [jsonable(v) for v in value]
    return str(value)


def dumps(value: Any) -> str:
    """Strict JSON (never ``NaN`` or ``Infinity``), indented."""
    return json.dumps(jsonable(value), indent=2, allow_nan=False, ensure_ascii=False)


def emit_json(value: Any) -> None:
    click.echo(dumps(value))


def ago(ts: float | None, now: float | None = None) -> str:
    """``ts`` relative to ``now``: "just now", "42 s ago", "3 min ago", "5 h ago", "2 days ago", or a date."""
    if ts is None:
        return ""
    seconds = (time.time() if now is None else now) - ts
    if seconds < 0:
        return "just now" if seconds > -60 else (iso_utc(ts) or "")[:10]  # another host's clock, a little ahead
    if seconds < 5:
        return "just now"
    if seconds < 60:
        return f"{int(seconds)} s ago"
    if seconds < 3600:
        return f"{int(seconds // 60)} min ago"
    if seconds < 86400:
        return f"{int(seconds // 3600)} h ago"
    days = int(seconds // 86400)
    if days < 30:
        return "1 day ago" if days == 1 else f"{days} days ago"
    return (iso_utc(ts) or "")[:10]


def duration(seconds: float | None) -> str:
    """A run's length: "0.4s", "12.0s", "3m05s", "2h07m"."""
    if seconds is None:
        return ""
    if seconds < 60:
        return f"{seconds:.1f}s"
    if seconds < 3600:
        return f"{int(seconds // 60)}m{int(seconds % 60):02d}s"
    return f"{int(seconds // 3600)}h{int(seconds % 3600 // 60):02d}m"


def short(value: Any) -> str:
    """A value for a table cell: numbers with 4 significant digits, the rest as compact text."""
    if isinstance(value, bool) or value is None:
        return "" if value is None else str(value)
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, (int, str)):
        return str(value)
    text = json.dumps(jsonable(value), separators=(",", ":"), ensure_ascii=False)
    return text if len(text) <= 40 else text[:39] + "…"


def run_json(record: RunRecord, status: RunStatus, now: float | None = None) -> dict[str, Any]:
    """One run for ``--json`` output."""
    end = record.end_at if record.status.is_terminal else None
    return {
        "run_id": record.run_id, "experiment": record.experiment, "number": record.number,
        "status": status.value, "parent_id": record.parent_id, "display_name": record.display_name,
        "target": record.target, "type": record.run_type, "submitted_by": record.submitted_by,
        "script": record.run_definition.get("script"), "arguments": record.run_definition.get("arguments") or [],
        "created": iso_utc(record.created_at), "started": iso_utc(record.start_at), "ended": iso_utc(end),
        "duration_seconds": ((end or (time.time() if now is None else now)) - record.start_at
                             if record.start_at else None),
        "tags": dict(record.tags), "properties": dict(record.properties), "error": record.error,
    }
