"""``rundock runs``, ``rundock experiments`` and ``rundock show``: what the history holds.

Each has ``--json`` (strict JSON, see ``output``). When a command finds nothing it says which history
it read, on standard error.
"""

from __future__ import annotations

import time
from typing import Any

import click
from rich.markup import escape
from rich.table import Table
from rich.text import Text

from rundock.history.liveness import shown_status
from rundock.history.records import RunRecord, iso_utc
from rundock.states import RunStatus
from rundock.submitter.cli import complete
from rundock.submitter.cli.base import _parse_tags, _run, _workspace, cli, console, history_label, nothing_in, out
from rundock.submitter.cli.columns import Column, column_value, parse_columns, tree
from rundock.submitter.cli.output import ago, duration, emit_json, run_json, short

STATUS_NAMES = [s.value for s in RunStatus]


class StatusType(click.ParamType):  # type: ignore[type-arg]
    """A run status in any case (``failed``, ``Failed``); a wrong one is shown with the valid ones."""

    name = "status"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> str:
        for status in RunStatus:
            if str(value).lower() == status.value.lower():
                return status.value
        self.fail(f"{value!r} is not a run status; one of: {', '.join(STATUS_NAMES)} (any case)", param, ctx)

    def shell_complete(self, ctx: click.Context, param: click.Parameter,
                       incomplete: str) -> list[click.shell_completion.CompletionItem]:
        from click.shell_completion import CompletionItem

        return [CompletionItem(s) for s in STATUS_NAMES if s.lower().startswith(incomplete.lower())]


def _duration(run: RunRecord, now: float) -> str:
    if not run.start_at:
        return ""
    return duration((run.end_at if run.status.is_terminal and run.end_at else now) - run.start_at)


@cli.command()
@click.option("-e", "--experiment", shell_complete=complete.experiments, help="Only runs of this experiment.")
@click.option("--status", type=StatusType(), help="Only runs with this status (any case: failed, Running...).")
@click.option("-t", "--tag", "tags", multiple=True, help="Only runs with tag KEY or KEY=VALUE.")
@click.option("-p", "--property", "properties", multiple=True, help="Only runs with property KEY or KEY=VALUE.")
@click.option("-c", "--columns", "columns", multiple=True, metavar="KIND:NAME,...",
              help="Extra columns: tag:KEY, prop:KEY, arg:--NAME (a script argument), metric:NAME (its latest "
                   "value); comma-separated or repeated.")
@click.option("--children", is_flag=True, help="Include child runs, indented under their parent.")
@click.option("--archived", is_flag=True, help="Include archived runs (`rundock archive`), marked as such.")
@click.option("-n", "--limit", default=20, show_default=True, help="Show at most this many (top-level) runs.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON (times in UTC, NaN as a string).")
def runs(experiment: str | None, status: str | None, tags: tuple[str, ...], properties: tuple[str, ...],
         columns: tuple[str, ...], children: bool, archived: bool, limit: int, as_json: bool) -> None:
    """List runs, newest first (with --children: each run's children indented under it)."""
    from rundock.submitter.targets import sweep

    try:
        extra = parse_columns(columns)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="'--columns'") from None
    ws = _workspace()
    sweep(ws)
    records = ws.store.find_runs(experiment=experiment, status=status, tags=_parse_tags(tags) or None,
                                 properties=_parse_tags(properties) or None, include_children=children,
                                 archived=None if archived else False)
    groups = tree(records) if children else [[(r, 0)] for r in records]
    rows = [row for group in groups[:limit] for row in group]
    now = time.time()
    if as_json:
        emit_json([{**run_json(r, shown_status(r), now), "depth": depth, "archived": r.archived,
                    **({"columns": {c.header: column_value(c, r, ws.store) for c in extra}} if extra else {})}
                   for r, depth in rows])
    else:
        _print_runs(rows, extra, ws.store, now)
    if not records:
        filtered = any((experiment, status, tags, properties))
        nothing_in("runs" + (" matching these filters" if filtered else ""), history_label(ws))
    elif len(groups) > limit:
        console.print(f"({len(groups) - limit} more; use --limit)")


