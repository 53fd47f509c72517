"""Pages over many runs: experiments, the runs table (filters, sort, chosen columns, pages) and compare."""

from __future__ import annotations

import math
import re
from collections.abc import Iterable
from typing import Any
from urllib.parse import urlencode

from fastapi import APIRouter, Depends, Request
from starlette.concurrency import run_in_threadpool
from starlette.responses import Response

from rundock.history import liveness
from rundock.history.metric_reads import MetricSummary, is_number
from rundock.history.records import RunRecord
from rundock.history.store import RunStore
from rundock.server.errors import ApiError
from rundock.states import RunStatus
from rundock.ui import data
from rundock.ui.auth import Viewer, ui_session
from rundock.ui.backend import UiBackend, ui_backend
from rundock.ui.html import Markup, duration, join, json_script, link, number, render, table, when
from rundock.ui.layout import empty, page, section, status_badge
from rundock.ui.render import is_series

router = APIRouter(prefix="/ui")
PER_PAGE = (25, 50, 100, 200)
MAX_PAGE = 10**12  # so that an offset always fits the history's 64-bit integers
_METRIC_FILTER = re.compile(r"^\s*(.+?)\s*(<=|>=|==|<|>)\s*([-+0-9.eE]+|nan|inf)\s*$")
BASE_COLUMNS = (("run", "run_number", "Run"), ("name", "display_name", "Name"),
                ("experiment", "experiment", "Experiment"), ("status", "status", "Status"),
                ("created", "created_at", "Created (UTC)"), ("duration", "duration", "Duration"),
                ("target", None, "Target"), ("by", None, "Submitted by"))


def _pools_of(viewer: Viewer) -> tuple[str, ...] | None:
    return viewer.principal.pools if viewer.principal.role == "agent" else None


def _visible(viewer: Viewer, runs: Iterable[RunRecord]) -> list[RunRecord]:
    pools = _pools_of(viewer)
    return [r for r in runs if pools is None or r.target in pools]


@router.get("/")
def home(viewer: Viewer = Depends(ui_session)) -> Response:
    """The runs table is the home page."""
    error = ApiError(303, "the runs table")
    error.headers["Location"] = "/ui/runs"
    raise error


@router.get("/experiments")
def experiments(viewer: Viewer = Depends(ui_session), ui: UiBackend = Depends(ui_backend)) -> Response:
    """Every experiment with its runs by status and its last run."""
    summary: dict[str, dict[str, float]] = {}
    for run in _visible(viewer, ui.store.list_runs(include_children=False)):
        entry = summary.setdefault(run.experiment, {"runs": 0, "live": 0, "Completed": 0, "Failed": 0,
                                                    "Canceled": 0, "last": run.created_at})
        entry["runs"] += 1
        entry[run.status.value if run.status.is_terminal else "live"] += 1
    rows = [(link("/ui/runs?" + urlencode({"experiment": name}), name), int(e["runs"]), int(e["live"]),
             int(e["Completed"]), int(e["Failed"]), int(e["Canceled"]), when(e["last"]))
            for name, e in summary.items()]
    body = table(("Experiment", "Runs", "Live", "Completed", "Failed", "Canceled", "Last run (UTC)"), rows) \
        if rows else empty("No runs yet: submit one with `rundock submit`.")
    return page(viewer, "Experiments", render("<h1>Experiments</h1>{t}", t=body), active="experiments",
                pools=ui.pools is not None)


