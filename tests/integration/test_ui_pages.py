"""The web UI over HTTP: a real ``rundock ui`` process and a real team server, with ``requests``.

Every ``/ui`` route refuses a request without a session; the one-time URL works once; state changes need the
page's CSRF token; hostile values come back escaped; downloads reach only the run's stored files.
"""

from __future__ import annotations

import hashlib
import os
import re
import time
from pathlib import Path
from urllib.parse import quote

import pytest
import requests
from fastapi import FastAPI

from rundock.history.records import MetricRecord
from rundock.submitter.snapshot import manifest_id
from rundock.submitter.workspace import Workspace
from rundock.ui.app import ui_router
from rundock.ui.auth import ANONYMOUS_PATHS
from tests import server_fixtures
from tests.server_fixtures import ServerHandle
from tests.ui_fixtures import LocalUi, csrf_of, server_ui_session, ui_process

__all__ = ["ui_process"]  # the fixture, used by name below

HOSTILE = '"><img src=x onerror=alert(1)><script>alert(2)</script>'
FILE_BYTES = b"weights\x00\x01 of a model\n"


def _seed(ws: Workspace, experiment: str = "ui-pages") -> str:
    """A finished run with metrics, a hostile tag, display name, metric name and log line, and two files."""
    store = ws.store
    digest, size, _ = ws.artifacts.put_bytes(b"print('train')\n")
    manifest = [{"path": "app.js", "digest": digest, "size": size, "mode": 0o644}]  # (named as a static file:
    snapshot_id = manifest_id(manifest)  # one value fills the {path} of both routes in _paths)
    store.put_snapshot(snapshot_id, manifest)
    run = store.create_run(experiment, display_name=HOSTILE, tags={HOSTILE: HOSTILE, "team": "vision"},
                           snapshot_id=snapshot_id)
    store.transition(run.run_id, "Starting")
    store.transition(run.run_id, "Running")
    now = time.time()
    store.log_metrics(run.run_id, [MetricRecord("loss", "scalar", 1.0 / (i + 1), i, "", now + i) for i in range(20)])
    store.log_metrics(run.run_id, [MetricRecord(HOSTILE, "scalar", 0.5, None, "", now)])
    store.append_log(run.run_id, "system_logs/driver_log.txt", 0,
                     f"epoch 1\n\x1b[31m{HOSTILE}\x1b[0m\n".encode())
    for name, data in (("outputs/model.bin", FILE_BYTES), (f"outputs/{HOSTILE}.txt", b"odd name\n")):
        digest, size, _ = ws.artifacts.put_bytes(data)
        store.add_file(run.run_id, name, digest, size)
    store.transition(run.run_id, "Finalizing")
    store.transition(run.run_id, "Completed")
    return run.run_id


def _routes(app: FastAPI) -> list[tuple[str, set[str]]]:
    """(path, methods) of every route of ``app``, included routers' too (recent FastAPI keeps those behind one
    entry per ``include_router``)."""
    try:
        from fastapi.routing import iter_route_contexts
    except ImportError:
        return [(getattr(r, "path", ""), set(getattr(r, "methods", None) or ())) for r in app.routes]
    return [(c.path or "", set(c.methods or ())) for c in iter_route_contexts(app.routes)]


def _paths(run_id: str) -> list[tuple[str, str]]:
    """(method, concrete path) of every UI route, walked from the router as the server's auth test does."""
    values = {"run_id": run_id, "name": "outputs/model.bin", "path": "app.js"}
    app = FastAPI(openapi_url=None, docs_url=None, redoc_url=None)
    app.include_router(ui_router())
    found = []
    for path, methods in _routes(app):
        for method in sorted(methods):
            if method == "HEAD" or path in ANONYMOUS_PATHS:
                continue
            concrete = re.sub(r"\{(\w+)(?::path)?\}", lambda m: values[m.group(1)], path)
            found.append((method, concrete + ("?name=loss" if concrete.endswith(("/series", ".csv")) else "")))
    return found


@pytest.fixture
def seeded(workspace: Workspace) -> str:
    return _seed(workspace)


