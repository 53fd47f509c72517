"""The one way HTML is made: every value is escaped unless it is already ``Markup``.

``render(template, **values)`` fills a literal template (``{name}`` fields, ``str.format`` syntax) with escaped
values; ``Markup`` marks text that is HTML already (the result of ``render`` and of the helpers here). JSON handed
to scripts goes through ``json_script``, which makes it safe inside ``<script type="application/json">``.
No other module builds HTML from strings.
"""

from __future__ import annotations

import datetime as dt
import html
import json
import math
from collections.abc import Iterable
from typing import Any


class Markup(str):
    """Text that is HTML already: ``render`` and ``join`` insert it as it is."""

    __slots__ = ()

    def __add__(self, other: str) -> Markup:
        return Markup(str.__add__(self, esc(other)))

    def __radd__(self, other: str) -> Markup:
        return Markup(str.__add__(esc(other), self))


def esc(value: Any) -> Markup:
    """``value`` as HTML text: Markup as it is, None as empty, anything else escaped (quotes too)."""
    if isinstance(value, Markup):
        return value
    if value is None:
        return Markup("")
    return Markup(html.escape(str(value), quote=True))


def render(template: str, **values: Any) -> Markup:
    """``template`` (a literal of the calling code) with each ``{field}`` replaced by its escaped value."""
    return Markup(template.format(**{k: esc(v) for k, v in values.items()}))


def join(parts: Iterable[Any], sep: str = "") -> Markup:
    """The parts, each escaped unless Markup, joined by ``sep`` (a literal)."""
    return Markup(sep.join(esc(p) for p in parts))


def json_script(element_id: str, data: Any) -> Markup:
    """``data`` as a JSON data block that a script reads with ``JSON.parse(el.textContent)``; ``<``, ``>`` and
    ``&`` are escaped so that no value can end the block. NaN and infinities become null."""
    text = json.dumps(finite(data), separators=(",", ":"))
    text = text.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")
    return render('<script type="application/json" id="{id}">', id=element_id) + Markup(text) + Markup("</script>")


def finite(value: Any) -> Any:
    """``value`` with NaN and infinities (at any depth of dicts and lists) as None, for strict JSON."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {str(k): finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [finite(v) for v in value]
    return value


def when(ts: float | None) -> str:
    """A unix time as ``2024-05-01 12:00:03`` UTC (empty for None)."""
    if ts is None:
        return ""
    return dt.datetime.fromtimestamp(ts, dt.timezone.utc).strftime("%Y-%m-%d %H:%M:%S")


def duration(start: float | None, end: float | None) -> str:
    """``1h 02m``, ``3m 20s``, ``4.2s`` or empty."""
    if start is None or end is None:
        return ""
    seconds = max(0.0, end - start)
    if seconds < 60:
        return f"{seconds:.1f}s"
    minutes, secs = divmod(int(seconds), 60)
    if minutes < 60:
        return f"{minutes}m {secs:02d}s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h {minutes:02d}m"


def number(value: Any) -> str:
    """A metric value for a table cell: floats to 6 significant digits."""
    if isinstance(value, float):
        return "NaN" if math.isnan(value) else f"{value:.6g}"
    return "" if value is None else str(value)


def table(headers: Iterable[Any], rows: Iterable[Iterable[Any]], css: str = "grid") -> Markup:
    """An HTML table; cells are escaped unless Markup."""
    head = join(render("<th>{h}</th>", h=h) for h in headers)
    body = join(render("<tr>{cells}</tr>", cells=join(render("<td>{c}</td>", c=c) for c in row)) for row in rows)
    return render('<table class="{css}"><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>', css=css,
                  head=head, body=body)


def link(href: str, text: Any, **attrs: str) -> Markup:
    extra = join(render(' {k}="{v}"', k=k.rstrip("_").replace("_", "-"), v=v) for k, v in attrs.items())
    return render('<a href="{href}"{extra}>{text}</a>', href=href, text=text, extra=extra)
