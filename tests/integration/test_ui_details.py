"""What the pages say, over HTTP against a real team server and a real ``rundock ui``, and what ``rundock report``
writes:

- a queued pool run's page says why it waits (the same reason as ``GET /api/v1/runs/{id}/queue`` and
  ``rundock show``) and its queue position, and its details list the resources it asked for;
- the runs table names unnamed runs by their id and filters status with checkboxes;
- the compare page holds each metric's last, min and max per run, and lists metrics that differ;
- the report of a local run names no Docker image, shows times to the second and labels its status timeline.
"""

from __future__ import annotations

import html
import json
import re
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import requests

from rundock.history.records import MetricRecord
from rundock.submitter.workspace import Workspace
from tests import server_fixtures
from tests.server_fixtures import ServerHandle
from tests.ui_fixtures import LocalUi, server_ui_session, ui_process

__all__ = ["ui_process"]  # the fixture, used by name below

server = server_fixtures.server
store_uri_per_module = server_fixtures.store_uri_per_module
POOL = "a100"


def _api(server: ServerHandle, token: str, method: str, path: str, body: dict[str, Any]) -> Any:
    with server.session(token) as session:
        answer = session.request(method, server.api(path), json=body, timeout=30)
    assert answer.status_code in (200, 201), answer.text
    return answer.json()


def test_a_queued_pool_run_says_why_it_waits_and_what_it_asked_for(server: ServerHandle) -> None:
    agent = server.make_token(f"box-{time.time_ns()}", "agent", [POOL])
    _api(server, agent, "POST", "/agents/register", {"name": "box-1", "pool": POOL, "slots": 1,
                                                     "gpus": [{"index": 0, "name": "A100", "memory_mb": 81920}]})
    definition = {"script": "train.py", "resources": {"gpu_count": 2, "gpu_memory_mb": 40000, "cpus": 8,
                                                      "memory_mb": 65536, "labels": ["fast"], "priority": 5},
                  "distributed": {"node_count": 2, "process_count_per_node": 4}}
    run_id = _api(server, server.admin_token, "POST", "/runs", {"experiment": "ui-queue", "target": POOL,
                                                                "run_definition": definition})["run_id"]
    _api(server, server.admin_token, "POST", f"/runs/{run_id}/enqueue",
         {"pool": POOL, "priority": 5, "requirements": {"gpus": 2, "nodes": 2, "labels": ["fast"]}})
    with server.session(server.admin_token) as api:
        queue = api.get(server.api(f"/runs/{run_id}/queue"), timeout=30).json()
    assert queue["state"] == "queued" and queue["reason"].startswith("needs 2 agents of pool a100")

    session = server_ui_session(server.url, server.admin_token)
    page = session.get(f"{server.url}/ui/runs/{run_id}", timeout=30).text
    box = re.search(r'<div class="queue-box" id="queue">(.*?)</div>', page, re.S)
    assert box, page[:2000]
    assert f"Position 1 in the queue of pool {POOL}" in box.group(1)
    assert html.escape(queue["reason"]) in box.group(1)
    details = page[page.index('id="sec-details"'):]
    resources = re.search(r"<td>resources</td><td>(.*?)</td>", details)
    assert resources and html.unescape(resources.group(1)) == (
        "2 GPUs · 8 CPUs · GPU memory 40,000 MB per GPU · memory 65,536 MB · labels fast · priority 5 · "
        "2 nodes × 4 processes per node")


def _finished(ws: Workspace, experiment: str, losses: list[float], name: str | None = None,
              definition: dict[str, Any] | None = None) -> str:
    store = ws.store
    run = store.create_run(experiment, display_name=name, run_definition=definition)
    store.transition(run.run_id, "Starting")
    store.transition(run.run_id, "Running")
    now = time.time()
    store.log_metrics(run.run_id, [MetricRecord("loss", "scalar", v, i, "", now + i) for i, v in enumerate(losses)])
    store.log_metrics(run.run_id, [MetricRecord("epochs", "scalar", 3, None, "", now)])
    store.transition(run.run_id, "Finalizing")
    store.transition(run.run_id, "Completed")
    return run.run_id


