"""``rundock wait`` and ``rundock cancel``: for scripts as much as for people.

``rundock wait RUN`` exits with the run's outcome: 0 Completed, 1 Failed, 2 Canceled (the same codes
as a followed ``rundock submit``). ``rundock cancel`` takes several run ids, or ``--experiment NAME``
for every live run of that experiment.
"""

from __future__ import annotations

import sys

import click

from rundock.history.records import RunRecord
from rundock.states import RunStatus
from rundock.submitter import follow
from rundock.submitter.cli import complete
from rundock.submitter.cli.base import _workspace, cli, console, following, history_label, nothing_in, out
from rundock.submitter.cli.submit import exit_code
from rundock.submitter.run import Run


@cli.command()
@click.argument("run_id", shell_complete=complete.run_ids)
@click.option("--timeout", type=float, help="Give up after this many seconds (exit status 3; the run goes on).")
def wait(run_id: str, timeout: float | None) -> None:
    """Wait for a run to end; print its status; exit 0 Completed, 1 Failed, 2 Canceled (3: --timeout passed)."""
    from rundock.submitter.targets import check

    ws = _workspace()
    record: RunRecord = ws.store.get_run(run_id)
    with following(record.run_id):
        for latest, _status, _data in follow.follow(ws.store, record.run_id, log_names=(),
                                                    check=lambda r: check(ws, r), timeout=timeout):
            record = latest
    out.print(record.status.value, highlight=False)
    if not record.status.is_terminal:
        console.print(f"{record.run_id} is still {record.status.value} after {timeout:g} s", markup=False,
                      highlight=False)
        sys.exit(3)
    if record.status == RunStatus.FAILED:
        console.print(f"Run {record.run_id} failed: {follow.error_headline(record.error)}", markup=False,
                      highlight=False)
    if exit_code(record.status):
        sys.exit(exit_code(record.status))


@cli.command()
@click.argument("run_ids", nargs=-1, shell_complete=complete.run_ids)
@click.option("-e", "--experiment", shell_complete=complete.experiments,
              help="Cancel every live run of this experiment (child runs included).")
@click.option("--abandon", is_flag=True, help="Runs on a remote host that cannot be reached: end them Canceled now "
              "(abandoned: host unreachable); their jobs are stopped when the host answers again.")
def cancel(run_ids: tuple[str, ...], experiment: str | None, abandon: bool) -> None:
    """Cancel runs (RUN_ID..., or --experiment NAME): SIGTERM to their processes, SIGKILL after the grace period."""
    if not run_ids and not experiment:
        raise click.UsageError("name the runs to cancel (RUN_ID...) or an experiment (--experiment NAME)")
    ws = _workspace()
    runs = [Run.get(ws, run_id) for run_id in run_ids]  # every id is checked before anything is canceled
    if experiment:
        from rundock.submitter.targets import sweep

        sweep(ws)
        live = [Run.get(ws, r.run_id) for r in ws.store.list_runs(experiment=experiment)
                if not r.status.is_terminal and r.run_id not in run_ids]
        if not live:
            nothing_in(f"live runs of experiment {experiment}", history_label(ws))
        runs += sorted(live, key=lambda run: run._record.created_at)  # parents before the children they made
    for run in runs:
        before = run.get_status()
        if abandon and run._record.target not in ("local", "sdk"):
            from rundock.submitter.targets.remote import abandon as abandon_run

            abandon_run(ws, run.id)
        else:
            run.cancel()
        if before in ("Completed", "Failed", "Canceled"):
            console.print(f"Run {run.id} already ended {before}; nothing to cancel", markup=False, highlight=False)
        else:
            console.print(f"Cancel requested for {run.id}; status: {run.get_status()}", markup=False,
                          highlight=False)
