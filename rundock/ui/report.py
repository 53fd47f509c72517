"""``rundock report``: one or more runs as a single self-contained HTML file.

Everything the page needs is inside it — the CSS, uPlot (with its licence header), the report's script, the
chart data, images as ``data:`` URIs — so it opens from disk, offline, and can be mailed or attached to a ticket.
The file references nothing outside itself: no ``src``/``href``/``url()`` that leaves the page.

Every string that comes from a run (ids, names, tags, arguments, log lines, table cells) goes through ``esc``
(HTML) or ``script_json`` (the chart data, which the script only ever puts in the page as text), so a hostile
value shows as text and never runs. Large things are bounded: metric series are downsampled (LTTB) to
``max_points`` per series, tables are capped (``MAX_TABLE_ROWS``), images above
``max_image_bytes`` are named with how to fetch them instead of embedded, and the driver log keeps its first
``log_head`` and last ``log_tail`` lines.
"""

from __future__ import annotations

import base64
import dataclasses
import datetime as dt
import html
import json
import math
import os
import time
from collections.abc import Iterable, Sequence
from typing import Any

from rundock.history.artifacts import ArtifactStore
from rundock.history.metric_reads import MetricSummary
from rundock.history.records import MetricRecord, RunRecord, StatusChange
from rundock.history.store import RunStore
from rundock.ui import render, series
from rundock.ui import report_render as lines

DRIVER_LOG = "system_logs/driver_log.txt"
MAX_TABLE_ROWS = 500
_STATIC = os.path.join(os.path.dirname(os.path.abspath(__file__)), "static")
_IMAGE_TYPES = {".png": "image/png", ".jpg": "image/jpeg", ".jpeg": "image/jpeg", ".gif": "image/gif",
                ".webp": "image/webp", ".svg": "image/svg+xml", ".bmp": "image/bmp"}


@dataclasses.dataclass(frozen=True)
class ReportOptions:
    """Bounds that keep a report small: points per series, bytes per embedded image, log lines kept."""

    max_points: int = 2000
    max_image_bytes: int = 2_000_000
    log_head: int = 100
    log_tail: int = 300


@dataclasses.dataclass
class _Run:
    record: RunRecord
    changes: list[StatusChange]
    metrics: list[MetricSummary]
    records: dict[str, list[MetricRecord]]  # every value of the metrics other than scalars
    series: dict[str, dict[str, Any]]  # the scalar series drawn over steps (``series.metric_series``)
    files: dict[str, Any]
    log: bytes

    @property
    def label(self) -> str:
        name = self.record.display_name
        return f"{name} ({self.record.run_id})" if name else self.record.run_id


def esc(value: Any) -> str:
    """``value`` as text that is safe anywhere in HTML (element content and quoted attributes)."""
    return html.escape("" if value is None else str(value), quote=True)


def script_json(value: Any) -> str:
    """Strict JSON that is safe inside ``<script type="application/json">``: no ``<``, ``>`` or ``&`` (so no
    ``</script>`` and no comment opener), and no line separators that old parsers choke on."""
    text = json.dumps(value, allow_nan=False, ensure_ascii=False, separators=(",", ":"))
    for char, escaped in (("<", "\\u003c"), (">", "\\u003e"), ("&", "\\u0026"),
                          ("\u2028", "\\u2028"), ("\u2029", "\\u2029")):
        text = text.replace(char, escaped)
    return text


def _asset(*parts: str) -> str:
    with open(os.path.join(_STATIC, *parts), encoding="utf-8") as fh:
        return fh.read()


def when(ts: float | None) -> str:
    """A unix time as the UI shows it, to the second, in the local time of the machine making the report."""
    if ts is None:
        return ""
    return dt.datetime.fromtimestamp(ts).astimezone().strftime("%Y-%m-%d %H:%M:%S")


def zone(ts: float) -> str:
    """The UTC offset of the local time at ``ts``, as ``UTC+02:00``."""
    offset = dt.datetime.fromtimestamp(ts).astimezone().strftime("%z") or "+0000"
    return f"UTC{offset[:3]}:{offset[3:]}"


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return ""
    if seconds < 60:
        return f"{seconds:.1f} s"
    if seconds < 3600:
        return f"{int(seconds // 60)} min {int(seconds % 60):02d} s"
    return f"{int(seconds // 3600)} h {int(seconds % 3600 // 60):02d} min"