def test_every_ui_route_needs_a_session(seeded: str, ui_process: LocalUi) -> None:
    paths = _paths(seeded)
    assert len(paths) >= 15 and ("GET", f"/ui/api/runs/{seeded}/logs/outputs/model.bin") in paths
    forged = "bG9jYWx8OTk5OTk5OTk5OXxhYmM.0000"
    for cookie in (None, forged):
        jar = {"rundock_ui": cookie} if cookie else {}
        for method, path in paths:
            page = requests.request(method, ui_process.base + path, headers={"Accept": "text/html"}, cookies=jar,
                                    allow_redirects=False, timeout=30)
            api = requests.request(method, ui_process.base + path, cookies=jar, allow_redirects=False, timeout=30)
            if path.startswith("/ui/api/"):  # JSON, event streams and downloads: 401 whoever asks
                assert page.status_code == 401, (method, path, page.status_code)
            else:  # pages: the login page
                assert page.status_code == 303 and page.headers["location"].startswith("/ui/login"), (path, page.text)
            assert api.status_code == 401, (method, path, api.status_code)
            assert "loss" not in api.text and "vision" not in page.text
    session = ui_process.signed_in()  # the same requests with a session get through
    for method, path in paths:
        if method == "GET" and "/logs/" not in path and path != "/ui/pools":  # (pools: on a team server)
            assert session.get(ui_process.base + path, timeout=30).status_code == 200, path


def test_the_one_time_url_works_once_and_sets_a_strict_cookie(seeded: str, ui_process: LocalUi) -> None:
    first = requests.get(ui_process.url, allow_redirects=False, timeout=30)
    assert first.status_code == 303 and first.headers["location"] == "/ui/"  # the token leaves the address bar
    cookie = first.headers["set-cookie"]
    assert "HttpOnly" in cookie and "SameSite=Strict" in cookie and "Path=/ui" in cookie
    again = requests.get(ui_process.url, headers={"Accept": "text/html"}, allow_redirects=True, timeout=30)
    assert again.url.startswith(ui_process.base + "/ui/login") and "works once" in again.text
    assert "vision" not in again.text
    runs = requests.get(ui_process.base + "/ui/runs", cookies={"rundock_ui": first.cookies["rundock_ui"]},
                        headers={"Accept": "text/html"}, timeout=30)
    assert runs.status_code == 200 and seeded in runs.text


def test_state_changes_need_the_pages_csrf_token(seeded: str, ui_process: LocalUi, workspace: Workspace) -> None:
    session = ui_process.signed_in()
    page = session.get(f"{ui_process.base}/ui/runs/{seeded}", timeout=30)
    token = csrf_of(page.text)
    url = f"{ui_process.base}/ui/api/runs/{seeded}/tags"
    body = {"set": {"stage": "prod"}}
    assert session.post(url, json=body, timeout=30).status_code == 403
    assert session.post(url, json=body, headers={"X-CSRF-Token": "x" * 64}, timeout=30).status_code == 403
    assert "stage" not in workspace.store.get_run(seeded).tags
    answer = session.post(url, json=body, headers={"X-CSRF-Token": token}, timeout=30)
    assert answer.status_code == 200 and answer.json()["tags"]["stage"] == "prod"
    removed = session.post(url, json={"remove": ["team"]}, headers={"X-CSRF-Token": token}, timeout=30)
    assert "team" not in removed.json()["tags"] and "team" not in workspace.store.get_run(seeded).tags
    logout = f"{ui_process.base}/ui/logout"
    assert session.post(logout, data={"csrf": "nope"}, allow_redirects=False, timeout=30).status_code == 403
    out = session.post(logout, data={"csrf": token}, allow_redirects=False, timeout=30)
    assert out.status_code == 303 and "Max-Age=0" in out.headers["set-cookie"]


def test_hostile_values_come_back_escaped(seeded: str, ui_process: LocalUi, workspace: Workspace) -> None:
    other = _seed(workspace, HOSTILE)
    workspace.store.set_tags(other, {"team": HOSTILE})
    session = ui_process.signed_in()
    for path in (f"/ui/runs/{seeded}", "/ui/runs?col=tag:" + quote(HOSTILE) + "&col=metric:" + quote(HOSTILE),
                 f"/ui/compare?run={seeded}&run={other}", "/ui/experiments"):
        text = session.get(ui_process.base + path, timeout=30).text
        assert "<script>alert" not in text and "<img src=x" not in text, path
        assert "&lt;img src=x onerror=alert(1)&gt;" in text, path  # shown, as text
    run_page = session.get(f"{ui_process.base}/ui/runs/{seeded}", timeout=30)
    assert "&lt;script&gt;alert(2)&lt;/script&gt;" in run_page.text
    assert run_page.headers["content-security-policy"].startswith("default-src 'self'")
    assert "'unsafe-inline'" not in run_page.headers["content-security-policy"].split("script-src")[1].split(";")[0]


