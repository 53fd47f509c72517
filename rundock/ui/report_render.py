"""Line charts for the report and the terminal: scalar metrics over steps (several runs overlaid), and the
line-shaped specs of ``rundock.ui.render`` (lists, ROC curves) in one form.

A line chart is ``{"name", "x_label", "y_label", "series": [{"label", "x", "y"}], "note"}``: each series sorted
by x, ``None`` for a gap (NaN or infinite values: the JSON stays strict), and ``note`` saying when a series was
downsampled (LTTB, ``rundock.ui.series.lttb``) and from how many points. The other kinds of metric (tables,
confusion matrices, images, and the residuals and predictions that ``static/bins.js`` draws) come from
``rundock.ui.render.metric_spec`` as they are.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any

Spec = dict[str, Any]


def _number(value: Any) -> float | None:
    """``value`` as a float for a chart, or None (not a number, NaN, infinite)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    number = float(value)
    return number if math.isfinite(number) else None


def downsample(xs: list[float], ys: list[float | None], max_points: int) -> tuple[list[float], list[float | None]]:
    """At most ``max_points`` points that keep the curve's shape (LTTB); gaps (None) are kept out of the
    sampling and come back as gaps."""
    if len(xs) <= max_points:
        return xs, ys
    from rundock.ui.series import lttb

    kept = [(x, y) for x, y in zip(xs, ys, strict=False) if y is not None]
    sx, sy = lttb([p[0] for p in kept], [p[1] for p in kept], max_points)
    return list(sx), list(sy)


def series_chart(name: str, per_run: Iterable[tuple[str, Spec]]) -> Spec:
    """One line chart of scalar metric ``name`` with one series per run (``per_run``: label, the run's
    ``rundock.ui.series.metric_series``, downsampled in the store)."""
    series, notes = [], []
    for label, drawn in per_run:
        pairs = sorted(zip(drawn["x"], drawn["y"], strict=True), key=lambda p: p[0])
        if drawn["downsampled"]:
            notes.append(f"{label}: {len(pairs):,} of {drawn['total_points']:,} points shown (LTTB downsampling)")
        series.append({"label": label, "x": [p[0] for p in pairs], "y": [_number(p[1]) for p in pairs]})
    return _line(name, "step", name, series, "; ".join(notes))


def _line(name: str, x_label: str, y_label: str, series: list[Spec], note: str = "") -> Spec:
    return {"name": name, "x_label": x_label, "y_label": y_label, "series": series, "note": note}


def line_from_spec(spec: Spec, *, max_points: int) -> Spec | None:
    """The line chart of a ``render.metric_spec`` of kind list (numbers over their index) or accuracy_table (ROC
    curve per class); None for other kinds and for a list that holds text."""
    kind, name = spec.get("kind"), str(spec.get("name"))
    if kind == "list":
        if not spec["y"] or not all(v is None or _number(v) is not None for v in spec["y"]):
            return None
        xs, ys = downsample([float(x) for x in spec["x"]], [_number(v) for v in spec["y"]], max_points)
        note = f"{len(xs):,} of {len(spec['x']):,} points shown (LTTB downsampling)" if len(xs) < len(spec["x"]) else ""
        return _line(name, "index", "", [{"label": name, "x": xs, "y": ys}], note)
    if kind == "accuracy_table":
        curves = []
        for curve in spec["curves"]:
            pairs = zip(curve["fpr"], curve["tpr"], strict=False)
            points = sorted({(a, b) for a, b in pairs if a is not None and b is not None})
            curves.append({"label": str(curve["label"]), "x": [p[0] for p in points], "y": [p[1] for p in points]})
        return _line(name, "false positive rate", "true positive rate", curves, "ROC curve per class")
    return None


def bins_note(spec: Spec) -> str:
    """What a residuals histogram or predictions chart shows, in words (its caption's note)."""
    counts = [c for c in spec.get("counts") or [] if c is not None]
    edges = [e for e in spec.get("edges") or [] if e is not None]
    span = f" from {edges[0]:.6g} to {edges[-1]:.6g}" if edges else ""
    total = f"{sum(counts):,.0f} values in {len(counts)} bins{span}"
    if spec.get("kind") == "predictions":
        return f"mean prediction per bin of true values, ± its error, against the ideal line; bars: {total}"
    return f"residuals: {total}"
