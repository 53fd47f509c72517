"""``rundock doctor`` and ``rundock backup``: looking after the workspace's run history.

Both work on the SQLite file itself, never through the store: a damaged
history cannot be opened as a store, and doctor must still say what is wrong
with it. A workspace whose history is a server (``http://...``) is looked
after on the server.
"""

from __future__ import annotations

import sys

import click

from rundock.errors import ConfigError
from rundock.history import maintenance
from rundock.history.backends.sqlite_file import SCHEMA_VERSION, history_path
from rundock.submitter.cli.base import cli
from rundock.submitter.workspace import Workspace


def _history_file(ws: Workspace) -> str:
    if not ws.history_uri.startswith("sqlite:"):
        raise ConfigError(f"this workspace's run history is {ws.history_uri}; doctor and backup work on an SQLite "
                          f"history, so run them where that history's file is")
    return history_path(ws.history_uri)


def _print_health(health: maintenance.Health) -> None:
    if not health.exists:
        click.echo(f"History    {health.path}: no file yet (it is made when the first run is recorded)")
        return
    click.echo(f"History    {health.path} ({health.size:,} bytes)")
    version = "unreadable" if health.version is None else f"version {health.version}"
    click.echo(f"Schema     {version} (this rundock: {SCHEMA_VERSION})")
    if health.newer:
        click.echo("           written by a newer rundock: upgrade rundock to use it")
        return
    click.echo("Integrity  ok" if not health.problems else f"Integrity  damaged: {health.problems[0]}")
    for problem in health.problems[1:]:
        click.echo(f"           {problem}")
    if health.counts:
        click.echo("Contents   " + ", ".join(f"{n:,} {table}" for table, n in health.counts.items()))


@cli.command()
@click.option("--repair", is_flag=True,
              help="Rebuild a damaged history from what can still be read and from the runs' journals "
                   "(the damaged file is kept beside it). Stop agents and running jobs first.")
def doctor(repair: bool) -> None:
    """Check the run history (integrity, schema version); with --repair, rebuild a damaged one."""
    ws = Workspace.from_config()
    path = _history_file(ws)
    health = maintenance.check(path)
    _print_health(health)
    dirs = maintenance.run_dirs(ws.path)
    needs_repair = not health.ok or (not health.exists and bool(dirs))
    if health.newer:
        sys.exit(1)
    if not repair:
        if needs_repair:
            click.echo("The run history needs repair. Stop agents and running jobs, then run "
                       "`rundock doctor --repair`: it keeps the damaged file and rebuilds the history from what "
                       "can still be read and from the runs' journals.")
            sys.exit(1)
        return
    if not needs_repair:
        click.echo("Nothing to repair.")
        return
    report = maintenance.repair(path, dirs, ws.artifacts.root)
    if report.backup:
        click.echo(f"Kept       the damaged file as {report.backup}")
    salvaged = ", ".join(f"{n:,} {table}" for table, n in report.salvaged.items() if n)
    if report.backup is None:
        click.echo("Salvaged   nothing: there was no history file")
    elif not salvaged:
        click.echo("Salvaged   nothing: SQLite could read no table of the damaged file")
    else:
        partly = f" (read in part or not at all: {', '.join(report.incomplete)})" if report.incomplete else ""
        click.echo(f"Salvaged   {salvaged}{partly}")
    click.echo(f"Replayed   the journals of {report.replayed} run(s), {report.recreated} recreated from job.json")
    for skipped in report.skipped:
        click.echo(f"Skipped    {skipped}")
    after = maintenance.check(path)
    click.echo(f"Rebuilt    {path}: " + ("ok" if after.ok else "still damaged: " + "; ".join(after.problems)))
    if not after.ok:
        sys.exit(1)


@cli.command()
@click.argument("dest", type=click.Path())
@click.option("--force", is_flag=True, help="Overwrite DEST if it exists.")
def backup(dest: str, force: bool) -> None:
    """Copy the run history to DEST (a file, or a folder) while agents go on writing."""
    ws = Workspace.from_config()
    made = maintenance.backup(_history_file(ws), dest, overwrite=force)
    click.echo(f"Backed up the run history to {made.path} ({made.size:,} bytes)")
