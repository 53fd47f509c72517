"""The web UI attacked: a real job that writes hostile values, a real ``rundock ui`` and team server, a browser.

A job is untrusted code: whatever it writes into its journal (metric values of any shape, an image metric that
names a path of its choosing, tables of any size) must neither stop its run page or ``rundock report`` from
showing, nor make the viewer's browser run script or fetch anything outside the run. Sessions end when their
user signs out; numbers in query strings that the history cannot hold are 400; tokens of the team server see
and change only what their role allows, through every UI route.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time
from pathlib import Path
from typing import Any
from urllib.parse import quote, urljoin

import pytest
import requests

from rundock.history.backends.http import HttpRunStore
from rundock.history.records import MetricRecord
from rundock.submitter.workspace import Workspace
from rundock.ui.pages_run import MAX_TABLE_ROWS
from tests import server_fixtures
from tests.server_fixtures import ServerHandle
from tests.ui_fixtures import LocalUi, csrf_of, new_page, server_ui_session, ui_process

__all__ = ["ui_process"]  # the fixture, used by name below

HOSTILE = '"><img src=x onerror=alert(1)><script>alert(2)</script>'

# Through the job-side API where it allows it, and around it (``_emit`` writes the job's own journal, which the
# job may always do) where it does not: values that the API would have refused.
JOB = """
from rundock.context import Run
H = {hostile!r}
run = Run.get_context()
for i in range(3):
    run.log(H, i * 0.5, step=i)
open("picture.png", "wb").write(b"<html><script>alert(3)</script></html>")
run.log_image("picture " + H, path="picture.png")
run._emit("metric", name="outside", kind="image", value="../../../../ui/api/runs/other/files/outputs/x.png")
run._emit("metric", name="acc", kind="accuracy_table",
          value={{"data": {{"class_labels": ["a", H], "probability_tables": [[["x", 1, 2, 3], [1, 2, 3, 4]], 5],
                           "probability_thresholds": [0.5, H]}}}})
run._emit("metric", name="cm", kind="confusion_matrix", value={{"data": {{"class_labels": 5, "matrix": H}}}})
run._emit("metric", name="residuals", kind="residuals", value={{"data": {{"bin_edges": ["a", 1, 2],
                                                                          "bin_counts": [H, {{}}]}}}})
run._emit("metric", name="predictions", kind="predictions",
          value={{"data": {{"bin_edges": ["nan", 0, 1, 2], "bin_averages": [H, 0.5, None]}}}})
