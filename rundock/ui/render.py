"""A run's metric records as chart specs: plain JSON that ``static/app.js`` draws (and ``report`` embeds).

One spec per metric name, in the order the names were first logged. ``kind`` says how it is drawn, as Azure ML
Studio draws it:

- ``line``: a scalar logged more than once: ``x``, ``y`` (nulls for NaN/inf), ``total_points``, ``downsampled``;
- ``value``: a scalar logged once (shown in the run's metrics table, not as a chart);
- ``list``: ``log_list`` values, drawn as a line over their index;
- ``table``: ``log_table`` and ``log_row`` rows: ``columns`` and ``rows``;
- ``image``: ``file``, the run's file holding it;
- ``confusion_matrix``: ``labels`` and ``matrix`` (a heat-map table);
- ``accuracy_table``: ``curves``: per class, ROC (false vs true positive rate) and precision-recall points
  computed from its probability thresholds table;
- ``histogram``: residuals: ``edges`` and ``counts``;
- ``predictions``: ``edges``, ``averages``, ``errors`` and ``counts`` (bars of the mean prediction per bin).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from typing import Any

from rundock.history.metric_reads import MetricSummary
from rundock.history.records import MetricRecord

Spec = dict[str, Any]
SeriesOf = Callable[[str], Spec]
RecordsOf = Callable[[str], list[MetricRecord]]


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def chart_specs(records: Iterable[MetricRecord], series: SeriesOf) -> list[Spec]:
    """The specs of a run's metrics; ``series(name)`` gives a scalar's (downsampled) points
    (``ui.data.metric_series``)."""
    by_name: dict[str, list[MetricRecord]] = {}
    for record in records:
        by_name.setdefault(record.name, []).append(record)
    return [spec for name, group in by_name.items() if (spec := metric_spec(name, group, series)) is not None]


def is_series(summary: MetricSummary) -> bool:
    """Whether a metric is drawn as a line over steps: a scalar logged more than once, some of it numbers."""
    return summary.kind == "scalar" and summary.count > 1 and summary.numeric


def summary_specs(summaries: Iterable[MetricSummary], records_of: RecordsOf, series: SeriesOf) -> list[Spec]:
    """The specs of a run's metrics from their summaries (``MetricsStore.metric_summaries``), the same as
    ``chart_specs`` gives without reading every value: a scalar needs none (a chart's points come from
    ``series(name)``, downsampled in the store), the other kinds are read whole (``records_of(name)``)."""
    specs = []
    for summary in summaries:
        if summary.kind != "scalar":
            spec = metric_spec(summary.name, records_of(summary.name), series)
        elif is_series(summary):
            spec = {"name": summary.name, "description": summary.description, "kind": "line", **series(summary.name)}
        else:
            spec = {"name": summary.name, "description": summary.description, "kind": "value",
                    "value": _plain(summary.last)}
        if spec is not None:
            specs.append(spec)
    return specs


def metric_spec(name: str, group: list[MetricRecord], series: SeriesOf) -> Spec | None:
    """The spec of one metric from all its records (None: nothing to show)."""
    last = group[-1]
    description = next((r.description for r in reversed(group) if r.description), "")
    base: Spec = {"name": name, "description": description}
    kind = last.kind
    if kind == "scalar":
        if len(group) > 1 and any(_number(r.value) for r in group):
            return {**base, "kind": "line", **series(name)}
        return {**base, "kind": "value", "value": _plain(last.value)}
    if kind == "list":
        values = [_plain(v) for v in (last.value or [])]
        return {**base, "kind": "list", "x": list(range(len(values))), "y": values}
    if kind in ("table", "row"):
        return {**base, "kind": "table", **_table(group)}
    if kind == "image":
        return {**base, "kind": "image", "file": str(last.value)}
    data = last.value.get("data") if isinstance(last.value, dict) else None
    if not isinstance(data, dict):
        return {**base, "kind": "value", "value": _plain(last.value)}
    if kind == "confusion_matrix":
        return {**base, "kind": "confusion_matrix", "labels": [str(x) for x in _list(data.get("class_labels"))],
                "matrix": [_numbers(row) for row in _list(data.get("matrix"))]}
    if kind == "accuracy_table":
        return {**base, "kind": "accuracy_table", "curves": accuracy_curves(data)}
    if kind == "residuals":
        return {**base, "kind": "histogram", "edges": _numbers(data.get("bin_edges")),
                "counts": _numbers(data.get("bin_counts"))}
    if kind == "predictions":
        return {**base, "kind": "predictions", "edges": _numbers(data.get("bin_edges")),
                "averages": _numbers(data.get("bin_averages")), "errors": _numbers(data.get("bin_errors")),
                "counts": _numbers(data.get("bin_counts"))}
    return {**base, "kind": "value", "value": _plain(last.value)}


def _list(value: Any) -> list[Any]:
    return value if isinstance(value, list) else []


def _numbers(values: Any) -> list[float | None]:
    """A job's list of numbers as finite numbers or None: anything else it wrote there (text, NaN, nested
    values, a non-list) draws nothing instead of breaking the page."""
    return [v if _number(v) and math.isfinite(v) else None for v in _list(values)]


def _plain(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def _table(group: list[MetricRecord]) -> Spec:
    """Columns and rows of a table metric: the last ``log_table`` plus every ``log_row`` after it."""
    columns: list[str] = []
    rows: list[dict[str, Any]] = []
    for record in group:
        value = record.value if isinstance(record.value, dict) else {}
        if record.kind == "table":
            rows = []
            length = max((len(c) for c in value.values() if isinstance(c, list)), default=0)
            rows = [{k: (c[i] if isinstance(c, list) and i < len(c) else None) for k, c in value.items()}
                    for i in range(length)]
        else:
            rows.append(dict(value))
        for key in value:
            if key not in columns:
                columns.append(str(key))
    return {"columns": columns, "rows": [[_plain(row.get(c)) for c in columns] for row in rows]}


def _ratio(top: float, bottom: float) -> float | None:
    return top / bottom if bottom else None


def accuracy_curves(data: dict[str, Any]) -> list[Spec]:
    """Per class: ROC points (``fpr``, ``tpr``) and precision-recall points (``recall``, ``precision``) from
    the ``probability_tables`` rows ``[TP, FP, TN, FN]``, one per threshold."""
    curves = []
    for label, rows in zip(_list(data.get("class_labels")), _list(data.get("probability_tables")), strict=False):
        fpr, tpr, precision, recall = [], [], [], []
        for row in _list(rows):
            numbers = _numbers(row)
            if len(numbers) != 4 or None in numbers:
                continue
            tp, fp, tn, fn = (float(v) for v in numbers if v is not None)
            fpr.append(_ratio(fp, fp + tn))
            tpr.append(_ratio(tp, tp + fn))
            recall.append(_ratio(tp, tp + fn))
            precision.append(_ratio(tp, tp + fp))
        curves.append({"label": str(label), "fpr": fpr, "tpr": tpr, "recall": recall, "precision": precision,
                       "thresholds": _numbers(data.get("probability_thresholds"))})
    return curves
