"""``rundock report`` (runs as one self-contained HTML file) and ``rundock plot`` (metric charts in the terminal)."""

from __future__ import annotations

import os
import shutil

import click

from rundock.errors import RunNotFoundError
from rundock.history.store import RunsStore
from rundock.submitter.cli import complete
from rundock.submitter.cli.base import _workspace, cli, console, history_label, out


@cli.command(short_help="Write runs as one HTML file that opens offline.")
@click.argument("run_ids", nargs=-1, required=True, metavar="RUN...", shell_complete=complete.run_ids)
@click.option("-o", "--output", default="report.html", show_default=True, help="The HTML file to write.")
@click.option("--max-points", default=2000, show_default=True, type=click.IntRange(min=10),
              help="Points per metric series; longer ones are downsampled (LTTB).")
@click.option("--max-image-mb", default=2.0, show_default=True, type=click.FloatRange(min=0),
              help="Images larger than this are listed, not embedded.")
@click.option("--log-lines", default=400, show_default=True, type=click.IntRange(min=2),
              help="Driver log lines kept (the first quarter and the last three quarters).")
def report(run_ids: tuple[str, ...], output: str, max_points: int, max_image_mb: float, log_lines: int) -> None:
    """Write RUN... (their details, metric charts overlaid, tables, images, logs, files) as one HTML file that
    opens offline in any browser."""
    from rundock.ui.report import ReportOptions, build_report

    ws = _workspace()
    head = max(log_lines // 4, 1)
    options = ReportOptions(max_points=max_points, max_image_bytes=int(max_image_mb * 1_000_000),
                            log_head=head, log_tail=log_lines - head)
    document = build_report(ws.store, ws.artifacts, list(dict.fromkeys(run_ids)), options)
    tmp = output + ".partial"
    with open(tmp, "w", encoding="utf-8") as fh:
        fh.write(document)
    os.replace(tmp, output)
    console.print(f"Wrote {os.path.abspath(output)} ({len(document.encode()) / 1e6:.1f} MB); open it in a browser",
                  markup=False, highlight=False)


def _split(store: RunsStore, args: tuple[str, ...]) -> tuple[list[str], list[str]]:
    """The leading arguments that are run ids, and the metric names after them (the first must be a run)."""
    runs: list[str] = []
    for i, arg in enumerate(args):
        try:
            runs.append(store.get_run(arg).run_id)
        except RunNotFoundError:
            if not runs:
                raise
            return runs, list(args[i:])
    return runs, []


@cli.command()
@click.argument("args", nargs=-1, required=True, metavar="RUN... [METRIC...]", shell_complete=complete.run_ids)
@click.option("--x", "x_axis", type=click.Choice(["step", "time"]), default="step", show_default=True,
              help="Horizontal axis: the logged step (the value's index where none was given), or seconds since "
                   "the metric's first value.")
@click.option("--width", type=click.IntRange(min=20), help="Columns (default: the terminal's width).")
@click.option("--height", type=click.IntRange(min=3), default=15, show_default=True, help="Rows of each chart.")
def plot(args: tuple[str, ...], x_axis: str, width: int | None, height: int) -> None:
    """Draw scalar metrics of RUN... in the terminal, one chart per METRIC with the runs overlaid (every scalar
    metric when no METRIC is named), e.g. rundock plot RUN_A RUN_B loss acc."""
    from rundock.ui.render import is_series
    from rundock.ui.termplot import MetricNotPlottable, printable, render, series_of

    ws = _workspace()
    store = ws.store
    run_ids, names = _split(store, args)
    logged = {run_id: {s.name: s for s in store.metric_summaries(run_id)} for run_id in run_ids}
    if not names:
        names = list(dict.fromkeys(n for by_name in logged.values() for n, s in by_name.items() if is_series(s)))
        if not names:
            raise MetricNotPlottable(f"no scalar metrics to plot: {', '.join(run_ids)} logged none "
                                     f"(in {history_label(ws)})")
    for name in names:
        having = [run_id for run_id in run_ids if name in logged[run_id]]
        if not having:
            known = printable("; ".join(f"{run_id}: {', '.join(logged[run_id]) or 'none'}" for run_id in run_ids))
            raise MetricNotPlottable(f"no metric {name!r} in {', '.join(run_ids)} (if {name!r} is meant as a run "
                                     f"id: no such run in {history_label(ws)}). Metrics logged: {known}")
    columns = width or shutil.get_terminal_size((80, 24)).columns
    for name in names:
        series = [series_of(store, run_id, logged[run_id][name], x_axis) for run_id in run_ids
                  if name in logged[run_id]]
        missing = [run_id for run_id in run_ids if name not in logged[run_id]]
        x_label = "step" if x_axis == "step" else "seconds since the first value"
        out.print(render(name, series, width=columns, height=height, x_label=x_label), soft_wrap=True, end="")
        if missing:
            out.print(f"  (not logged by {', '.join(missing)})", markup=False, highlight=False, style="dim")
        out.print()
