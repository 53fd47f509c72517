"""Sign-in and sign-out, models and versions, the team server's pools, and the UI's static files."""

from __future__ import annotations

import hmac
import mimetypes
import os
import secrets
from urllib.parse import parse_qs, quote

from fastapi import APIRouter, Depends, Request
from starlette.concurrency import run_in_threadpool
from starlette.responses import FileResponse, RedirectResponse, Response

from rundock.server.errors import ApiError
from rundock.ui.auth import (
    COOKIE,
    LOGIN_COOKIE,
    SESSION_SECONDS,
    LocalAuth,
    Viewer,
    auth_of,
    check_csrf,
    cookie_header,
    ui_session,
)
from rundock.ui.backend import UiBackend, ui_backend
from rundock.ui.html import join, link, render, table, when
from rundock.ui.layout import bare_page, empty, page, section

router = APIRouter(prefix="/ui")
STATIC = os.path.join(os.path.dirname(os.path.abspath(__file__)), "static")


def _static_files() -> dict[str, str]:
    """Every file under ``static/`` by its path there: a request names one of these or gets 404."""
    found = {}
    for folder, _, names in os.walk(STATIC):
        for name in names:
            full = os.path.join(folder, name)
            found[os.path.relpath(full, STATIC).replace(os.sep, "/")] = full
    return found


_STATIC_FILES = _static_files()


@router.get("/static/{path:path}")
def static(path: str, viewer: Viewer = Depends(ui_session)) -> Response:
    full = _STATIC_FILES.get(path)
    if full is None:
        raise ApiError(404, f"no static file {path!r}")
    kind = mimetypes.guess_type(full)[0] or "application/octet-stream"
    return FileResponse(full, media_type=kind, headers={"Cache-Control": "private, max-age=3600",
                                                        "X-Content-Type-Options": "nosniff"})


async def _form(request: Request) -> dict[str, str]:
    """A url-encoded form's fields (the first value of each; no multipart: these forms send none)."""
    body = await request.body()
    return {k: v[0] for k, v in parse_qs(body.decode("utf-8", errors="replace"), max_num_fields=20).items()}


def _safe_next(target: str | None) -> str:
    """Where to go after signing in: a path of this UI, never another site."""
    if target and target.startswith("/ui/") and not target.startswith("//") and "\\" not in target:
        return target
    return "/ui/runs"


def _login_form(request: Request, message: str = "", status: int = 200) -> Response:
    if isinstance(auth_of(request), LocalAuth):
        return bare_page("Sign in", render(
            '<h1>rundock</h1><p id="login-error">Open the URL that <code>rundock ui</code> printed. It works once: '
            'for a new one, stop <code>rundock ui</code> (Ctrl-C) and start it again.</p>'), 401)
    csrf = request.cookies.get(LOGIN_COOKIE) or secrets.token_urlsafe(24)
    target = _safe_next(request.query_params.get("next"))
    body = render(
        '<h1>rundock</h1><p>Sign in with a token of this server (an admin makes them with '
        '<code>rundock server token create</code>).</p><form method="post" action="{action}">'
        '<input type="hidden" name="csrf" value="{csrf}"><input type="hidden" name="next" value="{next}">'
        '<label>Token <input type="password" name="token" id="token" autocomplete="off" autofocus></label>'
        '<p class="error" id="login-error">{message}</p><button type="submit" id="sign-in">Sign in</button></form>',
        csrf=csrf, next=target, action="/ui/login?next=" + quote(target, safe=""), message=message)
    response = bare_page("Sign in", body, status)
    response.headers["Set-Cookie"] = cookie_header(LOGIN_COOKIE, csrf, 3600, request.url.scheme == "https")
    return response


@router.get("/login")
def login_page(request: Request) -> Response:
    """Anonymous: the sign-in form (the team server's tokens)."""
    return _login_form(request)


@router.post("/login")
async def login(request: Request) -> Response:
    """Anonymous: exchange a server token for a session cookie (the form's CSRF token must match its cookie)."""
    form = await _form(request)
    sent, expected = str(form.get("csrf") or ""), request.cookies.get(LOGIN_COOKIE) or ""
    if not expected or not hmac.compare_digest(sent.encode(), expected.encode()):
        return _login_form(request, "The form expired: sign in again.", 403)
    auth = auth_of(request)
    try:
        subject = await run_in_threadpool(auth.login, str(form.get("token") or ""))
    except ValueError as exc:
        return _login_form(request, str(exc), 401)
    response = RedirectResponse(_safe_next(str(form.get("next") or "")), status_code=303)
    response.headers.append("Set-Cookie", cookie_header(COOKIE, auth.signer.issue(subject), SESSION_SECONDS,
                                                        request.url.scheme == "https"))
    return response


@router.post("/logout")
async def logout(request: Request, viewer: Viewer = Depends(ui_session)) -> Response:
    form = await _form(request)
    check_csrf(request, viewer, str(form.get("csrf") or ""))
    auth_of(request).end(viewer.session_id)
    response = RedirectResponse("/ui/login", status_code=303)
    response.headers.append("Set-Cookie", cookie_header(COOKIE, "", 0, request.url.scheme == "https"))
    return response


@router.get("/models")
def models(viewer: Viewer = Depends(ui_session), ui: UiBackend = Depends(ui_backend)) -> Response:
    """Every registered model version, newest first, with the run it came from."""
    rows = [(m.name, m.version, link(f"/ui/runs/{quote(m.run_id)}", m.run_id) if m.run_id else "", m.path,
             m.framework or "", when(m.created_at), join((f"{k}={v}" if v is not None else k
                                                          for k, v in sorted(m.tags.items())), ", "),
             m.description or "") for m in ui.store.list_models()]
    body = table(("model", "version", "run", "path", "framework", "registered (UTC)", "tags", "description"),
                 rows) if rows else empty("No models registered yet (Run.register_model).")
    return page(viewer, "Models", render("<h1>Models</h1>{t}", t=body), active="models", pools=ui.pools is not None)


@router.get("/pools")
def pools(viewer: Viewer = Depends(ui_session), ui: UiBackend = Depends(ui_backend)) -> Response:
    """The team server's pools: agents, their GPUs and which run uses each, queue lengths."""
    if ui.pools is None:
        raise ApiError(404, "pools live on a team server: this history has none")
    parts = []
    for pool in ui.pools(viewer.principal):
        agents = [(agent["name"], "online" if agent["online"] else "offline", agent["slots"],
                   ", ".join(agent["labels"]), when(agent["last_seen"]),
                   join(render("<div>#{i} {name} {mem} MB: {used}</div>", i=g.get("index"), name=g.get("name"),
                                mem=g.get("memory_mb"), used=link(f"/ui/runs/{quote(g['used_by'])}", g["used_by"])
                                if g.get("used_by") else "free") for g in agent["gpus"]),
                   join((link(f"/ui/runs/{quote(r)}", r) for r in agent["running"]), " "))
                  for agent in pool["agents"]]
        parts.append(section(f"Pool {pool['name']}", render("<p>{q} runs queued</p>{t}", q=pool["queued"], t=table(
            ("agent", "state", "slots", "labels", "last seen (UTC)", "GPUs", "running"), agents)
            if agents else empty("No agents.")), section_id="pool-" + str(pool["name"])))
    body = render("<h1>Pools</h1>{p}", p=join(parts) if parts else empty("No pools yet."))
    return page(viewer, "Pools", body, active="pools", pools=True)