def _size(n: int) -> str:
    for unit in ("B", "kB", "MB", "GB"):
        if n < 1000 or unit == "GB":
            return f"{n} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000  # type: ignore[assignment]
    return str(n)


def collect(store: RunStore, run_ids: Iterable[str], max_points: int = 2000) -> list[_Run]:
    """What the report shows of each run, read once (an unknown id raises RunNotFoundError): its metrics'
    summaries, the values of those other than scalars, and its scalar series downsampled in the store."""
    runs = []
    for run_id in run_ids:
        record = store.get_run(run_id)
        summaries = store.metric_summaries(run_id)
        records = {s.name: store.get_metric_records(run_id, s.name) for s in summaries if s.kind != "scalar"}
        drawn = {s.name: series.metric_series(store, run_id, s.name, max_points=max_points)
                 for s in summaries if render.is_series(s)}
        runs.append(_Run(record, store.status_history(run_id), summaries, records, drawn,
                         store.list_files(run_id), store.read_log(run_id, DRIVER_LOG)))
    return runs


def build_report(store: RunStore, artifacts: ArtifactStore, run_ids: Sequence[str],
                 options: ReportOptions = ReportOptions(), now: float | None = None) -> str:
    """The whole HTML document for ``run_ids`` (metric charts overlay every run)."""
    runs = collect(store, run_ids, options.max_points)
    now = time.time() if now is None else now
    charts: list[dict[str, Any]] = []
    charted = charted_names(runs)
    body = [_summary(runs, now), _scalar_section(runs, charted, charts, options)]
    body.extend(_run_section(run, charted, artifacts, charts, options, now) for run in runs)
    title = "rundock report: " + ", ".join(r.record.run_id for r in runs)
    uplot = _asset("vendor", "uplot", "uPlot.iife.min.js")
    licence = _asset("vendor", "uplot", "LICENSE").replace("*/", "* /")
    return "\n".join([
        "<!DOCTYPE html>", '<html lang="en"><head><meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>{esc(title)}</title>",
        f"<style>{_asset('vendor', 'uplot', 'uPlot.min.css')}\n{_asset('report', 'report.css')}</style>",
        "</head><body>",
        f'<header><h1>rundock report</h1><p class="muted">Generated {esc(when(now))} from '
        f"{len(runs)} run{'s' if len(runs) != 1 else ''}. Times are local to where it was made ({esc(zone(now))})."
        " Everything is in this file; it needs no network.</p></header>",
        "<main>", *body, "</main>",
        f'<script type="application/json" id="report-data">{script_json({"charts": charts})}</script>',
        f"<script>/*! uPlot 1.6.32, https://github.com/leeoniya/uPlot\n{licence}*/\n{uplot}</script>",
        f"<script>{_asset('bins.js')}</script>", f"<script>{_asset('report', 'report.js')}</script>",
        "</body></html>", ""])


def _summary(runs: list[_Run], now: float) -> str:
    rows = []
    for run in runs:
        r = run.record
        end = r.end_at if r.status.is_terminal else now
        rows.append(f'<tr><td><a href="#run-{esc(r.run_id)}">{esc(r.run_id)}</a></td><td>{esc(r.experiment)}</td>'
                    f"<td>{r.number}</td><td>{esc(r.display_name)}</td>"
                    f'<td><span class="status s-{esc(r.status.value)}">{esc(r.status.value)}</span></td>'
                    f"<td>{esc(r.target)}</td><td>{esc(when(r.created_at))}</td>"
                    f"<td>{esc(_duration(end - r.start_at if r.start_at and end else None))}</td></tr>")
    return ('<section><h2>Runs</h2><table class="grid"><thead><tr><th>Run</th><th>Experiment</th><th>#</th>'
            "<th>Name</th><th>Status</th><th>Target</th><th>Created</th><th>Duration</th></tr></thead>"
            f"<tbody>{''.join(rows)}</tbody></table></section>")


