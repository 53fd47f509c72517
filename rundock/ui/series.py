"""A metric's values as chart series: downsampled on the server with LTTB, and as a full CSV download.

``metric_series`` sends at most ``max_points`` points of one metric, chosen by MinMaxLTTB: the store splits the
metric into ``max_points`` buckets and hands back only each bucket's first, last, lowest and highest points
(``MetricsStore.metric_buckets``, computed in SQL by the SQLite and PostgreSQL backends: a million values become
a few thousand candidates without leaving the database), then LTTB (Largest-Triangle-Three-Buckets, Steinarsson
2013) picks among those: it keeps the first and the last point and, in each bucket between, the point that makes
the largest triangle with the point kept before it and the mean of the next bucket. Spikes and dips survive
(every bucket's extremes are among the candidates, and the triangles favour them) while flat stretches thin out.
A metric with no more values than ``max_points`` is sent whole. LTTB's inner loop runs in C (``map`` over array
slices).

NaN and infinite values cannot be drawn: they come out as ``null``. Downsampled, each bucket with some of them
gives one null point where the first starts (a gap in the line), as long as there are at most a quarter of
``max_points`` such runs among the candidates; a series with more is drawn from its numbers alone.

A downsampled series is kept (``CACHED_SERIES`` per store) with the store's ``metric_version`` of the metric, and
sent again while that has not changed: a chart opened again, or by a second viewer, costs one indexed lookup.

``metric_csv`` streams every value as ``step,time,value`` lines, a chunk at a time.
"""

from __future__ import annotations

import math
import threading
import weakref
from array import array
from collections import OrderedDict
from collections.abc import Iterator, Sequence
from itertools import repeat
from operator import add, mul
from typing import Any

from rundock.history.store import MetricsStore

CSV_LINES_PER_CHUNK = 10_000
CACHED_SERIES = 64  # downsampled series kept per store, the least recently drawn dropped first
_CACHE: weakref.WeakKeyDictionary[MetricsStore, OrderedDict[tuple[str, str, str, int], tuple[int, dict[str, Any]]]] \
    = weakref.WeakKeyDictionary()
_LOCK = threading.Lock()


def lttb(xs: Sequence[float], ys: Sequence[float], threshold: int) -> tuple[list[float], list[float]]:
    """At most ``threshold`` of the points (finite numbers, ``xs`` in drawing order): all of them when there are
    no more than that (or ``threshold`` < 3), else LTTB's choice, the first and last always among them."""
    chosen = lttb_indices(xs, ys, threshold)
    return [xs[i] for i in chosen], [ys[i] for i in chosen]


def lttb_indices(xs: Sequence[float], ys: Sequence[float], threshold: int) -> list[int]:
    """The positions ``lttb`` keeps, in order."""
    n = len(xs)
    if len(ys) != n:
        raise ValueError(f"lttb: {n} x values but {len(ys)} y values")
    if threshold >= n or threshold < 3:
        return list(range(n))
    every = (n - 2) / (threshold - 2)
    chosen = [0]
    a = 0
    for i in range(threshold - 2):
        lo, hi = int(i * every) + 1, int((i + 1) * every) + 1
        nlo, nhi = hi, min(int((i + 2) * every) + 1, n)
        if nlo >= nhi:
            nlo, nhi = n - 1, n
        avg_x = sum(xs[nlo:nhi]) / (nhi - nlo)
        avg_y = sum(ys[nlo:nhi]) / (nhi - nlo)
        ax, ay = xs[a], ys[a]
        # Twice the triangle's area is |p*y + q*x + c| for a candidate (x, y): one pass of C per term.
        p, q = ax - avg_x, avg_y - ay
        c = -p * ay - ax * q
        areas = list(map(abs, map(add, map(add, map(mul, repeat(p), ys[lo:hi]), map(mul, repeat(q), xs[lo:hi])),
                                  repeat(c))))
        a = lo + areas.index(max(areas))
        chosen.append(a)
    chosen.append(n - 1)
    return chosen


def metric_series(store: MetricsStore, run_id: str, name: str, *, max_points: int = 2000,
                  x: str = "step") -> dict[str, Any]:
    """``{"name", "x", "y", "total_points", "downsampled"}`` for a chart of one scalar metric (see
    ``compute_series``), from the cache while no value of the metric has been logged since it was computed."""
    version = store.metric_version(run_id, name)
    key = (run_id, name, x, max_points)
    if version is not None:
        with _LOCK:
            entries = _CACHE.setdefault(store, OrderedDict())
            hit = entries.get(key)
            if hit is not None and hit[0] == version:
                entries.move_to_end(key)
                return dict(hit[1])
    computed = compute_series(store, run_id, name, max_points=max_points, x=x)
    if version is not None:
        with _LOCK:
            entries = _CACHE.setdefault(store, OrderedDict())
            entries[key] = (version, computed)
            while len(entries) > CACHED_SERIES:
                entries.popitem(last=False)
    return dict(computed)


