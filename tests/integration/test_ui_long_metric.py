"""A run with a 200,000-point scalar metric and a table: its run page (``rundock ui`` over HTTP), ``rundock report``
and ``rundock plot`` show the right chart, values and table, and only the table's values are read whole."""

from __future__ import annotations

import json
import math
import re
import subprocess
import sys
from pathlib import Path

from rundock.history.artifacts import ArtifactStore
from rundock.history.backends.sqlite import SqliteRunStore
from rundock.history.records import MetricRecord
from rundock.submitter.workspace import Workspace
from rundock.ui.backend import UiBackend
from rundock.ui.pages_run import page_specs
from rundock.ui.pages_runs import metric_summary
from rundock.ui.report import ReportOptions, build_report
from tests.ui_fixtures import LocalUi, ui_process

__all__ = ["ui_process"]  # the fixture, used by name below

POINTS = 200_000
SPIKE_AT, SPIKE = 123_457, 1000.0


def _seed(ws: Workspace) -> str:
    store = ws.store
    run = store.create_run("long", display_name="long metric").run_id
    for start in range(0, POINTS, 50_000):
        store.log_metrics(run, [MetricRecord("loss", "scalar", SPIKE if i == SPIKE_AT else math.sin(i / 1000.0),
                                             None, "", 1.7e9 + i) for i in range(start, start + 50_000)])
    store.log_metrics(run, [MetricRecord("per_class", "table", {"class": ["cat", "dog"], "f1": [0.9, 0.8]}),
                            MetricRecord("per_class", "row", {"class": "eel", "f1": 0.7}),
                            MetricRecord("final_score", "scalar", 0.875)])
    store.transition(run, "Starting")
    store.transition(run, "Running")
    store.transition(run, "Completed")
    return run


class _Reads(SqliteRunStore):
    """The workspace's history, noting which metrics were read record by record."""

    read: list[str | None]

    def get_metric_records(self, run_id: str, name: str | None = None) -> list[MetricRecord]:
        self.read.append(name)
        return super().get_metric_records(run_id, name)


def _spec_data(page_html: str) -> list[dict[str, object]]:
    found = re.search(r'<script type="application/json" id="chart-specs">(.*?)</script>', page_html, re.S)
    assert found, "no chart specs on the run page"
    specs: list[dict[str, object]] = json.loads(found.group(1))
    return specs


def _rundock(cwd: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "rundock", *args], cwd=cwd, capture_output=True, text=True,
                          timeout=120)


def test_run_page_report_and_plot_of_a_long_metric(workspace: Workspace, ui_process: LocalUi,
                                                    tmp_path: Path) -> None:
    run = _seed(workspace)

    # The run page: the chart downsampled to 2,000 points with the spike, the value, the table.
    page = ui_process.signed_in().get(f"{ui_process.base}/ui/runs/{run}", timeout=60)
    assert page.status_code == 200
    specs = {s["name"]: s for s in _spec_data(page.text)}
    loss = specs["loss"]
    assert loss["kind"] == "line" and loss["total_points"] == POINTS and loss["downsampled"] is True
    xs, ys = loss["x"], loss["y"]
    assert isinstance(xs, list) and isinstance(ys, list) and len(xs) == 2000
    assert xs[0] == 0 and xs[-1] == POINTS - 1 and ys[xs.index(SPIKE_AT)] == SPIKE
    assert specs["per_class"]["kind"] == "table" and specs["per_class"]["rows"] == [["cat", 0.9], ["dog", 0.8],
                                                                                  ["eel", 0.7]]
    assert re.search(r"final_score</td>\s*<td[^>]*>0\.875", page.text)

    # Only the table is read value by value; the long series comes downsampled from the store.
    store = _Reads(workspace.store.path)  # type: ignore[attr-defined]
    store.read = []
    try:
        backend = UiBackend(store, ArtifactStore(str(tmp_path / "artifacts")), title="t")
        assert [s["name"] for s in page_specs(backend, run, {})] == ["loss", "per_class", "final_score"]
        assert store.read == ["per_class"]
        store.read = []
        html = build_report(store, workspace.artifacts, [run], ReportOptions(max_points=500))
        assert store.read == ["per_class"]
        assert "500 of 200,000 points shown (LTTB downsampling)" in html and "eel" in html and "0.875" in html
        store.read = []  # the compare page's last / min / max, exact, from the store's candidates
        values = [SPIKE if i == SPIKE_AT else math.sin(i / 1000.0) for i in range(POINTS)]
        assert metric_summary(store, run, store.metric_summaries(run))["loss"] == (values[-1], min(values),
                                                                                   max(values))
        assert store.read == []
    finally:
        store.close()

    # rundock report and rundock plot, as a user runs them.
    project = Path(workspace.path).parent
    made = _rundock(project, "report", run, "-o", "long.html")
    assert made.returncode == 0, made.stderr
    data = re.search(r'<script type="application/json" id="report-data">(.*?)</script>',
                     (project / "long.html").read_text(encoding="utf-8"), re.S)
    assert data
    chart = next(c for c in json.loads(data.group(1))["charts"] if c["name"] == "loss")
    drawn = chart["series"][0]
    assert len(drawn["x"]) == 2000 and drawn["x"][0] == 0 and drawn["x"][-1] == POINTS - 1
    assert drawn["y"][drawn["x"].index(SPIKE_AT)] == SPIKE
    assert "2,000 of 200,000 points shown" in chart["note"]

    plotted = _rundock(project, "plot", run, "loss", "--width", "80", "--height", "6")
    assert plotted.returncode == 0, plotted.stderr
    assert "loss" in plotted.stdout.splitlines()[0]
    assert "min=-1 max=1000 (200,000 points)" in plotted.stdout
    table = _rundock(project, "plot", run, "per_class")
    assert table.returncode == 2 and "holds a row, not numbers over steps" in table.stderr
