"""The page frame every UI page shares, and the answers pages give (HTML with its security headers)."""

from __future__ import annotations

from starlette.responses import HTMLResponse

from rundock.ui.auth import Viewer
from rundock.ui.html import Markup, esc, join, link, render

# No inline scripts anywhere: data for scripts travels in JSON blocks (``html.json_script``).
CSP = ("default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; img-src 'self' data:; "
       "connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'self'")
SECURITY_HEADERS = {"Content-Security-Policy": CSP, "X-Content-Type-Options": "nosniff",
                    "Referrer-Policy": "same-origin", "X-Frame-Options": "DENY", "Cache-Control": "no-store"}

NAV = (("experiments", "/ui/experiments", "Experiments"), ("runs", "/ui/runs", "Runs"),
       ("compare", "/ui/compare", "Compare"), ("models", "/ui/models", "Models"), ("pools", "/ui/pools", "Pools"))


def html_response(body: Markup, status: int = 200) -> HTMLResponse:
    return HTMLResponse(str(body), status_code=status, headers=SECURITY_HEADERS)


def page(viewer: Viewer, title: str, body: Markup, *, active: str = "", product: str = "rundock",
         pools: bool = False, scripts: tuple[str, ...] = ()) -> HTMLResponse:
    """A whole page: head, navigation (who is signed in, a logout form), ``body``."""
    items = join(render('<li class="{css}">{a}</li>', css="active" if key == active else "", a=link(href, text))
                 for key, href, text in NAV if key != "pools" or pools)
    script_tags = join(render('<script src="/ui/static/{s}"></script>', s=s)
                       for s in ("vendor/uplot/uPlot.iife.min.js", "bins.js", "app.js", *scripts))
    return html_response(render(
        '<!doctype html><html lang="en"><head><meta charset="utf-8"><title>{title} · {product}</title>'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        '<link rel="icon" href="data:,"><meta name="csrf-token" content="{csrf}">'
        '<link rel="stylesheet" href="/ui/static/app.css">'
        '</head><body><header><a class="brand" href="/ui/">{product}</a><nav><ul>{items}</ul></nav>'
        '<div class="who">{who} ({role})<form method="post" action="/ui/logout" class="inline">'
        '<input type="hidden" name="csrf" value="{csrf}"><button type="submit" id="logout">Sign out</button>'
        '</form></div></header><main>{body}</main>{scripts}</body></html>',
        title=title, product=product, csrf=viewer.csrf, items=items, who=viewer.principal.name,
        role=viewer.principal.role, body=body, scripts=script_tags))


def bare_page(title: str, body: Markup, status: int = 200) -> HTMLResponse:
    """A page outside a session (the login page): its own few styles, no scripts."""
    return html_response(render(
        '<!doctype html><html lang="en"><head><meta charset="utf-8"><title>{title} · rundock</title>'
        '<style>body{{font:15px system-ui,sans-serif;margin:10vh auto;max-width:28em;color:#222}}'
        'input{{width:100%;padding:.4em;margin:.4em 0;box-sizing:border-box}}.error{{color:#b00020}}'
        'button{{padding:.4em 1.2em}}</style></head><body>{body}</body></html>', title=title, body=body), status)


def status_badge(status: str) -> Markup:
    return render('<span class="status s-{css}">{s}</span>', css=status.lower(), s=status)


def section(title: str, body: Markup, section_id: str = "") -> Markup:
    anchor = section_id or "sec-" + title.lower().replace(" ", "-")
    return render('<section id="{id}"><h2>{title}</h2>{body}</section>', id=anchor, title=title, body=body)


def empty(text: str) -> Markup:
    return render('<p class="empty">{t}</p>', t=text)


__all__ = ["esc", "page", "bare_page", "html_response", "status_badge", "section", "empty", "SECURITY_HEADERS"]
