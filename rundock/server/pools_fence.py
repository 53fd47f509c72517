"""Fencing for the write routes: a write from an attempt that lost its run is refused (409 ``fenced``).

Every route that changes a run (journal, transitions, plan, logs, tags, run attributes) calls
``check_attempt`` once it has checked that the token may write the run. The attempt is the journal batch's
``attempt`` field, or else the ``X-Rundock-Attempt`` header (``attempt_header``). An agent token's write to a
pool run must carry it; another token's write is checked only when it carries one. Runs that were never
queued in a pool have no attempts and are never refused here.
"""

from __future__ import annotations

from fastapi import Header

from rundock.server.auth import Principal
from rundock.server.errors import ApiError
from rundock.server.services import Services

ATTEMPT_HEADER = "X-Rundock-Attempt"


def attempt_header(x_rundock_attempt: str | None = Header(None)) -> int | None:
    """The attempt number a request names in ``X-Rundock-Attempt`` (a dependency), or None."""
    if x_rundock_attempt is None:
        return None
    try:
        number = int(x_rundock_attempt.strip())
    except ValueError:
        number = -1
    if number < 0:
        raise ApiError(400, f"header {ATTEMPT_HEADER}: expected an attempt number (a whole number, at least 0), "
                            f"got {x_rundock_attempt!r}")
    return number


def check_attempt(svc: Services, principal: Principal, run_id: str, attempt: int | None) -> None:
    """Return if the write may go on; 409 ``fenced`` (or 400 for an agent that names no attempt) otherwise."""
    is_agent = principal.role == "agent"
    if attempt is None and not is_agent:
        return
    svc.pools.check_attempt(run_id, attempt, is_agent)
