"""``rundock rerun``, ``diff``, ``archive``, ``delete`` and ``gc``: runs again, compared, put away, freed.

``rerun`` submits a run's stored snapshot again with its configuration, environment and target
(rundock.submitter.rerun) and follows it as ``submit`` does (exit status 0 Completed, 1 Failed,
2 Canceled; ``--detach`` prints the new id). ``diff`` always exits 0 when both runs exist.

``delete`` and ``archive`` refuse runs that have not ended (``delete --force`` cancels them first);
``delete --experiment`` asks before deleting unless ``--yes``. ``gc`` frees blobs nothing refers to, and
spares whatever changed within the grace period, so it is safe while runs are live (rundock.history.gc).
"""

from __future__ import annotations

import dataclasses
import sys
from typing import Any

import click

from rundock.history import gc
from rundock.states import RunStatus
from rundock.submitter import follow, housekeeping
from rundock.submitter.cli import complete
from rundock.submitter.cli.base import _parse_tags, _run, _workspace, cli, console, following, out
from rundock.submitter.cli.output import emit_json
from rundock.submitter.cli.submit import SCRIPT_ARGS, SubmitCommand, exit_code
from rundock.submitter.diff import diff_runs, render
from rundock.submitter.rerun import rerun as rerun_run
from rundock.submitter.run import Run


@cli.command(cls=SubmitCommand)
@click.argument("run_id", shell_complete=complete.run_ids)
@click.option("-t", "--tag", "tags", multiple=True, help="Tag KEY or KEY=VALUE for the new run (repeatable).")
@click.option("--detach", is_flag=True, help="Print the new run's id once submitted instead of following it.")
@click.pass_context
def rerun(ctx: click.Context, run_id: str, tags: tuple[str, ...], detach: bool) -> None:
    """Run RUN_ID again: its stored snapshot, configuration, environment and target; follow the new run.

    Arguments after -- replace the script's arguments. The new run has the property and tag rerunOf=RUN_ID.
    Exit status: 0 Completed, 1 Failed, 2 Canceled; Ctrl-C stops following (the run goes on) with 130.
    """
    arguments: list[Any] | None = ctx.meta.get(SCRIPT_ARGS) or None
    old = _run(run_id)
    run = rerun_run(old, arguments, tags=_parse_tags(tags))
    console.print(f"Submitted run {run.id} (experiment {run.experiment.name}, #{run.number}), a rerun of {old.id}",
                  markup=False, highlight=False)
    if detach:
        out.print(run.id, highlight=False)
        return
    from rundock.submitter.targets import check

    ws = run.experiment.workspace
    with following(run.id):
        record = follow.stream(ws.store, run.id, sys.stdout, check=lambda r: check(ws, r))
    follow.print_summary(record, sys.stdout, output_shown=True)
    if record.status == RunStatus.FAILED:
        console.print(f"Run {run.id} failed: {follow.error_headline(record.error)}", markup=False, highlight=False)
    if exit_code(record.status):
        sys.exit(exit_code(record.status))


@cli.command()
@click.argument("run_a", shell_complete=complete.run_ids)
@click.argument("run_b", shell_complete=complete.run_ids)
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def diff(run_a: str, run_b: str, as_json: bool) -> None:
    """What changed from RUN_A to RUN_B: source files (a unified diff), arguments, configuration,
    environment, packages, and metrics side by side (latest value, values logged)."""
    ws = _workspace()
    result = diff_runs(Run.get(ws, run_a), Run.get(ws, run_b))
    if as_json:
        emit_json(result.to_dict())
    else:
        click.echo(render(result))


def _chosen(run_ids: tuple[str, ...], experiment: str | None) -> None:
    if not run_ids and experiment is None:
        raise click.UsageError("name the runs (RUN_ID...) or an experiment (--experiment NAME)")


