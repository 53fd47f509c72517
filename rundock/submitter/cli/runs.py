"""``rundock init``, ``logs``, ``metrics``, ``download``, ``sync`` (``submit``: submit.py; ``runs``,
``experiments``, ``show``: listing.py; ``wait``, ``cancel``: control.py)."""

from __future__ import annotations

import json
import math
import sys
import time

import click
from rich.table import Table
from rich.text import Text

from rundock.submitter import follow
from rundock.submitter.cli import complete
from rundock.submitter.cli.base import _run, _workspace, cli, console, following, history_label, nothing_in, out
from rundock.submitter.workspace import Workspace


@cli.command()
@click.option("--name", help="Workspace name (default: the folder's name).")
def init(name: str | None) -> None:
    """Create a workspace (.rundock/) in the current folder."""
    from rich.markup import escape

    ws = Workspace.create(".", name=name)  # also writes .rundock/.gitignore: `git add -A` leaves it out
    out.print(f"Workspace [bold]{escape(ws.name)}[/] at {escape(ws.path)} (history: {escape(ws.history_uri)})",
              highlight=False)


@cli.command()
@click.argument("run_id", shell_complete=complete.run_ids)
@click.option("-f", "--follow", "follow_", is_flag=True,
              help="Keep printing until the run ends (Ctrl-C stops following; the run goes on).")
@click.option("--name", default=follow.DRIVER_LOG, show_default=True, help="Which log.")
def logs(run_id: str, follow_: bool, name: str) -> None:
    """Print a run's driver log, its job's output (and follow it while the run is live)."""
    from rundock.submitter.targets import check

    run = _run(run_id)
    ws = run.experiment.workspace
    store = ws.store
    if not follow_:
        record = check(ws, store.get_run(run.id))  # a remote run: pull what its agent wrote since
        data = store.read_log(run.id, name)
        sys.stdout.buffer.write(data)
        if not data and record.status.is_terminal and name in store.list_files(run.id):
            console.print(f"({name} of run {run.id} is empty: its job printed nothing)", markup=False,
                          highlight=False)
        elif not data:
            nothing_in(f"{name} for run {run.id}" + ("" if record.status.is_terminal else " (yet)"),
                       history_label(ws))
        return
    with following(run.id):
        for _record, _status, data in follow.follow(store, run.id, log_names=(name,),
                                                    check=lambda record: check(ws, record)):
            if data:
                sys.stdout.buffer.write(data)
                sys.stdout.flush()


def _json_safe(value: object) -> object:
    """``value`` with every float that JSON cannot hold (NaN, infinities) as the string "NaN", "Infinity" or
    "-Infinity", so that ``--json`` output is valid JSON."""
    if isinstance(value, float) and not math.isfinite(value):
        return "NaN" if math.isnan(value) else ("Infinity" if value > 0 else "-Infinity")
    if isinstance(value, dict):
        return {k: _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    return value


@cli.command()
@click.argument("run_id", shell_complete=complete.run_ids)
@click.option("--json", "as_json", is_flag=True, help="Print JSON (NaN and infinities as strings).")
@click.option("--history", is_flag=True, help="Every logged value with its step and time (UTC).")
def metrics(run_id: str, as_json: bool, history: bool) -> None:
    """Print a run's metrics (as get_metrics() returns them), or with --history every logged value."""
    run = _run(run_id)
    values = run.get_metrics()
    if history:
        logged = {name: run.get_metric_history(name) for name in values}
        if as_json:
            click.echo(json.dumps(_json_safe(logged), indent=2, allow_nan=False))
            return
        rows = Table("metric", "step", "time", "value", box=None)
        for name, entries in logged.items():
            for entry in entries:
                value = entry["value"]
                rows.add_row(Text(name), "" if entry["step"] is None else str(entry["step"]), entry["time"],
                             Text(value if isinstance(value, str) else json.dumps(value)))
        out.print(rows)
        return
    if as_json:
        click.echo(json.dumps(_json_safe(values), indent=2, allow_nan=False))
        return
    table = Table("metric", "value", box=None)
    for name, value in values.items():
        table.add_row(name, json.dumps(value) if not isinstance(value, str) else value)
    out.print(table)


@cli.command()
@click.argument("run_id", shell_complete=complete.run_ids)
@click.option("-p", "--prefix", help="Only files under this prefix (e.g. outputs/).")
@click.option("-o", "--output-dir", default=None, help="Where to write (default: a folder named by the run id).")
def download(run_id: str, prefix: str | None, output_dir: str | None) -> None:
    """Download a run's files."""
    run = _run(run_id)
    paths = run.download_files(prefix=prefix, output_directory=output_dir or run.id)
    for path in paths:
        out.print(path)
    console.print(f"{len(paths)} files downloaded")
    if not paths:
        nothing_in(f"files of run {run.id}" + (f" under {prefix}" if prefix else ""),
                   history_label(run.experiment.workspace))


@cli.command("sync")
@click.argument("run_id", required=False, shell_complete=complete.run_ids)
@click.option("--wait", is_flag=True, help="Keep pulling until the runs end.")
def sync_runs(run_id: str | None, wait: bool) -> None:
    """Bring remote runs (or RUN_ID) up to date with what their agents recorded."""
    from rundock.submitter.targets import check

    ws = _workspace()
    live = [ws.store.get_run(run_id)] if run_id else [
        r for r in ws.store.list_runs() if not r.status.is_terminal and r.target not in ("local", "sdk")]
    while True:
        live = [check(ws, record) for record in live]
        pending = [r for r in live if not r.status.is_terminal]
        if not wait or not pending:
            break
        time.sleep(1)
    for record in live:
        console.print(f"{record.run_id}: {record.status.value}")
    if not live:
        nothing_in("live runs on remote targets", history_label(ws))
