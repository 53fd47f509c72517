"""``rundock report`` and ``rundock plot`` over real local runs, run as a user runs them (a process per command);
the report is also opened in headless Chromium with every network request blocked."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from rundock.submitter.workspace import Workspace
from tests.ui_fixtures import new_page

HOSTILE = "<script>alert(1)</script>\"'&<img src=x onerror=alert(2)>"

SCRIPT = """
import sys
from rundock.context import Run
from pictures import png
HOSTILE = {hostile!r}
run = Run.get_context()
n = int(sys.argv[1])
for i in range(n):
    run.log("loss", 1.0 / (i + 1), step=i)
    run.log("acc", i / n)
run.log("final_score", 0.5)
run.log("diverged", float("nan"))
run.log_table("per_class", {{"class": ["cat", HOSTILE], "f1": [0.9, 0.8]}})
run.log_confusion_matrix("cm", {{"schema_type": "confusion_matrix", "schema_version": "1.0.0",
                                "data": {{"class_labels": ["cat", HOSTILE], "matrix": [[5, 1], [2, 7]]}}}})
open("small.png", "wb").write(png(4, 4))
open("big.png", "wb").write(png(60, 60))
run.log_image("sample", path="small.png")
run.log_image("large", path="big.png")
run.tag("note", HOSTILE)
run.add_properties({{"origin": HOSTILE}})
for i in range(1000):
    print(f"line {{i}}" + (" " + HOSTILE if i == 999 else ""))
"""

PICTURES = '''
import struct, zlib

def png(width, height):
    """An uncompressed RGB PNG of a gradient (about 3 * width * height bytes)."""
    raw = b"".join(b"\\x00" + bytes((x * 7 + y * 3) % 256 for x in range(width * 3)) for y in range(height))

    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    return (b"\\x89PNG\\r\\n\\x1a\\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(raw, 0)) + chunk(b"IEND", b""))
'''

# A resource the page would load from the network: src=/href= attributes and CSS url() / @import.
REMOTE_RESOURCE = re.compile(r"""(?:\b(?:src|href|action|poster)\s*=\s*["']?\s*(?:https?:)?//)"""
                             r"""|(?:url\(\s*["']?\s*(?:https?:)?//)|(?:@import)""", re.IGNORECASE)


def rundock(cwd: Path, *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "rundock", *args], cwd=cwd, capture_output=True, text=True,
                          timeout=120, env={**os.environ, **(env or {})})


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, str, str]]:
    """A workspace with two finished runs of the same script: (project folder, long run, short run). The long
    run logs 3,000 steps, the short one 50."""
    root = tmp_path_factory.mktemp("report")
    ws = Workspace.create(str(root / "project"))
    ws.close()
    project = root / "project"
    src = root / "src"
    src.mkdir()
    (src / "train.py").write_text(SCRIPT.format(hostile=HOSTILE))
    (src / "pictures.py").write_text(PICTURES)
    ids = []
    for steps in ("3000", "50"):
        submitted = rundock(project, "submit", str(src), "-s", "train.py", "-e", "report", "--detach", "--", steps)
        assert submitted.returncode == 0, submitted.stderr
        ids.append(submitted.stdout.strip())
    for run_id in ids:
        waited = rundock(project, "wait", run_id)
        assert waited.returncode == 0, waited.stdout + waited.stderr
    yield project, ids[0], ids[1]


def report_of(project: Path, *args: str) -> str:
    made = rundock(project, "report", *args)
    assert made.returncode == 0, made.stderr
    assert "Wrote " in made.stderr
    output = args[args.index("-o") + 1]
    return Path(project, output).read_text(encoding="utf-8")


def chart_data(page_html: str) -> dict[str, Any]:
    found = re.search(r'<script type="application/json" id="report-data">(.*?)</script>', page_html, re.S)
    assert found
    data: dict[str, Any] = json.loads(found.group(1))
    return data


def test_report_holds_every_part_of_the_runs_in_one_file(project: tuple[Path, str, str]) -> None:
    folder, long_run, short_run = project
    page = report_of(folder, long_run, short_run, "-o", "report.html", "--max-image-mb", "0.005")

    # Both runs, their details, timelines and files.
    for run_id in (long_run, short_run):
        assert f'id="run-{run_id}"' in page
        assert f"rundock logs {run_id}" in page  # the trimmed log says where the rest is
        assert f"rundock download {run_id} -p images/large.png" in page  # the image over the limit
    for status in ("Preparing", "Queued", "Running", "Finalizing", "Completed"):
        assert f">{status}</span>" in page
    assert "<dt>Arguments</dt><dd>3000</dd>" in page and "<dt>Script</dt><dd>train.py</dd>" in page
    assert "system_logs/driver_log.txt" in page and "images/sample.png" in page

    # Hostile values show as text and nowhere as markup.
    assert HOSTILE not in page and "<img src=x" not in page and "<script>alert" not in page
    escaped = "&lt;script&gt;alert(1)&lt;/script&gt;&quot;&#x27;&amp;&lt;img src=x onerror=alert(2)&gt;"
    assert page.count(escaped) >= 6  # tag, property, table cell, confusion-matrix label, last log line, per run

    # The log keeps its head and tail, and says what it left out.
    assert "line 0\n" in page and "line 998\n" in page and "line 500\n" not in page
    assert "… 600 lines omitted; full log: rundock logs" in page

    # Values logged once, tables, confusion matrices, images.
    assert "<td>final_score</td><td>0.5</td>" in page and "<td>diverged</td>" in page
    assert "<th>class</th><th>f1</th>" in page and "<td>0.9</td>" in page
    assert "(rows: true class, columns: predicted class)" in page and ">7</td>" in page
    assert page.count('src="data:image/png;base64,') == 2  # the small image of each run
    assert page.count("Not embedded: 10.9 kB is over this report's limit of 5.0 kB") == 2

    # Scalar metrics: one chart per metric with both runs overlaid.
    charts = {c["name"]: c for c in chart_data(page)["charts"]}
    assert set(charts) == {"loss", "acc"}
    assert [s["label"] for s in charts["acc"]["series"]] == [long_run, short_run]
    assert charts["acc"]["series"][1]["y"][:3] == [0.0, 0.02, 0.04]

    # Everything is inline: nothing is loaded from elsewhere.
    assert not REMOTE_RESOURCE.search(page), REMOTE_RESOURCE.search(page)
    assert "<link" not in page and "Leon Sorokin" in page  # uPlot inline, with its licence


