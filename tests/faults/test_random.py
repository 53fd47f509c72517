"""Randomized faults: a seeded mix of jobs and faults, a few at a time, all six invariants after each.

The seed comes from ``RUNDOCK_FAULT_SEED`` (else a random one); it is printed at the start and in
every failure message, so ``RUNDOCK_FAULT_SEED=<seed> pytest tests/faults/test_random.py -s``
replays the same scenarios. ``RUNDOCK_FAULT_SCENARIOS`` changes how many (default 50). The table of
scenarios x invariants is printed (``-s`` shows it) and written under pytest's temporary folder.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import os
import queue
import random
import signal
import subprocess
import sys
import time
from typing import Any

import pytest

from rundock import Run
from rundock.submitter.workspace import Workspace
from tests.conftest import REPO
from tests.faults.invariants import NAMES, run_checks, run_containers, run_processes
from tests.faults.scenario import Lab, Scenario, drive_to_end, find_agent, history_text, status_of, wait_for

WORKERS = 3
DEFAULT_SCENARIOS = 50
DOCKER_SCENARIOS = 3
HOSTILE = ("forge_completed", "file_paths", "non_utf8", "bad_names")
NORMAL_END = frozenset({"Completed"})
EITHER_END = frozenset({"Completed", "Failed"})

SWEEPER = """
import sys, time
sys.path.insert(0, {repo!r})
from rundock import Run, Workspace
ws = Workspace({ws!r})
deadline = time.monotonic() + 60
while time.monotonic() < deadline:
    if Run.get(ws, {run_id!r}).get_status() in ("Completed", "Failed", "Canceled"):
        break
    time.sleep(0.05)
