"""Shared pieces of the benchmarks: figures, statistics, workspaces, the report."""

from __future__ import annotations

import dataclasses
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

from rundock import Environment, Experiment, Run, RunConfiguration, ScriptRunConfig, Workspace

FIRST_LINE = "import time\nprint(repr(time.time()), flush=True)\n"


@dataclasses.dataclass
class Figure:
    number: int
    title: str
    unit: str
    ours: list[float]
    target: str
    met: bool | None
    baseline_name: str = ""
    baseline: list[float] = dataclasses.field(default_factory=list)
    note: str = ""


def p50(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


def p95(values: list[float]) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(0.95 * (len(ordered) - 1))))]


def log(message: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def workspace(root: Path, name: str) -> Workspace:
    return Workspace.create(str(root / name))


def source(root: Path, name: str, script: str) -> Path:
    folder = root / "src" / name
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "train.py").write_text(script)
    return folder


def submit(ws: Workspace, src: Path, env: Environment | None = None, target: str = "local",
           **config: object) -> Run:
    run_config = RunConfiguration(target=target, environment=env, **config)  # type: ignore[arg-type]
    return Experiment(ws, "bench").submit(ScriptRunConfig(str(src), "train.py", run_config=run_config))


def first_line_delay(ws: Workspace, start: Callable[[], Run]) -> float:
    """Seconds from calling ``start`` to the script's first line (it prints its own time.time())."""
    began = time.time()
    run = start()
    deadline = time.monotonic() + 120
    while True:
        ended = run.refresh()._record.status.is_terminal  # (for a remote target this pulls the logs too)
        line = ws.store.read_log(run.id, "system_logs/driver_log.txt").split(b"\n", 1)[0]
        if line:
            break
        if ended or time.monotonic() > deadline:
            raise RuntimeError(f"run {run.id} never printed: {run.get_detailed_status()}")
        time.sleep(0.01)  # the line carries its own time: polling faster would only take CPU from the run
    run.wait_for_completion()
    return float(line) - began


def machine() -> str:
    cpu = "unknown CPU"
    if os.path.exists("/proc/cpuinfo"):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    return (f"{cpu}, {os.cpu_count()} cores, {memory:.0f} GiB RAM, {platform.system()} {platform.release()}, "
            f"Python {platform.python_version()}")


def _fmt(value: float, unit: str) -> str:
    if unit == "ms":
        return f"{value * 1000:.0f} ms"
    if unit == "µs":
        return f"{value * 1e6:.1f} µs"
    if unit == "values/s":
        return f"{value:,.0f}/s"
    if unit == "MB/s":
        return f"{value:.0f} MB/s"
    if unit == "s":
        return f"{value:.2f} s"
    if unit in ("% CPU", "%"):
        return f"{value:.2f} {unit}" if unit == "% CPU" else f"{value:g} %"
    return f"{value:g} {unit}"


def render(figures: list[Figure], started: float, seconds: float) -> str:
    lines = [
        "# Benchmarks", "",
        "Measured by `make bench` (which runs `python -m bench`) on one machine, each figure beside its baseline "
        "measured in the same run. Medians and p95 over repeated runs; these are measurements, not tests.", "",
        f"- Machine: {machine()}",
        f"- Date: {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime(started))}; the whole run took {seconds:.0f} s",
        "- Reproduce: `make bench` (it starts the Docker engine and a test SSH host like CI does)", "",
        "| # | What | rundock p50 / p95 | Baseline | Baseline p50 / p95 | Ratio (p50) | Target | Met |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for f in figures:
        ours = f"{_fmt(p50(f.ours), f.unit)} / {_fmt(p95(f.ours), f.unit)}" if f.ours else "—"
        base = f"{_fmt(p50(f.baseline), f.unit)} / {_fmt(p95(f.baseline), f.unit)}" if f.baseline else "—"
        ratio = f"{p50(f.ours) / p50(f.baseline):.2f}x" if f.ours and f.baseline and p50(f.baseline) else "—"
        met = {True: "yes", False: "**no**", None: "—"}[f.met]
        lines.append(f"| {f.number} | {f.title} | {ours} | {f.baseline_name or '—'} | {base} | {ratio} | "
                     f"{f.target} | {met} |")
    notes = [f"- **{f.number}.** {f.note}" for f in figures if f.note]
    if notes:
        lines += ["", "## Notes", "", *notes]
    return "\n".join(lines) + "\n"
