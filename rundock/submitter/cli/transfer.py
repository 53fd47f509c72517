"""``rundock export`` and ``rundock import``: carry finished runs to another run history in one tar file.

``export`` writes the runs named (or those of an experiment, or all of them), their child runs and the
models registered from them; ``import`` adds an archive's runs to the current workspace's history,
whatever its backend, skipping those it already holds. Both show a progress bar on standard error and
end with a one-line summary on standard output.
"""

from __future__ import annotations

import socket
import sys
import urllib.parse
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import click
from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TransferSpeedColumn

from rundock.history.transfer import export_runs, import_runs, select_runs
from rundock.submitter.cli import complete
from rundock.submitter.cli.base import _workspace, cli, console, history_label, nothing_in
from rundock.submitter.workspace import Workspace


def source_label(ws: Workspace) -> str:
    """Which history an export comes from: this machine and the history's file or URI (no password)."""
    where = history_label(ws)
    parts = urllib.parse.urlsplit(where)
    if parts.password is not None:
        host = parts.hostname or ""
        netloc = f"{parts.username}@{host}" if parts.username else host
        where = urllib.parse.urlunsplit(parts._replace(netloc=netloc + (f":{parts.port}" if parts.port else "")))
    return f"{socket.gethostname()}:{where}"


@contextmanager
def _bar() -> Iterator[Callable[[str, int, int], None]]:
    with Progress(TextColumn("{task.description}"), BarColumn(), DownloadColumn(), TransferSpeedColumn(),
                  console=console, transient=True) as bar:
        task = bar.add_task("Starting", total=None)

        def update(phase: str, done: int, total: int) -> None:
            bar.update(task, description=phase, completed=done, total=total or None)

        yield update


@cli.command("export")
@click.argument("run_ids", nargs=-1, shell_complete=complete.run_ids)
@click.option("-o", "--output", required=True, type=click.Path(dir_okay=False),
              help="The archive to write (a .tar file).")
@click.option("-e", "--experiment", shell_complete=complete.experiments,
              help="Export every finished run of this experiment.")
@click.option("--all", "all_runs", is_flag=True, help="Export every finished run of the history.")
@click.option("--include-children/--no-children", default=True, show_default=True,
              help="Export the runs' child runs (all their descendants) too.")
@click.option("--force", is_flag=True, help="Overwrite the archive if it exists.")
def export(run_ids: tuple[str, ...], output: str, experiment: str | None, all_runs: bool, include_children: bool,
           force: bool) -> None:
    """Write runs (RUN_ID..., --experiment NAME or --all), their children and models to one archive."""
    if sum((bool(run_ids), experiment is not None, all_runs)) != 1:
        raise click.UsageError("name the runs to export: RUN_ID..., --experiment NAME, or --all (one of them)")
    ws = _workspace()
    wanted = list(run_ids)
    if not run_ids:
        wanted, live = select_runs(ws.store, experiment)
        for run_id in live:
            console.print(f"Skipped {run_id}: it (or one of its child runs) has not finished", markup=False,
                          highlight=False)
        if not wanted:
            nothing_in("finished runs" + (f" of experiment {experiment}" if experiment else ""), history_label(ws))
            sys.exit(1)
    with _bar() as progress:
        report = export_runs(ws.store, ws.artifacts, wanted, output, include_children=include_children,
                             source=source_label(ws), overwrite=force, progress=progress)
    click.echo(report.summary)


@cli.command("import")
@click.argument("archive", type=click.Path(dir_okay=False))
def import_(archive: str) -> None:
    """Add the runs and models of ARCHIVE (made by `rundock export`) to this workspace's run history.

    Runs already there are left as they are, so importing an archive again adds nothing. A damaged or
    invalid archive imports nothing.
    """
    ws = _workspace()
    with _bar() as progress:
        report = import_runs(ws.store, ws.artifacts, archive, progress=progress)
    for warning in report.warnings:
        console.print(f"warning: {warning}", markup=False, highlight=False)
    click.echo(f"Imported from {report.source or 'an unnamed history'} into {history_label(ws)}: {report.summary}")
