"""The run history of a team server (``http(s)://host:port`` history URIs): a ``RunStore`` over its HTTP API.

Same interface and contract tests as the embedded store; the JSON shapes are ``rundock.history.wire``'s.
The plumbing (session, timeouts, retries, TLS trust, error mapping) is ``http_client``; blobs are
``http_blobs``; tokens and trusted certificates ``http_credentials``.

Exactly once, call by call:

- ``apply_journal`` is idempotent by its marks (run, attempt, source, sequence number): retried freely, and
  a batch longer than the server takes in one request (``GET /api/v1/info``) goes in chunks, in order, each
  with its records' own sequence numbers, so a chunk sent twice is applied once;
- ``create_run`` always sends a run id made here (``new_run_id``): when an answer is lost, the store asks
  for that run and returns it if it was created, else sends the request again (a request sent twice meets
  "exists" and returns the run too). A run id the caller chose is sent once: "exists" is a StoreError.
  The run's ``submitted_by`` is always the token's name (the server sets it);
- ``apply_plan`` (changes made outside a job: ``run.log`` in a notebook, ``set_tags``...) has no marks, so
  it is sent again only when the request surely never reached the server (the connection could not be
  made); any other failure raises, and the caller decides. A long plan goes in chunks, metrics first;
  each chunk is atomic, the plan as a whole is not. ``register_model``, ``register_environment`` and
  ``delete_runs`` are treated the same way;
- reads, ``transition`` (sent twice, it answers "not moved" the second time), ``update_run``, logs,
  snapshots, tags removal and archiving are safe to repeat and retried like reads.

Reads of what a run recorded (statuses, metrics, files, logs, journal marks) answer empty for a run the
history does not hold, as the embedded store does.

Blobs: records that name blobs (files in journals and plans, snapshot manifests, model files) are sent
only after the server holds those blobs (``BlobTransfer.ensure``), uploaded from the local artifact store
at ``artifacts_root`` (the client's cache); a store opened without one cannot upload.
"""

from __future__ import annotations

import dataclasses
import json
import os
import time
from typing import Any, Callable, Iterable, Iterator, Mapping
from urllib.parse import quote

from rundock.context.journal import ReadBatch
from rundock.errors import RunNotFoundError, StoreError, StoreUnavailableError
from rundock.history import wire
from rundock.history.artifacts import ArtifactStore
from rundock.history.backends.http_admin import HttpAdmin
from rundock.history.backends.http_blobs import BlobTransfer
from rundock.history.backends.http_client import HttpClient, Retry, ServerConflictError
from rundock.history.query import RunPage, RunQuery, RunRow, query_to_json
from rundock.history.records import FileRecord, JournalPlan, MetricRecord, ModelRecord, RunRecord, StatusChange
from rundock.history.store import RunStore, new_run_id, register_backend
from rundock.states import RunStatus

DEFAULT_MAX_RECORDS = 10_000  # per request, when the server does not say
DEFAULT_MAX_BYTES = 32 * 1024 * 1024
_JSON = {"Content-Type": "application/json"}
# The attempt of a pool run that the per-run agent of a GPU box writes for (set in its environment only).
ENV_ATTEMPT = "RUNDOCK_ATTEMPT"


def _q(name: str) -> str:
    return quote(name, safe="")


def _key_error(message: str) -> Exception:
    return KeyError(message)


def _store_error(message: str) -> Exception:
    return StoreError(message)