"""


def make_scenario(rng: random.Random, index: int, docker: bool) -> Scenario:
    kind = rng.choice(["normal", "logs-fast", "hostile", "sleeps"] if not docker else ["normal", "sleeps"])
    faults = ["none", "kill_agent", "stop_cont", "cancel", "sweep"] if not docker else \
        ["none", "kill_agent", "cancel"]
    fault = rng.choice(faults)
    job: dict[str, Any]
    if kind == "normal":
        job = {"values": rng.randint(5, 40), "interval": 0.01, "outputs": {"model.bin": rng.randint(1, 60_000)}}
    elif kind == "logs-fast":
        job = {"values": rng.randint(200, 3000)}
    elif kind == "hostile":
        attack = rng.choice(HOSTILE)
        job = {"values": 20, "interval": 0.01, "hostile": [attack], **({"exit": 3} if attack == "forge_completed"
                                                                        else {})}
    else:
        job = {"values": 15, "interval": 0.05, "sleep": round(rng.uniform(0.2, 1.0), 2),
               "setsid_child": rng.random() < 0.5, "ignore_term": rng.random() < 0.5,
               "outputs": {"ckpt.bin": rng.randint(1, 5000)}}
    values = int(job["values"])
    if fault in ("kill_agent", "stop_cont", "cancel"):  # mostly long enough for the fault to hit it live
        job["sleep"] = max(float(job.get("sleep", 0)), round(rng.uniform(0, 1.2), 2))
    normal = frozenset({"Failed"}) if job.get("exit") else (EITHER_END if kind == "hostile" else NORMAL_END)
    expected = {"none": normal, "sweep": normal, "stop_cont": normal,
                "kill_agent": frozenset({"Failed"}), "cancel": frozenset({"Canceled"})}[fault]
    name = f"{index:02d} {'docker ' if docker else ''}{kind}{'/' + job['hostile'][0] if kind == 'hostile' else ''}" \
           f" + {fault}"
    return Scenario(name=name, job=job, fault=fault, fault_after_values=rng.randint(0, min(values // 2, 12)),
                    fault_delay_s=round(rng.uniform(0, 0.4), 2), expected=expected, docker=docker,
                    run_config={"cancel_grace_seconds": 1})


@dataclasses.dataclass
class Row:
    scenario: Scenario
    run_id: str = ""
    status: str = "?"
    fault_hit: bool = False
    results: dict[str, str | None] = dataclasses.field(default_factory=dict)
    outcome: str | None = None  # None when the status was one of the expected

    @property
    def failed(self) -> bool:
        return self.outcome is not None or any(self.results.values()) or len(self.results) != len(NAMES)


def play(lab: Lab, ws: Workspace, every: list[Workspace], sc: Scenario, rng: random.Random, image: str | None) -> Row:
    row = Row(sc)
    watch = lab.watch(*every)
    env = lab.docker_env(image) if sc.docker and image else None
    run = lab.submit(ws, sc.job, environment=env, docker=sc.docker, experiment="random", **sc.run_config)
    row.run_id = run.id
    ctx = lab.context(ws, run.id, sc.job, docker=sc.docker, watch=watch, fault=f"{sc.name} [random]")
    try:
        wait_for(lambda: len(ctx.probe_lines(run.id, "values")) >= sc.fault_after_values
                 or status_of(ws, run.id).is_terminal, 90, f"{sc.fault_after_values} values")
        time.sleep(sc.fault_delay_s)
        reader = "get_status"
        sweeper = None
        live = not status_of(ws, run.id).is_terminal
        if sc.fault == "kill_agent" and live:
            ctx.values_at_fault = [int(v) for v in ctx.probe_lines(run.id, "values")]
            pids = find_agent(ctx.run_dir)
            for pid in pids:
                os.kill(pid, signal.SIGKILL)
            row.fault_hit = bool(pids)
            reader = rng.choice(["get_status", "get_status", "list"])
        elif sc.fault == "stop_cont" and live:
            pids = find_agent(ctx.run_dir)
            for pid in pids:
                os.kill(pid, signal.SIGSTOP)
            time.sleep(rng.uniform(0.7, 1.0))  # past the 0.6 s lease, well before the 2 s lost-after
            for pid in pids:
                os.kill(pid, signal.SIGCONT)
            row.fault_hit = bool(pids)
        elif sc.fault == "cancel" and live:
            Run.get(ws, run.id).cancel()
            row.fault_hit = True
        elif sc.fault == "sweep":
            code = SWEEPER.format(repo=str(REPO), ws=ws.path, run_id=run.id)
            sweeper = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.DEVNULL,
                                       stderr=subprocess.PIPE)
            row.fault_hit = True
        status = drive_to_end(ws, run.id, reader, timeout=60)
        if sweeper is not None:
            _, err = sweeper.communicate(timeout=60)
            if sweeper.returncode != 0:
                row.outcome = f"the concurrent reader failed: {err.decode()[-500:]}"
        row.status = status.value
        rec = ws.store.get_run(run.id)
        if row.fault_hit or sc.fault in ("none", "sweep"):
            expected = sc.expected
        else:  # the job ended before the fault could hit: its own outcome, or the fault's
            expected = sc.expected | _normal(sc)
        if sc.fault == "cancel" and row.fault_hit:
            expected = expected | _normal(sc)  # a cancel that arrives as the job exits may lose the race
        if row.outcome is None and status.value not in expected:
            row.outcome = f"ended {status.value} ({rec.status_detail!r}, {rec.error}), expected one of " \
                          f"{sorted(expected)}; history: {history_text(ws, run.id)}"
        if row.outcome is None and sc.fault == "kill_agent" and row.fault_hit and \
                (rec.error or {}).get("code") != "AgentLost":
            row.outcome = f"its agent was killed but it ended {status.value} with error {rec.error}"
    except AssertionError as exc:
        row.outcome = str(exc)
        row.status = status_of(ws, run.id).value
    row.results = run_checks(ws, run.id, ctx)
    _clean(run.id, ctx.run_dir)
    return row


def _normal(sc: Scenario) -> frozenset[str]:
    if sc.job.get("exit"):
        return frozenset({"Failed"})
    return EITHER_END if sc.job.get("hostile") else NORMAL_END


def _clean(run_id: str, run_dir: str) -> None:
    """Kill what survived (the table already says so), so later scenarios run on a clean machine."""
    for pid in run_processes(run_id, run_dir):
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    for name in run_containers(run_id):
        subprocess.run(["docker", "rm", "-f", name.split("(")[1].split(",")[0]], capture_output=True, timeout=60)


def table(rows: list[Row], seed: int) -> str:
    head = f"{'scenario':<38} {'run status':<10} " + " ".join(f"{n.split()[0]:<3}" for n in NAMES) + "  outcome"
    lines = [f"RUNDOCK_FAULT_SEED={seed}", head, "-" * len(head)]
    for row in rows:
        marks = " ".join(f"{('ok' if row.results.get(n) is None else 'XX') if row.results else '--':<3}"
                         for n in NAMES)
        lines.append(f"{row.scenario.name[:38]:<38} {row.status:<10} {marks}  "
                     f"{'ok' if row.outcome is None else 'XX'}{'' if row.fault_hit else ' (fault missed)'}")
    failed = [r for r in rows if r.failed]
    lines.append(f"{len(rows) - len(failed)} of {len(rows)} scenarios kept every promise")
    return "\n".join(lines)


def test_random_faults(lab: Lab, request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> None:
    seed = int(os.environ.get("RUNDOCK_FAULT_SEED") or random.SystemRandom().randrange(10**9))
    count = int(os.environ.get("RUNDOCK_FAULT_SCENARIOS", DEFAULT_SCENARIOS))
    print(f"\nRUNDOCK_FAULT_SEED={seed} ({count} scenarios, {WORKERS} at a time)", flush=True)
    rng = random.Random(seed)
    try:
        image: str | None = request.getfixturevalue("docker_base_image")
    except pytest.skip.Exception as exc:
        print(f"no Docker scenarios: {exc}")
        image = None
    docker_slots = set(rng.sample(range(count), min(DOCKER_SCENARIOS, count))) if image else set()
    scenarios = [make_scenario(rng, i, i in docker_slots) for i in range(count)]
    rngs = [random.Random(rng.random()) for _ in scenarios]
    workspaces = [lab.workspace(f"worker{i}") for i in range(WORKERS)]
    free: queue.Queue[Workspace] = queue.Queue()
    for ws in workspaces:
        free.put(ws)

    def worker(i: int) -> Row:
        ws = free.get()
        try:
            return play(lab, ws, workspaces, scenarios[i], rngs[i], image)
        except Exception as exc:  # the scenario could not even be played: say so in its row
            return Row(scenarios[i], outcome=f"could not play: {type(exc).__name__}: {exc}")
        finally:
            free.put(ws)

    started = time.monotonic()
    with concurrent.futures.ThreadPoolExecutor(WORKERS) as pool:
        rows = list(pool.map(worker, range(count)))
    text = table(rows, seed) + f"\n({time.monotonic() - started:.0f} s)"
    out = tmp_path_factory.mktemp("fault-table") / "fault_table.txt"
    failures = []
    for row in rows:
        if row.failed:
            failures.append(f"[{row.scenario.name}] run {row.run_id} job {row.scenario.job}:")
            if row.outcome:
                failures.append(f"    outcome: {row.outcome}")
            failures += [f"    {msg}" for msg in row.results.values() if msg]
    out.write_text(text + "\n\n" + "\n".join(failures) + "\n")
    print(text)
    print(f"invariant table written to {out}")
    assert not failures, f"RUNDOCK_FAULT_SEED={seed}: {sum(r.failed for r in rows)} of {count} scenarios broke a " \
                         f"promise (table: {out})\n{text}\n" + "\n".join(failures[:60])