def _chart(spec: dict[str, Any], charts: list[dict[str, Any]]) -> str:
    """A placeholder the script draws ``spec`` into (a line chart), with its title and note."""
    charts.append(spec)
    note = f'<p class="note">{esc(spec["note"])}</p>' if spec.get("note") else ""
    return (f'<figure class="chart-box"><figcaption>{esc(spec["name"])}</figcaption>'
            f'<div class="chart" data-chart="{len(charts) - 1}"></div>{note}</figure>')


def charted_names(runs: list[_Run]) -> list[str]:
    """The scalar metrics drawn over steps (numbers logged more than once by some run), in first-logged order."""
    return list(dict.fromkeys(name for run in runs for name in run.series))


def _scalar_section(runs: list[_Run], names: list[str], charts: list[dict[str, Any]],
                    options: ReportOptions) -> str:
    if not names:
        return '<section><h2>Metrics</h2><p class="muted">No metric was logged as a series of numbers.</p></section>'
    figures = []
    for name in names:
        per_run = [(run.label, run.series[name]) for run in runs if name in run.series]
        figures.append(_chart(lines.series_chart(name, per_run), charts))
    return f'<section><h2>Metrics</h2><div class="charts">{"".join(figures)}</div></section>'


def _dl(items: Iterable[tuple[str, Any]]) -> str:
    return "<dl>" + "".join(f"<dt>{esc(k)}</dt><dd>{esc(v)}</dd>" for k, v in items if v not in (None, "")) + "</dl>"


def _mapping(title: str, values: dict[str, Any]) -> str:
    if not values:
        return f'<h4>{esc(title)}</h4><p class="muted">none</p>'
    rows = "".join(f"<tr><th>{esc(k)}</th><td>{esc(v)}</td></tr>" for k, v in sorted(values.items()))
    return f'<h4>{esc(title)}</h4><table class="kv">{rows}</table>'


def _timeline(run: _Run, now: float) -> str:
    changes = run.changes
    if not changes:
        return '<p class="muted">No status changes recorded.</p>'
    end = (run.record.end_at or changes[-1].at) if run.record.status.is_terminal else now
    total = max(end - changes[0].at, 1e-9)
    segments: list[str] = []
    rows: list[str] = []
    spent: dict[str, float] = {}  # seconds in each status, for the legend
    for i, change in enumerate(changes):
        until = changes[i + 1].at if i + 1 < len(changes) else end
        spent[change.status.value] = spent.get(change.status.value, 0.0) + until - change.at
        share = max((until - change.at) / total * 100, 0.5)
        segments.append(f'<span class="seg s-{esc(change.status.value)}" style="flex-grow:{share:.3f}" '
                        f'title="{esc(change.status.value)}: {esc(_duration(until - change.at))}"></span>')
        rows.append(f"<tr><td>{esc(when(change.at))}</td><td>+{esc(_duration(change.at - changes[0].at))}</td>"
                    f'<td><span class="status s-{esc(change.status.value)}">{esc(change.status.value)}</span></td>'
                    f"<td>{esc(change.detail)}</td></tr>")
    legend = "".join(f'<li><span class="swatch seg s-{esc(status)}"></span>{esc(status)} {esc(_duration(seconds))}'
                     "</li>" for status, seconds in spent.items())
    return (f'<div class="timeline">{"".join(segments)}</div><ul class="timeline-legend">{legend}</ul>'
            f'<table class="grid"><thead><tr><th>At</th>'
            f"<th>Since start</th><th>Status</th><th>Reason</th></tr></thead><tbody>{''.join(rows)}</tbody></table>")


