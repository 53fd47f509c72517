"""Validation of Azure ML's JSON metrics (standard library only).

``log_accuracy_table``, ``log_confusion_matrix``, ``log_predictions`` and
``log_residuals`` take a dict or a JSON string with ``schema_type``,
``schema_version`` and ``data``; each is checked against the shape and the
invariants of its schema, and a malformed value gets an error saying what is
wrong.
"""

from __future__ import annotations

import json
import numbers
from typing import Any

VERSIONS = {"accuracy_table": "1.0.1", "confusion_matrix": "1.0.0", "predictions": "1.0.0", "residuals": "1.0.0"}


class MetricSchemaError(ValueError):
    """A JSON metric does not match its schema."""


def _fail(kind: str, message: str) -> MetricSchemaError:
    return MetricSchemaError(f"{kind}: {message}")


def _numbers(kind: str, field: str, values: Any, integer: bool = False) -> list[Any]:
    wanted = numbers.Integral if integer else numbers.Real
    if not isinstance(values, list) or not all(isinstance(v, wanted) and not isinstance(v, bool) for v in values):
        raise _fail(kind, f"data.{field} must be a list of {'integers' if integer else 'numbers'}")
    return values


def _accuracy_table(data: dict[str, Any]) -> None:
    kind = "accuracy_table"
    labels = data.get("class_labels")
    if not isinstance(labels, list) or not labels or not all(isinstance(c, str) for c in labels):
        raise _fail(kind, "data.class_labels must be a non-empty list of strings")
    for table_key, thresholds_key in (("probability_tables", "probability_thresholds"),
                                      ("percentile_tables", "percentile_thresholds")):
        thresholds = _numbers(kind, thresholds_key, data.get(thresholds_key))
        tables = data.get(table_key)
        if not isinstance(tables, list) or len(tables) != len(labels):
            raise _fail(kind, f"data.{table_key} must have one table per class ({len(labels)}), shape [C, M, 4]")
        total = None
        for c, table in enumerate(tables):
            if not isinstance(table, list) or len(table) != len(thresholds):
                raise _fail(kind, f"data.{table_key}[{c}] must have one row per threshold ({len(thresholds)})")
            positives = negatives = None
            for m, row in enumerate(table):
                where = f"data.{table_key}[{c}][{m}]"
                if not isinstance(row, list) or len(row) != 4:
                    raise _fail(kind, f"{where} must be [TP, FP, TN, FN]")
                tp, fp, tn, fn = _numbers(kind, where[5:], row, integer=True)
                n = tp + fp + tn + fn
                if total is None:
                    total = n
                if n != total:
                    raise _fail(kind, f"{where}: TP + FP + TN + FN = {n}, but other rows sum to N = {total}")
                if positives is None:
                    positives, negatives = tp + fn, tn + fp
                if (tp + fn, tn + fp) != (positives, negatives):
                    raise _fail(kind, f"{where}: TP + FN and TN + FP must be the same at every threshold of a class")


def _confusion_matrix(data: dict[str, Any]) -> None:
    kind = "confusion_matrix"
    labels = data.get("class_labels")
    if not isinstance(labels, list) or not labels:
        raise _fail(kind, "data.class_labels must be a non-empty list")
    matrix = data.get("matrix")
    if not isinstance(matrix, list) or len(matrix) != len(labels):
        raise _fail(kind, f"data.matrix must be {len(labels)} x {len(labels)} (one row per class label)")
    for i, row in enumerate(matrix):
        if not isinstance(row, list) or len(row) != len(labels):
            raise _fail(kind, f"data.matrix[{i}] must have {len(labels)} values")
        _numbers(kind, f"matrix[{i}]", row)


def _predictions(data: dict[str, Any]) -> None:
    kind = "predictions"
    edges = _numbers(kind, "bin_edges", data.get("bin_edges"))
    for field in ("bin_averages", "bin_errors", "bin_counts"):
        values = _numbers(kind, field, data.get(field))
        if len(values) != len(edges) - 1:
            raise _fail(kind, f"data.{field} has {len(values)} values; with {len(edges)} bin_edges it needs "
                              f"{len(edges) - 1} (one per bin)")


def _residuals(data: dict[str, Any]) -> None:
    kind = "residuals"
    edges = _numbers(kind, "bin_edges", data.get("bin_edges"))
    counts = _numbers(kind, "bin_counts", data.get("bin_counts"))
    if len(edges) != len(counts) + 1:
        raise _fail(kind, f"data.bin_edges must have one more value than data.bin_counts "
                          f"(got {len(edges)} edges and {len(counts)} counts)")


_CHECKS = {"accuracy_table": _accuracy_table, "confusion_matrix": _confusion_matrix,
           "predictions": _predictions, "residuals": _residuals}


def validate(kind: str, value: Any) -> dict[str, Any]:
    """The metric as a dict, checked against the ``kind`` schema; raises MetricSchemaError."""
    if isinstance(value, (str, bytes)):
        try:
            value = json.loads(value)
        except ValueError as exc:
            raise _fail(kind, f"not valid JSON: {exc}") from None
    if not isinstance(value, dict):
        raise _fail(kind, f"expected a dict or JSON string, got {type(value).__name__}")
    if value.get("schema_type") != kind:
        raise _fail(kind, f"schema_type must be {kind!r}, got {value.get('schema_type')!r}")
    if value.get("schema_version") != VERSIONS[kind]:
        raise _fail(kind, f"schema_version must be {VERSIONS[kind]!r}, got {value.get('schema_version')!r}")
    if not isinstance(value.get("data"), dict):
        raise _fail(kind, "'data' must be an object")
    _CHECKS[kind](value["data"])
    return value
