"""``rundock login``, ``rundock logout`` and ``rundock whoami``: connecting a workspace to a team server.

The HTTP client is imported by the commands themselves: the other commands start without it.
"""

from __future__ import annotations

import sys
from typing import Any

import click

from rundock.submitter.cli.base import _workspace, cli, console, out
from rundock.submitter.cli.output import emit_json


def _describe(who: dict[str, Any]) -> str:
    pools = who.get("pools") or []
    text = f"{who.get('name')} (role {who.get('role')}"
    if pools:
        text += f", pools {', '.join(str(p) for p in pools)}"
    if who.get("expires_at"):
        text += f", token expires {who.get('expires_at')}"
    return text + ")"


@cli.command()
@click.argument("url")
@click.option("--token", help="Your token from the server's admin (default: prompt without echo, or read from "
                              "standard input).")
@click.option("--trust-cert", is_flag=True,
              help="Trust the certificate the https:// server presents (shows its fingerprint and asks first).")
@click.option("--yes", "-y", is_flag=True, help="With --trust-cert: trust it without asking.")
def login(url: str, token: str | None, trust_cert: bool, yes: bool) -> None:
    """Use the team server at URL as this workspace's run history (token kept in ~/.rundock, 0600)."""
    if token is None:
        token = click.prompt("Token", hide_input=True) if sys.stdin.isatty() else sys.stdin.readline().strip()

    def confirm(message: str) -> bool:
        console.print(message, markup=False, highlight=False)
        if yes:
            return True
        return click.confirm("", default=False, prompt_suffix="")

    from rundock.submitter import credentials

    ws = _workspace()
    if credentials.in_clear(url):
        console.print(f"rundock: warning: {url} is plain http: the token and everything else cross the network "
                      "unencrypted; use https:// (rundock server --tls-cert/--tls-key) beyond this machine",
                      markup=False, highlight=False)
    from rundock.history.backends import http_credentials

    before = http_credentials.saved_login(credentials.normalize_url(url))
    who = credentials.login(ws, url, token or "", trust_cert=trust_cert, confirm=confirm)
    out.print(f"Logged in to {credentials.normalize_url(url)} as {_describe(who)}", markup=False, highlight=False)
    if before and before.get("token") != (token or "").strip():  # one token per server, for all workspaces
        console.print(f"rundock: this token replaces the one saved for {credentials.normalize_url(url)} "
                      f"(was: {before.get('name') or 'another token'}) in {http_credentials.credentials_path()}, "
                      "for every workspace of yours that uses this server", markup=False, highlight=False)
    console.print(f"history: {credentials.normalize_url(url)} written to {ws.path}/config.yaml", markup=False,
                  highlight=False)


@cli.command()
@click.argument("url", required=False)
@click.option("--forget-cert", is_flag=True, help="Also stop trusting the server's certificate.")
def logout(url: str | None, forget_cert: bool) -> None:
    """Forget the token for URL (default: this workspace's server) and go back to the local history."""
    from rundock.submitter import credentials

    ws = _workspace()
    if url is None and not ws.is_server:
        raise click.UsageError(f"this workspace's history is local ({ws.history_uri}); name the server: "
                               "rundock logout URL")
    done = credentials.logout(ws, url, forget_cert=forget_cert)
    for line in done or [f"nothing to forget for {url or ws.history_uri}"]:
        console.print(line, markup=False, highlight=False)


@cli.command()
@click.option("--json", "as_json", is_flag=True, help="Print JSON: {name, role, pools, expires_at}.")
def whoami(as_json: bool) -> None:
    """Who this workspace's team server says you are."""
    from rundock.submitter import credentials

    ws = _workspace()
    who = credentials.whoami(ws)
    if as_json:
        emit_json(who)
    else:
        out.print(f"{_describe(who)} on {ws.history_uri}", markup=False, highlight=False)
