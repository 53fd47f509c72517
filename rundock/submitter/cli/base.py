"""The ``rundock`` command line: the group, shared consoles and helpers, and ``main``.

Commands live beside this module, one module per family (runs, secrets and models, targets, history
upkeep); ``rundock.submitter.cli`` imports them all so that they register on ``cli``.
"""

from __future__ import annotations

import sys
from typing import Any

import click
from rich.console import Console

from rundock.errors import RundockError, RunFailedError
from rundock.submitter.run import Run
from rundock.submitter.workspace import Workspace

# Run ids are never cut: without a terminal, lines are as wide as they need to be.
console = Console(stderr=True, soft_wrap=True)
out = Console(soft_wrap=True, width=None if sys.stdout.isatty() else 250)


def _workspace() -> Workspace:
    return Workspace.from_config()


def _run(run_id: str) -> Run:
    return Run.get(_workspace(), run_id)


def _parse_tags(values: tuple[str, ...]) -> dict[str, str | None]:
    return {k: (v if sep else None) for k, sep, v in (t.partition("=") for t in values)}

@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="rundock")
def cli() -> None:
    """Submit training scripts to compute targets and track their runs."""

def main(argv: list[str] | None = None) -> Any:
    try:
        return cli.main(args=argv, prog_name="rundock", standalone_mode=False)
    except RunFailedError as exc:
        console.print(f"[red]{exc}[/]")
        sys.exit(1)
    except (RundockError, FileNotFoundError, KeyError, ValueError) as exc:
        message = exc.args[0] if isinstance(exc, KeyError) and exc.args else exc
        console.print(f"[red]error:[/] {message}")
        sys.exit(2)
    except click.exceptions.Abort:
        sys.exit(130)
    except click.ClickException as exc:
        exc.show()
        sys.exit(exc.exit_code)
