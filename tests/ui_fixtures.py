"""The web UI for tests: a real ``rundock ui`` process, a team server's ``/ui`` with a login, and a browser.

- ``LocalUi``/``local_ui(workspace_dir)``: ``python -m rundock ui --port 0`` started in a workspace; its printed
  URL (with the one-time token) is ``handle.url``; ``handle.signed_in()`` is a ``requests`` session that used it.
- ``server_ui_session(server, token)``: a ``requests`` session signed in to a team server's ``/ui/login``.
- ``browser``: a Chromium (Debian's ``/usr/bin/chromium``) driven by Playwright; without either, tests that use it
  are skipped, or FAIL under ``RUNDOCK_REQUIRE_BROWSER=1`` (CI).
- ``SCREENSHOTS``: where the browser tests save the pictures the README shows.
"""

from __future__ import annotations

import dataclasses
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import requests

from tests.conftest import REPO, require_service

CHROMIUM = "/usr/bin/chromium"
SCREENSHOTS = REPO / "docs" / "screenshots"
VIEWPORT = {"width": 1280, "height": 800}
_URL = re.compile(r"^(http://127\.0\.0\.1:\d+)/ui/\?token=(\S+)$")


@dataclasses.dataclass
class LocalUi:
    """A running ``rundock ui``: its base URL, its one-time URL and its process."""

    base: str
    url: str
    process: subprocess.Popen[str]

    def signed_in(self) -> requests.Session:
        """A session that used the one-time URL (so the next one cannot)."""
        session = requests.Session()
        session.trust_env = False
        session.headers["Accept"] = "text/html"
        answer = session.get(self.url, timeout=30)
        answer.raise_for_status()
        assert answer.url.rstrip("/").endswith("/ui/runs"), answer.url
        return session

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGINT)
            try:
                self.process.wait(20)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


def local_ui(cwd: Path, *args: str, env: dict[str, str] | None = None) -> LocalUi:
    """Start ``rundock ui --port 0`` in ``cwd`` (its workspace is found from there) and wait for its URL."""
    child_env = {**os.environ, **(env or {})}
    child_env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), child_env.get("PYTHONPATH")]))
    process = subprocess.Popen([sys.executable, "-m", "rundock", "ui", "--port", "0", *args], cwd=str(cwd),
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=child_env)
    assert process.stdout is not None
    line = process.stdout.readline().strip()  # the first line is the URL, printed once the port is bound
    found = _URL.match(line)
    if not found:
        process.kill()
        raise RuntimeError(f"rundock ui printed {line!r}; its stderr: {process.communicate()[1][-2000:]}")
    handle = LocalUi(found.group(1), line, process)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:  # the port is bound before uvicorn serves: wait for an answer
        try:
            requests.get(handle.base + "/ui/login", timeout=5)
            return handle
        except requests.ConnectionError:
            time.sleep(0.1)
    handle.stop()
    raise RuntimeError("rundock ui did not answer within 30 s")


@pytest.fixture
def ui_process(workspace: Any) -> Iterator[LocalUi]:
    """``rundock ui`` over the test's workspace (the ``workspace`` fixture of tests.conftest)."""
    handle = local_ui(Path(workspace.path).parent)
    yield handle
    handle.stop()


def server_ui_session(base_url: str, token: str) -> requests.Session:
    """A session signed in to a team server's UI with ``token`` (through its login form)."""
    session = requests.Session()
    session.trust_env = False
    session.headers["Accept"] = "text/html"
    form = session.get(base_url + "/ui/login", timeout=30)
    csrf = re.search(r'name="csrf" value="([^"]+)"', form.text)
    assert csrf, form.text
    answer = session.post(base_url + "/ui/login", data={"csrf": csrf.group(1), "token": token, "next": "/ui/runs"},
                          timeout=30)
    assert answer.status_code == 200 and answer.url.endswith("/ui/runs"), (answer.status_code, answer.text[:500])
    return session


def csrf_of(page_html: str) -> str:
    """The CSRF token a UI page carries."""
    found = re.search(r'<meta name="csrf-token" content="([^"]+)"', page_html)
    assert found, page_html[:500]
    return found.group(1)


@pytest.fixture(scope="session")
def browser() -> Iterator[Any]:
    """A headless Chromium (Playwright); skipped without one, FAILS under RUNDOCK_REQUIRE_BROWSER=1."""
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        require_service("BROWSER", "the playwright package is not installed (pip install playwright)")
    if not os.path.exists(CHROMIUM):
        require_service("BROWSER", f"no Chromium at {CHROMIUM} (apt-get install chromium)")
    with sync_playwright() as p:
        launched = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox", "--disable-gpu"])
        try:
            yield launched
        finally:
            launched.close()


def new_page(browser: Any) -> tuple[Any, list[str]]:
    """A fresh browser context (its own cookies) at 1280×800, and the list of messages of the dialogs that
    opened in it (a test of hostile values asserts it stays empty)."""
    context = browser.new_context(viewport=VIEWPORT)
    page = context.new_page()
    dialogs: list[str] = []

    def on_dialog(dialog: Any) -> None:
        dialogs.append(dialog.message)
        dialog.dismiss()

    page.on("dialog", on_dialog)
    return page, dialogs


def until(check: Callable[[], bool], timeout: float, what: str | Callable[[], str]) -> None:
    """Poll ``check`` every 0.1 s until it holds, failing with ``what`` after ``timeout`` s (Playwright's own
    waiting evaluates strings, which the UI's CSP refuses)."""
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, f"waited {timeout} s for {what if isinstance(what, str) else what()}"
        time.sleep(0.1)


def screenshot(page: Any, name: str) -> None:
    """Save the page as ``docs/screenshots/<name>.png`` (1280×800, kept small)."""
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    path = SCREENSHOTS / f"{name}.png"
    page.screenshot(path=str(path), full_page=False)
    assert path.stat().st_size <= 200_000, f"{path} is {path.stat().st_size} bytes: keep screenshots small"
