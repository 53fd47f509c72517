"""The run page: status timeline, details, tags, properties, live log, metrics, files, children, snapshot."""

from __future__ import annotations

import json
from typing import Any
from urllib.parse import quote

from fastapi import APIRouter, Depends
from starlette.concurrency import run_in_threadpool
from starlette.responses import Response

from rundock.history import liveness
from rundock.history.records import RunRecord
from rundock.server.access import may_read, snapshot_or_none
from rundock.server.errors import ApiError
from rundock.server.responses import json_response
from rundock.ui import data
from rundock.ui.auth import Viewer, ui_session
from rundock.ui.backend import UiBackend, ui_backend
from rundock.ui.html import Markup, duration, finite, join, json_script, link, number, render, table, when
from rundock.ui.layout import empty, page, section, status_badge
from rundock.ui.render import summary_specs

router = APIRouter(prefix="/ui")
DRIVER_LOG = "system_logs/driver_log.txt"
MAX_VIEW_BYTES = 1 << 20
MAX_TABLE_ROWS = 1000  # rows of a table metric drawn on the page (a job may log millions)


def file_url(run_id: str, name: str, *, inline: bool = False) -> str:
    return f"/ui/api/runs/{quote(run_id, safe='')}/files/{quote(name)}" + ("?inline=1" if inline else "")


@router.get("/runs/{run_id}")
async def run_page(run_id: str, viewer: Viewer = Depends(ui_session), ui: UiBackend = Depends(ui_backend)
                   ) -> Response:
    run = await run_in_threadpool(ui.readable, viewer.principal, run_id)
    body = await run_in_threadpool(_run_body, ui, viewer, ui.refresh(run))
    return page(viewer, f"{run.experiment} #{run.number}", body, active="runs", pools=ui.pools is not None)


def _run_body(ui: UiBackend, viewer: Viewer, run: RunRecord) -> Markup:
    store = ui.store
    shown = liveness.shown_status(run)
    files = store.list_files(run.run_id)
    specs = page_specs(ui, run.run_id, files)
    logs = store.log_names(run.run_id)
    log_name = DRIVER_LOG  # the job's own output; the agent's logs are in the list beside it
    logs = [DRIVER_LOG, *(n for n in logs if n != DRIVER_LOG)]
    head = render('<h1>{title} <span id="run-status">{badge}</span></h1><p class="sub"><span id="run-id">{run_id}'
                  '</span>{name}</p>', title=f"{run.experiment} #{run.number}", badge=status_badge(shown.value),
                  run_id=run.run_id, name=f" · {run.display_name}" if run.display_name else "")
    head += _queue(ui, run)
    if run.error:
        head += render('<div class="error-box"><b>{code}</b> <pre>{message}</pre></div>',
                       code=run.error.get("code", "error"), message=run.error.get("message", ""))
    values = [(s["name"], number(s["value"]) if not isinstance(s["value"], (dict, list)) else json.dumps(s["value"]))
              for s in specs if s["kind"] == "value"]
    charts = [s for s in specs if s["kind"] != "value"]
    parts = [
        head,
        section("Status", _timeline(store.status_history(run.run_id), run)),
        section("Log", render(
            '<div class="log-head"><select id="log-name">{options}</select> <span id="log-state"></span> '
            '<a id="log-download" href="{href}">download</a></div><pre id="log" class="log" data-run="{run_id}" '
            'data-name="{name}"></pre>', run_id=run.run_id, name=log_name,
            href=file_url(run.run_id, log_name) if log_name in files else f"/ui/api/runs/{quote(run.run_id)}/logs/"
            f"{quote(log_name)}?download=1",
            options=join(render('<option{on}>{n}</option>', n=n, on=Markup(" selected") if n == log_name
                                else Markup("")) for n in logs))),
        section("Metrics", (table(("metric", "value"), values, css="grid values") if values else Markup(""))
                + (Markup("") if specs else render('<p class="empty" id="no-metrics">No metrics logged.</p>'))
                + render('<div class="charts" id="charts"></div>')),
        section("Details", _details(run)),
        section("Tags", _tags(run)),
        section("Properties", table(("key", "value"), sorted(run.properties.items())) if run.properties
                else empty("No properties.")),
        section("Files", _files(run, files)),
        section("Child runs", _children(ui, viewer, run)),
        section("Snapshot", _snapshot(ui, run)),
        json_script("chart-specs", charts),
        json_script("run-state", {"run_id": run.run_id, "terminal": run.status.is_terminal}),
    ]
    return join(parts)


