from __future__ import annotations

import copy
import json
from typing import Any

import pytest

from rundock.context.schemas import MetricSchemaError, validate

ACCURACY: dict[str, Any] = {
    "schema_type": "accuracy_table", "schema_version": "1.0.1",
    "data": {
        "probability_tables": [[[82, 118, 0, 0], [75, 31, 87, 7], [0, 0, 118, 82]],
                               [[60, 140, 0, 0], [56, 20, 120, 4], [0, 0, 140, 60]]],
        "percentile_tables": [[[82, 118, 0, 0], [80, 40, 78, 2], [0, 0, 118, 82]],
                              [[60, 140, 0, 0], [58, 30, 110, 2], [0, 0, 140, 60]]],
        "probability_thresholds": [0.0, 0.5, 1.0], "percentile_thresholds": [0.0, 0.24, 1.0],
        "class_labels": ["0", "1"],
    },
}
CONFUSION = {"schema_type": "confusion_matrix", "schema_version": "1.0.0",
             "data": {"class_labels": ["0", "1"], "matrix": [[3, 1], [0, 4]]}}
PREDICTIONS = {"schema_type": "predictions", "schema_version": "1.0.0",
               "data": {"bin_averages": [0.25, 0.75], "bin_errors": [0.013, 0.042], "bin_counts": [56, 34],
                        "bin_edges": [0.0, 0.5, 1.0]}}
RESIDUALS = {"schema_type": "residuals", "schema_version": "1.0.0",
             "data": {"bin_edges": [50, 100, 200, 300, 350], "bin_counts": [0.88, 20, 30, 50.99]}}


@pytest.mark.parametrize("value", [ACCURACY, CONFUSION, PREDICTIONS, RESIDUALS])
def test_reference_examples_are_valid_as_dict_and_json(value: dict[str, Any]) -> None:
    assert validate(value["schema_type"], value) == value
    assert validate(value["schema_type"], json.dumps(value)) == value


def _broken(value: dict[str, Any], path: list[Any], new: Any) -> dict[str, Any]:
    broken = copy.deepcopy(value)
    node = broken
    for key in path[:-1]:
        node = node[key]
    node[path[-1]] = new
    return broken


@pytest.mark.parametrize("value, path, new, message", [
    (ACCURACY, ["data", "probability_tables", 0, 1], [75, 31, 87, 8], "TP \\+ FP \\+ TN \\+ FN = 201"),
    (ACCURACY, ["data", "probability_tables", 1], [[60, 140, 0, 0]], "one row per threshold"),
    (ACCURACY, ["data", "percentile_tables", 0, 1], [80, 40, 78], r"must be \[TP, FP, TN, FN\]"),
    (ACCURACY, ["data", "percentile_tables", 0, 1], [80, 40, 77, 3], "TP \\+ FN and TN \\+ FP"),
    (ACCURACY, ["data", "class_labels"], [0, 1], "class_labels must be a non-empty list of strings"),
    (CONFUSION, ["data", "matrix", 1], [0], "matrix\\[1\\] must have 2 values"),
    (PREDICTIONS, ["data", "bin_counts"], [1, 2, 3], "with 3 bin_edges it needs 2"),
    (RESIDUALS, ["data", "bin_edges"], [1, 2], "one more value than data.bin_counts"),
    (RESIDUALS, ["schema_version"], "2.0.0", "schema_version must be '1.0.0'"),
    (CONFUSION, ["schema_type"], "residuals", "schema_type must be 'confusion_matrix'"),
])
def test_malformed_values_say_what_is_wrong(value: dict[str, Any], path: list[Any], new: Any, message: str) -> None:
    with pytest.raises(MetricSchemaError, match=message):
        validate(value["schema_type"], _broken(value, path, new))


def test_bad_json_is_reported() -> None:
    with pytest.raises(MetricSchemaError, match="not valid JSON"):
        validate("residuals", "{not json")
