"""The agent routes of the team server (``/api/v1/agents/...``), as ``agent serve`` calls them.

Register and end are safe to repeat (the agent id is stable per token, pool and host; ending an ended attempt
changes nothing) and are retried like reads. A poll may hand out runs, so it is sent again only when it surely
never reached the server; a poll whose answer is lost costs nothing here: the next poll reports what runs.
"""

from __future__ import annotations

import dataclasses
from typing import Any
from urllib.parse import quote

from rundock.errors import StoreError
from rundock.history.backends.http_client import HttpClient, Retry

MAX_WAIT_SECONDS = 30.0  # the longest long-poll the server holds


@dataclasses.dataclass(frozen=True)
class Attempt:
    """One pick-up of a run: (run id, attempt number)."""

    run_id: str
    attempt: int

    def to_json(self) -> dict[str, Any]:
        return {"run_id": self.run_id, "attempt": self.attempt}

    @classmethod
    def from_json(cls, data: Any) -> Attempt:
        if not isinstance(data, dict) or not isinstance(data.get("run_id"), str) \
                or not isinstance(data.get("attempt"), int):
            raise StoreError(f"the server sent an attempt that is not {{run_id, attempt}}: {data!r}")
        return cls(data["run_id"], data["attempt"])


@dataclasses.dataclass
class Assignment:
    """A run this agent is to start: its attempt, the GPUs it gets, the run as stored and its requirements."""

    attempt: Attempt
    gpus: list[int]
    run: dict[str, Any]
    enqueued: dict[str, Any]
    node: dict[str, Any] | None = None  # a node of a multi-node run: {rank, count, master_addr, master_port}

    @classmethod
    def from_json(cls, data: Any) -> Assignment:
        attempt = Attempt.from_json(data)
        gpus = data.get("gpus") or []
        if not isinstance(gpus, list) or not all(isinstance(g, int) for g in gpus):
            raise StoreError(f"the server sent GPUs that are not indices for run {attempt.run_id}: {gpus!r}")
        run = data.get("run")
        if not isinstance(run, dict):
            raise StoreError(f"the server sent no run with the assignment of {attempt.run_id}")
        node = data.get("node")
        if node is not None and not (isinstance(node, dict) and all(
                isinstance(node.get(k), t) for k, t in (("rank", int), ("count", int), ("master_addr", str),
                                                        ("master_port", int)))):
            raise StoreError(f"the server sent a node that is not {{rank, count, master_addr, master_port}} for run "
                             f"{attempt.run_id}: {node!r}")
        return cls(attempt, list(gpus), run, dict(data.get("enqueued") or {}), node)


@dataclasses.dataclass
class PollAnswer:
    assignments: list[Assignment]
    cancel: list[Attempt]
    fenced: list[Attempt]


@dataclasses.dataclass
class Registration:
    agent_id: str
    lease_seconds: float
    poll_seconds: float
    fenced: list[Attempt]


class PoolClient:
    """The agent routes over one ``HttpClient`` (its token, TLS trust, timeouts and retries)."""

    def __init__(self, client: HttpClient) -> None:
        self.client = client

    def register(self, body: dict[str, Any]) -> Registration:
        answer = self.client.json(self.client.call("POST", "/agents/register", body=body,
                                                   what=f"registering agent {body.get('name')!r} of pool "
                                                        f"{body.get('pool')!r}"), "register")
        if not isinstance(answer, dict) or not isinstance(answer.get("agent_id"), str):
            raise StoreError(f"the server {self.client.url} answered the registration with {answer!r}")
        return Registration(answer["agent_id"], float(answer.get("lease_seconds") or 30.0),
                            float(answer.get("poll_seconds") or MAX_WAIT_SECONDS),
                            [Attempt.from_json(a) for a in answer.get("fenced") or []])

    def poll(self, agent_id: str, running: list[Attempt], free_gpus: list[int], wait: float) -> PollAnswer:
        wait = max(0.0, min(wait, MAX_WAIT_SECONDS))
        body = {"running": [a.to_json() for a in running], "free_gpus": free_gpus, "wait": wait}
        resp = self.client.call("POST", f"/agents/{quote(agent_id, safe='')}/poll", body=body, retry=Retry.UNSENT,
                                what="asking for work", read_timeout=wait + self.client.connect_timeout + 10.0)
        answer = self.client.json(resp, "poll")
        if not isinstance(answer, dict):
            raise StoreError(f"the server {self.client.url} answered a poll with {answer!r}")
        return PollAnswer([Assignment.from_json(a) for a in answer.get("assignments") or []],
                          [Attempt.from_json(a) for a in answer.get("cancel") or []],
                          [Attempt.from_json(a) for a in answer.get("fenced") or []])

    def end(self, agent_id: str, attempt: Attempt, outcome: str | None = None, message: str | None = None) -> None:
        """``outcome``/``message``: how a node of a multi-node run ended (its job's final state)."""
        body = {"outcome": outcome, "message": message[:4000] if message else None} if outcome else {}
        self.client.call("POST", f"/agents/{quote(agent_id, safe='')}/attempts/{quote(attempt.run_id, safe='')}/"
                                 f"{attempt.attempt}/end", body=body,
                         what=f"ending attempt {attempt.attempt} of run {attempt.run_id}")

    def pools(self) -> list[dict[str, Any]]:
        answer = self.client.get_json("/pools", what="listing pools")
        return list(answer) if isinstance(answer, list) else []
