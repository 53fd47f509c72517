"""The run page in a real browser (Playwright + Chromium) against ``rundock ui``: what changes without a reload
while a real job runs, and how binned charts and long tables are drawn.

- a job logging a metric every 0.2 s: the chart's point count grows with no reload, the status badge turns
  Completed and the status timeline shows it;
- residuals and predictions (Azure ML Studio's charts): bars span their bin edges (the x axis runs from the first
  edge to the last), the count and prediction axes start at 0, the error bars are drawn;
- a ``log_table`` with floats of 17 digits and 45 rows: 6 significant digits (the full value as tooltip), the
  first 20 rows shown and a "show all 45 rows" button.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from rundock import Environment, Experiment, ScriptRunConfig
from rundock.history.records import MetricRecord
from rundock.submitter.workspace import Workspace
from tests.ui_fixtures import LocalUi, new_page, ui_process, until

__all__ = ["ui_process"]  # a fixture, used by name below (``browser``: tests/conftest.py)

METRIC_SCRIPT = """
import time
from rundock import Run
run = Run.get_context()
for i in range(80):
    run.log("loss", 1.0 / (i + 1))
    time.sleep(0.2)
"""
EDGES = [-2.0, -1.0, 0.0, 1.0, 2.0]
THIRD = 1.0 / 3.0


def _points(page: Any) -> int:
    return int(page.evaluate("window.rundockCharts['loss'] ? window.rundockCharts['loss'].x.length : 0"))


def test_charts_and_status_follow_a_live_run_without_a_reload(workspace: Workspace, ui_process: LocalUi,
                                                             browser: Any, source: Callable[..., Path]) -> None:
    src = source(**{"train.py": METRIC_SCRIPT})
    env = Environment("user-managed-env")
    env.python.user_managed_dependencies = True
    env.python.interpreter_path = sys.executable
    run = Experiment(workspace, "live-charts").submit(ScriptRunConfig(str(src), "train.py", environment=env))
    page, dialogs = new_page(browser)
    page.goto(ui_process.url)
    until(lambda: len([r for r in workspace.store.get_metric_records(run.id) if r.name == "loss"]) >= 3, 60,
           "the job's first values of loss")
    page.goto(f"{ui_process.base}/ui/runs/{run.id}")
    loads = page.evaluate("performance.getEntriesByType('navigation').length")
    until(lambda: _points(page) >= 2, 30, "the loss chart")
    first = _points(page)
    assert page.locator("#run-status").inner_text() != "Completed"
    until(lambda: _points(page) > first, 30, lambda: f"more points than {first} (now {_points(page)})")
    until(lambda: page.locator("#run-status").inner_text() == "Completed", 120,
           lambda: f"the badge to turn Completed (it says {page.locator('#run-status').inner_text()!r})")
    until(lambda: _points(page) == 80, 30, lambda: f"all 80 points (the chart has {_points(page)})")
    assert page.locator('.chart[data-metric="loss"] canvas').count() == 1  # the same chart, redrawn
    until(lambda: "Completed" in page.locator("#sec-status table").inner_text(), 30, "the timeline's last row")
    assert page.evaluate("performance.getEntriesByType('navigation').length") == loads  # no reload
    assert page.evaluate("window.rundockCharts['loss'].y[79]") == 1.0 / 80
    run.wait_for_completion()
    assert dialogs == []


def _seed_binned(ws: Workspace) -> str:
    store = ws.store
    run = store.create_run("binned")
    for status in ("Starting", "Running"):
        store.transition(run.run_id, status)
    now = time.time()
    residuals = {"schema_type": "residuals", "schema_version": "1.0.0",
                 "data": {"bin_edges": EDGES, "bin_counts": [3, 10, 12, 4]}}
    predictions = {"schema_type": "predictions", "schema_version": "1.0.0",
                   "data": {"bin_edges": [0.0, 10.0, 20.0, 30.0], "bin_averages": [6.0, 14.0, 27.0],
                            "bin_errors": [2.0, 3.0, 1.5], "bin_counts": [5, 9, 4]}}
    table = {"x": [i + THIRD for i in range(45)], "label": [f"row {i}" for i in range(45)]}
    store.log_metrics(run.run_id, [MetricRecord("residuals", "residuals", residuals, None, "", now),
                                   MetricRecord("predictions", "predictions", predictions, None, "", now),
                                   MetricRecord("scores", "table", table, None, "", now)])
    for status in ("Finalizing", "Completed"):
        store.transition(run.run_id, status)
    return run.run_id


def test_residuals_predictions_and_long_tables_are_drawn_to_be_read(workspace: Workspace, ui_process: LocalUi,
                                                                     browser: Any) -> None:
    run_id = _seed_binned(workspace)
    page, dialogs = new_page(browser)
    problems: list[str] = []
    page.on("pageerror", lambda e: problems.append(str(e)))
    page.goto(ui_process.url)
    page.goto(f"{ui_process.base}/ui/runs/{run_id}")
    page.wait_for_selector('.chart[data-metric="predictions"] canvas')
    residuals = page.evaluate("(() => { const u = window.rundockPlots['residuals'];"
                              " return [u.scales.x.min, u.scales.x.max, u.scales.y.min, u.scales.y.max]; })()")
    assert residuals[:3] == [EDGES[0], EDGES[-1], 0] and residuals[3] >= 12  # whole bars, counts from 0
    predictions = page.evaluate("(() => { const u = window.rundockPlots['predictions'];"
                                " return [u.scales.x.min, u.scales.x.max, u.scales.y.min, u.scales.y.max,"
                                " u.series.map(s => s.label)]; })()")
    assert predictions[:3] == [0, 30, 0] and predictions[3] >= 28.5  # 27 + its error bar of 1.5 fits
    assert predictions[4][1:] == ["mean prediction", "ideal", "count"]
    legend = page.locator('.chart[data-metric="residuals"] .u-legend').inner_text()
    assert "count" in legend

    table = page.locator('.chart[data-metric="scores"] table')
    first = table.locator("tbody td").first
    assert first.inner_text() == "0.333333" and first.get_attribute("title") == str(THIRD)
    assert table.locator("tbody tr:visible").count() == 20
    assert page.locator('.chart[data-metric="scores"] button.show-all').inner_text() == "show all 45 rows"
    page.click('.chart[data-metric="scores"] button.show-all')
    assert table.locator("tbody tr:visible").count() == 45
    assert "row 44" in table.inner_text()
    assert problems == [] and dialogs == []
