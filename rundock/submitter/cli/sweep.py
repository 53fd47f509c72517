"""``rundock sweep``: start a hyperparameter sweep from a YAML file, or resume one whose controller is gone.

``rundock sweep sweep.yaml`` submits the sweep the file describes (the fields of HyperDriveConfig: see
rundock.hyperdrive.sweepfile) and prints its run id; ``--follow`` then prints its progress until it ends.
``rundock sweep resume RUN_ID`` starts the sweep's controller again if none is running (it goes on from what
the history holds, never starting a trial twice); ``--follow`` as above. Following exits with the sweep's
outcome (0 Completed, 1 Failed, 2 Canceled); Ctrl-C stops following, not the sweep.
"""

from __future__ import annotations

import sys

import click

from rundock.history.records import RunRecord
from rundock.states import RunStatus
from rundock.submitter import follow
from rundock.submitter.cli import complete
from rundock.submitter.cli.base import _parse_tags, _workspace, cli, console, following, out
from rundock.submitter.cli.submit import default_experiment, exit_code
from rundock.submitter.workspace import Workspace


def _follow(ws: Workspace, run_id: str) -> None:
    from rundock.hyperdrive.launch import ensure_controller
    from rundock.hyperdrive.sweeplog import LOG_NAME

    def check(record: RunRecord) -> RunRecord:
        return ws.store.get_run(run_id) if ensure_controller(ws, record) else record

    record = ws.store.get_run(run_id)
    with following(run_id):
        for latest, _status, data in follow.follow(ws.store, run_id, log_names=(LOG_NAME,), check=check):
            record = latest
            if data:
                sys.stdout.write(data.decode("utf-8", errors="replace"))
                sys.stdout.flush()
    follow.print_summary(record, sys.stdout)
    if record.status == RunStatus.FAILED:
        console.print(f"Sweep {run_id} failed: {follow.error_headline(record.error)}", markup=False, highlight=False)
    if exit_code(record.status):
        sys.exit(exit_code(record.status))


@cli.command("sweep")
@click.argument("file_or_resume", metavar="SWEEP_YAML | resume", type=click.Path())
@click.argument("run_id", required=False, shell_complete=complete.run_ids)
@click.option("-f", "--follow", "follow_it", is_flag=True, help="Print the sweep's progress until it ends.")
@click.option("-e", "--experiment", shell_complete=complete.experiments,
              help="Experiment name (default: the file's `experiment`, else the source folder's name).")
@click.option("-t", "--tag", "tags", multiple=True, help="Tag KEY or KEY=VALUE on the sweep's run (repeatable).")
def sweep_command(file_or_resume: str, run_id: str | None, follow_it: bool, experiment: str | None,
                  tags: tuple[str, ...]) -> None:
    """Start a sweep from SWEEP_YAML, or `rundock sweep resume RUN_ID` to restart a sweep's controller.

    Exit status with --follow: 0 Completed, 1 Failed, 2 Canceled; Ctrl-C stops following (the sweep goes on).
    """
    ws = _workspace()
    if file_or_resume == "resume":
        if not run_id:
            raise click.UsageError("name the sweep to resume: rundock sweep resume RUN_ID")
        _resume(ws, run_id)
    else:
        if run_id:
            raise click.UsageError(f"unexpected argument {run_id!r}: `rundock sweep SWEEP_YAML` takes one file")
        run_id = _submit(ws, file_or_resume, experiment, tags)
    if follow_it:
        _follow(ws, run_id)


def _submit(ws: Workspace, path: str, experiment: str | None, tags: tuple[str, ...]) -> str:
    from rundock.hyperdrive import sweepfile
    from rundock.submitter.experiment import Experiment

    spec = sweepfile.load(path)
    name = experiment or spec.experiment or default_experiment(spec.config.source_directory)
    run = Experiment(ws, name).submit(spec.config, tags={**spec.tags, **_parse_tags(tags)})
    console.print(f"Submitted sweep [bold]{run.id}[/] (experiment {name}, #{run.number}): "
                  f"{spec.config.max_total_runs} trials at most, {spec.config.max_concurrent_runs} at a time",
                  highlight=False)
    out.print(run.id, highlight=False)
    return run.id


def _resume(ws: Workspace, run_id: str) -> None:
    from rundock.hyperdrive.config import RUN_TYPE
    from rundock.hyperdrive.launch import controller_alive, ensure_controller

    record = ws.store.get_run(run_id)
    if record.run_type != RUN_TYPE:
        raise click.UsageError(f"run {run_id} is not a sweep (its type is {record.run_type}); `rundock sweep resume` "
                               "takes the run id of a sweep")
    if record.status.is_terminal:
        console.print(f"Sweep {run_id} already ended {record.status.value}; nothing to resume", markup=False,
                      highlight=False)
    elif controller_alive(ws, run_id):
        console.print(f"Sweep {run_id} is {record.status.value}; its controller is running", markup=False,
                      highlight=False)
    elif ensure_controller(ws, record, now=True):
        console.print(f"Restarted the controller of sweep {run_id}; it goes on from the trials in the history",
                      markup=False, highlight=False)
