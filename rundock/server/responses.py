"""Answers built without FastAPI's generic encoder: the records are plain JSON already (``history.wire``), and
a list of 100,000 metrics goes out in one ``json.dumps``."""

from __future__ import annotations

import json
from typing import Any

from starlette.responses import Response

from rundock.server.errors import ApiError


def json_response(data: Any, status: int = 200) -> Response:
    return Response(json.dumps(data, separators=(",", ":")), status_code=status, media_type="application/json")


def no_content() -> Response:
    return Response(status_code=204)


def checked_batch(count: int, limit: int, what: str) -> None:
    """413 when a batch holds more than ``limit`` items."""
    if count > limit:
        raise ApiError(413, f"{count} {what} in one request; this server takes at most {limit} per request "
                            "(max_metrics_per_batch): send them in smaller batches", limit=limit)