def _details(record: RunRecord) -> str:
    definition = record.run_definition
    env = definition.get("environment")
    env = env if isinstance(env, dict) else {}
    env_name = " ".join(str(p) for p in (env.get("name"), env.get("version")) if p)
    docker = env.get("docker")
    docker = docker if isinstance(docker, dict) else {}
    arguments = definition.get("arguments") or []
    items = [("Run id", record.run_id), ("Experiment", f"{record.experiment} #{record.number}"),
             ("Name", record.display_name), ("Description", record.description), ("Status", record.status.value),
             ("Status detail", record.status_detail), ("Target", record.target), ("Type", record.run_type),
             ("Parent", record.parent_id), ("Script", definition.get("script")),
             ("Arguments", " ".join(str(a) for a in arguments) if isinstance(arguments, list) else arguments),
             ("Environment", env_name), ("Docker image", docker.get("base_image") if docker.get("enabled") else None),
             ("Snapshot", record.snapshot_id), ("Submitted by", record.submitted_by),
             ("Created", when(record.created_at)), ("Started", when(record.start_at)),
             ("Ended", when(record.end_at) if record.status.is_terminal else None)]
    error = ""
    if record.error:
        error = (f'<div class="error"><strong>Error {esc(record.error.get("code", ""))}</strong>: '
                 f'{esc(record.error.get("message", ""))}</div>')
    full = json.dumps(definition, indent=2, sort_keys=True, default=str)
    return (f"{error}{_dl(items)}<details><summary>Run definition (JSON)</summary><pre>{esc(full)}</pre></details>")


def _table(spec: dict[str, Any]) -> str:
    head = "".join(f"<th>{esc(c)}</th>" for c in spec["columns"])
    rows = spec["rows"]
    body = "".join("<tr>" + "".join(_cell(v) for v in row) + "</tr>" for row in rows[:MAX_TABLE_ROWS])
    more = (f'<p class="note">The first {MAX_TABLE_ROWS:,} of {len(rows):,} rows.</p>'
            if len(rows) > MAX_TABLE_ROWS else "")
    return (f'<figure class="table-box"><figcaption>{esc(spec["name"])}</figcaption><div class="scroll">'
            f'<table class="grid"><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table></div>{more}</figure>')


def _cell(value: Any) -> str:
    """A table cell: a float with up to 6 significant digits (the full value in its tooltip when it has more)."""
    if isinstance(value, float) and math.isfinite(value) and f"{value:.6g}" != repr(value):
        return f'<td title="{esc(repr(value))}">{esc(f"{value:.6g}")}</td>'
    return f"<td>{esc(value)}</td>"


def _confusion(spec: dict[str, Any]) -> str:
    labels = spec["labels"]
    matrix = [[v if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) else None
               for v in row] for row in spec["matrix"]]
    head = "".join(f"<th>{esc(c)}</th>" for c in labels)
    rows = []
    for label, row in zip(labels, matrix, strict=False):
        total = sum(v for v in row if v is not None) or 1
        cells = "".join(f'<td style="background:rgba(37,99,235,{(v or 0) / total:.3f})" '
                        f'title="{100 * (v or 0) / total:.1f}% of this true class">{esc(v)}</td>' for v in row)
        rows.append(f"<tr><th>{esc(label)}</th>{cells}</tr>")
    return (f'<figure class="table-box"><figcaption>{esc(spec["name"])} (rows: true class, columns: predicted '
            f'class)</figcaption><table class="grid confusion"><thead><tr><th></th>{head}</tr></thead>'
            f"<tbody>{''.join(rows)}</tbody></table></figure>")


def _image(spec: dict[str, Any], run: _Run, artifacts: ArtifactStore, options: ReportOptions) -> str:
    name, file_name = spec["name"], spec["file"]
    caption = f"<figcaption>{esc(name)} <span class=\"muted\">({esc(file_name)})</span></figcaption>"
    record = run.files.get(file_name)
    mime = _IMAGE_TYPES.get(os.path.splitext(file_name)[1].lower())
    if record is None or mime is None:
        why = "it is not among the run's files" if record is None else "it is not an image type a browser shows"
        return f'<figure class="image-box">{caption}<p class="omitted">Not embedded: {esc(why)}.</p></figure>'
    if record.size > options.max_image_bytes:
        return (f'<figure class="image-box">{caption}<p class="omitted">Not embedded: {esc(_size(record.size))} is '
                f"over this report's limit of {esc(_size(options.max_image_bytes))} per image (--max-image-mb). "
                f"Get it with: <code>rundock download {esc(run.record.run_id)} -p {esc(file_name)}</code></p>"
                "</figure>")
    data = base64.b64encode(artifacts.read(record.digest)).decode("ascii")
    return (f'<figure class="image-box">{caption}<img alt="{esc(name)}" src="data:{mime};base64,{data}">'
            "</figure>")