class HttpRunStore(RunStore):
    """A team server's run history; ``artifacts_root`` is the local artifact cache blobs are sent from.

    ``attempt``: the attempt of a pool run this store writes for (sent as ``X-Rundock-Attempt``); a store opened
    by URI takes it from ``$RUNDOCK_ATTEMPT``, which only a pool run's agent has. A write the server refuses
    because the attempt is fenced raises ``AttemptFencedError``.
    """

    def __init__(self, uri: str, *, artifacts_root: str | None = None, token: str | None = None,
                 attempt: int | None = None) -> None:
        self.attempt = attempt
        self.client = HttpClient(uri, token, attempt=attempt)
        self.url = self.client.url
        self.cache = ArtifactStore(artifacts_root) if artifacts_root else None
        self.blobs = BlobTransfer(self.client, self.cache)
        self._limits: tuple[int, int] | None = None

    @classmethod
    def from_uri(cls, uri: str, artifacts_root: str | None = None) -> HttpRunStore:
        return cls(uri, artifacts_root=artifacts_root, attempt=attempt_from_env())

    def __repr__(self) -> str:
        return f"HttpRunStore({self.url!r})"

    # -- the server ------------------------------------------------------------------------------------------------
    def info(self) -> dict[str, Any]:
        """The server's version, history id and limits (``GET /api/v1/info``)."""
        return dict(self.client.get_json("/info", what="reading the server's limits"))

    def whoami(self) -> dict[str, Any]:
        """Who the token is: name, role, pools, expires_at (``GET /api/v1/whoami``)."""
        return dict(self.client.get_json("/whoami", what="checking the token"))

    def limits(self) -> tuple[int, int]:
        """(records, bytes) the server takes in one request."""
        if self._limits is None:
            limits = self.info().get("limits")
            records = _positive_int(limits, "max_metrics_per_batch") or DEFAULT_MAX_RECORDS
            size = _positive_int(limits, "max_request_bytes")
            # Bodies stay under the server's limit with a margin: a chunk is measured, its headers are not.
            self._limits = (records, int(size * 0.9) if size else DEFAULT_MAX_BYTES)
        return self._limits

    # -- runs --------------------------------------------------------------------------------------------------------
    def create_run(self, experiment: str, *, run_id: str | None = None, parent_id: str | None = None,
                   run_type: str = "rundock.scriptrun", display_name: str | None = None,
                   description: str | None = None, target: str = "local",
                   run_definition: dict[str, Any] | None = None, snapshot_id: str | None = None,
                   submitted_by: str | None = None, run_dir: str | None = None,
                   tags: Mapping[str, str | None] | None = None,
                   properties: Mapping[str, str] | None = None, created_at: float | None = None) -> RunRecord:
        chosen = run_id is not None
        run_id = run_id or new_run_id(experiment)
        body = {"experiment": experiment, "run_id": run_id, "parent_id": parent_id, "run_type": run_type,
                "display_name": display_name, "description": description, "target": target,
                "run_definition": run_definition or {}, "snapshot_id": snapshot_id, "run_dir": run_dir,
                "tags": dict(tags or {}), "properties": {k: str(v) for k, v in (properties or {}).items()},
                "created_at": created_at}
        deadline = time.monotonic() + self.client.retry_seconds
        pause = 0.2
        while True:
            try:
                resp = self.client.call("POST", "/runs", body=body, retry=Retry.UNSENT,
                                        what=f"creating a run of experiment {experiment!r}")
                return wire.run_from_json(self.client.json(resp, "creating a run"))
            except ServerConflictError as exc:  # the id is taken: by this very request, unless the caller chose it
                if chosen:
                    raise StoreError(str(exc)) from None
            except StoreUnavailableError:
                if chosen or time.monotonic() > deadline:  # a caller's own id may be someone else's run
                    raise
            try:  # the answer was lost: was the run created?
                return self.get_run(run_id)
            except RunNotFoundError:
                time.sleep(pause)
                pause = min(pause * 2, 5.0)

    def get_run(self, run_id: str) -> RunRecord:
        return wire.run_from_json(self.client.get_json(f"/runs/{_q(run_id)}", what=f"reading run {run_id}"))

    def list_runs(self, *, experiment: str | None = None, statuses: Iterable[str] | None = None,
                  parent_id: str | None = None, run_type: str | None = None, target: str | None = None,
                  include_children: bool = True) -> list[RunRecord]:
        params: list[tuple[str, str]] = [(k, v) for k, v in (("experiment", experiment), ("parent_id", parent_id),
                                                               ("run_type", run_type), ("target", target)) if v]
        if statuses is not None:
            wanted = [RunStatus(s).value for s in statuses]
            if not wanted:
                return []
            params.extend(("status", s) for s in wanted)
        params.append(("include_children", "true" if include_children else "false"))
        data = self.client.get_json("/runs", params=params, what="listing runs")
        return [wire.run_from_json(r) for r in data]

    def query_runs(self, q: RunQuery) -> RunPage:
        """One request: the server answers the query with its own store."""
        resp = self.client.call("POST", "/runs/query", body=query_to_json(q), what="querying runs",
                                retry=Retry.ALWAYS)
        data = self.client.json(resp, "querying runs")
        return RunPage([RunRow(wire.run_from_json(r["run"]), {k: float(v) for k, v in r["latest"].items()})
                        for r in data["rows"]], int(data["total"]))

    def metric_names(self, experiment: str | None = None) -> list[str]:
        params = {"experiment": experiment} if experiment is not None else None
        return [str(n) for n in self.client.get_json("/metric-names", params=params, what="listing metric names")]

    def update_run(self, run_id: str, *, display_name: str | None = None, description: str | None = None,
                   run_dir: str | None = None, snapshot_id: str | None = None) -> None:
        changes = {k: v for k, v in (("display_name", display_name), ("description", description),
                                     ("run_dir", run_dir), ("snapshot_id", snapshot_id)) if v is not None}
        if changes:
            self.client.call("PATCH", f"/runs/{_q(run_id)}", body=changes, what=f"updating run {run_id}")

    def transition(self, run_id: str, status: RunStatus | str, *, detail: str = "",
                   error: dict[str, Any] | None = None, at: float | None = None) -> bool:
        status = RunStatus(status)
        answer = self.client.json(self.client.call(
            "POST", f"/runs/{_q(run_id)}/transitions", what=f"moving run {run_id} to {status.value}",
            body={"status": status.value, "detail": detail, "error": error, "at": at or time.time()}), "transition")
        return bool(answer.get("moved"))

    def status_history(self, run_id: str) -> list[StatusChange]:
        data = self._run_data(f"/runs/{_q(run_id)}/statuses", [], what=f"reading the statuses of run {run_id}")
        return [wire.status_from_json(s) for s in data]

    # -- run data ------------------------------------------------------------------------------------------------------
    def apply_journal(self, run_id: str, attempt: int, source: str, records: list[dict[str, Any]]) -> int:
        if not records:
            return self.journal_mark(run_id, attempt, source)
        self.blobs.ensure(r["digest"] for r in records if r.get("type") == "file" and isinstance(r.get("digest"), str))
        max_records, max_bytes = self.limits()
        mark = 0
        lines = records.lines if isinstance(records, ReadBatch) else None
        if lines is not None and len(lines) == len(records):  # as read from the journal: sent without re-encoding
            head = json.dumps({"attempt": attempt, "source": source}, separators=(",", ":"))[:-1].encode("utf-8")
            bodies: Iterable[bytes] = raw_chunks(lines, max_records, max_bytes, head + b',"records":[', b"]}")
        else:
            bodies = json_chunks(records, max_records, max_bytes,
                                 lambda part: {"attempt": attempt, "source": source, "records": part})
        for body in bodies:
            answer = self.client.json(self.client.call("POST", f"/runs/{_q(run_id)}/journal", data=body, headers=_JSON,
                                                       what=f"sending {source}'s journal of run {run_id}"), "journal")
            mark = int(answer["mark"])
        return mark

    def apply_plan(self, run_id: str, plan: JournalPlan) -> None:
        self.blobs.ensure(f.digest for f in plan.files)
        max_records, max_bytes = self.limits()
        whole = json.dumps(wire.plan_to_json(plan), separators=(",", ":")).encode("utf-8")
        if len(plan.metrics) <= max_records and len(whole) <= max_bytes:
            bodies = [whole]
        else:  # metrics first, in chunks, then the other changes: the order the history applies a plan in
            bodies = list(json_chunks([wire.metric_to_json(m) for m in plan.metrics], max_records, max_bytes,
                                  lambda part: {"metrics": part}))
            rest = dataclasses.replace(plan, metrics=[])
            if rest != JournalPlan(last_seq=plan.last_seq):
                bodies.append(json.dumps(wire.plan_to_json(rest), separators=(",", ":")).encode("utf-8"))
        for body in bodies:
            self.client.call("POST", f"/runs/{_q(run_id)}/plan", data=body, headers=_JSON, retry=Retry.UNSENT,
                             what=f"recording changes to run {run_id}")

    def journal_mark(self, run_id: str, attempt: int, source: str) -> int:
        answer = self._run_data(f"/runs/{_q(run_id)}/journal-mark", {"mark": 0}, what=f"reading the journal mark of "
                                f"run {run_id}", params={"attempt": attempt, "source": source})
        return int(answer["mark"])

    def get_metric_records(self, run_id: str, name: str | None = None) -> list[MetricRecord]:
        data = self._run_data(f"/runs/{_q(run_id)}/metrics", [], what=f"reading the metrics of run {run_id}",
                              params={"name": name} if name is not None else None)
        return [wire.metric_from_json(m) for m in data]

    def remove_tags(self, run_id: str, keys: Iterable[str]) -> None:
        self.client.call("POST", f"/runs/{_q(run_id)}/tags/remove", body={"keys": list(keys)},
                         what=f"removing tags of run {run_id}")

    def list_files(self, run_id: str) -> dict[str, FileRecord]:
        data = self._run_data(f"/runs/{_q(run_id)}/files", {}, what=f"listing the files of run {run_id}")
        return {name: wire.file_from_json(f) for name, f in sorted(data.items())}

    def append_log(self, run_id: str, name: str, offset: int, data: bytes) -> None:
        if data:
            self.client.call("PUT", f"/runs/{_q(run_id)}/logs/{quote(name, safe='/')}", params={"offset": offset},
                             data=data, headers={"Content-Type": "application/octet-stream"},
                             what=f"sending log {name} of run {run_id}")

    def read_log(self, run_id: str, name: str, offset: int = 0) -> bytes:
        try:
            return self.client.call("GET", f"/runs/{_q(run_id)}/logs/{quote(name, safe='/')}",
                                    params={"offset": offset}, what=f"reading log {name} of run {run_id}").content
        except RunNotFoundError:
            return b""

    def log_names(self, run_id: str) -> list[str]:
        return [str(n) for n in self._run_data(f"/runs/{_q(run_id)}/logs", [],
                                               what=f"listing the logs of run {run_id}")]

    def _run_data(self, path: str, empty: Any, *, what: str, params: Any = None) -> Any:
        """What a run recorded, or ``empty`` for a run the history does not hold (as the embedded store answers)."""
        try:
            return self.client.get_json(path, what=what, params=params)
        except RunNotFoundError:
            return empty

    # -- snapshots ---------------------------------------------------------------------------------------------------
    def put_snapshot(self, snapshot_id: str, manifest: list[dict[str, Any]]) -> bool:
        self.blobs.ensure(e["digest"] for e in manifest)
        answer = self.client.json(self.client.call("PUT", f"/snapshots/{_q(snapshot_id)}", body={"manifest": manifest},
                                                   what=f"storing snapshot {snapshot_id}"), "snapshot")
        return bool(answer.get("new"))

    def get_snapshot(self, snapshot_id: str) -> list[dict[str, Any]]:
        answer = self.client.get_json(f"/snapshots/{_q(snapshot_id)}", what=f"reading snapshot {snapshot_id}",
                                      not_found=_store_error)
        return list(answer["manifest"])

    # -- models ------------------------------------------------------------------------------------------------------
    def register_model(self, name: str, *, run_id: str | None, path: str, files: list[dict[str, Any]],
                       tags: Mapping[str, str | None] | None = None,
                       properties: Mapping[str, str] | None = None, framework: str | None = None,
                       framework_version: str | None = None, description: str | None = None,
                       created_at: float | None = None) -> ModelRecord:
        self.blobs.ensure(f["digest"] for f in files if isinstance(f.get("digest"), str))
        body = {"run_id": run_id, "path": path, "files": files, "tags": dict(tags or {}),
                "properties": {k: str(v) for k, v in (properties or {}).items()}, "framework": framework,
                "framework_version": framework_version, "description": description, "created_at": created_at}
        resp = self.client.call("POST", f"/models/{_q(name)}/versions", body=body, retry=Retry.UNSENT,
                                what=f"registering model {name}")
        return wire.model_from_json(self.client.json(resp, "model"))

    def get_model(self, name: str, version: int | None = None) -> ModelRecord:
        which = "latest" if version is None else str(version)
        return wire.model_from_json(self.client.get_json(f"/models/{_q(name)}/versions/{which}",
                                                         what=f"reading model {name}", not_found=_key_error))

    def list_models(self, name: str | None = None) -> list[ModelRecord]:
        data = self.client.get_json("/models", params={"name": name} if name is not None else None,
                                    what="listing models")
        return [wire.model_from_json(m) for m in data]

    # -- environments ------------------------------------------------------------------------------------------------
    def register_environment(self, name: str, definition: dict[str, Any]) -> int:
        answer = self.client.json(self.client.call("POST", f"/environments/{_q(name)}", body={"definition": definition},
                                                   retry=Retry.UNSENT, what=f"registering environment {name}"), "env")
        return int(answer["version"])

    def get_environment(self, name: str, version: int | None = None) -> tuple[int, dict[str, Any]]:
        answer = self.client.get_json(f"/environments/{_q(name)}", what=f"reading environment {name}",
                                      params={"version": version} if version is not None else None,
                                      not_found=_key_error)
        return int(answer["version"]), dict(answer["definition"])

    def environment_names(self) -> list[str]:
        return [str(n) for n in self.client.get_json("/environments", what="listing environments")]

    # -- the rest ----------------------------------------------------------------------------------------------------
    def admin(self) -> HttpAdmin:
        return HttpAdmin(self.client)

    def remote_blobs(self) -> BlobTransfer:
        """The source an ``ArtifactStore`` fetches missing blobs from (``ArtifactStore.remote``)."""
        return self.blobs

    def close(self) -> None:
        self.client.close()


