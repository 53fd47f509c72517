"""``rundock server``: serve the team's run history, prepare its database, manage its tokens.

``rundock server`` with no subcommand serves (uvicorn, with httptools and uvloop). Settings come from flags,
then ``RUNDOCK_SERVER_*`` variables, then the ``--config`` file (``settings``). SIGTERM (or Ctrl-C) stops
taking connections, lets the requests in flight finish (up to ``shutdown_grace_seconds``), then exits 0.

``python -m rundock.server`` is the same command; ``rundock.server.command`` adds the group to ``rundock``.
The web framework is imported only when serving, so the other commands start fast.
"""

from __future__ import annotations

import json
import signal
import sys
import time
from typing import Any

import click

from rundock.errors import RundockError
from rundock.server.settings import ServerSettings, load_settings, resolve_store

_SERVE_OPTIONS = [
    click.option("--store", help="Run history URI: sqlite:///PATH or postgresql://… [RUNDOCK_SERVER_STORE]"),
    click.option("--artifacts", help="Folder of the artifact store (blobs). [RUNDOCK_SERVER_ARTIFACTS]"),
    click.option("--host", help="Address to listen on (default 127.0.0.1). [RUNDOCK_SERVER_HOST]"),
    click.option("--port", help="Port to listen on (default 8765). [RUNDOCK_SERVER_PORT]"),
    click.option("--tls-cert", help="TLS certificate (PEM); with --tls-key the server speaks HTTPS only."),
    click.option("--tls-key", help="TLS private key (PEM)."),
    click.option("--secrets-key-file", help="Key that encrypts team secrets (`server init` makes one); or set "
                                             "RUNDOCK_SECRETS_KEY to the key itself."),
    click.option("--max-request-bytes", help="Largest JSON or log request body (default 64 MiB)."),
    click.option("--max-metrics-per-batch", help="Most records per journal request (default 100000)."),
    click.option("--shutdown-grace-seconds", help="How long requests in flight may take once asked to stop "
                                                   "(default 30; 0: as long as they need)."),
    click.option("--request-timeout-seconds", help="How long a client may send nothing in the middle of a request "
                                                    "(headers, or the next part of a body) before it is cut off "
                                                    "(default 60)."),
    click.option("--max-connections", help="Open connections served at once; more are answered 503 (default "
                                            "1000)."),
    click.option("--lease-seconds", help="How long a pool agent may go without polling before its runs are "
                                          "taken from it (default 30)."),
]


def _with_serve_options(func: Any) -> Any:
    for option in reversed(_SERVE_OPTIONS):
        func = option(func)
    return func


def _say(text: str) -> None:
    click.echo(text, err=True)


@click.group("server", invoke_without_command=True, context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--config", "config_path", type=click.Path(dir_okay=False),
              help="YAML settings file (`rundock server init` writes it). [RUNDOCK_SERVER_CONFIG]")
@_with_serve_options
@click.pass_context
def server(ctx: click.Context, /, config_path: str | None, **flags: Any) -> None:
    """Serve the team's run history over HTTP (no subcommand), or prepare and manage it.

    \b
    rundock server init --store URI --artifacts DIR [--config FILE]
    rundock server --config FILE [--host 0.0.0.0] [--port 8765] [--tls-cert C --tls-key K]
    """
    ctx.obj = {"config": config_path, "store": flags.get("store")}
    if ctx.invoked_subcommand is None:
        serve(load_settings(flags, config_path=config_path))


def serve(settings: ServerSettings) -> None:
    """Run the server until SIGTERM or Ctrl-C; requests in flight finish first."""
    import uvicorn

    from rundock.server.app import create_app
    from rundock.server.logging import configure, server_log
    from rundock.server.timeouts import protocol_class

    configure()
    app = create_app(settings)
    _allow_open_files(settings.max_connections + 256)
    config = uvicorn.Config(app, host=settings.host, port=settings.port, ssl_certfile=settings.tls_cert,
                            ssl_keyfile=settings.tls_key, loop="uvloop",
                            http=protocol_class(settings.request_timeout_seconds), access_log=False,
                            log_level="warning", server_header=False, limit_concurrency=settings.max_connections,
                            timeout_graceful_shutdown=int(settings.shutdown_grace_seconds) or None)
    # uvicorn raises the stop signal again once it has shut down; a handler of our own makes that a plain exit 0.
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: None)
    scheme = "https" if settings.tls_cert else "http"
    server_log.info("rundock server %s listening on %s://%s:%s, history %s", app.version, scheme, settings.host,
                    settings.port, _shown_store(settings.store))
    uvicorn.Server(config).run()
    server_log.info("rundock server stopped")


def _allow_open_files(wanted: int) -> None:
    """Raise this process's limit of open files towards ``wanted`` (up to the hard limit), so that the connection
    limit is reached before the descriptors run out."""
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != resource.RLIM_INFINITY and soft < wanted:
        target = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
        if target > soft:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))


def _shown_store(uri: str) -> str:
    if uri.startswith(("postgresql:", "postgres:")):
        from rundock.history.backends.postgres_conn import redact

        return redact(uri)
    return uri


def _store(ctx: click.Context, store: str | None, config_path: str | None) -> str:
    parent = ctx.obj or {}
    return resolve_store(store or parent.get("store"), config_path or parent.get("config"))


@server.command("init")
@click.option("--store", help="Run history URI: sqlite:///PATH or postgresql://…")
@click.option("--artifacts", required=True, help="Folder for the artifact store (made if missing).")
@click.option("--config", "config_path", type=click.Path(dir_okay=False),
              help="Settings file to write (default ./rundock-server.yaml).")