@cli.command()
@click.argument("run_ids", nargs=-1, shell_complete=complete.run_ids)
@click.option("-e", "--experiment", shell_complete=complete.experiments, help="Every run of this experiment.")
@click.option("--undo", is_flag=True, help="Restore archived runs to the listings.")
def archive(run_ids: tuple[str, ...], experiment: str | None, undo: bool) -> None:
    """Archive runs (and their children): `rundock runs` and Run.list leave them out unless --archived.

    Runs that have not ended are refused. Archived runs keep everything; --undo brings them back.
    """
    _chosen(run_ids, experiment)
    ids = housekeeping.archive_runs(_workspace(), run_ids, experiment=experiment, archived=not undo)
    console.print(f"{'Restored' if undo else 'Archived'} {len(ids)} run(s)", markup=False, highlight=False)
    for run_id in ids:
        out.print(run_id, markup=False, highlight=False)


@cli.command()
@click.argument("run_ids", nargs=-1, shell_complete=complete.run_ids)
@click.option("-e", "--experiment", shell_complete=complete.experiments, help="Every run of this experiment.")
@click.option("--force", is_flag=True, help="Cancel runs that have not ended, wait for them, then delete them.")
@click.option("-y", "--yes", is_flag=True, help="Do not ask before deleting a whole experiment.")
def delete(run_ids: tuple[str, ...], experiment: str | None, force: bool, yes: bool) -> None:
    """Delete runs and their children: history (metrics, tags, files, logs) and run folders; no undo.

    Runs that have not ended are refused unless --force. Stored blobs stay until `rundock gc`;
    registered models keep their files.
    """
    _chosen(run_ids, experiment)
    ws = _workspace()
    if experiment is not None and not yes:
        count = len(ws.store.list_runs(experiment=experiment))
        click.confirm(f"Delete the {count} run(s) of experiment {experiment}?", abort=True, err=True)
    ids = housekeeping.delete_runs(ws, run_ids, experiment=experiment, force=force)
    console.print(f"Deleted {len(ids)} run(s); `rundock gc` frees the stored files nothing refers to any more",
                  markup=False, highlight=False)
    for run_id in ids:
        out.print(run_id, markup=False, highlight=False)


@cli.command("gc")
@click.option("--grace", type=click.FloatRange(min=0), default=gc.DEFAULT_GRACE_SECONDS / 60, show_default=True,
              help="Minutes: spare whatever was stored or used more recently (runs and submits under way).")
@click.option("--dry-run", is_flag=True, help="Only say what would be freed.")
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
def collect_garbage(grace: float, dry_run: bool, as_json: bool) -> None:
    """Free stored files nothing refers to (deleted runs' outputs, unused snapshots); safe while runs are live."""
    report = housekeeping.collect_garbage(_workspace(), grace_seconds=grace * 60, dry_run=dry_run)
    if as_json:
        emit_json({**dataclasses.asdict(report), "freed_bytes": report.freed_bytes})
        return
    verb = "Would free" if dry_run else "Freed"
    click.echo(f"{verb} {_size(report.freed_bytes)}: {report.loose_blobs} loose blob(s) ({_size(report.loose_bytes)}), "
               f"{report.packs_rewritten} pack(s) rewritten ({_size(report.pack_bytes)}), "
               f"{report.temp_files} leftover temporary file(s) ({_size(report.temp_bytes)})")
    if report.snapshots:
        click.echo(f"{'Would forget' if dry_run else 'Forgot'} {len(report.snapshots)} snapshot(s) no run uses")
    if report.dead_bytes_left:
        click.echo(f"Left {_size(report.dead_bytes_left)} of unreferenced blobs in packs mostly still in use")
    if report.young or report.taken_up:
        click.echo(f"Spared {report.young + report.taken_up} unreferenced item(s) stored or used within the last "
                   f"{grace:g} minute(s)")
    for problem in report.damaged:
        click.echo(f"Damaged pack left as it is: {problem}")


def _size(n: int) -> str:
    """``n`` bytes for people: "512 bytes", "3.4 MB"."""
    if n < 1000:
        return f"{n} bytes"
    value, unit = n / 1000, "kB"
    for bigger in ("MB", "GB"):
        if value < 1000:
            break
        value, unit = value / 1000, bigger
    return f"{value:.1f} {unit}"
