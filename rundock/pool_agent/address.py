"""Where the other nodes of a multi-node run reach this box (``agent serve`` reports it at register), and how
a server older than this agent answers a registration it does not understand."""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Callable
from urllib.parse import urlsplit


def too_old(exc: Exception) -> bool:
    """Whether a refused request says the server does not know one of its fields (a server older than this
    agent: 400 from a rundock server, 422 from a plain FastAPI one)."""
    text = str(exc)
    return "Extra inputs are not permitted" in text or "extra_forbidden" in text or \
        ("HTTP 422" in text and "extra" in text.lower())


PUBLIC_PROBE = "192.0.2.1"  # TEST-NET-1: never answers; only picks the route (and address) of a public packet


def route_address(host: str) -> str | None:
    """The address this box would send from to reach ``host`` (no packet is sent), or None without a route."""
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
            probe.connect((host, 9))
            return str(probe.getsockname()[0])
    except OSError:
        return None


def _loopback(address: str) -> bool:
    try:
        return ipaddress.ip_address(address).is_loopback
    except ValueError:
        return False


def primary_address(server_url: str, probe: Callable[[str], str | None] = route_address) -> str:
    """Where the other nodes of a multi-node run reach this box: its address on the route to the server, or
    (when that is loopback: the server runs on this box) on a public route, or its host name's address, or its
    host name. Loopback only when the box has no other address."""
    found = probe(urlsplit(server_url).hostname or PUBLIC_PROBE)
    if found is not None and not _loopback(found):
        return found
    public = probe(PUBLIC_PROBE)
    if public is not None and not _loopback(public):
        return public
    name = socket.gethostname()
    try:
        by_name = socket.gethostbyname(name)
    except OSError:
        by_name = None
    if by_name is not None and not _loopback(by_name):
        return by_name
    return found or name