def _print_runs(rows: list[tuple[RunRecord, int]], extra: list[Column], store: Any, now: float) -> None:
    table = Table("run id", "experiment", "#", "status", "created", "duration", *(c.header for c in extra), box=None)
    for run, depth in rows:
        run_id = ("  " * (depth - 1) + "└ " if depth else "") + run.run_id
        cells = [short(v) if (v := column_value(c, run, store)) is not None else "" for c in extra]
        status = shown_status(run).value + (" (archived)" if run.archived else "")
        table.add_row(Text(run_id), Text(run.experiment), str(run.number), status,
                      ago(run.created_at, now), _duration(run, now), *(Text(c) for c in cells))
    out.print(table)


@cli.command()
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def experiments(as_json: bool) -> None:
    """List experiments: their runs by status and when the last one was created."""
    from rundock.submitter.targets import sweep

    ws = _workspace()
    sweep(ws)
    summary: dict[str, dict[str, Any]] = {}
    for run in ws.store.list_runs(include_children=False):  # newest first
        entry = summary.setdefault(run.experiment, {"experiment": run.experiment, "runs": 0, "live": 0,
                                                    "completed": 0, "failed": 0, "canceled": 0,
                                                    "last_run": run.created_at})
        entry["runs"] += 1
        status = shown_status(run)
        entry[status.value.lower() if status.is_terminal else "live"] += 1
    if as_json:
        emit_json([{**e, "last_run": iso_utc(e["last_run"])} for e in summary.values()])
    else:
        now = time.time()
        table = Table("experiment", "runs", "live", "completed", "failed", "canceled", "last run", box=None)
        for e in summary.values():
            table.add_row(Text(e["experiment"]), str(e["runs"]), str(e["live"]), str(e["completed"]),
                          str(e["failed"]), str(e["canceled"]), ago(e["last_run"], now))
        out.print(table)
    if not summary:
        nothing_in("experiments", history_label(ws))


@cli.command()
@click.argument("run_id", shell_complete=complete.run_ids)
@click.option("--json", "as_json", is_flag=True, help="Print JSON (NaN as a string).")
def show(run_id: str, as_json: bool) -> None:
    """Show a run: status, history, tags, properties, metrics, files."""
    run = _run(run_id)
    detailed = run.get_detailed_status()
    details = run.get_details()
    changes = run.experiment.workspace.store.status_history(run.id)
    metrics = run.get_metrics()
    files = run.get_file_names()
    if as_json:
        record = run._record
        emit_json({**run_json(record, RunStatus(detailed["status"])), "status_detail": detailed["details"],
                   "status_history": [{"status": c.status.value, "at": iso_utc(c.at), "detail": c.detail}
                                      for c in changes],
                   "metrics": metrics, "files": files})
        return

    # What a run recorded is printed as it is: no markup, no highlighting (whose regexes take quadratic time on
    # a long word: a 100 kB tag took a minute), so its time is linear in its length.
    def plain(text: str) -> None:
        out.print(text, markup=False, highlight=False)

    out.print(f"[bold]{escape(run.id)}[/] ({escape(run.experiment.name)} #{run.number}) on "
              f"{escape(str(details['target']))}", highlight=False)
    record = run._record
    if record.display_name or record.submitted_by:
        plain("  ".join(part for part in (f"Name: {record.display_name}" if record.display_name else "",
                                          f"Submitted by: {record.submitted_by}" if record.submitted_by else "")
                        if part))
    out.print(f"Status: [bold]{escape(str(detailed['status']))}[/]  {escape(str(detailed['details']))}",
              highlight=False)
    for change in changes:
        plain(f"  {iso_utc(change.at)}  {change.status.value:<15} {change.detail}")
    for title, values in (("Tags", run.get_tags()), ("Properties", run.get_properties())):
        if values:
            plain(f"{title}: " + ", ".join(f"{k}={v}" if v is not None else k for k, v in values.items()))
    if metrics:
        plain("Metrics:")
        for name, value in metrics.items():
            shown = f"[{len(value)} values] last={value[-1]!r}" if isinstance(value, list) and value else repr(value)
            plain(f"  {name}: {shown}")
    plain(f"Files ({len(files)}):")
    for name in files:
        plain(f"  {name}")
    if "error" in details:
        out.print(f"[red]Error:[/] {escape(str(details['error']['error'].get('message')))}", highlight=False)
