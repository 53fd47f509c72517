"""Files a job leaves for its agent, and the run's secrets file (standard library only).

``requests/fail.json`` (the job's own ``run.fail()``) is read without following links or blocking on a
FIFO, and only a code and a message are taken from it. The secrets a run may read sit in the run
directory's private ``secrets.json`` while it runs, and are removed when it ends.
"""

from __future__ import annotations

import json
import logging
import os
from typing import Any

from rundock.context import rundir
from rundock.context.names import open_inside

log = logging.getLogger("rundock.agent")
FAIL_REQUEST_LIMIT = 64 * 1024
SECRETS_FILE = rundir.SECRETS_FILE


def take_secrets(run_dir: str, given: str | None) -> dict[str, str]:
    """The secrets this run may read, in the run directory's private secrets file."""
    own = os.path.join(run_dir, SECRETS_FILE)
    if given and os.path.abspath(given) != own and os.path.exists(given):
        with open(given, encoding="utf-8") as fh:
            secrets = json.load(fh)
        fd = os.open(own, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as out:
            json.dump(secrets, out)
        if os.path.dirname(os.path.abspath(given)) == run_dir:  # a copy made for this run only
            os.unlink(given)
    if not os.path.exists(own):
        return {}
    with open(own, encoding="utf-8") as fh:
        loaded = json.load(fh)
    return {str(k): str(v) for k, v in loaded.items()} if isinstance(loaded, dict) else {}


def remove_secrets(run_dir: str, given: str | None) -> None:
    """Remove the run's secrets files (never a file outside the run directory, such as the workspace's own)."""
    for path in (os.path.join(run_dir, SECRETS_FILE), given or ""):
        inside = os.path.dirname(os.path.abspath(path)) == run_dir  # never the workspace's own file
        if path and inside and os.path.exists(path):
            os.unlink(path)


def fail_request(run_dir: str) -> dict[str, Any] | None:
    """The job's own ``run.fail()``: a small JSON file in ``requests/``, read without following links or
    blocking on a FIFO; only a code and a message are taken from it."""
    requested = os.path.join(run_dir, rundir.FAIL_FILE)
    if not os.path.lexists(requested):
        return None
    fallback = {"code": "UserError", "message": "run.fail() was called"}
    try:
        with open_inside(requested, os.path.dirname(requested), root=run_dir, limit=FAIL_REQUEST_LIMIT) as fh:
            data = json.loads(fh.read(FAIL_REQUEST_LIMIT))
    except (OSError, ValueError, RecursionError) as exc:
        log.warning("run %s: the job's fail request was not readable: %s", os.path.basename(run_dir), exc)
        return fallback
    if not isinstance(data, dict):
        return fallback
    return {"code": str(data.get("code") or "UserError")[:200],
            "message": str(data.get("message") or fallback["message"])[:FAIL_REQUEST_LIMIT]}