def page_specs(ui: UiBackend, run_id: str, files: dict[str, Any]) -> list[dict[str, Any]]:
    """The chart specs of the run's metrics as the page draws them (``render.summary_specs``, bounded): only the
    metrics other than scalars are read whole; a scalar series comes downsampled from the store."""
    store = ui.store
    specs = summary_specs(store.metric_summaries(run_id), lambda name: store.get_metric_records(run_id, name),
                          lambda name: data.metric_series(store, run_id, name))
    # An image metric names a file; the page shows it only when it is one of this run's files (a job's journal
    # could name "../../other-run/..." and have the viewer's browser fetch it).
    return [_bounded(s, files) for s in specs]


@router.get("/api/runs/{run_id}/charts")
def live_charts(run_id: str, viewer: Viewer = Depends(ui_session), ui: UiBackend = Depends(ui_backend)
                ) -> Response:
    """``{"status", "terminal", "specs"}``: the run's status now and the specs of its charts (not the values
    logged once), which the run page polls while the run is live."""
    run = ui.readable(viewer.principal, run_id)
    specs = page_specs(ui, run_id, ui.store.list_files(run_id))
    return json_response(finite({"status": liveness.shown_status(run).value, "terminal": run.status.is_terminal,
                                  "specs": [s for s in specs if s["kind"] != "value"]}))


def _bounded(spec: dict[str, Any], files: dict[str, Any]) -> dict[str, Any]:
    """``spec`` as the page may draw it: an image only when it is one of this run's files (a job's journal could
    name "../../other-run/…" and have the viewer's browser fetch it), a table's first ``MAX_TABLE_ROWS`` rows."""
    if spec["kind"] == "image" and spec["file"] not in files:
        return {**spec, "kind": "value", "value": f"(image file {spec['file']!r} is not among this run's files)"}
    if spec["kind"] == "table" and len(spec["rows"]) > MAX_TABLE_ROWS:
        return {**spec, "rows": spec["rows"][:MAX_TABLE_ROWS], "total_rows": len(spec["rows"])}
    return spec


def _timeline(history: list[Any], run: RunRecord) -> Markup:
    rows = []
    for i, change in enumerate(history):
        until = history[i + 1].at if i + 1 < len(history) else (run.end_at if run.status.is_terminal else None)
        rows.append((status_badge(change.status.value), when(change.at), duration(change.at, until) if until else
                     "", change.detail))
    steps = join(render('<li class="s-{css}" title="{detail}">{status}</li>', css=c.status.value.lower(),
                        detail=c.detail, status=c.status.value) for c in history)
    return render('<ol class="timeline">{steps}</ol>{t}', steps=steps,
                  t=table(("status", "at (UTC)", "for", "reason"), rows))


def _queue(ui: UiBackend, run: RunRecord) -> Markup:
    """Where a live pool run stands in its pool's queue and why it waits (the team server's queue reason, as
    ``rundock show`` prints it); nothing for other runs."""
    info = ui.queue(run) if ui.queue is not None and not run.status.is_terminal else None
    if not info or not info.get("reason"):
        return Markup("")
    where = f"position {info['position']} in the queue of pool {run.target}" \
        if info.get("state") == "queued" and info.get("position") else f"pool {run.target}"
    return render('<div class="queue-box" id="queue"><b>{where}</b>: <span id="queue-reason">{reason}</span></div>',
                  where=where[0].upper() + where[1:], reason=info["reason"])


def resources(definition: dict[str, Any]) -> str:
    """What the run asked of its target, from its run definition: ``2 GPUs · 4 CPUs · …`` (empty: nothing)."""
    res = definition.get("resources")
    res = res if isinstance(res, dict) else {}
    dist = definition.get("distributed")
    dist = dist if isinstance(dist, dict) else {}
    parts = []
    for key, unit in (("gpu_count", "GPU"), ("cpus", "CPU")):
        if isinstance(res.get(key), int) and res[key] > 0:
            parts.append(f"{res[key]} {unit}{'s' if res[key] != 1 else ''}")
    for key, what in (("gpu_memory_mb", "GPU memory"), ("memory_mb", "memory")):
        if isinstance(res.get(key), int) and res[key] > 0:
            parts.append(f"{what} {res[key]:,} MB" + (" per GPU" if key == "gpu_memory_mb" else ""))
    if isinstance(res.get("labels"), list) and res["labels"]:
        parts.append("labels " + ", ".join(str(label) for label in res["labels"]))
    if isinstance(res.get("priority"), int) and res["priority"]:
        parts.append(f"priority {res['priority']}")
    nodes, per_node = dist.get("node_count"), dist.get("process_count_per_node")
    if isinstance(nodes, int) and (nodes > 1 or isinstance(per_node, int) and per_node > 1):
        count = per_node if isinstance(per_node, int) and per_node > 0 else 1
        parts.append(f"{nodes} node{'s' if nodes != 1 else ''} × {count} process{'es' if count != 1 else ''} "
                     "per node")
    return " · ".join(parts)


