"""Figures 1-3: from submit to the first line of the user's script (local, Docker, SSH)."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import docker

from bench.common import FIRST_LINE, Figure, first_line_delay, log, p50, p95, source, submit, workspace
from rundock import ComputeTarget, Environment, RemoteCompute
from rundock.submitter.ssh import trust_host
from rundock.submitter.targets.remote import RemoteTarget
from tests.hosts import SshHost

REPS = 20


def _popen_first_line() -> float:
    began = time.time()
    proc = subprocess.Popen([sys.executable, "-c", FIRST_LINE], stdout=subprocess.PIPE)
    assert proc.stdout is not None
    line = proc.stdout.readline()
    proc.wait()
    return float(line) - began


def local(root: Path) -> Figure:
    ws = workspace(root, "latency-local")
    src = source(root, "first-line", FIRST_LINE)
    for _ in range(2):  # warm: job library built, caches filled
        first_line_delay(ws, lambda: submit(ws, src))
    ours = [first_line_delay(ws, lambda: submit(ws, src)) for _ in range(REPS)]
    base = [_popen_first_line() for _ in range(REPS)]
    overhead = [o - b for o, b in zip(sorted(ours), sorted(base), strict=True)]
    log(f"1: local p50 {p50(ours) * 1000:.0f} ms, Popen p50 {p50(base) * 1000:.0f} ms")
    return Figure(1, "submit → first line, local target, warm", "ms", ours, "overhead p50 <= 150 ms, p95 <= 300 ms",
                  p50(overhead) <= 0.150 and p95(overhead) <= 0.300, "`subprocess.Popen([python, script])`", base,
                  note=f"Overhead over the baseline: p50 {p50(overhead) * 1000:.0f} ms, "
                       f"p95 {p95(overhead) * 1000:.0f} ms. Submit packages the snapshot and creates the run; the "
                       "warm local agent forks a detached agent for it, which prepares the run directory and "
                       "starts the script.")


def in_docker(root: Path, image: str) -> Figure:
    ws = workspace(root, "latency-docker")
    src = source(root, "first-line-docker", FIRST_LINE)
    env = Environment("bench-docker")
    env.docker.enabled, env.docker.base_image = True, image
    env.docker.arguments = ["--network", "none"]
    env.python.user_managed_dependencies = True
    client = docker.from_env()

    def baseline() -> float:
        began = time.time()
        container = client.containers.run(image, ["python3", "-c", FIRST_LINE], detach=True, network_mode="none")
        for chunk in container.logs(stream=True, follow=True):
            line = chunk.split(b"\n", 1)[0]
            break
        container.remove(force=True)
        return float(line) - began

    first_line_delay(ws, lambda: submit(ws, src, env))
    baseline()
    ours, base = [], []
    for _ in range(REPS // 2):  # interleaved, so that a busy moment of the engine hits both alike
        ours.append(first_line_delay(ws, lambda: submit(ws, src, env)))
        base.append(baseline())
    log(f"2: docker p50 {p50(ours) * 1000:.0f} ms, docker-py p50 {p50(base) * 1000:.0f} ms")
    return Figure(2, "submit → first line, Docker, image cached", "ms", ours, "<= 1.3x the baseline",
                  p50(ours) <= 1.3 * p50(base), "docker-py `containers.run`", base,
                  note="Both run the same image with the network off, interleaved. Most of either figure is the "
                       "engine starting the container. rundock's part before `create` (about 25 ms here): the "
                       "snapshot and the run record, forking the run's agent from the warm agent, writing the run "
                       "directory, and two engine calls (a ping, with the API version remembered from the first "
                       "run, and the image lookup). Its container also gets `--init`, the run-directory mounts "
                       "and the submitting user.")


def over_ssh(root: Path, host: SshHost) -> Figure:
    ws = workspace(root, "latency-ssh")
    ComputeTarget.attach(ws, "box", RemoteCompute.attach_configuration(
        address="127.0.0.1", ssh_port=host.port, username="root", private_key_file=host.key_file))
    target = RemoteTarget(ws, "box")
    trust_host(target.ssh_target(), target.known_hosts)
    src = source(root, "first-line-ssh", FIRST_LINE)
    first_line_delay(ws, lambda: submit(ws, src, target="box"))  # installs the agent, sends the snapshot
    reps = REPS // 2
    ours = [first_line_delay(ws, lambda: submit(ws, src, target="box")) for _ in range(reps)]

    def ssh_true() -> float:
        began = time.time()
        subprocess.run(["ssh", "-i", host.key_file, "-p", str(host.port), "-o", "BatchMode=yes",
                        "-o", f"UserKnownHostsFile={target.known_hosts}", "root@127.0.0.1", "true"], check=True)
        return time.time() - began

    base = [ssh_true() for _ in range(reps)]
    log(f"3: ssh p50 {p50(ours) * 1000:.0f} ms, `ssh host true` p50 {p50(base) * 1000:.0f} ms")
    return Figure(3, "submit → first line, SSH host, agent cached, unchanged snapshot", "ms", ours,
                  "p50 <= 0.5 s on loopback", p50(ours) <= 0.5, "`ssh host true` (OpenSSH)", base,
                  note="The submitting process keeps its SSH connection between runs, as a notebook or a sweep does; "
                       "the first submit in a process adds one SSH handshake and a check of the host's Python. A "
                       "submit then makes two round trips: one asks the host for its state and the blobs it lacks "
                       "(none here), one starts the run's agent; each starts Python on the host.")