def test_report_downsamples_a_long_series(project: tuple[Path, str, str]) -> None:
    folder, long_run, _ = project
    page = report_of(folder, long_run, "-o", "small.html", "--max-points", "300")
    loss = next(c for c in chart_data(page)["charts"] if c["name"] == "loss")
    series = loss["series"][0]
    assert len(series["x"]) == 300 and series["x"][0] == 0 and series["x"][-1] == 2999  # the ends are kept
    assert "300 of 3,000 points shown (LTTB downsampling)" in page


def test_report_draws_offline_in_a_browser(project: tuple[Path, str, str], browser: Any) -> None:
    folder, long_run, short_run = project
    report_of(folder, long_run, short_run, "-o", "browser.html")
    path = folder / "browser.html"
    page, dialogs = new_page(browser)
    requested: list[str] = []
    problems: list[str] = []

    def only_the_file(route: Any) -> None:
        requested.append(route.request.url)
        route.continue_() if route.request.url == path.as_uri() else route.abort()

    page.route("**/*", only_the_file)
    page.on("console", lambda m: problems.append(f"{m.type}: {m.text}") if m.type == "error" else None)
    page.on("pageerror", lambda e: problems.append(f"page error: {e}"))
    page.goto(path.as_uri())
    page.wait_for_selector(".chart[data-drawn]")

    assert problems == [] and dialogs == []  # no console errors, and no alert() from a hostile value
    assert requested == [path.as_uri()]  # nothing but the file itself
    assert page.locator(".chart").count() == 2  # loss and acc
    assert page.locator(".chart[data-drawn] canvas").count() == 2  # each a uPlot canvas
    legends = page.locator(".u-legend").all_inner_texts()
    assert len(legends) == 2 and all(long_run in text and short_run in text for text in legends)
    acc = page.evaluate("window.rundockReport.charts[1].data")
    assert acc[0][:3] == [0, 1, 2] and acc[2][:3] == [0, 0.02, 0.04]  # the short run's values, as drawn
    decoded = page.evaluate("[...document.images].filter(i => i.complete && i.naturalWidth > 0).length")
    assert decoded == 4  # sample and large of each run, embedded and decoded
    page.context.close()


def test_plot_draws_runs_overlaid_in_the_terminal(project: tuple[Path, str, str]) -> None:
    folder, long_run, short_run = project
    drawn = rundock(folder, "plot", long_run, short_run, "loss", "acc", "--width", "70", "--height", "8")
    assert drawn.returncode == 0, drawn.stderr
    lines = drawn.stdout.splitlines()
    assert lines[0] == "loss" and "acc" in lines
    assert all(len(line) <= 70 for line in lines), max(lines, key=len)
    assert sum(1 for line in lines if re.search("[\u2801-\u28ff]", line)) >= 12  # braille dots on both charts
    legend = [line for line in lines if "━━" in line]
    assert len(legend) == 4 and long_run in legend[0] and short_run in legend[1]
    assert short_run in legend[3] and "last=0.98 min=0 max=0.98 (50 points)" in drawn.stdout

    narrow = rundock(folder, "plot", short_run, "--x", "time", env={"COLUMNS": "50"})
    assert narrow.returncode == 0, narrow.stderr
    assert all(len(line) <= 50 for line in narrow.stdout.splitlines())
    assert "seconds since the first value" in narrow.stdout
    assert {"loss", "acc"} <= set(narrow.stdout.splitlines())  # every metric logged as a series


def test_plot_says_what_is_wrong_with_a_metric(project: tuple[Path, str, str]) -> None:
    folder, long_run, _ = project
    unknown = rundock(folder, "plot", long_run, "lost")
    assert unknown.returncode == 2
    assert "no metric 'lost'" in unknown.stderr and "loss, acc, final_score" in unknown.stderr

    table = rundock(folder, "plot", long_run, "per_class")
    assert table.returncode == 2
    assert "holds a table, not numbers over steps" in table.stderr and "rundock report" in table.stderr

    no_run = rundock(folder, "plot", "report_0_00000000", "loss")
    assert no_run.returncode == 2 and "report_0_00000000" in no_run.stderr
