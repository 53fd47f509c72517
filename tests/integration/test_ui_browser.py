"""The web UI in a real browser (Playwright + Debian's Chromium) against ``rundock ui`` and a team server.

What a user sees: the runs table and its filters, a run's chart with the logged values (read from the page's
data, not pixels), a live log growing while a real job runs, two runs compared, a file downloaded, and hostile
values shown as text with no dialog. The tests save the README's screenshots (docs/screenshots/).
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
from tests import server_fixtures
from tests.server_fixtures import ServerHandle
from tests.ui_fixtures import LocalUi, new_page, screenshot, ui_process

__all__ = ["ui_process"]  # a fixture, used by name below (``browser``: tests/conftest.py)

HOSTILE = '"><img src=x onerror=alert(1)><script>alert(2)</script>'
LOSSES = [round(1.0 / (i + 1), 4) for i in range(30)]
LIVE_SCRIPT = """
import sys, time
for i in range(50):
    print(f"line {i}", flush=True)
    time.sleep(0.2)
"""


def _log_ended(page: Any) -> bool:
    return bool(page.locator("#log").get_attribute("data-ended") == "1")


def _until(check: Callable[[], bool], timeout: float, what: str | Callable[[], str]) -> None:
    """Poll ``check`` (Playwright's own waiting evaluates strings, which the UI's CSP refuses)."""
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, f"waited {timeout} s for {what if isinstance(what, str) else what()}"
        time.sleep(0.1)


def _seed(ws: Workspace, experiment: str, scale: float, tags: dict[str, str | None]) -> str:
    store = ws.store
    run = store.create_run(experiment, tags=tags, display_name=f"{experiment} run")
    for status in ("Starting", "Running"):
        store.transition(run.run_id, status)
    now = time.time()
    store.log_metrics(run.run_id, [MetricRecord("loss", "scalar", v * scale, i, "", now + i)
                                   for i, v in enumerate(LOSSES)])
    matrix = {"schema_type": "confusion_matrix", "schema_version": "1.0.0",
              "data": {"class_labels": ["cat", "dog"], "matrix": [[41, 9], [6, 44]]}}
    store.log_metrics(run.run_id, [MetricRecord("confusion", "confusion_matrix", matrix, None, "", now)])
    store.append_log(run.run_id, "system_logs/driver_log.txt", 0, f"epoch 1\n{HOSTILE}\n".encode())
    digest, size, _ = ws.artifacts.put_bytes(b"model weights\n")
    store.add_file(run.run_id, "outputs/model.bin", digest, size)
    for status in ("Finalizing", "Completed"):
        store.transition(run.run_id, status)
    return run.run_id


def test_runs_table_run_page_compare_download(workspace: Workspace, ui_process: LocalUi, browser: Any,
                                              tmp_path: Path) -> None:
    first = _seed(workspace, "mnist", 1.0, {HOSTILE: "x", "lr": "0.1"})
    second = _seed(workspace, "cifar", 2.0, {"lr": "0.01"})
    page, dialogs = new_page(browser)
    page.goto(ui_process.url)
    assert page.url.endswith("/ui/runs")
    assert page.locator("table.runs tbody tr").count() == 2
    screenshot(page, "runs-table")
    page.fill('#filters input[name="experiment"]', "mnist")
    page.click("#apply")
    page.wait_for_url("**experiment=mnist**")
    rows = page.locator("table.runs tbody tr")
    assert rows.count() == 1 and "mnist" in rows.inner_text()
    rows.locator("a").first.click()
    page.wait_for_selector('.chart[data-metric="loss"] canvas')
    values = page.evaluate("window.rundockCharts['loss'].y")
    assert values == LOSSES
    assert page.locator('.chart[data-metric="confusion"] td').nth(0).inner_text() == "41"
    assert HOSTILE in page.locator("table.tags").inner_text()  # the hostile tag, as text
    _until(lambda: _log_ended(page), 30, "the log to end")
    assert HOSTILE in page.locator("#log").inner_text()
    screenshot(page, "run-page")
    with page.expect_download() as download:
        page.click("a.file")
    saved = tmp_path / "model.bin"
    download.value.save_as(str(saved))
    assert saved.read_bytes() == b"model weights\n"
    page.goto(f"{ui_process.base}/ui/compare?run={first}&run={second}")
    page.wait_for_selector('.chart[data-metric="loss"] canvas')
    series = page.evaluate("window.rundockCharts['loss'].map(s => s.y)")
    assert series == [LOSSES, [v * 2.0 for v in LOSSES]]
    assert "0.01" in page.locator("table.diff").inner_text()
    screenshot(page, "compare")
    assert dialogs == []


def test_live_log_grows_while_a_real_job_runs(workspace: Workspace, ui_process: LocalUi, browser: Any,
                                              source: Callable[..., Path]) -> None:
    src = source(**{"train.py": LIVE_SCRIPT})
    env = Environment("user-managed-env")
    env.python.user_managed_dependencies = True
    env.python.interpreter_path = sys.executable
    run = Experiment(workspace, "live").submit(ScriptRunConfig(str(src), "train.py", environment=env))
    page, dialogs = new_page(browser)
    page.goto(ui_process.url)
    page.goto(f"{ui_process.base}/ui/runs/{run.id}")
    _until(lambda: "line 2" in page.locator("#log").inner_text(), 60,
           lambda: f"the job's third line (page: {page.locator('#log-state').inner_text()!r}, "
                   f"{page.locator('#log').inner_text()!r}; history: {workspace.store.get_run(run.id).status.value}, "
                   f"{workspace.store.read_log(run.id, 'system_logs/driver_log.txt')!r})")
    early = page.locator("#log").inner_text()
    assert "line 49" not in early and page.locator("#log").get_attribute("data-ended") != "1"
    page.locator("#sec-log").scroll_into_view_if_needed()
    screenshot(page, "live-log")
    _until(lambda: _log_ended(page), 120, "the run to end")
    final = page.locator("#log").inner_text()
    assert [f"line {i}" for i in range(50)] == [x for x in final.splitlines() if x.startswith("line ")]
    assert page.locator("#log-state").inner_text() == "Completed"
    run.wait_for_completion()
    assert dialogs == []


server = server_fixtures.server
store_uri_per_module = server_fixtures.store_uri_per_module


def test_team_server_ui_with_a_login(server: ServerHandle, browser: Any) -> None:
    token = server.make_token(f"carol-{time.time_ns()}", "user")
    with server.session(token) as api:
        run_id = api.post(server.api("/runs"), json={"experiment": "browser-team", "target": "cpu",
                                                     "tags": {HOSTILE: "t"}}).json()["run_id"]
    page, dialogs = new_page(browser)
    page.goto(f"{server.url}/ui/runs/{run_id}")
    assert "/ui/login" in page.url
    page.fill("#token", "rdk_" + "x" * 43)
    page.click("#sign-in")
    assert "unknown token" in page.locator("#login-error").inner_text()
    page.fill("#token", token)
    page.click("#sign-in")
    page.wait_for_url(f"**/ui/runs/{run_id}")
    assert HOSTILE in page.locator("table.tags").inner_text()
    page.click("#logout")
    page.wait_for_url("**/ui/login")
    assert dialogs == []
