"""``rundock secret ...`` and ``rundock models``."""

from __future__ import annotations

import sys

import click
from rich.table import Table
from rich.text import Text

from rundock.history.records import iso_utc
from rundock.submitter.cli.base import _workspace, cli, console, history_label, nothing_in, out
from rundock.submitter.cli.output import emit_json


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
@click.option("--json", "as_json", is_flag=True, help="Print JSON: [{\"name\": ...}, ...].")
def secret_list(as_json: bool) -> None:
    """List secret names (never values)."""
    ws = _workspace()
    entries = ws.secrets.list_secrets()
    if as_json:
        emit_json([{"name": entry["name"]} for entry in entries])
    else:
        for entry in entries:
            out.print(entry["name"], markup=False, highlight=False)
    if not entries:
        nothing_in("secrets", ws.secrets.path)


@secret.command("delete")
@click.argument("name")
def secret_delete(name: str) -> None:
    """Remove secret NAME."""
    _workspace().secrets.delete_secret(name)
    console.print(f"Secret {name} deleted")


@cli.command()
@click.argument("name", required=False)
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def models(name: str | None, as_json: bool) -> None:
    """List registered model versions (of NAME), newest first."""
    from rundock.submitter.model import Model

    ws = _workspace()
    found = Model.list(ws, name=name)
    if as_json:
        emit_json([{"name": m.name, "version": m.version, "run_id": m.run_id, "path": m._record.path,
                    "created": iso_utc(m._record.created_at), "tags": dict(m.tags),
                    "properties": dict(m._record.properties), "description": m._record.description}
                   for m in found])
    else:
        table = Table("model", "version", "run id", "path", "tags", box=None)
        for model in found:
            table.add_row(Text(model.name), str(model.version), Text(model.run_id or ""), Text(model._record.path),
                          Text(", ".join(f"{k}={v}" for k, v in model.tags.items())))
        out.print(table)
    if not found:
        nothing_in(f"models named {name}" if name else "models", history_label(ws))