def _cells(row_html: str) -> list[str]:
    return [html.unescape(re.sub(r"<[^>]+>", "", c)) for c in re.findall(r"<td>(.*?)</td>", row_html, re.S)]


def test_runs_table_and_compare_page(workspace: Workspace, ui_process: LocalUi) -> None:
    first = _finished(workspace, "cmp", [0.9, 0.2, 0.4])
    second = _finished(workspace, "cmp", [0.8, 0.5, 0.3], name="second try")
    session: requests.Session = ui_process.signed_in()

    table = session.get(f"{ui_process.base}/ui/runs", timeout=30).text
    rows = {run_id: _cells(row) for row in re.findall(r"<tr>(.*?)</tr>", table, re.S)
            for run_id in (first, second) if f'value="{run_id}"' in row}
    assert rows[first][2] == first and rows[second][2] == "second try"  # the Name column: the id when unnamed
    assert 'type="checkbox" name="status" value="Completed"' in table and "multiple" not in table
    only_failed = session.get(f"{ui_process.base}/ui/runs", params={"status": ["Failed"]}, timeout=30).text
    assert "No runs match these filters." in only_failed

    page = session.get(f"{ui_process.base}/ui/compare", params={"run": [first, second]}, timeout=30).text
    summary = page[page.index('class="grid metric-summary"'):]
    summary = summary[:summary.index("</table>")]
    stats = [_cells(row) for row in re.findall(r"<tr>(.*?)</tr>", summary, re.S)]
    assert ["loss", "last", "0.4", "0.3"] in stats and ["loss", "min", "0.2", "0.3"] in stats
    assert ["loss", "max", "0.9", "0.8"] in stats and ["epochs", "last", "3", "3"] in stats
    diff = page[page.index('class="grid diff"'):]
    diff_rows = [_cells(row) for row in re.findall(r"<tr>(.*?)</tr>", diff[:diff.index("</table>")], re.S)]
    assert ["metric (last)", "loss", "0.4", "0.3"] in diff_rows
    assert not any(row[1:2] == ["epochs"] for row in diff_rows)  # the same in both: not a difference


def test_report_of_a_local_run(workspace: Workspace, tmp_path: Path) -> None:
    definition = {"script": "train.py", "environment": {"name": "local-env", "docker": {
        "enabled": False, "base_image": "python:3.11-slim"}}}
    run_id = _finished(workspace, "report", [0.5, 0.25], definition=definition)
    store = workspace.store
    residuals = {"schema_type": "residuals", "schema_version": "1.0.0",
                 "data": {"bin_edges": [-1.0, 0.0, 1.0], "bin_counts": [4, 6]}}
    store.log_metrics(run_id, [MetricRecord("residuals", "residuals", residuals, None, "", time.time())])
    out = tmp_path / "report.html"
    made = subprocess.run([sys.executable, "-m", "rundock", "report", run_id, "-o", str(out)],
                          cwd=Path(workspace.path).parent, capture_output=True, text=True, timeout=120)
    assert made.returncode == 0, made.stderr
    page = out.read_text(encoding="utf-8")
    assert "local-env" in page and "Docker image" not in page and "python:3.11-slim" in page  # only in the JSON
    created = store.get_run(run_id).created_at
    shown = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(created))
    assert f"<dt>Created</dt><dd>{shown}</dd>" in page
    legend = re.search(r'<ul class="timeline-legend">(.*?)</ul>', page, re.S)
    assert legend and [re.sub(r"<[^>]+>", "", item).split()[0] for item in re.findall(r"<li>(.*?)</li>",
                                                                                     legend.group(1))] == \
        ["NotStarted", "Starting", "Running", "Finalizing", "Completed"]
    data = json.loads(re.search(r'id="report-data">(.*?)</script>', page, re.S).group(1))  # type: ignore[union-attr]
    histogram = next(c for c in data["charts"] if c["name"] == "residuals")
    assert histogram["kind"] == "histogram" and histogram["edges"] == [-1.0, 0.0, 1.0]
    assert histogram["note"] == "residuals: 10 values in 2 bins from -1 to 1"