def attempt_from_env() -> int | None:
    """The pool attempt in ``$RUNDOCK_ATTEMPT`` (None when unset); a value that is not a whole number >= 1 is an
    error naming the variable."""
    raw = os.environ.get(ENV_ATTEMPT)
    if raw is None or raw == "":
        return None
    if not raw.isdigit() or int(raw) < 1:
        raise StoreError(f"{ENV_ATTEMPT} must be a whole number >= 1 (the attempt of a pool run), got {raw!r}")
    return int(raw)


def _positive_int(data: Any, name: str) -> int | None:
    value = data.get(name) if isinstance(data, dict) else None
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else None


def raw_chunks(lines: list[bytes], max_items: int, max_bytes: int, head: bytes, tail: bytes) -> Iterator[bytes]:
    """Bodies ``head + lines joined by commas + tail`` of consecutive lines (each a JSON value), in order, each
    within both limits (one line over the byte limit goes alone: the server then says it is too large)."""
    start = 0
    while start < len(lines):
        end, size = start, len(head) + len(tail)
        while end < len(lines) and end - start < max_items:
            if end > start and size + len(lines[end]) + 1 > max_bytes:
                break
            size += len(lines[end]) + 1
            end += 1
        yield head + b",".join(lines[start:end]) + tail
        start = end


def json_chunks(items: list[Any], max_items: int, max_bytes: int, wrap: Callable[[list[Any]], Any]) -> Iterator[bytes]:
    """JSON bodies ``wrap(part)`` of consecutive parts of ``items``, in order, each within both limits (one
    item over the byte limit goes alone: the server then says it is too large)."""
    start = 0
    while start < len(items):
        end = min(start + max_items, len(items))
        body = json.dumps(wrap(items[start:end]), separators=(",", ":")).encode("utf-8")
        while len(body) > max_bytes and end - start > 1:
            end = start + (end - start) // 2
            body = json.dumps(wrap(items[start:end]), separators=(",", ":")).encode("utf-8")
        yield body
        start = end


register_backend("http", HttpRunStore.from_uri, takes_artifacts=True)
register_backend("https", HttpRunStore.from_uri, takes_artifacts=True)