@click.option("--secrets-key-file", help="Key file to make (default: beside the settings file).")
@click.option("--host", help="Written to the settings file.")
@click.option("--port", help="Written to the settings file.")
@click.pass_context
def init(ctx: click.Context, store: str | None, artifacts: str, config_path: str | None,
         secrets_key_file: str | None, host: str | None, port: str | None) -> None:
    """Prepare a history for serving: schema, server tables, secrets key, settings file, first admin token."""
    from rundock.server.setup import init_server

    uri = store or (ctx.obj or {}).get("store") or resolve_store(None, None)
    result = init_server(uri, artifacts, config_path or (ctx.obj or {}).get("config"),
                         secrets_key_file=secrets_key_file, extra={"host": host, "port": int(port) if port else None})
    _say(result.history)
    _say(f"Settings written to {result.config_path} (mode 0600); serve with: rundock server --config "
         f"{result.config_path}")
    _say(f"Secrets key {'made' if result.key_created else 'kept'}: {result.secrets_key_file} (mode 0600; keep a "
         "copy: without it the secrets cannot be read)")
    if result.admin_token:
        _say("Admin token (shown once; store it now, e.g. in a password manager):")
        click.echo(result.admin_token)
    else:
        _say("An admin token exists already; `rundock server token create NAME --role admin` makes another")


@server.command("upgrade")
@click.option("--store", help="Run history URI.")
@click.option("--config", "config_path", type=click.Path(dir_okay=False), help="Settings file naming the store.")
@click.pass_context
def upgrade(ctx: click.Context, store: str | None, config_path: str | None) -> None:
    """Bring the history's schema and the server's tables to this rundock's version (stop its servers first)."""
    from rundock.server.setup import upgrade_server

    for line in upgrade_server(_store(ctx, store, config_path)):
        _say(line)


@server.group("token")
def token() -> None:
    """Make, list and revoke the server's API tokens (run on the server's host, with its database)."""


def _state(ctx: click.Context, store: str | None, config_path: str | None) -> Any:
    from rundock.server.state import open_state

    state = open_state(_store(ctx, store, config_path))
    try:
        state.check()
    except BaseException:
        state.close()
        raise
    return state


_STORE_OPTION = click.option("--store", help="Run history URI (or --config).")
_CONFIG_OPTION = click.option("--config", "config_path", type=click.Path(dir_okay=False),
                              help="Settings file naming the store.")


@token.command("create")
@click.argument("name")
@click.option("--role", type=click.Choice(["admin", "user", "agent"]), default="user", show_default=True)
@click.option("--pool", "pools", multiple=True, help="A pool whose runs an agent token takes (repeatable).")
@click.option("--expires-in-days", type=float, help="Lifetime in days (default: until revoked).")
@_STORE_OPTION
@_CONFIG_OPTION
@click.pass_context
def token_create(ctx: click.Context, name: str, role: str, pools: tuple[str, ...], expires_in_days: float | None,
                 store: str | None, config_path: str | None) -> None:
    """Make a token for NAME; the token is printed once, on standard output."""
    from rundock.server.tokens import issue_token

    state = _state(ctx, store, config_path)
    try:
        record, secret = issue_token(state, name, role, list(pools), expires_in_days)
    finally:
        state.close()
    _say(f"Token {record.token_id} for {name} ({role}{', pools ' + ', '.join(pools) if pools else ''}); shown once:")
    click.echo(secret)


@token.command("list")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@_STORE_OPTION
@_CONFIG_OPTION
@click.pass_context
def token_list(ctx: click.Context, as_json: bool, store: str | None, config_path: str | None) -> None:
    """List the tokens (never their secrets)."""
    state = _state(ctx, store, config_path)
    try:
        records = state.list_tokens()
    finally:
        state.close()
    if as_json:
        click.echo(json.dumps([r.to_json() for r in records], indent=2))
        return
    now = time.time()
    click.echo(f"{'id':<17} {'name':<20} {'role':<6} {'state':<8} {'expires':<20} pools")
    for r in records:
        status = "revoked" if r.revoked_at else "expired" if r.expires_at and r.expires_at <= now else "active"
        expires = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(r.expires_at)) if r.expires_at else "never"
        click.echo(f"{r.token_id:<17} {r.name:<20} {r.role:<6} {status:<8} {expires:<20} {', '.join(r.pools)}")
    if not records:
        _say("no tokens; `rundock server init` makes the first admin token")


@token.command("revoke")
@click.argument("token_id")
@_STORE_OPTION
@_CONFIG_OPTION
@click.pass_context
def token_revoke(ctx: click.Context, token_id: str, store: str | None, config_path: str | None) -> None:
    """Revoke token TOKEN_ID (from `token list`); servers refuse it within a second."""
    state = _state(ctx, store, config_path)
    try:
        if not state.revoke_token(token_id):
            raise click.ClickException(f"no token {token_id!r}; `rundock server token list` shows them")
    finally:
        state.close()
    _say(f"Token {token_id} revoked")


def main(argv: list[str] | None = None) -> None:
    """``python -m rundock.server``: errors as one line on standard error, exit status 2."""
    try:
        server.main(args=argv, prog_name="rundock server", standalone_mode=False)
    except (RundockError, ValueError, OSError) as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(2)
    except click.exceptions.Abort:
        sys.exit(130)
    except click.ClickException as exc:
        exc.show()
        sys.exit(exc.exit_code)

