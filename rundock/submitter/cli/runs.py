"""``rundock init``, ``submit``, ``runs``, ``show``, ``logs``, ``metrics``, ``download``, ``cancel``, ``sync``."""

from __future__ import annotations

import json
import os
import sys
import time

import click
from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TransferSpeedColumn
from rich.table import Table

from rundock.history.records import iso_utc
from rundock.runconfig.environment import Environment
from rundock.runconfig.run_configuration import RunConfiguration
from rundock.runconfig.script_run_config import ScriptRunConfig
from rundock.submitter import follow
from rundock.submitter.cli.base import _parse_tags, _run, _workspace, cli, console, out
from rundock.submitter.experiment import Experiment
from rundock.submitter.workspace import Workspace


@cli.command()
@click.option("--name", help="Workspace name (default: the folder's name).")
def init(name: str | None) -> None:
    """Create a workspace (.rundock/) in the current folder."""
    from rich.markup import escape

    ws = Workspace.create(".", name=name)  # also writes .rundock/.gitignore: `git add -A` leaves it out
    out.print(f"Workspace [bold]{escape(ws.name)}[/] at {escape(ws.path)} (history: {escape(ws.history_uri)})",
              highlight=False)


@cli.command(context_settings={"ignore_unknown_options": True})
@click.argument("source_dir", type=click.Path(file_okay=False), default=".")
@click.option("-s", "--script", help="Script to run, relative to SOURCE_DIR.")
@click.option("-c", "--run-config", "run_config", type=click.Path(dir_okay=False),
              help="RunConfiguration YAML file (script, arguments, environment, limits).")
@click.option("--environment", "environment_file", type=click.Path(dir_okay=False),
              help="Environment YAML file.")
@click.option("-e", "--experiment", help="Experiment name (default: SOURCE_DIR's folder name).")
@click.option("-t", "--tag", "tags", multiple=True, help="Tag KEY or KEY=VALUE (repeatable).")
@click.option("--max-run-duration", type=int, help="Stop the run after this many seconds.")
@click.option("--detach", is_flag=True, help="Return once submitted instead of following the run.")
@click.argument("arguments", nargs=-1, type=click.UNPROCESSED)
def submit(source_dir: str, script: str | None, run_config: str | None, environment_file: str | None,
           experiment: str | None, tags: tuple[str, ...], max_run_duration: int | None, detach: bool,
           arguments: tuple[str, ...]) -> None:
    """Submit SOURCE_DIR's SCRIPT as a run; arguments after -- go to the script."""
    config = RunConfiguration.load(run_config) if run_config else None
    environment = None
    if environment_file:
        import yaml

        with open(environment_file, encoding="utf-8") as fh:
            environment = Environment.from_mapping(yaml.safe_load(fh) or {}, source=environment_file)
    src = ScriptRunConfig(source_directory=source_dir, script=script, run_config=config,
                          arguments=list(arguments) if arguments else None, environment=environment,
                          max_run_duration_seconds=max_run_duration)
    name = experiment or os.path.basename(os.path.abspath(source_dir)) or "default"
    exp = Experiment(_workspace(), name)
    with Progress(TextColumn("Packaging snapshot"), BarColumn(), DownloadColumn(), TransferSpeedColumn(),
                  console=console, transient=True) as bar:
        task = bar.add_task("snapshot", total=None)
        run = exp.submit(src, tags=_parse_tags(tags),
                         progress=lambda done, total: bar.update(task, completed=done, total=total))
    console.print(f"Submitted run [bold]{run.id}[/] (experiment {name}, #{run.number})")
    if detach:
        out.print(run.id)
        return
    run.wait_for_completion(show_output=True)


@cli.command()
@click.option("-e", "--experiment", help="Only runs of this experiment.")
@click.option("--status", help="Only runs with this status (e.g. Running, Failed).")
@click.option("-t", "--tag", "tags", multiple=True, help="Only runs with tag KEY or KEY=VALUE.")
@click.option("-p", "--property", "properties", multiple=True, help="Only runs with property KEY or KEY=VALUE.")
@click.option("--children", is_flag=True, help="Include child runs.")
@click.option("-n", "--limit", default=20, show_default=True, help="Show at most this many runs.")
def runs(experiment: str | None, status: str | None, tags: tuple[str, ...], properties: tuple[str, ...],
         children: bool, limit: int) -> None:
    """List runs, newest first."""
    from rundock.history.liveness import shown_status
    from rundock.submitter.targets import sweep

    ws = _workspace()
    sweep(ws)
    records = ws.store.find_runs(experiment=experiment, status=status, tags=_parse_tags(tags) or None,
                                 properties=_parse_tags(properties) or None, include_children=children)
    table = Table("run id", "experiment", "#", "status", "created", "duration", box=None)
    now = time.time()
    for r in records[:limit]:
        duration = f"{(r.end_at or now) - r.start_at:.1f}s" if r.start_at else ""
        table.add_row(r.run_id, r.experiment, str(r.number), shown_status(r).value,
                      (iso_utc(r.created_at) or "")[:19], duration)
    out.print(table)
    if len(records) > limit:
        console.print(f"({len(records) - limit} more; use --limit)")


