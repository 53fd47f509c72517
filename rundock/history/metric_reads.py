"""Reads of a run's metrics that spare the caller every value: what each metric is (``MetricSummary``), and a
long metric reduced to the points a chart of it needs (``MetricBuckets``).

A summary holds a metric's kind, its number of values and its last value: enough to show a value logged once,
to know a series is to be drawn, and to draw the kinds whose last value is what is shown.

Buckets split a metric's scalar values, in logging order, into at most ``buckets`` runs of neighbours; from each
come its first and last finite points, its lowest and highest ones (the first of equals), and the first value that
is no finite number (NaN, an infinity, text: where a gap in the line starts), each once, in logging order. A
metric with no more values than ``buckets`` comes back whole. These candidates (a few per bucket, whatever the
length of the metric) are what MinMaxLTTB draws from (``rundock.ui.series``): spikes and dips survive because the
extremes of every bucket are among them. The SQL backends compute them in the database, bucketing by the rows'
order of writing; the functions here are the plain-Python meaning, over every value, for the other backends.
"""

from __future__ import annotations

import dataclasses
import math
from array import array
from collections.abc import Iterable
from typing import Any, NamedTuple

from rundock.history.records import MetricRecord


@dataclasses.dataclass(frozen=True)
class MetricSummary:
    """One metric of a run, without its values."""

    name: str
    kind: str  # the kind of its last value
    count: int  # values logged
    last: Any  # its last value
    description: str  # the last value's description; the first value's when the last has none
    numeric: bool  # some value is a scalar number (NaN and the infinities count)


class MetricBuckets(NamedTuple):
    """A metric's chart candidates: ``xs`` as ``metric_points`` gives them (the step, the value's position among
    the metric's scalar values when it has none, or the time), ``ys`` NaN where a gap starts; ``total`` is the
    number of scalar values the metric holds."""

    total: int
    xs: array[float]
    ys: array[float]


def is_number(value: Any) -> bool:
    """Whether a logged value is a number (a bool is not; NaN and the infinities are)."""
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def summaries_of(records: Iterable[MetricRecord]) -> list[MetricSummary]:
    """The summaries of a run's records (in logging order), in the order the names were first logged."""
    groups: dict[str, list[MetricRecord]] = {}
    for record in records:
        groups.setdefault(record.name, []).append(record)
    out = []
    for name, group in groups.items():
        last = group[-1]
        out.append(MetricSummary(name, last.kind, len(group), last.value, last.description or group[0].description,
                                 any(r.kind == "scalar" and is_number(r.value) for r in group)))
    return out


def finite(value: float) -> bool:
    return not (math.isnan(value) or math.isinf(value))


def buckets_of(xs: array[float], ys: array[float], buckets: int) -> MetricBuckets:
    """The candidates of ``metric_points``'s arrays in ``buckets`` buckets of neighbouring positions (bucket ``i``
    of ``n`` values holds positions ``n*i//buckets`` up to ``n*(i+1)//buckets``)."""
    if buckets < 1:
        raise ValueError(f"a metric is split into at least 1 bucket, not {buckets}")
    n = len(ys)
    count = min(buckets, n)
    keep: list[int] = []
    for i in range(count):
        gap = low = high = None
        finite_positions = []
        for position in range(n * i // count, n * (i + 1) // count):
            y = ys[position]
            if not finite(y):
                gap = position if gap is None else gap
                continue
            finite_positions.append(position)
            if low is None or y < ys[low]:
                low = position
            if high is None or y > ys[high]:
                high = position
        chosen = {p for p in (gap, low, high) if p is not None}
        if finite_positions:
            chosen.update((finite_positions[0], finite_positions[-1]))
        keep.extend(sorted(chosen))
    out_x, out_y = array("d"), array("d")
    for position in keep:
        out_x.append(xs[position])
        out_y.append(ys[position] if finite(ys[position]) else math.nan)
    return MetricBuckets(n, out_x, out_y)

