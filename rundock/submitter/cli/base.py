"""The ``rundock`` command line: the group, shared consoles and helpers, and ``main``.

Commands live beside this module, one module per family (submitting, listing, following and
controlling runs, secrets and models, targets, history upkeep); ``rundock.submitter.cli`` imports them
all so that they register on ``cli``.

Every command that reads the workspace goes through ``_workspace()``: when no ``.rundock/`` of its own
is found from the current folder up and the one used is ``$RUNDOCK_HOME`` or ``~/.rundock``, it says
so on standard error, and ``nothing_in()`` names the history a command read when it found nothing.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import click
from rich.console import Console
from rich.markup import escape

from rundock.errors import RundockError, RunFailedError
from rundock.submitter.run import Run
from rundock.submitter.workspace import ENV_HOME, WORKSPACE_DIR, Workspace

# Run ids are never cut: without a terminal, lines are as wide as they need to be.
console = Console(stderr=True, soft_wrap=True, emoji=False)  # ":AB:" in a fingerprint stays text
out = Console(soft_wrap=True, width=None if sys.stdout.isatty() else 250, emoji=False)


def fallback_path() -> str:
    """The workspace used where no ``.rundock/`` is found from the current folder up."""
    return os.path.abspath(os.environ.get(ENV_HOME) or os.path.join(os.path.expanduser("~"), WORKSPACE_DIR))


def _workspace() -> Workspace:
    ws = Workspace.from_config()
    if ws.path == fallback_path() and os.path.dirname(ws.path) != os.getcwd():
        which = f"${ENV_HOME}" if os.environ.get(ENV_HOME) else "the default workspace"
        console.print(f"rundock: no .rundock/ of its own in {os.getcwd()}: using {ws.path} ({which}); "
                      "`rundock init` makes one here", markup=False, highlight=False)
    return ws


def history_label(ws: Workspace) -> str:
    """Where ``ws`` keeps its run history: the SQLite file, or the history's URI."""
    from rundock.history.backends.sqlite_file import history_path

    return history_path(ws.history_uri) if ws.history_uri.startswith("sqlite:") else ws.history_uri


def nothing_in(what: str, where: str) -> None:
    """Say on standard error that nothing was found, and where the command looked."""
    console.print(f"no {what} in {where}", markup=False, highlight=False)


def _run(run_id: str) -> Run:
    return Run.get(_workspace(), run_id)


def _parse_tags(values: tuple[str, ...]) -> dict[str, str | None]:
    return {k: (v if sep else None) for k, sep, v in (t.partition("=") for t in values)}


@contextmanager
def following(run_id: str) -> Iterator[None]:
    """Ctrl-C while following a run stops the following, not the run: say how to get back, exit 130."""
    try:
        yield
    except KeyboardInterrupt:
        console.print(f"\nStopped following {run_id}; the run goes on.\n"
                      f"  Follow it again: rundock logs {run_id} -f\n"
                      f"  Cancel it:       rundock cancel {run_id}", markup=False, highlight=False)
        sys.exit(130)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="rundock")
def cli() -> None:
    """Submit training scripts to compute targets and track their runs.

    Shell completion (run ids, experiments, targets): add
    eval "$(_RUNDOCK_COMPLETE=bash_source rundock)" to ~/.bashrc
    (zsh_source in ~/.zshrc; fish_source for fish).
    """

def main(argv: list[str] | None = None) -> Any:
    try:
        return cli.main(args=argv, prog_name="rundock", standalone_mode=False)
    except RunFailedError as exc:
        console.print(f"[red]{escape(str(exc))}[/]")
        sys.exit(1)
    except (RundockError, FileNotFoundError, KeyError, ValueError) as exc:
        message = exc.args[0] if isinstance(exc, KeyError) and exc.args else exc
        console.print(f"[red]error:[/] {escape(str(message))}", highlight=False)
        sys.exit(2)
    except click.exceptions.Abort:
        sys.exit(130)
    except click.ClickException as exc:
        exc.show()
        sys.exit(exc.exit_code)