def test_downloads_reach_only_the_runs_stored_files(seeded: str, ui_process: LocalUi, workspace: Workspace,
                                                    tmp_path: Path) -> None:
    session = ui_process.signed_in()
    base = f"{ui_process.base}/ui/api/runs/{seeded}/files/"
    got = session.get(base + "outputs/model.bin", timeout=30)
    assert got.content == FILE_BYTES and "attachment" in got.headers["content-disposition"]
    odd = session.get(base + quote(f"outputs/{HOSTILE}.txt"), timeout=30)
    assert odd.content == b"odd name\n"
    run_dir = tmp_path / "rundir"
    (run_dir / "outputs").mkdir(parents=True)
    secret = tmp_path / "secret.txt"
    secret.write_text("not the run's\n")
    os.symlink(secret, run_dir / "outputs" / "link.txt")
    workspace.store.update_run(seeded, run_dir=str(run_dir))
    for name in ("outputs/link.txt", "../../../etc/passwd", "%2e%2e/%2e%2e/etc/passwd", quote(str(secret)),
                 "/" + str(secret)):
        answer = session.get(base + name, timeout=30)
        assert answer.status_code == 404, (name, answer.status_code)
        assert b"not the run's" not in answer.content and b"root:" not in answer.content
    csv = session.get(f"{ui_process.base}/ui/api/runs/{seeded}/metric.csv?name=loss", timeout=30)
    assert csv.text.splitlines()[0] == "step,time,value" and len(csv.text.splitlines()) == 21
    assert hashlib.sha256(got.content).hexdigest() == hashlib.sha256(FILE_BYTES).hexdigest()


# The team server's /ui: one server per module, over SQLite and over PostgreSQL.
server = server_fixtures.server
store_uri_per_module = server_fixtures.store_uri_per_module


def test_team_server_ui_needs_a_login_and_shows_what_the_role_may_read(server: ServerHandle) -> None:
    made = server.create_token(f"alice-{time.time_ns()}", "user")
    alice = str(made["token"])
    agent = server.make_token(f"agent-{time.time_ns()}", "agent", ["gpu"])
    with server.session(alice) as api:
        cpu = api.post(server.api("/runs"), json={"experiment": "team-ui", "target": "cpu"}).json()["run_id"]
    anonymous = requests.get(server.url + "/ui/runs", headers={"Accept": "text/html"}, allow_redirects=False,
                             timeout=30)
    assert anonymous.status_code == 303 and anonymous.headers["location"].startswith("/ui/login")
    assert requests.get(f"{server.url}/ui/api/runs/{cpu}/series?name=x", timeout=30).status_code == 401
    assert requests.get(server.url + "/", allow_redirects=False, timeout=30).headers["location"] == "/ui/"
    login = requests.Session()
    form = login.get(server.url + "/ui/login", timeout=30)
    form_csrf = re.search(r'name="csrf" value="([^"]+)"', form.text)
    assert form_csrf, form.text
    bad = login.post(server.url + "/ui/login", data={"csrf": form_csrf.group(1), "token": "rdk_" + "x" * 43},
                     timeout=30)
    assert bad.status_code == 401 and "unknown token" in bad.text
    assert login.post(server.url + "/ui/login", data={"csrf": "forged", "token": alice},
                      timeout=30).status_code == 403
    as_alice = server_ui_session(server.url, alice)
    assert cpu in as_alice.get(server.url + "/ui/runs?experiment=team-ui", timeout=30).text
    as_agent = server_ui_session(server.url, agent)
    assert cpu not in as_agent.get(server.url + "/ui/runs?experiment=team-ui", timeout=30).text
    assert as_agent.get(f"{server.url}/ui/runs/{cpu}", timeout=30).status_code == 403
    pools = as_alice.get(server.url + "/ui/pools", timeout=30)
    assert pools.status_code == 200 and "<h1>Pools</h1>" in pools.text
    with server.session(server.admin_token) as admin:  # revoking the token ends its sessions
        assert admin.delete(server.api(f"/tokens/{made['id']}")).status_code == 204
    after = as_alice.get(server.url + "/ui/runs", allow_redirects=False, timeout=30)
    assert after.status_code == 303 and after.headers["location"].startswith("/ui/login")
