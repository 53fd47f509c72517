"""Shell completion of run ids, experiment names and compute targets, read from the workspace.

Enabled with ``eval "$(_RUNDOCK_COMPLETE=bash_source rundock)"`` (``zsh_source``, ``fish_source``).
Completing never creates a workspace or a history, never judges runs (no lost-run sweep) and never
fails: where there is nothing to read, it offers nothing.
"""

from __future__ import annotations

import os
from collections.abc import Callable

import click
from click.shell_completion import CompletionItem

from rundock.submitter.cli.base import fallback_path
from rundock.submitter.workspace import WORKSPACE_DIR, Workspace

MAX_ITEMS = 200


def _existing_workspace() -> Workspace | None:
    """The workspace ``Workspace.from_config()`` would open, if it exists already."""
    current = os.getcwd()
    while True:
        if os.path.isdir(os.path.join(current, WORKSPACE_DIR)):
            return Workspace.from_config()
        parent = os.path.dirname(current)
        if parent == current:
            break
        current = parent
    return Workspace.from_config() if os.path.isdir(fallback_path()) else None


def _offer(read: Callable[[Workspace], list[CompletionItem]]) -> list[CompletionItem]:
    try:
        ws = _existing_workspace()
        if ws is None:
            return []
        if ws.history_uri.startswith("sqlite:"):
            from rundock.history.backends.sqlite_file import history_path

            if not os.path.exists(history_path(ws.history_uri)):
                return []
        try:
            return read(ws)
        finally:
            ws.close()
    except Exception:  # a shell's Tab key never shows a traceback
        return []


def run_ids(ctx: click.Context, param: click.Parameter, incomplete: str) -> list[CompletionItem]:
    """Run ids starting with ``incomplete``, newest first, with experiment, number and status."""
    def read(ws: Workspace) -> list[CompletionItem]:
        return [CompletionItem(r.run_id, help=f"{r.experiment} #{r.number} {r.status.value}")
                for r in ws.store.list_runs() if r.run_id.startswith(incomplete)][:MAX_ITEMS]
    return _offer(read)


def experiments(ctx: click.Context, param: click.Parameter, incomplete: str) -> list[CompletionItem]:
    """Experiment names starting with ``incomplete``, most recently used first."""
    def read(ws: Workspace) -> list[CompletionItem]:
        names = dict.fromkeys(r.experiment for r in ws.store.list_runs(include_children=False))
        return [CompletionItem(name) for name in names if name.startswith(incomplete)][:MAX_ITEMS]
    return _offer(read)


def targets(ctx: click.Context, param: click.Parameter, incomplete: str) -> list[CompletionItem]:
    """``local`` and the attached compute targets starting with ``incomplete``."""
    def read(ws: Workspace) -> list[CompletionItem]:
        from rundock.submitter.compute import ComputeTarget

        items = [CompletionItem("local", help="this machine")]
        items += [CompletionItem(t.name, help=f"ssh {t.config.address}") for t in ComputeTarget.list(ws)]
        return [item for item in items if item.value.startswith(incomplete)]
    try:
        ws = _existing_workspace()
    except Exception:
        ws = None
    if ws is None:
        return [CompletionItem("local", help="this machine")] if "local".startswith(incomplete) else []
    try:
        return read(ws)
    except Exception:
        return []
    finally:
        ws.close()
