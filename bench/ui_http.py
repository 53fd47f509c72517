"""The web UI as a user meets it, for the UI figures: ``rundock ui``'s app on a real uvicorn server (loopback),
a signed-in HTTP session, and Chromium drawing a chart.

``serve(store, root)`` runs the app ``rundock ui`` runs (``rundock.ui.app.local_app``) over ``store`` in a thread
of this process, on 127.0.0.1 with a port of its own, and yields its base URL and a ``requests`` session that
traded the one-time token for a session cookie, as a browser does. A request's time is the server's time plus
a loopback round trip: what a user on the same machine waits for.

``draw_times(base, session, path, repeats)`` opens a page of the UI in headless Chromium (Debian's chromium with
Playwright, as the browser tests use it) with the session's cookie, then, ``repeats`` times, fetches the chart
data at ``path`` and draws it with uPlot the way the run page does; it returns the seconds from the request to
the end of uPlot's first draw (its ``draw`` hook), or [] when there is no browser here.
"""

from __future__ import annotations

import os
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import requests
import uvicorn

from rundock.history.artifacts import ArtifactStore
from rundock.history.store import RunStore
from rundock.ui.app import local_app
from rundock.ui.backend import UiBackend

CHROMIUM = "/usr/bin/chromium"


@contextmanager
def serve(store: RunStore, root: Path) -> Iterator[tuple[str, requests.Session]]:
    """(base URL, signed-in session) of ``rundock ui``'s app over ``store``, served until the block ends."""
    app, auth = local_app(UiBackend(store, ArtifactStore(str(root / "ui-artifacts")), title="bench"))
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    sock.listen(128)
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", access_log=False, timeout_graceful_shutdown=2))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError("the UI's server did not start")
        time.sleep(0.01)
    base = f"http://127.0.0.1:{sock.getsockname()[1]}"
    session = requests.Session()
    session.trust_env = False
    session.headers["Accept"] = "text/html"
    try:
        session.get(f"{base}/ui/?token={auth.once}", timeout=60).raise_for_status()
        yield base, session
    finally:
        session.close()
        server.should_exit = True
        thread.join(30)
        sock.close()


def get(session: requests.Session, url: str) -> requests.Response:
    """GET ``url``; an error status is an error."""
    answer = session.get(url, timeout=120)
    answer.raise_for_status()
    return answer


_DRAW = """async ([path, repeats]) => {
  const times = [];
  for (let i = 0; i < repeats; i++) {
    const box = document.createElement("div");
    document.body.appendChild(box);
    const began = performance.now();
    const s = await (await fetch(path, {credentials: "same-origin"})).json();
    const drawn = await new Promise((resolve) => {
      const opts = {width: 900, height: 240, series: [{label: "step"}, {label: s.name, stroke: "#0f6cbd",
                    spanGaps: false}], hooks: {draw: [() => resolve(performance.now())]}};
      new uPlot(opts, [s.x, s.y], box);
    });
    times.push((drawn - began) / 1000);
    box.remove();
  }
  return times;
}"""


def draw_times(base: str, session: requests.Session, page: str, path: str, repeats: int) -> list[float]:
    """Seconds from fetching the chart data at ``path`` to uPlot's first draw of it, in Chromium, on ``page``
    (a UI page that loads uPlot); [] without Chromium or Playwright."""
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        return []
    if not os.path.exists(CHROMIUM):
        return []
    cookies = [{"name": c.name, "value": c.value or "", "url": base + "/ui/"} for c in session.cookies]
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox", "--disable-gpu"])
        try:
            context = browser.new_context(viewport={"width": 1280, "height": 800})
            context.add_cookies(cookies)  # type: ignore[arg-type]
            tab = context.new_page()
            tab.goto(base + page, wait_until="load")
            times: list[float] = tab.evaluate(_DRAW, [path, repeats])
        finally:
            browser.close()
    return times
