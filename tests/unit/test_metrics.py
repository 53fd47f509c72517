from __future__ import annotations

import pytest

from rundock.history.metrics import check_steps, metric_shapes
from rundock.history.records import MetricRecord


def test_shapes_follow_azure_ml() -> None:
    records = [
        MetricRecord("acc", "scalar", 0.9),
        MetricRecord("loss", "scalar", 1.0), MetricRecord("loss", "scalar", 0.5),
        MetricRecord("classes", "list", [1, 2, 3]),
        MetricRecord("citrus", "row", {"fruit": "orange", "size": 10}),
        MetricRecord("citrus", "row", {"fruit": "lemon", "size": 7}),
        MetricRecord("t", "table", {"x": [1, 2], "y": [0.5, 0.7]}),
    ]
    assert metric_shapes(records) == {
        "acc": 0.9, "loss": [1.0, 0.5], "classes": [1, 2, 3],
        "citrus": {"fruit": ["orange", "lemon"], "size": [10, 7]}, "t": {"x": [1, 2], "y": [0.5, 0.7]}}


def test_rows_with_different_columns_are_padded() -> None:
    rows = [MetricRecord("r", "row", {"a": 1}), MetricRecord("r", "row", {"b": 2})]
    assert metric_shapes(rows) == {"r": {"a": [1, None], "b": [None, 2]}}


def test_steps_must_be_given_for_all_values_or_none() -> None:
    with pytest.raises(ValueError, match="step"):
        check_steps([MetricRecord("m", "scalar", 1, step=0)], "m", None)
    with pytest.raises(ValueError, match="step"):
        check_steps([MetricRecord("m", "scalar", 1)], "m", 3)
    check_steps([MetricRecord("m", "scalar", 1, step=0)], "m", 1)
