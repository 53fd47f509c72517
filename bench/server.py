"""Figures 14-17: the team server (``rundock server`` over PostgreSQL) on loopback.

14. Values made durable per second through the server by 4 real jobs logging at once, beside MLflow's REST
    ``log_batch`` (1,000 values per request, the most it takes) from 4 threads to its own tracking server.
15. A 1 GB output stored through the server: MB/s, and the peak RSS of the client and of the server.
16. A small request (``get_run``) over a keep-alive connection, beside the same call on the embedded history.
17. 20 clients and 50 simulated agents on one server for 2 minutes: p50 / p99 latency and errors.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import psutil

from bench.common import Figure, log, p50, source, submit
from rundock import Run, Workspace
from rundock.history.store import open_store
from tests.server_fixtures import ServerHandle, postgres_database, running_server

FLOOD = """
import sys, time
from rundock import Run
run = Run.get_context()
print(repr(time.time()), flush=True)
for i in range(int(sys.argv[1])):
    run.log("value", i)
"""
JOBS, PER_JOB = 4, 100_000
LOAD_SECONDS = float(os.environ.get("RUNDOCK_BENCH_LOAD_SECONDS", "120"))


@contextlib.contextmanager
def team_server(root: Path) -> Iterator[ServerHandle]:
    with postgres_database() as uri, running_server(root / "team-server", uri) as server:
        yield server


def _server_workspace(root: Path, name: str, server: ServerHandle, token: str) -> Workspace:
    folder = root / name
    Workspace.create(str(folder))
    config = folder / ".rundock" / "config.yaml"
    config.write_text(f"history: {server.url}\n")
    os.environ["RUNDOCK_TOKEN"] = token
    return Workspace.from_config(str(folder))


def _durable(store_uri: str, runs: list[Run]) -> int:
    """Values the server has committed: the jobs' journal marks, which move in the same transaction as their values
    (the jobs write nothing but these values). Read straight from the server's database, as figure 6 reads the
    SQLite file: one cheap query that takes nothing from the server being measured."""
    import psycopg

    with psycopg.connect(store_uri, autocommit=True) as db:
        row = db.execute("SELECT COALESCE(SUM(seq), 0) FROM journal_marks WHERE run_id = ANY(%s) "
                         "AND source LIKE 'job-%%'", ([r.id for r in runs],)).fetchone()
    return int(row[0]) if row else 0


def _flood(ws: Workspace, root: Path, store_uri: str) -> float:
    """Like figure 6: from the first job's first line to the moment every value is committed in the history."""
    src = source(root, "server-flood", FLOOD)
    runs = [submit(ws, src, arguments=[str(PER_JOB)]) for _ in range(JOBS)]
    logs = [Path(r.refresh()._record.run_dir or "") / "system_logs" / "driver_log.txt" for r in runs]
    while True:  # each job's first line, read from its run directory on this machine (not through the server)
        firsts = [log.read_bytes().split(b"\n", 1)[0] if log.exists() else b"" for log in logs]
        if all(firsts):
            break
        time.sleep(0.01)
    began = min(float(f) for f in firsts)
    polls = 0
    while _durable(store_uri, runs) < JOBS * PER_JOB:
        polls += 1
        if polls % 50 == 0:  # a run that failed would never get there (checked seldom: reads cost the server)
            ended = [r for r in runs if r.refresh()._record.status.is_terminal and r.get_status() != "Completed"]
            assert not ended, f"run {ended[0].id} ended {ended[0].get_status()}: {ended[0].get_detailed_status()}"
        time.sleep(0.02)
    done = time.time()
    for run in runs:
        run.wait_for_completion()
    counted = sum(len(ws.store.get_metric_records(r.id, "value")) for r in runs)
    assert counted == JOBS * PER_JOB, f"{counted} values stored, {JOBS * PER_JOB} logged"
    return JOBS * PER_JOB / (done - began)


def _mlflow_batches(root: Path, threads: int, batches: int) -> float | None:
    """MLflow's ``log_batch`` (1,000 values per request) from ``threads`` threads to its own server."""
    mlflow_bin = Path(sys.executable).parent / "mlflow"
    if not mlflow_bin.exists():
        return None
    from mlflow.entities import Metric
    from mlflow.tracking import MlflowClient

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    store = root / "mlflow-batch"
    store.mkdir()
    server = subprocess.Popen([str(mlflow_bin), "server", "--host", "127.0.0.1", "--port", str(port),
                               "--backend-store-uri", f"sqlite:///{store}/mlflow.db",
                               "--default-artifact-root", str(store / "artifacts"), "--workers", "4"],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        client = MlflowClient(f"http://127.0.0.1:{port}")
        deadline = time.monotonic() + 120
        while True:
            try:
                experiment = client.create_experiment("bench")
                break
            except Exception:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.5)
        run_ids = [client.create_run(experiment).info.run_id for _ in range(threads)]

        def flood(run_id: str) -> None:
            for b in range(batches):
                now = int(time.time() * 1000)
                client.log_batch(run_id, metrics=[Metric("value", float(i), now, b * 1000 + i) for i in range(1000)])

        began = time.perf_counter()
        with ThreadPoolExecutor(threads) as pool:
            list(pool.map(flood, run_ids))
        return threads * batches * 1000 / (time.perf_counter() - began)
    finally:
        os.killpg(server.pid, 15)
        server.wait(30)