def _visuals(run: _Run, charted: list[str], artifacts: ArtifactStore, charts: list[dict[str, Any]],
             options: ReportOptions) -> list[str]:
    """The HTML of each metric of the run that the Metrics section does not draw, in first-logged order; values
    logged once come first, as one table."""
    values: list[tuple[str, Any]] = []
    shown: list[str] = []
    for summary in run.metrics:
        name = summary.name
        if name in run.series:
            continue
        if summary.kind == "scalar":  # a value logged once, or values that are no numbers: the last one
            values.append((name, summary.last))
            continue
        group = run.records[name]
        spec = render.metric_spec(name, group, lambda _name: {})
        kind = spec.get("kind") if spec else None
        line = lines.line_from_spec(spec, max_points=options.max_points) if spec else None
        if spec is None:
            continue
        if kind in ("histogram", "predictions"):  # drawn by bins.js, as the UI draws them
            shown.append(_chart({**spec, "note": lines.bins_note(spec)}, charts))
        elif line is not None:
            shown.append(_chart(line, charts))
        elif kind == "table":
            shown.append(_table(spec))
        elif kind == "list":
            shown.append(_table({"name": name, "columns": ["index", "value"],
                                 "rows": [[i, v] for i, v in enumerate(spec["y"])]}))
        elif kind == "confusion_matrix":
            shown.append(_confusion(spec))
        elif kind == "image":
            shown.extend(_image({"name": name, "file": str(r.value)}, run, artifacts, options)
                         for r in group if r.kind == "image")
        else:
            values.append((name, group[-1].value))
    if values:
        shown.insert(0, _table({"name": "Values", "columns": ["metric", "value"], "rows": values}))
    return shown


def trimmed_log(data: bytes, run_id: str, head: int, tail: int) -> str:
    """The log as text, its first ``head`` and last ``tail`` lines with a note of what was left out."""
    lines = data.decode("utf-8", errors="replace").splitlines()
    if len(lines) <= head + tail:
        return "\n".join(lines)
    omitted = len(lines) - head - tail
    note = f"… {omitted:,} lines omitted; full log: rundock logs {run_id}"
    return "\n".join([*lines[:head], note, *lines[len(lines) - tail:]])


def _outputs(run: _Run) -> str:
    if not run.files:
        return '<p class="muted">No files.</p>'
    rows = "".join(f"<tr><td>{esc(name)}</td><td>{esc(_size(f.size))}</td></tr>"
                   for name, f in sorted(run.files.items()))
    return (f'<div class="scroll short"><table class="grid"><thead><tr><th>File</th><th>Size</th></tr></thead>'
            f"<tbody>{rows}</tbody></table></div>"
            f'<p class="note">Download: <code>rundock download {esc(run.record.run_id)}</code></p>')


def _run_section(run: _Run, charted: list[str], artifacts: ArtifactStore, charts: list[dict[str, Any]],
                 options: ReportOptions, now: float) -> str:
    r = run.record
    visuals = _visuals(run, charted, artifacts, charts, options)
    log = trimmed_log(run.log, r.run_id, options.log_head, options.log_tail)
    log_html = f"<pre class=\"log\">{esc(log)}</pre>" if log else '<p class="muted">The driver log is empty.</p>'
    return "\n".join([
        f'<section class="run" id="run-{esc(r.run_id)}"><h2>{esc(r.run_id)} '
        f'<span class="status s-{esc(r.status.value)}">{esc(r.status.value)}</span></h2>',
        "<h3>Status timeline</h3>", _timeline(run, now),
        "<h3>Details</h3>", _details(r),
        '<div class="columns">', _mapping("Tags", r.tags), _mapping("Properties", r.properties), "</div>",
        *(["<h3>Tables, images and other metrics</h3>", f'<div class="visuals">{"".join(visuals)}</div>']
          if visuals else []),
        "<h3>Files</h3>", _outputs(run),
        "<h3>Driver log</h3>", log_html,
        "</section>"])
