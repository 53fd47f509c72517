"""``rundock plot``: line charts of scalar metrics in a terminal, drawn with Unicode braille.

Each character cell holds 2 x 4 dots, so a 100-column chart has 200 dots across. Several series (one per run)
share a chart, each in its own colour with a legend line that also gives its last, lowest and highest value, so
the chart still reads where colours do not show (output piped to a file). Works over SSH: it prints text and
needs no display. A long metric is read as its chart candidates (``MetricsStore.metric_buckets``: the first, last,
lowest and highest points of each of a thousand buckets, computed in SQL by the SQLite and PostgreSQL histories),
never whole, then downsampled to the chart's width (LTTB); the legend's lowest and highest values are exact, since
every bucket's extremes are among the candidates.
"""

from __future__ import annotations

import dataclasses
import math
import re
from collections.abc import Sequence

from rich.text import Text

from rundock.errors import RundockError
from rundock.history.metric_reads import MetricSummary
from rundock.history.store import MetricsStore
from rundock.ui.report_render import downsample

COLOURS = ("bright_blue", "bright_red", "bright_green", "bright_magenta", "bright_yellow", "bright_cyan",
           "blue", "red", "green", "magenta")
CANDIDATE_BUCKETS = 1000  # buckets a long metric is read in: more than a terminal has dots across
# The bit of each dot of a braille cell, by (column, row) within the cell.
_DOTS = ((0x01, 0x02, 0x04, 0x40), (0x08, 0x10, 0x20, 0x80))


class MetricNotPlottable(RundockError, ValueError):
    """A metric asked for is not logged by any of the runs, or holds something other than numbers."""


@dataclasses.dataclass(frozen=True)
class Series:
    """One line: its legend label and its points, sorted by x (``None``: a gap, e.g. a NaN value), and the
    number of values it stands for (more than its points when drawn from a long metric's candidates)."""

    label: str
    xs: list[float]
    ys: list[float | None]
    total: int | None = None


def series_of(store: MetricsStore, run_id: str, summary: MetricSummary, x: str = "step") -> Series:
    """The series of one scalar metric of a run (``x``: "step", or "time": seconds since its first value), from
    the store's chart candidates (``MetricsStore.metric_buckets``: every bucket's first, last, lowest and
    highest points, so the legend's lowest and highest are exact however long the metric); MetricNotPlottable
    when the metric holds tables, images, lists or text."""
    if summary.kind != "scalar" or not summary.numeric:
        what = "text or booleans" if summary.kind == "scalar" else f"a {summary.kind.replace('_', ' ')}"
        raise MetricNotPlottable(f"metric {summary.name!r} of run {run_id} holds {what}, not numbers over steps; "
                                 "rundock plot draws scalar metrics (run.log(name, number)); "
                                 f"see the rest with: rundock report {run_id} -o report.html")
    found = store.metric_buckets(run_id, summary.name, x, CANDIDATE_BUCKETS)
    start = found.xs[0] if x == "time" and found.xs else 0.0
    pairs = sorted(((px - start, py if math.isfinite(py) else None) for px, py in zip(found.xs, found.ys, strict=True)),
                   key=lambda p: p[0])
    return Series(run_id, [p[0] for p in pairs], [p[1] for p in pairs], found.total)


def _fmt(value: float) -> str:
    return f"{value:.4g}"


def _bounds(series: Sequence[Series]) -> tuple[float, float, float, float]:
    xs = [x for s in series for x in s.xs]
    ys = [y for s in series for y in s.ys if y is not None]
    x0, x1 = (min(xs), max(xs)) if xs else (0.0, 1.0)
    y0, y1 = (min(ys), max(ys)) if ys else (0.0, 1.0)
    if x1 == x0:
        x1 = x0 + 1
    if y1 == y0:
        pad = abs(y0) * 0.1 or 1.0
        y0, y1 = y0 - pad, y1 + pad
    return x0, x1, y0, y1