def _details(run: RunRecord) -> Markup:
    definition = run.run_definition
    args = definition.get("arguments") or []
    environment = definition.get("environment")
    git = {k: v for k, v in run.properties.items() if ".git." in k or k.startswith("git")}
    rows: list[tuple[str, Any]] = [
        ("script", definition.get("script") or ""),
        ("arguments", " ".join(str(a) for a in args) if isinstance(args, list) else str(args)),
        ("target", run.target), ("resources", resources(definition)), ("run type", run.run_type),
        ("submitted by", run.submitted_by or ""),
        ("created (UTC)", when(run.created_at)), ("started (UTC)", when(run.start_at)),
        ("ended (UTC)", when(run.end_at)), ("duration", duration(run.start_at, run.end_at)),
        ("snapshot", run.snapshot_id or ""), ("description", run.description or ""),
        ("parent", link(f"/ui/runs/{run.parent_id}", run.parent_id) if run.parent_id else ""),
        *[(k, v) for k, v in sorted(git.items())],
        ("environment", render("<details><summary>{name}</summary><pre>{text}</pre></details>",
                               name=(environment or {}).get("name", "environment") if isinstance(environment, dict)
                               else "environment", text=json.dumps(environment, indent=2, default=str))
         if environment else ""),
    ]
    return table(("", ""), rows, css="grid details")


def _tags(run: RunRecord) -> Markup:
    rows = [(key, "" if value is None else value,
             render('<button class="tag-remove" data-key="{k}">remove</button>', k=key))
            for key, value in sorted(run.tags.items())]
    return (table(("key", "value", ""), rows, css="grid tags") if rows else empty("No tags.")) + render(
        '<form id="tag-form" class="inline" data-run="{run_id}"><input name="key" placeholder="key" required> '
        '<input name="value" placeholder="value"> <button type="submit">Set tag</button> '
        '<span id="tag-error" class="error"></span></form>', run_id=run.run_id)


def _files(run: RunRecord, files: dict[str, Any]) -> Markup:
    if not files:
        return empty("No files.")
    rows = [(link(file_url(run.run_id, name), name, class_="file"), f.size, when(f.at))
            for name, f in sorted(files.items())]
    return table(("name", "bytes", "stored (UTC)"), rows, css="grid files")


def _children(ui: UiBackend, viewer: Viewer, run: RunRecord) -> Markup:
    def tree(parent: RunRecord, depth: int) -> Markup:
        kids = [c for c in ui.store.list_runs(parent_id=parent.run_id) if may_read(viewer.principal, c)]
        if not kids or depth > 20:
            return Markup("")
        return render("<ul>{items}</ul>", items=join(render(
            "<li>{a} {badge} {name}{sub}</li>", a=link(f"/ui/runs/{c.run_id}", c.run_id),
            badge=status_badge(c.status.value), name=c.display_name or "", sub=tree(c, depth + 1)) for c in kids))

    found = tree(run, 0)
    return render('<div class="tree">{t}</div>', t=found) if found else empty("No child runs.")


def _snapshot(ui: UiBackend, run: RunRecord) -> Markup:
    manifest = snapshot_or_none(ui.store, run.snapshot_id) if run.snapshot_id else None
    if not manifest:
        return empty("No snapshot.")
    rows = [(link(f"/ui/runs/{quote(run.run_id)}/snapshot/{quote(str(e.get('path')))}", e.get("path")),
             e.get("size")) for e in manifest]
    return render("<details><summary>{n} {files}</summary>{t}</details>", n=len(rows),
                  files="file" if len(rows) == 1 else "files",
                  t=table(("path", "bytes"), rows, css="grid files"))


@router.get("/runs/{run_id}/snapshot/{path:path}")
async def snapshot_file(run_id: str, path: str, viewer: Viewer = Depends(ui_session),
                        ui: UiBackend = Depends(ui_backend)) -> Response:
    """One file of the run's snapshot, shown as text."""
    run = await run_in_threadpool(ui.readable, viewer.principal, run_id)
    manifest = await run_in_threadpool(snapshot_or_none, ui.store, run.snapshot_id) if run.snapshot_id else None
    entry = next((e for e in manifest or () if e.get("path") == path), None)
    if entry is None:
        raise ApiError(404, f"run {run_id}'s snapshot has no file {path!r}")
    raw = await run_in_threadpool(ui.artifacts.read, str(entry["digest"]))
    text = raw[:MAX_VIEW_BYTES].decode("utf-8", errors="replace")
    note = "" if len(raw) <= MAX_VIEW_BYTES else f"(the first {MAX_VIEW_BYTES} bytes of {len(raw)})"
    body = render('<h1>{path}</h1><p class="sub">{back} {note}</p><pre class="source">{text}</pre>', path=path,
                  back=link(f"/ui/runs/{run_id}", f"← {run.experiment} #{run.number}"), note=note, text=text)
    return page(viewer, path, body, active="runs", pools=ui.pools is not None)
