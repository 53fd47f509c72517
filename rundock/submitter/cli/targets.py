"""``rundock target ...``: remote hosts over SSH."""

from __future__ import annotations

import os
import sys

import click
from rich.table import Table

from rundock.submitter.cli import complete
from rundock.submitter.cli.base import _workspace, cli, console, nothing_in, out
from rundock.submitter.cli.output import emit_json


@cli.group()
def target() -> None:
    """Compute targets: hosts reached over SSH (plus `local`)."""


@target.command("attach")
@click.argument("name")
@click.option("--address", required=True, help="Host name or address (a ~/.ssh/config alias works).")
@click.option("--port", "ssh_port", type=int, help="SSH port (default: from ~/.ssh/config, else 22).")
@click.option("--user", "username", help="User name (default: from ~/.ssh/config, else yours).")
@click.option("--key", "private_key_file", help="Private key file (default: ssh-agent and ~/.ssh keys).")
@click.option("--root", default="~/.rundock", show_default=True, help="rundock's folder on the host.")
@click.option("--python", default="python3", show_default=True, help="Python (>= 3.8) on the host.")
@click.option("--max-concurrent-runs", type=int, default=0, help="Runs at once on the host (0: one per CPU).")
def target_attach(name: str, address: str, ssh_port: int | None, username: str | None,
                  private_key_file: str | None, root: str, python: str, max_concurrent_runs: int) -> None:
    """Attach a host reached over SSH as compute target NAME."""
    from rundock.submitter.compute import ComputeTarget, RemoteCompute

    config = RemoteCompute.attach_configuration(address=address, ssh_port=ssh_port or 22, username=username or "",
                                                private_key_file=private_key_file, root=root, python=python,
                                                max_concurrent_runs=max_concurrent_runs)
    if ssh_port is None:
        config.ssh_port = None
    ComputeTarget.attach(_workspace(), name, config)
    console.print(f"Attached {name} ({address}). Check it with `rundock target show {name}`; an unknown host key is "
                  f"trusted with `rundock target trust {name}`")


@target.command("list")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def target_list(as_json: bool) -> None:
    """List compute targets."""
    from rundock.submitter.compute import TARGETS_FILE, ComputeTarget

    ws = _workspace()
    attached = ComputeTarget.list(ws)
    if as_json:
        emit_json([{"name": "local", "type": "local", "address": None, "port": None, "user": None}] +
                  [{"name": c.name, "type": "ssh", "address": c.config.address, "port": c.config.ssh_port,
                    "user": c.config.username or None} for c in attached])
    else:
        table = Table("name", "type", "address", "user", box=None)
        table.add_row("local", "this machine", "", "")
        for compute in attached:
            port = f":{compute.config.ssh_port}" if compute.config.ssh_port else ""
            table.add_row(compute.name, "ssh", f"{compute.config.address}{port}", compute.config.username or "")
        out.print(table)
    if not attached:
        nothing_in("attached targets (only local)", os.path.join(ws.path, TARGETS_FILE))


@target.command("show")
@click.argument("name", shell_complete=complete.targets)
def target_show(name: str) -> None:
    """Connect to target NAME and show what the host has (installs rundock's agent there if needed)."""
    from rundock.submitter.targets.remote import RemoteTarget

    remote = RemoteTarget(_workspace(), name)
    conn = remote.connect()
    host = remote.ensure_agent(conn)
    out.print(f"[bold]{name}[/]: {conn.where}")
    out.print(f"  Python {host['python']} ({host['executable']}), {host['cpus']} CPUs, "
              f"{host['free_bytes'] / 1e9:.1f} GB free under {host['root']}")
    out.print(f"  Docker: {'yes' if host['docker'] else 'no'}; GPUs: {', '.join(host['gpus']) or 'none'}")


@target.command("detach")
@click.argument("name", shell_complete=complete.targets)
def target_detach(name: str) -> None:
    """Forget target NAME (its runs stay in the history)."""
    from rundock.submitter.compute import ComputeTarget

    ComputeTarget(_workspace(), name).detach()
    console.print(f"Detached {name}")


@target.command("trust")
@click.argument("name", shell_complete=complete.targets)
@click.option("--yes", is_flag=True, help="Replace a changed host key without asking (compare the fingerprints "
                                          "with the host's own first).")
def target_trust(name: str, yes: bool) -> None:
    """Record the current host key of target NAME as trusted (check the fingerprint first).

    A key that differs from the one recorded is shown next to it and replaced only once confirmed.
    """
    from rundock.submitter.ssh import check_host_key, fingerprint, record_host_key
    from rundock.submitter.targets.remote import RemoteTarget

    remote = RemoteTarget(_workspace(), name)
    seen = check_host_key(remote.ssh_target(), remote.known_hosts)
    if seen.trusted:
        console.print(f"Already trusted: {seen.describe()}")
        return
    if seen.previous:
        old = "\n".join(f"  recorded: {k.get_name()} {fingerprint(k)}" for k in seen.previous)
        console.print(f"THE HOST KEY OF TARGET {name} ({seen.name}) HAS CHANGED\n{old}\n"
                      f"  now:      {seen.key.get_name()} {fingerprint(seen.key)}\n"
                      "Someone may be intercepting the connection, or the host was reinstalled: compare the new "
                      "fingerprint with the one the host itself shows (`ssh-keygen -lf` on its host key).",
                      markup=False, highlight=False)
        if not yes:
            if not sys.stdin.isatty():
                raise click.ClickException(
                    "the recorded key was not replaced: this session cannot ask for confirmation. Once the new "
                    f"fingerprint is checked, run `rundock target trust {name} --yes`")
            click.confirm(f"Replace the recorded key of {name} with the new one?", abort=True)
    line = record_host_key(seen, remote.known_hosts)
    console.print(f"Trusted {line}\n(recorded in {remote.known_hosts})", markup=False, highlight=False)