run.tag(H, H)
print("line " + H)
"""


def _submit(project: Path, src: Path) -> str:
    done = subprocess.run([sys.executable, "-m", "rundock", "submit", str(src), "-s", "train.py", "-e", "hostile"],
                          cwd=project, capture_output=True, text=True, timeout=300)
    found = re.search(r"RunId: (\S+)", done.stdout)
    assert done.returncode == 0 and found, done.stdout[-2000:] + done.stderr[-2000:]
    return found.group(1)


@pytest.fixture
def hostile_run(workspace: Workspace, tmp_path: Path) -> str:
    """A finished run of a real job that wrote malformed charts and an image metric naming a path outside it."""
    src = tmp_path / "src"
    src.mkdir()
    (src / "train.py").write_text(JOB.format(hostile=HOSTILE))
    return _submit(Path(workspace.path).parent, src)


def test_a_jobs_malformed_charts_break_neither_its_page_nor_its_report(
        hostile_run: str, workspace: Workspace, ui_process: LocalUi, browser: Any, tmp_path: Path) -> None:
    page, dialogs = new_page(browser)
    requested: list[str] = []
    page.on("request", lambda r: requested.append(r.url))
    page.goto(ui_process.url)
    answer = page.goto(f"{ui_process.base}/ui/runs/{hostile_run}")
    assert answer is not None and answer.status == 200, answer and answer.text()[:300]
    deadline = time.monotonic() + 30
    while page.locator("#charts .chart").count() < 6 and time.monotonic() < deadline:
        time.sleep(0.1)
    names = page.locator("#charts .chart h3").all_inner_texts()
    assert HOSTILE in names and "acc" in names and "cm" in names, names  # drawn as text, the rest still drawn
    assert "picture " + HOSTILE in names  # the job's own image, from its own files
    assert "is not among this run's files" in page.locator("table.values").inner_text()  # the outside one: named
    page.wait_for_timeout(500)
    files = [u for u in requested if "/files/" in u]
    assert files and all(f"/ui/api/runs/{hostile_run}/files/" in u for u in files), files
    assert not any("other" in u for u in requested), requested
    assert dialogs == []
    page.context.close()
    report = tmp_path / "report.html"
    made = subprocess.run([sys.executable, "-m", "rundock", "report", hostile_run, "-o", str(report)],
                          cwd=Path(workspace.path).parent, capture_output=True, text=True, timeout=120)
    assert made.returncode == 0, made.stderr
    text = report.read_text(encoding="utf-8")
    assert "<script>alert" not in text and "<img src=x" not in text and "&lt;img src=x" in text


def test_an_image_metric_is_fetched_as_one_file_name(workspace: Workspace, ui_process: LocalUi) -> None:
    """The page asks for an image by its whole name in one path segment; the route takes it so."""
    store = workspace.store
    run = store.create_run("images")
    digest, size, _ = workspace.artifacts.put_bytes(b"\x89PNG\r\n\x1a\n")
    store.add_file(run.run_id, "images/a b.png", digest, size)
    session = ui_process.signed_in()
    answer = session.get(f"{ui_process.base}/ui/api/runs/{run.run_id}/files/{quote('images/a b.png', safe='')}"
                         "?inline=1", timeout=30)
    assert answer.status_code == 200 and answer.headers["content-type"] == "image/png"
    assert answer.headers["x-content-type-options"] == "nosniff"


def test_a_huge_table_metric_shows_its_first_rows(workspace: Workspace, ui_process: LocalUi) -> None:
    store = workspace.store
    run = store.create_run("tables")
    now = time.time()
    rows = MAX_TABLE_ROWS * 5
    store.log_metrics(run.run_id, [MetricRecord("rows", "row", {"i": i, "text": HOSTILE}, None, "", now)
                                   for i in range(rows)])
    session = ui_process.signed_in()
    page = session.get(f"{ui_process.base}/ui/runs/{run.run_id}", timeout=60)
    assert page.status_code == 200
    found = re.search(r'<script type="application/json" id="chart-specs">(.*?)</script>', page.text, re.S)
    assert found
    (table,) = [s for s in json.loads(found.group(1)) if s["kind"] == "table"]
    assert len(table["rows"]) == MAX_TABLE_ROWS and table["total_rows"] == rows
    assert len(page.text) < 200 * MAX_TABLE_ROWS


def test_numbers_the_history_cannot_hold_are_400_not_500(workspace: Workspace, ui_process: LocalUi) -> None:
    store = workspace.store
    run = store.create_run("numbers")
    store.transition(run.run_id, "Starting")
    store.transition(run.run_id, "Running")  # a live run: its log stream would stay open
    store.append_log(run.run_id, "system_logs/driver_log.txt", 0, b"hello\n")
    session = ui_process.signed_in()
    log = f"{ui_process.base}/ui/api/runs/{run.run_id}/logs/system_logs/driver_log.txt"
    for offset in (2**63, 10**30, -1, "x"):
        answer = session.get(f"{log}?offset={offset}", timeout=30, stream=True)
        assert answer.status_code == 400, (offset, answer.status_code)
        answer.close()
    for query in ("page=10000000000000", "page=1" + "0" * 30, "page=x", "per=10**9", "metric=loss<.",
                  "status=Bogus", "sort=nonsense"):
        answer = session.get(f"{ui_process.base}/ui/runs?{query}", timeout=30)
        assert answer.status_code == 400, (query, answer.status_code, answer.text[:300])
        assert answer.json()["error"]["message"]
    for sort in ("metric:x'; DROP TABLE runs; --", "tag:') OR 1=1 --", 'property:"'):
        answer = session.get(f"{ui_process.base}/ui/runs?sort={quote(sort)}", timeout=30)
        assert answer.status_code == 200 and run.run_id in answer.text, sort  # a sort key is only a key
    assert store.get_run(run.run_id).status.value == "Running"


def test_signing_out_ends_the_session_for_every_copy_of_its_cookie(workspace: Workspace,
                                                                    ui_process: LocalUi) -> None:
    run = workspace.store.create_run("sessions")
    session = ui_process.signed_in()
    kept = str(session.cookies.get("rundock_ui"))
    page = session.get(f"{ui_process.base}/ui/runs/{run.run_id}", timeout=30)
    out = session.post(f"{ui_process.base}/ui/logout", data={"csrf": csrf_of(page.text)}, allow_redirects=False,
                       timeout=30)
    assert out.status_code == 303
    again = requests.get(f"{ui_process.base}/ui/api/runs/{run.run_id}/series?name=x", cookies={"rundock_ui": kept},
                         timeout=30)
    assert again.status_code == 401  # the copy kept before signing out opens nothing
    tags = requests.post(f"{ui_process.base}/ui/api/runs/{run.run_id}/tags", json={"set": {"a": "b"}},
                         headers={"X-CSRF-Token": csrf_of(page.text)}, cookies={"rundock_ui": kept}, timeout=30)
    assert tags.status_code == 401 and "a" not in workspace.store.get_run(run.run_id).tags


# The team server's /ui: one server per module, over SQLite and over PostgreSQL.
server = server_fixtures.server
store_uri_per_module = server_fixtures.store_uri_per_module


def test_team_tokens_reach_only_what_their_role_allows_through_every_ui_route(server: ServerHandle,
                                                                             tmp_path: Path) -> None:
    stamp = time.time_ns()
    alice = str(server.create_token(f"alice-{stamp}", "user")["token"])
    bob = str(server.create_token(f"bob-{stamp}", "user")["token"])
    agent = server.make_token(f"agent-{stamp}", "agent", ["gpu"])
    with server.session(alice) as api:
        run = api.post(server.api("/runs"), json={"experiment": "team-roles", "target": "cpu",
                                                  "tags": {"owner": "alice"}}).json()["run_id"]
    as_bob, as_agent = server_ui_session(server.url, bob), server_ui_session(server.url, agent)
    page = as_bob.get(f"{server.url}/ui/runs/{run}", timeout=30)
    assert page.status_code == 200  # a user reads every run...
    edit = as_bob.post(f"{server.url}/ui/api/runs/{run}/tags", json={"set": {"owner": "bob"}},
                       headers={"X-CSRF-Token": csrf_of(page.text)}, timeout=30)
    assert edit.status_code == 403  # ...and changes only its own
    base = f"{server.url}/ui/api/runs/{run}"
    for path in (f"{base}/series?name=loss", f"{base}/metric.csv?name=loss", f"{base}/files/outputs/x.bin",
                 f"{base}/logs/system_logs/driver_log.txt", f"{base}/logs/system_logs/driver_log.txt?download=1",
                 f"{server.url}/ui/runs/{run}/snapshot/train.py", f"{server.url}/ui/compare?run={run}&run={run}x"):
        answer = as_agent.get(path, timeout=30)
        assert answer.status_code == 403, (path, answer.status_code)  # an agent: only its pools' runs
    with HttpRunStore(server.url, artifacts_root=str(tmp_path / "cache"), token=alice) as as_alice:
        as_alice.log_metrics(run, [MetricRecord(f"alices_secret_metric_{stamp}", "scalar", 1.0)])
    assert f"alices_secret_metric_{stamp}" in as_bob.get(f"{server.url}/ui/runs", timeout=30).text
    agent_page = as_agent.get(f"{server.url}/ui/runs?experiment=team-roles", timeout=30).text
    assert run not in agent_page and "alice" not in agent_page
    assert "alices_secret_metric" not in as_agent.get(f"{server.url}/ui/runs", timeout=30).text  # not even names
    with server.session(alice) as api:
        assert api.get(server.api(f"/runs/{run}")).json()["tags"]["owner"] == "alice"


def test_the_login_form_never_sends_a_user_to_another_site(server: ServerHandle) -> None:
    token = server.make_token(f"carol-{time.time_ns()}", "user")
    for target in ("//evil.example/ui/", "https://evil.example/ui/", "/ui/\\evil.example", "/\tevil.example",
                   "/ui/..//evil.example"):
        login = requests.Session()
        form = login.get(f"{server.url}/ui/login?next={quote(target, safe='')}", timeout=30)
        csrf = re.search(r'name="csrf" value="([^"]+)"', form.text)
        assert csrf, form.text
        answer = login.post(f"{server.url}/ui/login", data={"csrf": csrf.group(1), "token": token, "next": target},
                            allow_redirects=False, timeout=30)
        location = answer.headers["location"]
        assert answer.status_code == 303 and location.startswith("/ui/") and not location.startswith("//"), target
        assert urljoin(server.url + "/ui/login", location).startswith(server.url + "/"), (target, location)
