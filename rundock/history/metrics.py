"""Turn stored metric values into the shapes Azure ML's ``get_metrics`` returns.

- a scalar logged once is the value; logged several times, the list of values;
- ``log_list`` gives the list (several calls: a list of lists);
- ``log_row`` calls build one table: ``{column: [values...]}``;
- ``log_table`` gives the dict of columns (several calls: a list of dicts).
"""

from __future__ import annotations

from typing import Any

from rundock.history.records import MetricRecord


def metric_shapes(records: list[MetricRecord]) -> dict[str, Any]:
    grouped: dict[str, list[MetricRecord]] = {}
    for rec in records:
        grouped.setdefault(rec.name, []).append(rec)
    return {name: _shape(recs) for name, recs in grouped.items()}


def _shape(recs: list[MetricRecord]) -> Any:
    kind = recs[-1].kind
    values = [r.value for r in recs if r.kind == kind]
    if kind == "row":
        table: dict[str, list[Any]] = {}
        for i, row in enumerate(values):
            for col, val in row.items():
                table.setdefault(col, [None] * i).append(val)
            for col in table:
                if len(table[col]) < i + 1:
                    table[col].append(None)
        return table
    return values[0] if len(values) == 1 else values


def check_steps(existing: list[MetricRecord], name: str, step: int | None) -> None:
    """A metric's values must all carry a step or none of them."""
    if existing and (existing[0].step is None) != (step is None):
        raise ValueError(f"metric {name!r}: give 'step' for every value of a metric or for none")
