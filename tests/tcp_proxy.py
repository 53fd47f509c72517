"""A TCP proxy a test controls: it forwards ``127.0.0.1:<port>`` to an upstream address until ``cut()``,
then drops every open connection and resets each new one until ``restore()``. A client behind it sees what a
dead network link looks like to a program: connections that fail, answers that never come back.

Threads only (one accept loop, two pumps per connection), so it runs beside any test without an event loop.
"""

from __future__ import annotations

import contextlib
import socket
import struct
import threading
from collections.abc import Iterator


class TcpProxy:
    """Forwards to ``(host, port)``; ``url_for(url)`` is ``url`` with its port replaced by the proxy's."""

    def __init__(self, upstream_host: str, upstream_port: int) -> None:
        self.upstream = (upstream_host, upstream_port)
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port: int = self._listener.getsockname()[1]
        self._lock = threading.Lock()
        self._open: set[socket.socket] = set()
        self._up = True
        self._closed = False
        self.dropped = 0  # connections cut or refused while the link was down
        self._thread = threading.Thread(target=self._accept_loop, daemon=True, name="tcp-proxy")
        self._thread.start()

    def url_for(self, url: str) -> str:
        scheme, rest = url.split("://", 1)
        return f"{scheme}://127.0.0.1:{self.port}{rest[rest.index('/'):] if '/' in rest else ''}"

    @property
    def up(self) -> bool:
        return self._up

    def cut(self) -> None:
        """Drop the link: reset every open connection, and every new one until ``restore``."""
        with self._lock:
            self._up = False
            victims = list(self._open)
            self._open.clear()
        for sock in victims:
            _reset(sock)
            self.dropped += 1

    def restore(self) -> None:
        with self._lock:
            self._up = True

    def close(self) -> None:
        self._closed = True
        self.cut()
        with contextlib.suppress(OSError):
            self._listener.close()

    def __enter__(self) -> TcpProxy:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- plumbing ---------------------------------------------------------------------------------------------
    def _accept_loop(self) -> None:
        while not self._closed:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            if not self._up:
                _reset(client)
                self.dropped += 1
                continue
            try:
                upstream = socket.create_connection(self.upstream, timeout=5)
                upstream.settimeout(None)
            except OSError:
                _reset(client)
                continue
            with self._lock:
                if not self._up:
                    _reset(client)
                    _reset(upstream)
                    continue
                self._open.update((client, upstream))
            pumps = [2]
            for source, sink in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pump, args=(source, sink, client, upstream, pumps), daemon=True,
                                 name="tcp-proxy-pump").start()

    def _pump(self, source: socket.socket, sink: socket.socket, client: socket.socket, upstream: socket.socket,
              pumps: list[int]) -> None:
        try:
            while True:
                data = source.recv(65536)
                if not data:
                    break
                sink.sendall(data)
        except OSError:
            pass
        with contextlib.suppress(OSError):
            sink.shutdown(socket.SHUT_WR)
        with self._lock:
            pumps[0] -= 1
            last = pumps[0] == 0
            if last:
                self._open.discard(client)
                self._open.discard(upstream)
        if last:
            for sock in (client, upstream):
                with contextlib.suppress(OSError):
                    sock.close()


def _reset(sock: socket.socket) -> None:
    """Close with a TCP reset (no orderly goodbye), as a broken link looks to the other end."""
    with contextlib.suppress(OSError):
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    with contextlib.suppress(OSError):
        sock.shutdown(socket.SHUT_RD)  # wakes a pump blocked in recv on it
    with contextlib.suppress(OSError):
        sock.close()


@contextlib.contextmanager
def proxy_for(url: str) -> Iterator[TcpProxy]:
    """A proxy in front of the server at ``url`` (``http(s)://host:port``)."""
    host_port = url.split("://", 1)[1].split("/", 1)[0]
    host, port = host_port.rsplit(":", 1)
    with TcpProxy(host, int(port)) as proxy:
        yield proxy
