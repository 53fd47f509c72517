"""The built wheel ships the UI: installed into a fresh virtual environment (not this checkout), ``rundock ui``
serves its pages and every static file they load (app.js, app.css, the vendored uPlot)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import requests

from tests.conftest import REPO

pytestmark = pytest.mark.integration
_URL = re.compile(r"^(http://127\.0\.0\.1:\d+)/ui/\?token=(\S+)$")


def _run(*command: str, cwd: Path) -> str:
    done = subprocess.run(command, cwd=str(cwd), capture_output=True, text=True, timeout=300, check=False,
                          env={k: v for k, v in os.environ.items() if k != "PYTHONPATH"})
    assert done.returncode == 0, f"{' '.join(command)} failed:\n{done.stdout[-2000:]}\n{done.stderr[-3000:]}"
    return done.stdout


def test_the_installed_wheel_serves_the_ui_and_its_assets(tmp_path: Path) -> None:
    _run(sys.executable, "-m", "pip", "wheel", str(REPO), "--no-deps", "-q", "-w", str(tmp_path / "wheel"),
         cwd=tmp_path)
    (wheel,) = (tmp_path / "wheel").glob("rundock-*.whl")
    venv = tmp_path / "venv"
    _run(sys.executable, "-m", "venv", str(venv), cwd=tmp_path)
    _run(str(venv / "bin" / "python"), "-m", "pip", "install", "-q", "--disable-pip-version-check", str(wheel),
         cwd=tmp_path)
    where = _run(str(venv / "bin" / "python"), "-c", "import rundock.ui; print(rundock.ui.__file__)", cwd=tmp_path)
    assert Path(where.strip()).is_relative_to(venv), where  # the installed copy, not this checkout

    process = subprocess.Popen([str(venv / "bin" / "rundock"), "ui", "--port", "0", "--store",
                                f"sqlite:///{tmp_path / 'history' / 'history.db'}"], cwd=str(tmp_path),
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                               env={k: v for k, v in os.environ.items() if k != "PYTHONPATH"})
    try:
        assert process.stdout is not None
        line = process.stdout.readline().strip()
        found = _URL.match(line)
        assert found, f"rundock ui printed {line!r}"
        session = requests.Session()
        session.trust_env = False
        session.headers["Accept"] = "text/html"
        page = session.get(line, timeout=60)
        assert page.status_code == 200 and page.url.endswith("/ui/runs"), (page.status_code, page.url)
        assets = set(re.findall(r'(?:src|href)="(/ui/static/[^"]+)"', page.text))
        assert {"/ui/static/app.js", "/ui/static/app.css", "/ui/static/vendor/uplot/uPlot.iife.min.js"} <= assets
        for asset in sorted(assets):
            answer = session.get(found.group(1) + asset, timeout=30)
            assert answer.status_code == 200, f"{asset}: {answer.status_code}"
            assert answer.content == (REPO / "rundock" / "ui" / "static" / asset[len("/ui/static/"):]).read_bytes()
    finally:
        process.terminate()
        process.wait(20)
