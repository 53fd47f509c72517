"""``rundock pools`` (the team server's pools: agents, GPUs, queue) and ``rundock agent serve`` /
``rundock agent install-service`` (a GPU box that takes runs of a pool)."""

from __future__ import annotations

import os
from typing import Any

import click
from rich.table import Table
from rich.text import Text

from rundock.errors import ConfigError
from rundock.submitter.cli.base import _workspace, cli, console, nothing_in, out
from rundock.submitter.cli.output import emit_json

DEFAULT_WORK_DIR = "~/.rundock-agent"


def pool_list() -> tuple[str, list[dict[str, Any]]]:
    """(server URL, ``GET /pools``) of the current workspace's team server."""
    from rundock.history.backends.http import HttpRunStore
    from rundock.pool_agent.client import PoolClient

    ws = _workspace()
    store = ws.store
    if not isinstance(store, HttpRunStore):
        raise ConfigError(f"pools belong to a team server, and this workspace's history is {ws.history_uri}; "
                          "connect it with `rundock login URL --token TOKEN`", field="history")
    return store.url, PoolClient(store.client).pools()


def _gpu_cell(gpus: list[dict[str, Any]]) -> str:
    used = sum(1 for g in gpus if g.get("used_by"))
    if not gpus:
        return "none"
    sizes = sorted({int(g.get("memory_mb") or 0) for g in gpus})
    memory = "/".join(f"{s / 1024:.0f} GB" for s in sizes)
    return f"{len(gpus) - used} free / {len(gpus)} ({memory})"


@cli.command()
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def pools(as_json: bool) -> None:
    """List the team server's pools: their agents, GPUs (free/used, memory) and queue length."""
    url, listed = pool_list()
    if as_json:
        emit_json(listed)
        return
    table = Table("pool", "agent", "online", "GPUs", "running", "queued", box=None)
    for column in (table.columns[1], table.columns[4]):
        column.overflow = "fold"  # a run id or agent id wraps whole rather than being cut: it can be copied
    for pool in listed:
        agents = pool.get("agents") or []
        queued = str(pool.get("queued", 0))
        if not agents:
            table.add_row(Text(str(pool.get("name"))), "(no agent)", "", "", "", queued)
        names = [str(a.get("name")) for a in agents]
        for i, agent in enumerate(agents):
            running = agent.get("running") or []
            name = str(agent.get("name"))
            if names.count(name) > 1:  # two agents on one host: tell them apart by id
                name = f"{name} [{agent.get('agent_id')}]"
            table.add_row(Text(str(pool.get("name")) if i == 0 else ""), Text(name),
                          "yes" if agent.get("online") else "no", _gpu_cell(agent.get("gpus") or []),
                          Text(", ".join(running) if running else "-"), queued if i == 0 else "")
            for gpu in agent.get("gpus") or []:
                table.add_row("", Text(f"  GPU {gpu.get('index')}: {gpu.get('name')}"), "",
                              f"{int(gpu.get('memory_mb') or 0) / 1024:.0f} GB",
                              Text(str(gpu.get("used_by") or "free")), "")
    out.print(table)
    if not listed:
        nothing_in("pools (start `rundock agent serve --pool NAME` on a GPU box)", url)


@cli.group()
def agent() -> None:
    """A GPU box that takes runs of a pool from the team server."""


def _serve_options(func: Any) -> Any:
    options = [
        click.option("--server", required=True, metavar="URL", help="The team server (https://host:port)."),
        click.option("--token", envvar="RUNDOCK_TOKEN", metavar="TOKEN",
                     help="An agent token of the pool (default: $RUNDOCK_TOKEN, else `rundock login`'s)."),
        click.option("--pool", required=True, metavar="NAME", help="The pool whose runs this box takes."),
        click.option("--gpus", metavar="0,1,...", help="Offer only these GPUs (default: every GPU of the box)."),
        click.option("--slots", type=click.IntRange(min=1), help="Runs at once (default: one per GPU, at least 1)."),
        click.option("--docker", is_flag=True, help="Also run Docker environments (GPUs as device requests)."),
        click.option("--work-dir", default=DEFAULT_WORK_DIR, show_default=True,
                     help="Where run folders, the artifact cache and environments live."),
        click.option("--labels", metavar="a,b", help="Labels runs can require (resources.labels)."),
        click.option("--address", metavar="HOST", help="Where the other nodes of a multi-node run reach this box "
                                                         "(default: its primary IP)."),
    ]
    for option in reversed(options):
        func = option(func)
    return func


def _options(server: str, token: str | None, pool: str, gpus: str | None, slots: int | None, docker: bool,
             work_dir: str, labels: str | None, address: str | None = None) -> Any:
    from rundock.pool_agent.gpus import parse_selection
    from rundock.pool_agent.serve import ServeOptions

    return ServeOptions(server=server, pool=pool, work_dir=work_dir, token=token or None,
                        gpus=parse_selection(gpus), slots=slots, docker=docker,
                        labels=[label.strip() for label in (labels or "").split(",") if label.strip()],
                        address=address or None)


@agent.command("serve")
@_serve_options
def agent_serve(server: str, token: str | None, pool: str, gpus: str | None, slots: int | None, docker: bool,
                work_dir: str, labels: str | None, address: str | None) -> None:
    """Take runs of pool NAME from the team server and run them here, until stopped (runs go on)."""
    from rundock.pool_agent.serve import serve

    raise SystemExit(serve(_options(server, token, pool, gpus, slots, docker, work_dir, labels, address)))


@agent.command("install-service")
@_serve_options
def agent_install_service(server: str, token: str | None, pool: str, gpus: str | None, slots: int | None,
                          docker: bool, work_dir: str, labels: str | None, address: str | None) -> None:
    """Install a systemd unit that keeps `rundock agent serve` running with these arguments."""
    from rundock.pool_agent.service import install

    options = _options(server, token, pool, gpus, slots, docker, work_dir, labels, address)
    installed = install(options, token or os.environ.get("RUNDOCK_TOKEN", ""))
    console.print(f"Wrote {installed.unit_path}\n  and its token to {installed.env_path} (mode 0600)", markup=False,
                  highlight=False)
    commands = "\n".join("  " + " ".join(c) for c in installed.commands)
    if installed.started:
        console.print(f"Enabled and started it:\n{commands}", markup=False, highlight=False)
    else:
        console.print(f"systemd does not run here; start it with:\n{commands}", markup=False, highlight=False)
