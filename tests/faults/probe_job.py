"""The job every fault scenario submits (copied into the run's source folder as ``job.py``).

It runs under the job's own Python (any >= 3.8, also inside a container), so it uses the standard
library and ``rundock.context`` only. It takes one argument, a JSON object:

- ``probe``: a folder OUTSIDE the run (``src/probe`` for Docker jobs, which see only their part of
  the run directory); the job writes ``<probe>/<run id>/`` files there with ``os.fsync`` so that
  the test knows what was durable when a fault hit: ``starts`` (one pid per execution), ``values`` (each value after
  ``run.log`` returned), ``children`` (pids of the processes it started), ``done``;
- ``values``/``interval``: log ``v`` = 0..values-1, sleeping ``interval`` s after each;
- ``outputs``: {name: size} written to ``./outputs`` before logging;
- ``ignore_term``, ``setsid_child``, ``group_child``: be hard to stop;
- ``wait_file``: wait (at most 30 s) for this file before logging;
- ``check_absent``: a run id; record how many live processes of that run exist at start;
- ``hostile``: a list of attacks on rundock (see ``attack``);
- ``sleep``, ``exit``: sleep at the end, exit status.
"""

PROBE_JOB = r'''
import json, os, signal, subprocess, sys, time

cfg = json.loads(sys.argv[1])
run_id = os.environ.get("RUNDOCK_RUN_ID", "offline")
run_dir = os.environ.get("RUNDOCK_RUN_DIR", ".")
probe = os.path.join(cfg["probe"], run_id)
os.makedirs(probe, exist_ok=True)


def note(name, text):
    fd = os.open(os.path.join(probe, name), os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, (str(text) + "\n").encode())
        os.fsync(fd)
    finally:
        os.close(fd)


note("starts", os.getpid())
if cfg.get("ignore_term"):
    signal.signal(signal.SIGTERM, signal.SIG_IGN)

from rundock.context import Run  # noqa: E402

run = Run.get_context()
STUBBORN = ("import signal, sys, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); "
            "open(sys.argv[1], 'w').close(); time.sleep(300)")


def stubborn_child(kind, **popen):
    ready = os.path.join(probe, "ready-%s" % kind)
    child = subprocess.Popen([sys.executable, "-c", STUBBORN, ready], **popen)
    deadline = time.time() + 20
    while not os.path.exists(ready) and time.time() < deadline:  # it ignores SIGTERM from here on
        time.sleep(0.01)
    note("children", child.pid)


if cfg.get("setsid_child"):
    stubborn_child("setsid", start_new_session=True)
if cfg.get("group_child"):
    stubborn_child("group")


def live_processes_of(other):
    found = 0
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open("/proc/%s/environ" % entry, "rb") as fh:
                env = fh.read().split(b"\0")
            with open("/proc/%s/stat" % entry, "rb") as fh:
                state = fh.read().rsplit(b")", 1)[1].split()[0]
        except OSError:
            continue
        if ("RUNDOCK_RUN_ID=" + other).encode() in env and state != b"Z":
            found += 1
    return found


if cfg.get("check_absent"):
    note("other_run_processes", live_processes_of(cfg["check_absent"]))

os.makedirs("outputs", exist_ok=True)
for name, size in sorted(cfg.get("outputs", {}).items()):
    os.makedirs(os.path.dirname(os.path.join("outputs", name)), exist_ok=True)
    with open(os.path.join("outputs", name), "wb") as fh:
        block = (name.encode() * 64)[:4096] or b"x"
        left = size
        while left > 0:
            fh.write(block[:left])
            left -= len(block)


def journal_append(source, records):
    folder = os.path.join(run_dir, "journal")
    os.makedirs(folder, exist_ok=True)
    with open(os.path.join(folder, source + ".jsonl"), "a") as fh:
        for seq, rec in enumerate(records, 1):
            fh.write(json.dumps(dict({"seq": seq, "t": time.time()}, **rec)) + "\n")


def stage(name, data):
    folder = os.path.join(run_dir, "uploads")
    os.makedirs(folder, exist_ok=True)
    with open(os.path.join(folder, name), "wb") as fh:
        fh.write(data)
    return "uploads/" + name


def attack(kind):
    if kind == "forge_completed":  # a state record in a journal source of the job's own
        journal_append("job-evil", [{"type": "state", "status": "Completed", "detail": "forged by the job"}])
    elif kind == "file_paths":  # file records pointing rundock at files outside the run
        canary = cfg["canary"]
        rel = os.path.relpath(canary, run_dir)
        journal_append("job-evil-files", [
            {"type": "file", "name": "outputs/passwd", "path": "/etc/passwd"},
            {"type": "file", "name": "outputs/secret-abs", "path": canary},
            {"type": "file", "name": "outputs/secret-rel", "path": rel},
            {"type": "file", "name": "outputs/secret-dots", "path": "uploads/../" + rel},
        ])
        os.symlink(canary, os.path.join("outputs", "leak"))
        os.symlink("/etc", os.path.join("outputs", "dir"))
        os.symlink(os.path.dirname(canary), os.path.join("logs", "outside"))
    elif kind == "non_utf8":
        fd = os.open(b"outputs/r\xe9sultat.csv", os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        os.write(fd, b"a,b\n1,2\n")
        os.close(fd)
    elif kind == "bad_names":
        try:
            child = run.child_run(run_id="../../etc")
            child.log("c", 1)
            child.tag("escaped", "yes")
            child.complete()
        except Exception as exc:  # refusing on the job side is fine too
            note("refused", "child: %r" % (exc,))
        try:
            run.upload_file("../../evil-api", stage("evil-api", b"EVIL-API"))
        except Exception as exc:
            note("refused", "upload_file: %r" % (exc,))
        journal_append("job-evil-names", [
            {"type": "file", "name": "../../evil", "path": stage("evil", b"EVIL")},
            {"type": "file", "name": "/evil-abs", "path": stage("evil-abs", b"EVIL-ABS")},
            {"type": "child", "run": "../../../escape", "parent": run_id, "name": "escape", "tags": {}},
            {"type": "metric", "run": "../../../escape", "name": "m", "kind": "scalar", "value": 1},
        ])
    elif kind == "big_tag":
        run.tag("big", "x" * 100000)
    else:
        raise SystemExit("unknown attack %r" % (kind,))


os.makedirs("logs", exist_ok=True)
for kind in cfg.get("hostile", []):
    attack(kind)

if cfg.get("wait_file"):
    deadline = time.time() + 30
    while not os.path.exists(cfg["wait_file"]) and time.time() < deadline:
        time.sleep(0.02)

interval = cfg.get("interval", 0)
for i in range(cfg.get("values", 0)):
    run.log("v", i)
    note("values", i)
    if interval:
        time.sleep(interval)
note("done", 1)
time.sleep(cfg.get("sleep", 0))
sys.exit(cfg.get("exit", 0))
'''

# A wrapper interpreter whose probe for azureml (``python -c ...``) is slow: it holds the agent in
# Preparing for a few seconds without touching rundock's code.
SLOW_PREPARE_INTERPRETER = """#!/bin/sh
if [ "$1" = "-c" ]; then sleep {seconds}; fi
exec {python} "$@"
"""