def _line(a: tuple[int, int], b: tuple[int, int]) -> list[tuple[int, int]]:
    """The dots from ``a`` to ``b`` (Bresenham)."""
    (x0, y0), (x1, y1) = a, b
    dx, dy = abs(x1 - x0), -abs(y1 - y0)
    sx, sy = (1 if x0 < x1 else -1), (1 if y0 < y1 else -1)
    err, dots = dx + dy, []
    while True:
        dots.append((x0, y0))
        if (x0, y0) == (x1, y1):
            return dots
        e2 = 2 * err
        if e2 >= dy:
            err, x0 = err + dy, x0 + sx
        if e2 <= dx:
            err, y0 = err + dx, y0 + sy


_CONTROL = re.compile("[\x00-\x1f\x7f-\x9f]")


def printable(text: str) -> str:
    """``text`` with control characters (ESC, C1 codes, newlines…) shown as ``?``: a metric name or run label
    comes from a job and must not move the cursor, clear the screen or write the clipboard of whoever plots it."""
    return _CONTROL.sub("?", text)


def render(title: str, series: Sequence[Series], *, width: int = 80, height: int = 15,
           x_label: str = "step") -> Text:
    """A chart ``width`` columns wide with ``height`` rows of plot area, plus its title, x axis and legend
    (every label from a run made printable)."""
    title = printable(title)
    series = [dataclasses.replace(s, label=printable(s.label)) for s in series]
    x0, x1, y0, y1 = _bounds(series)
    y_labels = [_fmt(y1), _fmt((y0 + y1) / 2), _fmt(y0)]
    margin = max(len(s) for s in y_labels) + 1
    cols, rows = max(width - margin - 1, 10), max(height, 3)
    dots_x, dots_y = cols * 2, rows * 4
    cells = [[0] * cols for _ in range(rows)]
    owner = [[-1] * cols for _ in range(rows)]

    def to_dot(x: float, y: float) -> tuple[int, int]:
        return (round((x - x0) / (x1 - x0) * (dots_x - 1)), round((y1 - y) / (y1 - y0) * (dots_y - 1)))

    for index, s in enumerate(series):
        xs, ys = downsample(s.xs, s.ys, max(dots_x * 2, 16))
        previous: tuple[int, int] | None = None
        for x, y in zip(xs, ys, strict=False):
            if y is None or not math.isfinite(y):
                previous = None
                continue
            dot = to_dot(x, y)
            for dx, dy in (_line(previous, dot) if previous else [dot]):
                cells[dy // 4][dx // 2] |= _DOTS[dx % 2][dy % 4]
                owner[dy // 4][dx // 2] = index
            previous = dot

    text = Text()
    text.append(f"{title}\n", style="bold")
    label_rows = {0: y_labels[0], rows // 2: y_labels[1], rows - 1: y_labels[2]}
    for r in range(rows):
        text.append(label_rows.get(r, "").rjust(margin - 1) + " ┤" if r in label_rows else " " * margin + "│",
                    style="dim")
        for c in range(cols):
            bits = cells[r][c]
            text.append(chr(0x2800 + bits) if bits else " ",
                        style=COLOURS[owner[r][c] % len(COLOURS)] if bits else "")
        text.append("\n")
    text.append(" " * margin + "└" + "─" * cols + "\n", style="dim")
    left, right = _fmt(x0), _fmt(x1)
    middle = x_label.center(max(cols - len(left) - len(right), 0))
    text.append(" " * (margin + 1) + left + middle + right + "\n", style="dim")
    for index, s in enumerate(series):
        values = [y for y in s.ys if y is not None]
        total = len(s.ys) if s.total is None else s.total
        count = f"{total:,} point" + ("s" if total != 1 else "")
        stats = (f"last={_fmt(values[-1])} min={_fmt(min(values))} max={_fmt(max(values))} ({count})"
                 if values else "no finite values")
        label = s.label if len(s.label) <= width - 3 else s.label[:max(width - 4, 1)] + "…"
        text.append("━━ ", style=COLOURS[index % len(COLOURS)])
        text.append(label)
        if 3 + len(label) + 2 + len(stats) <= width:
            text.append("  " + stats + "\n", style="dim")
        else:  # too narrow for one line: the figures go under the label
            text.append("\n   " + stats[:max(width - 3, 1)] + "\n", style="dim")
    return text