def parse_query(request: Request) -> tuple[data.TableQuery, list[str], int]:
    """The table query of the runs page's URL, its extra columns and the page number (1-based)."""
    params = request.query_params
    tags = tuple((k, v if sep else None) for k, sep, v in (t.partition("=") for t in params.getlist("tag") if t))
    props = tuple((k, v if sep else None) for k, sep, v in (t.partition("=") for t in params.getlist("prop") if t))
    filters = []
    for text in params.getlist("metric"):
        if not text.strip():
            continue
        found = _METRIC_FILTER.match(text)
        if not found:
            raise ApiError(400, f"metric filter {text!r}: write it as NAME OP VALUE, e.g. loss<0.5 "
                                "(OP: <, <=, >, >=, ==)")
        filters.append((found.group(1), found.group(2), float(found.group(3))))
    statuses = tuple(s for s in params.getlist("status") if s)
    for status in statuses:
        RunStatus(status)  # ValueError (400) for a status that does not exist
    columns = [c for c in dict.fromkeys(params.getlist("col")) if c]
    per = int(params.get("per") or 50)
    per = per if per in PER_PAGE else 50
    page_number = max(1, int(params.get("page") or 1))
    if page_number > MAX_PAGE:
        raise ApiError(400, f"page {page_number}: pages go up to {MAX_PAGE:,}")
    sort = params.get("sort") or "created_at"
    q = data.TableQuery(experiment=params.get("experiment") or None, statuses=statuses, tags=tags, properties=props,
                        metric_filters=tuple(filters), text=params.get("q") or None,
                        include_children=params.get("children") == "1", sort=sort,
                        descending=params.get("desc", "1") != "0", limit=per, offset=(page_number - 1) * per,
                        metrics=tuple(c[7:] for c in columns if c.startswith("metric:")))
    return q, columns, page_number


def _cell(run: RunRecord, latest: dict[str, float], column: str) -> object:
    if column.startswith("metric:"):
        return number(latest.get(column[7:]))
    if column.startswith("tag:"):
        return run.tags.get(column[4:]) or ""
    if column.startswith("property:"):
        return run.properties.get(column[9:]) or ""
    return ""


def _url(request: Request, **changes: object) -> str:
    items = [(k, v) for k, v in request.query_params.multi_items() if k not in changes]
    for key, value in changes.items():
        if value is not None:
            items.extend((key, str(v)) for v in (value if isinstance(value, list) else [value]))
    return "/ui/runs?" + urlencode(items)


@router.get("/runs")
async def runs(request: Request, viewer: Viewer = Depends(ui_session), ui: UiBackend = Depends(ui_backend)
               ) -> Response:
    """The runs table."""
    q, columns, page_number = parse_query(request)
    rows, total = await run_in_threadpool(data.query_runs, ui.store, q, _pools_of(viewer))
    names = await run_in_threadpool(data.metric_names, ui.store, q.experiment, _pools_of(viewer))
    return page(viewer, "Runs", _runs_body(request, q, columns, page_number, rows, total, names), active="runs",
                pools=ui.pools is not None)


