"""``rundock submit``: package a source folder and start a run; follow it, or ``--detach``.

``rundock submit train.py`` is ``rundock submit . -s train.py`` (a ``.py`` file as the first argument:
the current folder is the snapshot, the file the script). Arguments for the script come after ``--``;
an option before it that ``submit`` does not know is an error, never passed on to the script.

Following prints the job's output and a line per status change; the exit status is the run's outcome
(0 Completed, 1 Failed, 2 Canceled), and Ctrl-C stops the following, not the run (exit status 130).
"""

from __future__ import annotations

import dataclasses
import os
import re
import sys
from typing import Any

import click
from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TransferSpeedColumn

from rundock.runconfig.environment import Environment
from rundock.runconfig.run_configuration import RunConfiguration
from rundock.runconfig.script_run_config import ScriptRunConfig
from rundock.states import RunStatus
from rundock.submitter import follow
from rundock.submitter.cli import complete
from rundock.submitter.cli.base import _parse_tags, _workspace, cli, console, following, out
from rundock.submitter.experiment import Experiment

SCRIPT_ARGS = "rundock.script_args"
ARGS_HINT = "arguments for the script go after `--`, e.g. rundock submit train.py -- --alpha 0.5"
EXIT_CODES = {RunStatus.COMPLETED: 0, RunStatus.FAILED: 1}  # anything else (Canceled): 2


def exit_code(status: RunStatus) -> int:
    """The exit status that says how a run ended: 0 Completed, 1 Failed, 2 Canceled (or not ended)."""
    return EXIT_CODES.get(status, 2)


class SubmitCommand(click.Command):
    """Everything after ``--`` is the script's; before it, an unknown option is a usage error."""

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        if "--" in args:
            cut = args.index("--")
            ctx.meta[SCRIPT_ARGS] = args[cut + 1:]
            args = args[:cut]
        try:
            return super().parse_args(ctx, args)
        except click.UsageError as exc:
            if isinstance(exc, click.NoSuchOption) or "unexpected extra argument" in exc.format_message():
                raise click.UsageError(f"{exc.format_message()}\n({ARGS_HINT})", ctx=exc.ctx) from None
            raise

    def collect_usage_pieces(self, ctx: click.Context) -> list[str]:
        return [*super().collect_usage_pieces(ctx), "[-- SCRIPT_ARGUMENTS...]"]


def split_source(source: str | None, script: str | None) -> tuple[str, str | None]:
    """(source folder, script) from the first argument: a folder, or a ``.py`` file to run with the
    current folder as the snapshot (a file outside the current folder: its own folder)."""
    if source is None:
        return ".", script
    if os.path.isdir(source) or not (source.endswith(".py") or os.path.isfile(source)):
        return source, script
    if script is not None:
        raise click.UsageError(f"{source} is a script and -s names another ({script}); give one of them: "
                               f"`rundock submit {source}` or `rundock submit FOLDER -s {script}`")
    relative = os.path.relpath(os.path.abspath(source), os.getcwd())
    if relative.startswith(os.pardir + os.sep):
        return os.path.dirname(os.path.abspath(source)), os.path.basename(source)
    return ".", relative


def default_experiment(source_dir: str) -> str:
    """The source folder's name made into an experiment name (letters, digits, '-' and '_')."""
    name = re.sub(r"[^A-Za-z0-9_-]+", "-", os.path.basename(os.path.abspath(source_dir))).strip("-_")
    return name[:255] or "default"


def _environment(environment_file: str | None, docker_image: str | None,
                 config: RunConfiguration | None) -> Environment | None:
    environment = None
    if environment_file:
        import yaml

        with open(environment_file, encoding="utf-8") as fh:
            environment = Environment.from_mapping(yaml.safe_load(fh) or {}, source=environment_file)
    if docker_image:
        environment = environment or (config.environment if config else None) or Environment(name="docker-image")
        environment.docker = dataclasses.replace(environment.docker, enabled=True, base_image=docker_image,
                                                 base_dockerfile=None)
    return environment


@cli.command(cls=SubmitCommand)
@click.argument("source", required=False, type=click.Path())
@click.option("-s", "--script", help="Script to run, relative to SOURCE.")
@click.option("-c", "--run-config", "run_config", type=click.Path(dir_okay=False),
              help="RunConfiguration YAML file (script, arguments, environment, limits).")
@click.option("--environment", "environment_file", type=click.Path(dir_okay=False),
              help="Environment YAML file.")
@click.option("--docker-image", metavar="IMAGE",
              help="Run in a container of IMAGE (with --environment: that environment in IMAGE).")
@click.option("--target", metavar="NAME", shell_complete=complete.targets,
              help="Compute target: `local` (default), one attached with `rundock target attach`, or a pool of "
                   "the team server (`rundock pools`).")
@click.option("-e", "--experiment", shell_complete=complete.experiments,
              help="Experiment name (default: SOURCE's folder name).")
@click.option("-t", "--tag", "tags", multiple=True, help="Tag KEY or KEY=VALUE (repeatable).")
@click.option("--max-run-duration", type=int, help="Stop the run after this many seconds.")
@click.option("--detach", is_flag=True, help="Print the run id once submitted instead of following the run.")
@click.option("-v", "--verbose", is_flag=True,
              help="Also stream the agent's notes and environment builds (system_logs/prepare_log.txt).")
@click.pass_context
def submit(ctx: click.Context, source: str | None, script: str | None, run_config: str | None,
           environment_file: str | None, docker_image: str | None, target: str | None, experiment: str | None,
           tags: tuple[str, ...], max_run_duration: int | None, detach: bool, verbose: bool) -> None:
    """Submit a run of SOURCE (a folder, default `.`, with -s SCRIPT; or a .py file) and follow it.

    Arguments after -- go to the script. Exit status: 0 Completed, 1 Failed, 2 Canceled; Ctrl-C stops
    following (the run goes on) with 130.
    """
    arguments: list[Any] = list(ctx.meta.get(SCRIPT_ARGS, []))
    source_dir, script = split_source(source, script)
    config = RunConfiguration.load(run_config) if run_config else None
    src = ScriptRunConfig(source_directory=source_dir, script=script, run_config=config,
                          arguments=arguments or None, compute_target=target,
                          environment=_environment(environment_file, docker_image, config),
                          max_run_duration_seconds=max_run_duration)
    name = experiment or default_experiment(source_dir)
    ws = _workspace()
    exp = Experiment(ws, name)
    with Progress(TextColumn("Packaging snapshot"), BarColumn(), DownloadColumn(), TransferSpeedColumn(),
                  console=console, transient=True) as bar:
        task = bar.add_task("snapshot", total=None)
        run = exp.submit(src, tags=_parse_tags(tags),
                         progress=lambda done, total: bar.update(task, completed=done, total=total))
    console.print(f"Submitted run [bold]{run.id}[/] (experiment {name}, #{run.number})", highlight=False)
    if detach:
        out.print(run.id, highlight=False)
        return
    from rundock.submitter.targets import check

    console.print(f"Following it (Ctrl-C stops following; the run goes on). Later: rundock logs {run.id} -f",
                  markup=False, highlight=False)
    with following(run.id):
        record = follow.stream(ws.store, run.id, sys.stdout, check=lambda r: check(ws, r), prepare_log=verbose)
    follow.print_summary(record, sys.stdout, output_shown=True)
    if record.status == RunStatus.FAILED:
        console.print(f"Run {run.id} failed: {follow.error_headline(record.error)}", markup=False, highlight=False)
    if exit_code(record.status):
        sys.exit(exit_code(record.status))