def throughput(root: Path, server: ServerHandle) -> Figure:
    token = server.make_token("bench", "user")
    rates = [_flood(_server_workspace(root, f"server-flood-{rep}", server, token), root, server.store_uri)
             for rep in range(3)]
    baseline = _mlflow_batches(root, JOBS, 25)
    log(f"14: {p50(rates):,.0f} values/s through the server; MLflow log_batch {baseline or 0:,.0f}/s")
    return Figure(14, f"values made durable through the team server (PostgreSQL), {JOBS} jobs x "
                      f"{PER_JOB:,} values at once", "values/s", rates, ">= 100,000 values/s",
                  p50(rates) >= 100_000, "MLflow `log_batch` (1,000 values per request), 4 threads, its own "
                                         "server (4 workers, SQLite)", [baseline] if baseline else [],
                  note="As figure 6: from the first job's first line to the moment every value is committed in the "
                       "server's history (PostgreSQL). The jobs write their journals; their agents ship them in "
                       "batches of thousands of values per request over one keep-alive connection each.")


UPLOAD = """
import json, os, sys, time
from rundock.history.artifacts import ArtifactStore
from rundock.history.store import open_store
path, cache, url = sys.argv[1:4]
store = open_store(url, artifacts_root=cache)
digest, size, _ = ArtifactStore(cache).put_file(path)
run = store.create_run("bench-upload").run_id
began = time.perf_counter()
store.add_file(run, "outputs/big.bin", digest, size)
seconds = time.perf_counter() - began
with open("/proc/self/status") as fh:  # this process's high-water mark (ru_maxrss keeps the parent's across exec)
    peak = next(int(line.split()[1]) for line in fh if line.startswith("VmHWM:"))
print(json.dumps({"seconds": seconds, "size": size, "rss": peak}))
"""


def _peak_rss(pid: int, stop: threading.Event, out: list[int]) -> None:
    process = psutil.Process(pid)
    peak = 0
    while not stop.is_set():
        with contextlib.suppress(psutil.Error):
            peak = max(peak, process.memory_info().rss)
        time.sleep(0.02)
    out.append(peak)


def big_output(root: Path, server: ServerHandle) -> Figure:
    import json

    token = server.make_token("bench-upload", "user")
    big = root / "big.bin"
    rates, client_rss, server_rss, copies = [], [], [], []
    for rep in range(3):
        with open(big, "wb") as fh:  # new bytes each time: a blob the server has is never sent again
            for _ in range(1024):
                fh.write(os.urandom(1 << 20))
        began = time.perf_counter()
        shutil.copyfile(big, root / "big-copy.bin")
        os.sync()
        copies.append(big.stat().st_size / 1e6 / (time.perf_counter() - began))
        (root / "big-copy.bin").unlink()
        stop, peak = threading.Event(), []  # type: ignore[var-annotated]
        watcher = threading.Thread(target=_peak_rss, args=(server.process.pid, stop, peak))
        watcher.start()
        try:
            out = subprocess.run([sys.executable, "-c", UPLOAD, str(big), str(root / f"cache-{rep}"), server.url],
                                 env={**os.environ, "RUNDOCK_TOKEN": token}, capture_output=True, text=True,
                                 check=True, timeout=600)
        finally:
            stop.set()
            watcher.join()
        result = json.loads(out.stdout.strip().splitlines()[-1])
        rates.append(result["size"] / 1e6 / result["seconds"])
        client_rss.append(result["rss"] / 1024)  # VmHWM is in KiB
        server_rss.append(peak[0] / 2**20)
        shutil.rmtree(root / f"cache-{rep}")
    log(f"15: {p50(rates):.0f} MB/s; client RSS {max(client_rss):.0f} MB, server RSS {max(server_rss):.0f} MB; "
        f"cp {p50(copies):.0f} MB/s")
    ok = p50(rates) >= 200 and max(client_rss) < 200 and max(server_rss) < 200
    return Figure(15, "a 1 GB output stored through the team server (loopback)", "MB/s", rates,
                  ">= 200 MB/s; client and server RSS < 200 MB", ok, "`cp` of the same file on the same disk",
                  copies, note=f"Peak RSS: client {max(client_rss):.0f} MB, server {max(server_rss):.0f} MB "
                               "(whole processes, Python included). The client asks which blobs the server lacks, "
                               "then streams the file in a resumable upload; the server hashes it as it arrives.")