def clear_cache() -> None:
    """Forget every cached series (the benchmarks time the first drawing of a chart)."""
    with _LOCK:
        _CACHE.clear()


def compute_series(store: MetricsStore, run_id: str, name: str, *, max_points: int = 2000,
                   x: str = "step") -> dict[str, Any]:
    """``{"name", "x", "y", "total_points", "downsampled"}`` for a chart of one scalar metric: ``x`` is the
    step (the value's position when it has none) or, with ``x="time"``, when it was logged (unix seconds);
    ``y`` holds null where a value is no finite number."""
    if x not in ("step", "time"):
        raise ValueError(f"a metric series is drawn over 'step' or 'time', not {x!r}")
    if max_points < 3:
        raise ValueError(f"a metric series needs max_points >= 3, not {max_points}")
    candidates = store.metric_buckets(run_id, name, x, max_points)
    all_x, all_y, total = candidates.xs, candidates.ys, candidates.total
    gaps: list[tuple[int, float]] = []
    if math.isfinite(sum(all_y)):  # no gap: the arrays as they are (a sum is finite only if every term is)
        xs, ys, where = all_x, all_y, array("q")
    else:
        xs, ys, where, gaps = _finite_points(all_x, all_y)
    if total <= max_points:
        return _series(name, *_merge(list(xs), list(ys), list(where) if gaps else None, gaps), total, False)
    if len(gaps) > max_points // 4:
        gaps = []
    chosen = lttb_indices(xs, ys, max_points - len(gaps))
    positions = [where[i] for i in chosen] if gaps else None
    return _series(name, *_merge([xs[i] for i in chosen], [ys[i] for i in chosen], positions, gaps), total, True)


def _finite_points(all_x: array[float], all_y: array[float]
                   ) -> tuple[array[float], array[float], array[int], list[tuple[int, float]]]:
    """The finite points, their positions among all, and where each run of non-finite values starts
    ((position, x))."""
    xs, ys = array("d"), array("d")
    where = array("q")
    gaps: list[tuple[int, float]] = []
    in_gap = False
    for position, (px, value) in enumerate(zip(all_x, all_y, strict=True)):
        if not math.isfinite(value):
            if not in_gap:
                gaps.append((position, px))
            in_gap = True
        else:
            xs.append(px)
            ys.append(value)
            where.append(position)
            in_gap = False
    return xs, ys, where, gaps


def _merge(xs: list[float], ys: list[float], positions: list[int] | None,
           gaps: list[tuple[int, float]]) -> tuple[list[float], list[float | None]]:
    """The points and the gap markers in the order they were logged."""
    if not gaps or positions is None:
        return xs, list(ys)
    out_x: list[float] = []
    out_y: list[float | None] = []
    g = 0
    for px, py, pos in zip(xs, ys, positions, strict=True):
        while g < len(gaps) and gaps[g][0] < pos:
            out_x.append(gaps[g][1])
            out_y.append(None)
            g += 1
        out_x.append(px)
        out_y.append(py)
    for _pos, gx in gaps[g:]:
        out_x.append(gx)
        out_y.append(None)
    return out_x, out_y


def _series(name: str, xs: list[float], ys: list[float | None], total: int, downsampled: bool) -> dict[str, Any]:
    return {"name": name, "x": xs, "y": ys, "total_points": total, "downsampled": downsampled}


def metric_csv(store: MetricsStore, run_id: str, name: str) -> Iterator[str]:
    """Every value of the metric as CSV text (``step,time,value``; empty for no step or no number), streamed in
    chunks of ``CSV_LINES_PER_CHUNK`` lines: memory stays flat however long the metric is."""
    yield "step,time,value\n"
    lines: list[str] = []
    for step, at, value in store.metric_values(run_id, name):
        lines.append(f"{'' if step is None else step},{at!r},{'' if value is None else repr(value)}\n")
        if len(lines) >= CSV_LINES_PER_CHUNK:
            yield "".join(lines)
            lines.clear()
    if lines:
        yield "".join(lines)