def _runs_body(request: Request, q: data.TableQuery, columns: list[str], page_number: int,
               rows: list[tuple[RunRecord, dict[str, float]]], total: int, names: list[str]) -> Markup:
    def header(key: str | None, text: str) -> Markup:
        if key is None:
            return Markup(text)
        arrow = (" ▼" if q.descending else " ▲") if q.sort == key else ""
        return link(_url(request, sort=key, desc="0" if q.sort == key and q.descending else "1", page=None),
                    text + arrow, class_="sort")

    heads = [Markup(""), *(header(key, text) for _, key, text in BASE_COLUMNS),
             *(header(c, c.split(":", 1)[1]) for c in columns)]
    body_rows = []
    for run, latest in rows:
        shown = liveness.shown_status(run)
        pick = render('<input type="checkbox" class="pick" name="run" value="{id}" form="compare-form">',
                      id=run.run_id)
        name = run.display_name or render('<span class="sub">{id}</span>', id=run.run_id)  # the id, when unnamed
        body_rows.append([pick, link(f"/ui/runs/{run.run_id}", f"{run.experiment} #{run.number}", title=run.run_id),
                          name, run.experiment, status_badge(shown.value), when(run.created_at),
                          duration(run.start_at, run.end_at), run.target, run.submitted_by or "",
                          *[_cell(run, latest, c) for c in columns]])
    grid = table(heads, body_rows, css="grid runs") if body_rows else empty("No runs match these filters.")
    tag_keys = sorted({k for run, _ in rows for k in run.tags})
    prop_keys = sorted({k for run, _ in rows for k in run.properties})
    choices = [f"metric:{n}" for n in names] + [f"tag:{k}" for k in tag_keys] + [f"property:{k}" for k in prop_keys]
    choices += [c for c in columns if c not in choices]
    chooser = join(render('<label><input type="checkbox" name="col" value="{c}"{on}> {c}</label>', c=c,
                          on=Markup(" checked") if c in columns else Markup("")) for c in choices)
    statuses = join(render('<label><input type="checkbox" name="status" value="{s}"{on}> {s}</label>', s=s.value,
                           on=Markup(" checked") if s.value in q.statuses else Markup("")) for s in RunStatus)
    params = request.query_params
    pages = max(1, -(-total // q.limit))
    pager = render('<div class="pager"><span id="total">{total} {runs}</span> · page {n} of {pages} {prev} {next}'
                   '</div>', total=total, runs="run" if total == 1 else "runs", n=page_number, pages=pages,
                   prev=link(_url(request, page=page_number - 1), "‹ previous") if page_number > 1 else "",
                   next=link(_url(request, page=page_number + 1), "next ›", id="next") if page_number < pages else "")
    form = render(
        '<form method="get" action="/ui/runs" id="filters" class="filters">'
        '<label>Experiment <input name="experiment" value="{experiment}"></label>'
        '<fieldset class="statuses"><legend>Status</legend>{statuses}</fieldset>'
        '<label>Tag <input name="tag" value="{tag}" placeholder="key or key=value"></label>'
        '<label>Property <input name="prop" value="{prop}" placeholder="key or key=value"></label>'
        '<label>Metric <input name="metric" value="{metric}" placeholder="loss&lt;0.5"></label>'
        '<label>Search <input name="q" value="{text}" placeholder="run id or name"></label>'
        '<label><input type="checkbox" name="children" value="1"{children}> child runs</label>'
        '<label>Per page <select name="per">{per}</select></label>'
        '<input type="hidden" name="sort" value="{sort}"><input type="hidden" name="desc" value="{desc}">'
        '<button type="submit" id="apply">Apply</button> <a href="/ui/runs">Clear</a>'
        '<details id="columns"><summary>Columns</summary><div class="choices">{chooser}</div></details></form>',
        experiment=q.experiment or "", statuses=statuses, tag=params.get("tag") or "", prop=params.get("prop") or "",
        metric=params.get("metric") or "", text=q.text or "", chooser=chooser,
        children=Markup(" checked") if q.include_children else Markup(""),
        per=join(render('<option{on}>{n}</option>', n=n, on=Markup(" selected") if n == q.limit else Markup(""))
                 for n in PER_PAGE), sort=q.sort, desc="1" if q.descending else "0")
    compare = render('<form method="get" action="/ui/compare" id="compare-form">{boxes}'
                     '<button type="submit" id="compare-selected">Compare selected</button></form>',
                     boxes=Markup(""))
    return render('<h1>Runs</h1>{form}{pager}<div class="scroll" data-compare="1">{grid}</div>{compare}{cols}',
                  form=form, pager=pager, grid=grid, compare=compare,
                  cols=json_script("table-state", {"columns": columns,
                                                   "runs": [run.run_id for run, _ in rows]}))


@router.get("/compare")
async def compare(request: Request, viewer: Viewer = Depends(ui_session), ui: UiBackend = Depends(ui_backend)
                  ) -> Response:
    """Compare runs: metric overlays and the arguments, tags and properties that differ."""
    run_ids = [r for r in dict.fromkeys(request.query_params.getlist("run")) if r][:20]
    runs = [await run_in_threadpool(ui.readable, viewer.principal, run_id) for run_id in run_ids]
    if len(runs) < 2:
        body = render("<h1>Compare runs</h1>{e}", e=empty("Pick two or more runs in the runs table "
                                                          "(the boxes in its first column) and press Compare."))
        return page(viewer, "Compare", body, active="compare", pools=ui.pools is not None)
    found = {r.run_id: await run_in_threadpool(ui.store.metric_summaries, r.run_id) for r in runs}
    specs = await run_in_threadpool(_overlay_specs, ui, runs, found)
    summaries = {run_id: await run_in_threadpool(metric_summary, ui.store, run_id, listed)
                 for run_id, listed in found.items()}
    metric_names = list(dict.fromkeys(name for summary in summaries.values() for name in summary))
    rows: list[tuple[Any, ...]] = []
    for label, getter in (("argument", lambda r: _arguments(r)), ("tag", lambda r: r.tags),
                          ("property", lambda r: r.properties)):
        values = [getter(r) for r in runs]
        for key in sorted({k for v in values for k in v}):
            cells = [v.get(key) for v in values]
            rows.append((label, key, *["" if c is None else c for c in cells], "differs" if
                         len({repr(c) for c in cells}) > 1 else "same"))
    for name in metric_names:
        last = [summaries[r.run_id].get(name, (None, None, None))[0] for r in runs]
        rows.append(("metric (last)", name, *[number(v) for v in last], "differs" if
                     len({number(v) for v in last}) > 1 else "same"))
    heads = ["", "key", *[link(f"/ui/runs/{r.run_id}", f"{r.experiment} #{r.number}") for r in runs], ""]
    stats = [(name, stat, *[number(summaries[r.run_id].get(name, (None, None, None))[i]) for r in runs])
             for name in metric_names for i, stat in enumerate(("last", "min", "max"))]
    diff_rows = [r[:-1] for r in rows if r[-1] == "differs"]
    same = len(rows) - len(diff_rows)
    body = render('<h1>Compare {n} runs</h1>{charts}{diff}{specs}', n=len(runs),
                  charts=section("Metrics", (table(["metric", "", *heads[2:-1]], stats, css="grid metric-summary")
                                             if stats else empty("None of these runs logged a number."))
                                 + Markup('<div class="charts" id="charts"></div>')),
                  diff=section("Differences", (table(heads, diff_rows, css="grid diff") if diff_rows else
                                               empty("Their arguments, tags, properties and metrics are the same."))
                               + render('<p class="note">{n} keys with the same value are not shown.</p>', n=same)),
                  specs=json_script("chart-specs", specs))
    return page(viewer, "Compare", body, active="compare", pools=ui.pools is not None)


def _arguments(run: RunRecord) -> dict[str, str]:
    args = run.run_definition.get("arguments") or run.run_definition.get("script_arguments") or []
    out = {"script": str(run.run_definition.get("script") or ""), "target": run.target}
    if isinstance(args, list):
        out["arguments"] = " ".join(str(a) for a in args)
    return out


def _series(ui: UiBackend, run_id: str, name: str) -> dict[str, Any]:
    return data.metric_series(ui.store, run_id, name)


def metric_summary(store: RunStore, run_id: str, summaries: Iterable[MetricSummary]
                   ) -> dict[str, tuple[float, float, float]]:
    """``{name: (last, min, max)}`` of each scalar metric of a run logged as numbers (NaN and infinities left out),
    in the order the names were first logged: the extremes from the store's chart candidates (every bucket's
    lowest and highest finite points), so a long metric is not read whole."""
    found: dict[str, tuple[float, float, float]] = {}
    for summary in summaries:
        if summary.kind != "scalar" or not summary.numeric:
            continue
        ys = [y for y in store.metric_buckets(run_id, summary.name).ys if math.isfinite(y)]
        if not ys:
            continue
        last = summary.last
        shown = float(last) if is_number(last) and math.isfinite(last) else ys[-1]
        found[summary.name] = (shown, min(ys), max(ys))
    return found


def _overlay_specs(ui: UiBackend, runs: list[RunRecord], summaries: dict[str, list[MetricSummary]]
                   ) -> list[dict[str, object]]:
    """One ``overlay`` spec per scalar metric that any of the runs logged more than once."""
    per_run: dict[str, dict[str, dict[str, Any]]] = {}
    for run in runs:
        per_run[run.run_id] = {m.name: _series(ui, run.run_id, m.name) for m in summaries[run.run_id]
                               if is_series(m)}
    names = list(dict.fromkeys(n for specs in per_run.values() for n in specs))
    return [{"kind": "overlay", "name": name, "series": [
        {"label": f"{run.experiment} #{run.number}", "run_id": run.run_id, "x": per_run[run.run_id][name]["x"],
         "y": per_run[run.run_id][name]["y"]} for run in runs if name in per_run[run.run_id]]} for name in names]
