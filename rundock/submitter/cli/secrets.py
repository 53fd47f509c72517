"""``rundock secret ...`` and ``rundock models``."""

from __future__ import annotations

import sys

import click
from rich.table import Table

from rundock.submitter.cli.base import _workspace, cli, console, out


@cli.group()
def secret() -> None:
    """Workspace secrets that jobs read with run.get_secret(NAME)."""


@secret.command("set")
@click.argument("name")
@click.option("--value", help="The value (default: prompt without echo, or read from standard input).")
def secret_set(name: str, value: str | None) -> None:
    """Add or replace secret NAME."""
    if value is None:
        value = click.prompt(f"Value of {name}", hide_input=True) if sys.stdin.isatty() else sys.stdin.read().strip()
    _workspace().secrets.set_secret(name, value)
    console.print(f"Secret {name} saved")


@secret.command("list")
def secret_list() -> None:
    """List secret names (never values)."""
    for entry in _workspace().secrets.list_secrets():
        out.print(entry["name"])


@secret.command("delete")
@click.argument("name")
def secret_delete(name: str) -> None:
    """Remove secret NAME."""
    _workspace().secrets.delete_secret(name)
    console.print(f"Secret {name} deleted")


@cli.command()
@click.argument("name", required=False)
def models(name: str | None) -> None:
    """List registered model versions (of NAME), newest first."""
    from rundock.submitter.model import Model

    table = Table("model", "version", "run id", "path", "tags", box=None)
    for model in Model.list(_workspace(), name=name):
        table.add_row(model.name, str(model.version), model.run_id or "", model._record.path,
                      ", ".join(f"{k}={v}" for k, v in model.tags.items()))
    out.print(table)
