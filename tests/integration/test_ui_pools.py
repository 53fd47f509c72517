"""The team server's pools page with a real ``rundock agent serve`` (a stand-in ``nvidia-smi`` whose GPU name, like
the agent's label, is hostile HTML): signed in over HTTP, the page lists the agent, its GPUs with the run that
holds them, and the queue, and shows every name as text."""

from __future__ import annotations

import html
import os
import re
import signal
import subprocess
import sys

import psutil
import pytest

from rundock.states import RunStatus
from tests.conftest import REPO, wait_until
from tests.integration import test_pool_agent
from tests.integration.test_pool_agent import POOL, Team, pids_of, wait_status
from tests.ui_fixtures import server_ui_session

team = test_pool_agent.team  # the team server, a project logged in to it, a folder of stand-in tools

pytestmark = pytest.mark.integration
HOSTILE_GPU = "<img src=x onerror=alert(1)>"
HOSTILE_LABEL = "<script>alert('label')</script>"
SMI = f"""#!/bin/sh
case "$*" in
  *memory.total*) printf '0, {HOSTILE_GPU}, 40960\\n1, Fake A100-SXM4-80GB, 81920\\n' ;;
  *) printf '0\\n1\\n' ;;
esac
"""


def _serve(team: Team) -> subprocess.Popen[bytes]:
    """``rundock agent serve`` for the pool, with a hostile label, on a box with the stand-in nvidia-smi."""
    (team.folder / "bin" / "nvidia-smi").write_text(SMI)
    folder = team.folder / "box"
    folder.mkdir()
    env = {k: v for k, v in os.environ.items() if not k.startswith("RUNDOCK_")}
    env.update(PATH=f"{team.folder / 'bin'}{os.pathsep}{os.environ['PATH']}", PYTHONPATH=str(REPO),
               RUNDOCK_HOME=str(folder / "home"), RUNDOCK_HEARTBEAT_SECONDS="0.5")
    log = folder / "serve.log"
    with open(log, "ab") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "rundock", "agent", "serve", "--server", team.server.url, "--token",
             team.server.make_token("box", "agent", [POOL]), "--pool", POOL, "--work-dir", str(folder / "work"),
             "--labels", f"{HOSTILE_LABEL},fast"], stdout=out, stderr=subprocess.STDOUT, env=env,
            start_new_session=True)
    wait_until(lambda: "registered as agent" in log.read_text(errors="replace"), timeout=60,
               message="agent serve to register")
    return process


def test_the_pools_page_shows_the_agent_its_gpus_the_run_holding_them_and_the_queue(team: Team) -> None:
    process = _serve(team)
    try:
        holder = team.submit(steps=600, seconds=0.05, gpus=2, tag="holder")
        pids_of(holder)  # its job is running on both GPUs
        waiting = team.submit(steps=3, seconds=0.05, gpus=1, tag="waiting")
        assert waiting.get_detailed_status()["status"] == RunStatus.QUEUED.value

        session = server_ui_session(team.server.url, team.server.admin_token)
        answer = session.get(team.server.url + "/ui/pools", timeout=30)
        assert answer.status_code == 200, answer.text[:500]
        body = answer.text
        section = body[body.index(f'id="pool-{POOL}"'):]
        assert "1 runs queued" in section
        hostname = team.pools()[0]["agents"][0]["name"]
        assert html.escape(hostname) in section and "online" in section
        gpu_rows = re.findall(r"<div>#(\d) (.*?) (\d+) MB: (.*?)</div>", section)
        assert [(i, mem) for i, _name, mem, _used in gpu_rows] == [("0", "40960"), ("1", "81920")]
        for _i, _name, _mem, used in gpu_rows:  # both GPUs held by the running run, linked to its page
            assert f'href="/ui/runs/{holder.id}"' in used and holder.id in used
        assert gpu_rows[0][1] == "&lt;img src=x onerror=alert(1)&gt;"
        assert HOSTILE_GPU not in body and HOSTILE_LABEL not in body  # shown as text, never as markup
        assert "&lt;script&gt;alert(" in section and "fast" in section

        holder.cancel()
        wait_status(holder, {RunStatus.CANCELED})
        assert wait_status(waiting, {RunStatus.COMPLETED, RunStatus.FAILED}) == RunStatus.COMPLETED.value
        after = session.get(team.server.url + "/ui/pools", timeout=30).text
        assert "0 runs queued" in after and holder.id not in after
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(30)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        for proc in psutil.process_iter(["cmdline"]):  # whatever a failed test left running
            if any(str(team.folder / "box") in part for part in proc.info["cmdline"] or []):
                proc.kill()
