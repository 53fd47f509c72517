"""``rundock ui``: the web UI over this workspace's run history, on 127.0.0.1 only.

It prints one URL with a one-time token (``rundock.ui.auth.LocalAuth``) and opens nothing by itself; the first
visit of that URL trades the token for a session cookie.
"""

from __future__ import annotations

import os
import socket
import sys

import click

from rundock.submitter.cli.base import _workspace, cli, console

DEFAULT_PORT = 8421


def _bind(port: int) -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind(("127.0.0.1", port))
    except OSError as exc:
        sock.close()
        raise click.ClickException(f"cannot listen on 127.0.0.1:{port} ({exc.strerror}); pick another port with "
                                   "--port N (0: any free port)") from None
    sock.listen(128)
    return sock


@cli.command("ui")
@click.option("--port", type=click.IntRange(0, 65535), default=DEFAULT_PORT, show_default=True,
              help="Port on 127.0.0.1 (0: any free port).")
@click.option("--store", "store_uri", default=None,
              help="Another run history (e.g. sqlite:////path/history.db) instead of this workspace's.")
def ui(port: int, store_uri: str | None) -> None:
    """Look at runs, metrics and logs in a browser (prints a URL; Ctrl-C stops)."""
    import uvicorn

    from rundock.history.artifacts import ArtifactStore
    from rundock.history.store import open_store
    from rundock.submitter.targets import check
    from rundock.ui.app import local_app
    from rundock.ui.backend import UiBackend

    if store_uri:
        from rundock.history.backends.sqlite_file import history_path

        # an SQLite history keeps its blobs beside it (a workspace's layout); any other: this workspace's cache
        folder = os.path.dirname(history_path(store_uri)) if store_uri.startswith("sqlite:") else _workspace().path
        artifacts_root = os.path.join(folder, "artifacts")
        backend = UiBackend(open_store(store_uri, artifacts_root=artifacts_root), ArtifactStore(artifacts_root),
                            title=store_uri)
    else:
        ws = _workspace()
        backend = UiBackend(ws.store, ws.artifacts, title=ws.name, refresh=lambda run: check(ws, run))
    app, auth = local_app(backend)
    sock = _bind(port)
    url = f"http://127.0.0.1:{sock.getsockname()[1]}/ui/?token={auth.once}"
    click.echo(url)
    sys.stdout.flush()
    console.print("Open the URL above in a browser on this machine (it works once); Ctrl-C stops.",
                  markup=False, highlight=False)
    config = uvicorn.Config(app, log_level="warning", access_log=False, timeout_graceful_shutdown=2)
    try:
        uvicorn.Server(config).run(sockets=[sock])
    finally:
        backend.store.close()
