"""``make demo``: a venv with only what running rundock needs, and closing commands that work as printed."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import REPO


@pytest.mark.skipif(shutil.which("make") is None, reason="make is not installed")
def test_make_demo_installs_only_what_running_needs() -> None:
    def recipe(target: str) -> str:
        return subprocess.run(["make", "-n", "-B", target], cwd=REPO, capture_output=True, text=True,
                              timeout=30).stdout

    demo, test = recipe("demo"), recipe("test")
    assert "pip" in demo and "install -e ." in demo and "[test]" not in demo and "--quiet" not in demo
    assert "examples/quickstart/run.py" in demo
    assert "install -e '.[test]'" in test and "pytest" in test


def test_the_quick_starts_closing_commands_work_as_printed(tmp_path: Path) -> None:
    demo = tmp_path / "repo" / "examples" / "quickstart"
    shutil.copytree(REPO / "examples" / "quickstart" / "scripts", demo / "scripts")
    shutil.copy(REPO / "examples" / "quickstart" / "run.py", demo / "run.py")
    env = {**os.environ, "RUNDOCK_HEARTBEAT_SECONDS": "0.2", "RUNDOCK_AGENT_IDLE_SECONDS": "10"}
    result = subprocess.run([sys.executable, "examples/quickstart/run.py"], cwd=tmp_path / "repo", env=env,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    commands = [line.strip() for line in lines[lines.index(next(x for x in lines if x.startswith("Try the CLI"))) + 1:]
                if line.strip()]
    assert commands and all(c.startswith("cd examples/quickstart && ") for c in commands)
    run_id = re.search(r"show (\S+)", result.stdout).group(1)  # type: ignore[union-attr]
    for command in commands:
        if " ui " in f"{command} ":  # serves until stopped: it must print its one-time URL
            line = command.split("#")[0].replace("&& ", "&& exec ").replace(" ui", " ui --port 0")
            server = subprocess.Popen(["bash", "-c", line], cwd=tmp_path / "repo", env=env, stdout=subprocess.PIPE,
                                      text=True)
            try:
                assert server.stdout is not None
                assert re.match(r"http://127\.0\.0\.1:\d+/ui/\?token=", server.stdout.readline()), command
            finally:
                server.terminate()
                server.wait(30)
            continue
        done = subprocess.run(["bash", "-c", command], cwd=tmp_path / "repo", env=env, capture_output=True,
                              text=True, timeout=120)
        assert done.returncode == 0, (command, done.stderr)
        if " runs" in command or " show " in command:
            assert run_id in done.stdout, (command, done.stdout)