@cli.command()
@click.argument("run_id")
def show(run_id: str) -> None:
    """Show a run: status, history, tags, properties, metrics, files."""
    from rich.markup import escape

    # What a run recorded is printed as it is: no markup, no highlighting (whose regexes take quadratic time on
    # a long word: a 100 kB tag took a minute), so its time is linear in its length.
    def plain(text: str) -> None:
        out.print(text, markup=False, highlight=False)

    run = _run(run_id)
    detailed = run.get_detailed_status()
    details = run.get_details()
    out.print(f"[bold]{escape(run.id)}[/] ({escape(run.experiment.name)} #{run.number}) on "
              f"{escape(str(details['target']))}", highlight=False)
    out.print(f"Status: [bold]{escape(str(detailed['status']))}[/]  {escape(str(detailed['details']))}",
              highlight=False)
    for change in run.experiment.workspace.store.status_history(run.id):
        plain(f"  {iso_utc(change.at)}  {change.status.value:<15} {change.detail}")
    for title, values in (("Tags", run.get_tags()), ("Properties", run.get_properties())):
        if values:
            plain(f"{title}: " + ", ".join(f"{k}={v}" if v is not None else k for k, v in values.items()))
    metrics = run.get_metrics()
    if metrics:
        plain("Metrics:")
        for name, value in metrics.items():
            shown = f"[{len(value)} values] last={value[-1]!r}" if isinstance(value, list) and value else repr(value)
            plain(f"  {name}: {shown}")
    files = run.get_file_names()
    plain(f"Files ({len(files)}):")
    for name in files:
        plain(f"  {name}")
    if "error" in details:
        out.print(f"[red]Error:[/] {escape(str(details['error']['error'].get('message')))}", highlight=False)


@cli.command()
@click.argument("run_id")
@click.option("-f", "--follow", "follow_", is_flag=True, help="Keep printing until the run ends.")
@click.option("--name", default=follow.DRIVER_LOG, show_default=True, help="Which log.")
def logs(run_id: str, follow_: bool, name: str) -> None:
    """Print a run's driver log (and follow it while the run is live)."""
    from rundock.submitter.targets import check

    run = _run(run_id)
    ws = run.experiment.workspace
    store = ws.store
    if not follow_:
        check(ws, store.get_run(run.id))  # a remote run: pull what its agent wrote since
        sys.stdout.buffer.write(store.read_log(run.id, name))
        return
    for _record, _status, data in follow.follow(store, run.id, log_names=(name,),
                                                check=lambda record: check(ws, record)):
        if data:
            sys.stdout.buffer.write(data)
            sys.stdout.flush()


@cli.command()
@click.argument("run_id")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def metrics(run_id: str, as_json: bool) -> None:
    """Print a run's metrics."""
    values = _run(run_id).get_metrics()
    if as_json:
        click.echo(json.dumps(values, indent=2))
        return
    table = Table("metric", "value", box=None)
    for name, value in values.items():
        table.add_row(name, json.dumps(value) if not isinstance(value, str) else value)
    out.print(table)


@cli.command()
@click.argument("run_id")
@click.option("-p", "--prefix", help="Only files under this prefix (e.g. outputs/).")
@click.option("-o", "--output-dir", default=None, help="Where to write (default: a folder named by the run id).")
def download(run_id: str, prefix: str | None, output_dir: str | None) -> None:
    """Download a run's files."""
    run = _run(run_id)
    paths = run.download_files(prefix=prefix, output_directory=output_dir or run.id)
    for path in paths:
        out.print(path)
    console.print(f"{len(paths)} files downloaded")


@cli.command()
@click.argument("run_id")
def cancel(run_id: str) -> None:
    """Cancel a run (its processes get SIGTERM, then SIGKILL after the grace period)."""
    run = _run(run_id)
    before = run.get_status()
    run.cancel()
    if before in ("Completed", "Failed", "Canceled"):
        console.print(f"Run {run.id} already ended {before}; nothing to cancel")
    else:
        console.print(f"Cancel requested for {run.id}; status: {run.get_status()}")

@cli.command("sync")
@click.argument("run_id", required=False)
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
