"""``rundock runs --columns`` and ``--children``: extra columns, and child runs as a tree.

A column is ``KIND:NAME``; several are separated by commas or given with ``--columns`` again:

- ``tag:team``: the value of tag ``team`` ("yes" for a tag set without a value);
- ``prop:BuildId``: a property;
- ``arg:--alpha``: the script argument after ``--alpha`` (or the value of ``--alpha=0.5``; "yes" for a
  flag that has no value); ``arg:alpha`` means ``--alpha``;
- ``metric:acc``: the latest value logged under ``acc``.

A cell is empty where the run has no such tag, property, argument or metric.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable
from typing import Any

from rundock.history.records import RunRecord
from rundock.history.store import RunStore

KINDS = {"tag": "tag", "tags": "tag", "prop": "prop", "property": "prop", "properties": "prop",
         "arg": "arg", "argument": "arg", "metric": "metric", "metrics": "metric"}


@dataclasses.dataclass(frozen=True)
class Column:
    kind: str  # tag, prop, arg or metric
    name: str

    @property
    def header(self) -> str:
        return f"{self.kind}:{self.name}"


def parse_columns(specs: Iterable[str]) -> list[Column]:
    """Columns from ``--columns`` values (``tag:team,metric:acc``); ValueError says what is wrong."""
    columns = []
    for spec in specs:
        for item in (part.strip() for part in spec.split(",")):
            if not item:
                continue
            kind, sep, name = item.partition(":")
            if not sep or not name or kind.lower() not in KINDS:
                raise ValueError(f"{item!r} is not a column: write KIND:NAME with KIND one of tag, prop, arg, "
                                 "metric (e.g. tag:team,arg:--alpha,metric:acc)")
            columns.append(Column(KINDS[kind.lower()], name))
    return columns


def argument_value(arguments: list[Any], name: str) -> str | None:
    """The value of option ``name`` in a script's ``arguments`` (None when it is not there)."""
    names = [name] if name.startswith("-") else [f"--{name}", name]
    args = [str(a) for a in arguments]
    for i, arg in enumerate(args):
        for option in names:
            if arg == option:
                following = args[i + 1] if i + 1 < len(args) else None
                if following is None or (following.startswith("-") and not _is_number(following)):
                    return "yes"
                return following
            if arg.startswith(option + "="):
                return arg[len(option) + 1:]
    return None


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def column_value(column: Column, run: RunRecord, store: RunStore) -> Any:
    """What ``column`` shows for ``run`` (None: nothing)."""
    if column.kind == "tag":
        if column.name not in run.tags:
            return None
        value = run.tags[column.name]
        return "yes" if value is None else value
    if column.kind == "prop":
        return run.properties.get(column.name)
    if column.kind == "arg":
        return argument_value(list(run.run_definition.get("arguments") or []), column.name)
    records = store.get_metric_records(run.run_id, column.name)
    return records[-1].value if records else None


def tree(runs: list[RunRecord]) -> list[list[tuple[RunRecord, int]]]:
    """``runs`` grouped under their top-level runs: one group per run whose parent is not in ``runs``
    (in the order given), holding it and its descendants depth-first, each with its depth; children
    come oldest first."""
    ids = {r.run_id for r in runs}
    children: dict[str, list[RunRecord]] = {}
    for run in runs:
        if run.parent_id is not None and run.parent_id in ids:
            children.setdefault(run.parent_id, []).append(run)
    for kids in children.values():
        kids.sort(key=lambda r: (r.created_at, r.number))
    groups = []
    seen: set[str] = set()
    for root in (r for r in runs if r.parent_id not in ids):
        group: list[tuple[RunRecord, int]] = []
        stack = [(root, 0)]
        while stack:
            run, depth = stack.pop()
            if run.run_id in seen:
                continue
            seen.add(run.run_id)
            group.append((run, depth))
            stack.extend((kid, depth + 1) for kid in reversed(children.get(run.run_id, [])))
        groups.append(group)
    return groups