def small_request(root: Path, server: ServerHandle) -> Figure:
    token = server.make_token("bench-latency", "user")
    os.environ["RUNDOCK_TOKEN"] = token
    remote = open_store(server.url)
    local = open_store(f"sqlite:///{root / 'latency.db'}")
    timings: dict[str, list[float]] = {}
    for name, store in (("remote", remote), ("local", local)):
        run_id = store.create_run("latency").run_id
        for _ in range(50):
            store.get_run(run_id)
        samples = []
        for _ in range(1000):
            began = time.perf_counter()
            store.get_run(run_id)
            samples.append(time.perf_counter() - began)
        timings[name] = samples
    log(f"16: get_run over HTTP p50 {p50(timings['remote']) * 1000:.2f} ms; embedded "
        f"{p50(timings['local']) * 1000:.2f} ms")
    return Figure(16, "a small request (`get_run`) to the team server, keep-alive, loopback", "ms",
                  timings["remote"], "p50 <= 5 ms", p50(timings["remote"]) <= 0.005,
                  "the same call on the embedded SQLite history", timings["local"])


LOAD = """
import json, random, sys, threading, time
from rundock.history.store import open_store
url, role, count, seconds, experiment = sys.argv[1], sys.argv[2], int(sys.argv[3]), float(sys.argv[4]), sys.argv[5]
lat, errors, lock = [], [], threading.Lock()

def timed(call):
    began = time.perf_counter()
    try:
        call()
    except Exception as exc:
        with lock:
            errors.append(repr(exc)[:200])
        return
    with lock:
        lat.append(time.perf_counter() - began)

def agent(n):
    store = open_store(url)
    run = store.create_run(experiment).run_id
    seq, end = 0, time.monotonic() + seconds
    while time.monotonic() < end:
        records = [{"seq": seq + 1, "t": time.time(), "type": "heartbeat", "interval": 1.0}]
        records += [{"seq": seq + 2 + i, "t": time.time(), "type": "metric", "name": "loss", "kind": "scalar",
                     "value": random.random(), "step": seq + i} for i in range(100)]
        seq += len(records)
        timed(lambda: store.apply_journal(run, 0, "job-1", records))
        timed(lambda: store.append_log(run, "system_logs/driver_log.txt", seq * 10, b"x" * 10))
        time.sleep(1.0)

def client(n):
    store = open_store(url)
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        timed(lambda: store.list_runs(experiment=experiment))
        runs = store.list_runs(experiment=experiment) if random.random() < 0.1 else None
        if runs:
            timed(lambda: store.get_metric_records(random.choice(runs).run_id, "loss"))
        time.sleep(0.1)

threads = [threading.Thread(target=agent if role == "agent" else client, args=(i,)) for i in range(count)]
for t in threads: t.start()
for t in threads: t.join()
print(json.dumps({"latencies": lat, "errors": errors}))
"""


def load(root: Path, server: ServerHandle) -> Figure:
    import json

    token = server.make_token("bench-load", "user")
    env = {**os.environ, "RUNDOCK_TOKEN": token}
    plan = [("agent", 10)] * 5 + [("client", 10)] * 2  # 50 agents and 20 clients, in 7 processes
    procs = [subprocess.Popen([sys.executable, "-c", LOAD, server.url, role, str(n), str(LOAD_SECONDS), "load"],
                              env=env, stdout=subprocess.PIPE, text=True) for role, n in plan]
    latencies: list[float] = []
    errors: list[str] = []
    for proc in procs:
        out, _ = proc.communicate(timeout=LOAD_SECONDS + 300)
        result: dict[str, Any] = json.loads(out.strip().splitlines()[-1])
        latencies += result["latencies"]
        errors += result["errors"]
    p99 = sorted(latencies)[int(0.99 * (len(latencies) - 1))] if latencies else float("nan")
    log(f"17: {len(latencies):,} requests, p50 {statistics.median(latencies) * 1000:.1f} ms, p99 {p99 * 1000:.1f} ms, "
        f"{len(errors)} errors {errors[:3]}")
    return Figure(17, f"20 clients and 50 simulated agents for {LOAD_SECONDS:.0f} s (every request)", "ms",
                  latencies, "0 errors; p99 reported", not errors,
                  note=f"{len(latencies):,} requests, p99 {p99 * 1000:.0f} ms, {len(errors)} errors. Each agent "
                       "sends a heartbeat with 100 values and a log chunk every second; each client lists the "
                       "runs every 100 ms and reads a run's metrics one time in ten.")


def server_figures(root: Path) -> list[Figure]:
    figures: list[Figure] = []
    with team_server(root) as server:
        for step in (small_request, throughput, big_output, load):
            began = time.perf_counter()
            try:
                figures.append(step(root, server))
            finally:
                log(f"{step.__name__} took {time.perf_counter() - began:.0f} s")
    os.environ.pop("RUNDOCK_TOKEN", None)
    return figures
