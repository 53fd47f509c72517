"""``python -m bench``: run every figure and write BENCHMARKS.md at the repository root.

``python -m bench 19-20 21-23`` runs only the steps named (as ``measure`` names them below) and replaces only
their rows and notes in BENCHMARKS.md, keeping the others."""

from __future__ import annotations

import os
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from pathlib import Path

import docker

from bench import files, interactive, latency, metrics, pools, processes, server, ui_data, ui_series
from bench.common import Figure, log, render
from bench.select import merge
from tests.hosts import has_sshd, start_ssh_host

BASE_IMAGE = "rundock-test-base:3"
OUT = Path(__file__).resolve().parent.parent / "BENCHMARKS.md"


def main(only: set[str]) -> int:
    os.environ.setdefault("RUNDOCK_AGENT_IDLE_SECONDS", "15")  # warm agents of the bench's workspaces go away
    started, clock = time.time(), time.perf_counter()
    figures: list[Figure] = []
    failures = []

    def measure(name: str, step: Callable[[], Figure | list[Figure]]) -> None:
        if only and name not in only and not (name == "21-23" and "21-22" in only):  # its older name
            return
        try:
            result = step()
            figures.extend(result if isinstance(result, list) else [result])
        except Exception:
            failures.append(name)
            log(f"{name} failed:\n{traceback.format_exc()}")

    with tempfile.TemporaryDirectory(prefix="rundock-bench-") as tmp:
        root = Path(tmp)
        client = docker.from_env()
        # The test host writes into a folder of this machine's disk (mounted at the same path), as a real host
        # would write to its own disk, rather than into the container's overlay filesystem.
        disk = root / "host-disk"
        disk.mkdir()
        host = start_ssh_host(client, BASE_IMAGE, root, volumes={str(disk): {"bind": str(disk), "mode": "rw"}}) \
            if has_sshd(client, BASE_IMAGE) and (not only or only & {"3", "8"}) else None
        try:
            tree = files.make_tree(root / "tree")
            measure("1", lambda: latency.local(root))
            measure("2", lambda: latency.in_docker(root, BASE_IMAGE))
            if host is not None:
                measure("3", lambda: latency.over_ssh(root, host))
            measure("4", lambda: metrics.log_cost(root))
            measure("5-6", lambda: metrics.durability(root))
            measure("7", lambda: files.snapshots(root, tree))
            if host is not None:
                measure("8", lambda: files.transfer(root, tree, host, disk))
            measure("9", lambda: files.outputs(root))
            measure("10", lambda: processes.cancel(root))
            measure("11", lambda: processes.idle_agent(root))
            measure("12-13", lambda: interactive.interactive(root))
            measure("14-17", lambda: server.server_figures(root))
            measure("18", lambda: pools.pickup_latency(root))
            measure("19-20", lambda: ui_data.runs_table(root))
            measure("21-23", lambda: ui_series.long_series(root))
        finally:
            if host is not None:
                client.containers.get(host.container).remove(force=True)
    figures.sort(key=lambda f: f.number)
    text = render(figures, started, time.perf_counter() - clock)
    OUT.write_text(merge(OUT.read_text(), text) if only and OUT.exists() else text)
    log(f"wrote {OUT}" + (f"; failed: {', '.join(failures)}" if failures else ""))
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main(set(sys.argv[1:])))
