"""The six promises a fault must not break, checked on one run after its scenario.

Each ``check_iN(workspace, run_id, ctx)`` raises AssertionError with a message that says exactly
what is wrong; ``check_all`` runs all six and reports every failure at once. What they rely on:

- the history: ``store.get_run``, ``store.status_history``, ``store.get_metric_records``,
  ``store.list_files`` and the artifact store under ``<workspace>/artifacts`` (loose blobs and packs);
- the run directory (``RunRecord.run_dir``, the agent's ``<root>/runs/<run id>``), whose
  ``src/outputs`` is compared file by file with the stored files;
- the probe folder the job writes outside its run (see ``probe_job.py``): ``starts`` (one pid per
  execution), ``values`` (a value per line, written and fsynced after ``run.log`` returned);
- processes: psutil, a process belongs to the run when its environment has
  ``RUNDOCK_RUN_ID=<run id>``, or it is the run's agent (``rundock.agent`` in its command line and
  the run directory as its working directory); containers: label ``rundock.run_id=<run id>`` or
  name ``rundock-<run id>``.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import stat
import subprocess
import time
from collections import Counter
from collections.abc import Callable, Iterable
from typing import Any

import psutil

from rundock.states import RunStatus, can_transition
from rundock.submitter.workspace import Workspace

METRIC = "v"
SURVIVOR_GRACE_S = 3.0
SYSTEM_FILES = ("/etc/passwd", "/etc/group", "/etc/hostname", "/etc/hosts", "/etc/os-release", "/etc/shadow")
NAMES = ("I1 states", "I2 values", "I3 outputs", "I4 survivors", "I5 once", "I6 outside")


# -- what a scenario tells the checks ------------------------------------------------------------
class OutsideWatch:
    """Files outside the run directory that no job may create, change or remove (by size, mtime, hash)."""

    def __init__(self, roots: Iterable[str], allowed: Iterable[str], artifact_roots: Iterable[str] = ()) -> None:
        self.roots = [os.path.realpath(r) for r in roots]
        self.allowed = [os.path.realpath(a) for a in allowed]
        self.before = self.snapshot()
        # Blobs already in the artifact stores: a later canary check looks only at what came after.
        self.artifacts_before = {os.path.join(d, f) for root in artifact_roots for d, _, fs in os.walk(root)
                                 for f in fs}
        self.db_hits_before: set[tuple[bytes, str]] = set()  # canary markers already in a history (see Lab.watch)

    def _allowed(self, path: str) -> bool:
        return any(path == a or path.startswith(a + os.sep) for a in self.allowed)

    def snapshot(self) -> dict[str, tuple[int, int, int, str]]:
        seen: dict[str, tuple[int, int, int, str]] = {}
        for root in self.roots:
            for folder, dirs, files in os.walk(root):
                dirs[:] = [d for d in dirs if not self._allowed(os.path.join(folder, d))]
                for name in [*files, *[d for d in dirs if os.path.islink(os.path.join(folder, d))]]:
                    path = os.path.join(folder, name)
                    if self._allowed(path):
                        continue
                    try:
                        st = os.lstat(path)
                    except FileNotFoundError:
                        continue
                    digest = ""
                    if stat.S_ISREG(st.st_mode) and st.st_size < (4 << 20):
                        with open(path, "rb") as fh:
                            digest = hashlib.sha256(fh.read()).hexdigest()
                    seen[path] = (st.st_size, st.st_mtime_ns, st.st_mode, digest)
        return seen

    def changes(self) -> list[str]:
        after = self.snapshot()
        out = [f"created {p}" for p in sorted(set(after) - set(self.before))]
        out += [f"removed {p}" for p in sorted(set(self.before) - set(after))]
        out += [f"modified {p} (size/mtime/mode/hash {self.before[p]} -> {after[p]})"
                for p in sorted(set(after) & set(self.before)) if after[p] != self.before[p]]
        return out


@dataclasses.dataclass
class Canaries:
    """Secrets outside every run: their markers must never reach the history or its artifacts."""

    paths: list[str]
    markers: list[bytes]


@dataclasses.dataclass
class FaultContext:
    run_dir: str                      # the run directory on this host
    probe: str                        # the job's probe folder root on this host (per run: <probe>/<run id>)
    canaries: Canaries | None = None
    outside: OutsideWatch | None = None
    values_total: int | None = None   # how many values the job logs when nothing stops it
    docker: bool = False              # the job ran in a container
    fault: str = "none"               # what was done to the run, for messages
    values_at_fault: list[int] | None = None  # what the probe listed when the fault hit
    survivor_grace_s: float = SURVIVOR_GRACE_S
    extra: dict[str, Any] = dataclasses.field(default_factory=dict)

    def probe_lines(self, run_id: str, name: str) -> list[str]:
        """Complete (newline-ended, so fsynced) lines of a probe file."""
        try:
            with open(os.path.join(self.probe, run_id, name), "rb") as fh:
                data = fh.read()
        except FileNotFoundError:
            return []
        return [line.decode() for line in data.split(b"\n")[:-1]]


# -- helpers ---------------------------------------------------------------------------------------
def _where(run_id: str, ctx: FaultContext) -> str:
    return f"run {run_id} (fault: {ctx.fault})"


def _error_text(workspace: Workspace, run_id: str) -> str:
    rec = workspace.store.get_run(run_id)
    return f"{rec.status_detail} {json.dumps(rec.error or {}, ensure_ascii=False)}"


def agent_pids(run_dir: str) -> list[int]:
    """Live processes that are the run's agent: ``rundock.agent`` in the command line, cwd = run dir."""
    want = os.path.realpath(run_dir)
    found = []
    for proc in psutil.process_iter(["pid", "cmdline"]):
        try:
            cmd = proc.info["cmdline"] or []
            if any("rundock.agent" in part for part in cmd) and proc.cwd() == want \
                    and proc.status() != psutil.STATUS_ZOMBIE:
                found.append(proc.pid)
        except (psutil.Error, OSError):
            continue
    return found


def run_processes(run_id: str, run_dir: str) -> list[int]:
    """The job's processes (by environment) and the run's agent (by command line and cwd)."""
    found = set(agent_pids(run_dir))
    for proc in psutil.process_iter(["pid"]):
        try:
            if proc.environ().get("RUNDOCK_RUN_ID") == run_id and proc.status() != psutil.STATUS_ZOMBIE:
                found.add(proc.pid)
        except (psutil.Error, OSError):
            continue
    return sorted(found)


def describe(pid: int) -> str:
    try:
        proc = psutil.Process(pid)
        return f"pid {pid} [{proc.status()}] ppid {proc.ppid()} pgid {os.getpgid(pid)} cwd {proc.cwd()}: " \
               f"{' '.join(proc.cmdline())[:160]}"
    except (psutil.Error, OSError):
        return f"pid {pid} (gone)"


_DOCKER: list[Any] = []


def docker_client(required: bool = False) -> Any:
    """A docker client, or None where no engine answers (then ``required`` fails the check)."""
    if not _DOCKER:
        try:
            import docker

            client = docker.from_env(timeout=20)
            client.ping()
            _DOCKER.append(client)
        except Exception as exc:  # no engine here: container checks cannot run
            _DOCKER.append(exc)
    found = _DOCKER[0]
    if isinstance(found, Exception):
        if required:
            raise AssertionError(f"I4: cannot list containers: no Docker engine ({found})")
        return None
    return found


def run_containers(run_id: str, required: bool = False) -> list[str]:
    client = docker_client(required)
    if client is None:
        return []
    found = {}
    for flt in ({"label": f"rundock.run_id={run_id}"}, {"name": f"rundock-{run_id}"}):
        for c in client.containers.list(all=True, filters=flt):
            found[c.id] = f"container {c.name} ({c.short_id}, {c.status})"
    return sorted(found.values())


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


# -- the invariants --------------------------------------------------------------------------------
def check_i1(workspace: Workspace, run_id: str, ctx: FaultContext) -> None:
    """One terminal state, reached through legal transitions only (NotStarted is the implicit start)."""
    history = workspace.store.status_history(run_id)
    path = [c.status for c in history]
    shown = " -> ".join(f"{c.status.value}({c.detail!r})" for c in history)
    problems = []
    prev = RunStatus.NOT_STARTED
    for i, change in enumerate(history):
        if i == 0 and change.status == RunStatus.NOT_STARTED:
            continue
        if not can_transition(prev, change.status):
            problems.append(f"illegal transition {prev.value} -> {change.status.value} (step {i}, "
                            f"detail {change.detail!r})")
        prev = change.status
    terminals = [s.value for s in path if s.is_terminal]
    if len(terminals) != 1:
        problems.append(f"{len(terminals)} terminal states {terminals}, expected exactly one")
    elif not path[-1].is_terminal:
        problems.append(f"the terminal state is not the last one (last: {path[-1].value})")
    stored = workspace.store.get_run(run_id).status
    if path and stored != path[-1]:
        problems.append(f"stored status {stored.value} differs from the last history entry {path[-1].value}")
    if problems:
        raise AssertionError(f"I1 {_where(run_id, ctx)}: " + "; ".join(problems) + f". History: {shown}")


def check_i2(workspace: Workspace, run_id: str, ctx: FaultContext) -> None:
    """Every value the job durably logged is in the history exactly once; nothing twice, nothing foreign."""
    stored = [m.value for m in workspace.store.get_metric_records(run_id, METRIC)]
    counts = Counter(stored)
    durable = [int(v) for v in ctx.probe_lines(run_id, "values")]
    problems = []
    dups = sorted(v for v, n in counts.items() if n > 1)
    if dups:
        problems.append(f"values stored more than once: {dups[:20]} (counts {[counts[v] for v in dups[:20]]})")
    at_fault = set(ctx.values_at_fault or [])
    missing_before = sorted(v for v in durable if v not in counts and v in at_fault)
    missing_after = sorted(v for v in durable if v not in counts and v not in at_fault)
    if missing_before:
        problems.append(f"{len(missing_before)} values logged BEFORE the fault are missing: {missing_before[:20]}")
    if missing_after:
        problems.append(f"{len(missing_after)} values the job logged (run.log returned, probe fsynced) "
                        f"{'after the fault ' if ctx.values_at_fault is not None else ''}are missing: "
                        f"{missing_after[:20]}")
    if ctx.values_total is not None:
        foreign = sorted(v for v in counts if not (isinstance(v, int) and 0 <= v < ctx.values_total))
        if foreign:
            problems.append(f"values the job never logged: {foreign[:20]}")
        rec = workspace.store.get_run(run_id)
        if rec.status == RunStatus.COMPLETED and sorted(stored) != list(range(ctx.values_total)):
            problems.append(f"the run is Completed but holds {len(stored)} values, not 0..{ctx.values_total - 1} "
                            f"once each (the probe lists {len(durable)})")
    if problems:
        raise AssertionError(f"I2 {_where(run_id, ctx)}: " + "; ".join(problems)
                             + f". Stored {len(stored)} values, probe lists {len(durable)}.")


def _walk_regular(top: bytes) -> list[bytes]:
    out = []
    for folder, _dirs, files in os.walk(top):
        for name in files:
            path = os.path.join(folder, name)
            if stat.S_ISREG(os.lstat(path).st_mode):
                out.append(os.path.relpath(path, top))
    return sorted(out)


def check_i3(workspace: Workspace, run_id: str, ctx: FaultContext) -> None:
    """Every regular file in ``<run_dir>/src/outputs`` is stored with a matching hash, or the run
    failed with an error that names it."""
    top = os.fsencode(os.path.join(ctx.run_dir, "src", "outputs"))
    if not os.path.isdir(top):
        return
    files = workspace.store.list_files(run_id)
    artifacts = workspace.artifacts
    rec = workspace.store.get_run(run_id)
    error = _error_text(workspace, run_id)
    local = {}
    for rel in _walk_regular(top):
        with open(os.path.join(top, rel), "rb") as fh:
            local[rel] = _sha256(fh.read())
    exact: dict[bytes, str] = {}
    for rel in local:
        try:
            exact[rel] = "outputs/" + rel.decode("utf-8").replace(os.sep, "/")
        except UnicodeDecodeError:
            pass
    unclaimed = {n for n in files if n.startswith("outputs/")} - set(exact.values())
    problems = []
    for rel, digest in local.items():
        shown = os.fsdecode(rel)
        name = exact.get(rel)
        stored = files.get(name) if name else None
        if stored is None and name is None:  # a name that is not UTF-8: stored under an escaped name?
            match = [n for n in unclaimed if files[n].digest == digest]
            stored = files[match[0]] if match else None
        if stored is not None:
            if stored.digest != digest:
                why = f"stored with digest {stored.digest[:12]} but the file on disk has {digest[:12]}"
            else:
                try:
                    held = _sha256(artifacts.read(stored.digest))
                except (OSError, ValueError) as exc:
                    held = f"unreadable ({exc})"
                if held == digest:
                    continue
                why = f"the artifact store's blob for it hashes to {held[:12]}, not {digest[:12]}"
        else:
            why = "not stored"
        ascii_tail = os.path.basename(rel).decode("ascii", "replace").split("\ufffd")[-1]
        named = rec.status == RunStatus.FAILED and any(
            s and s in error for s in (shown, os.path.basename(shown), ascii_tail if len(ascii_tail) > 3 else ""))
        if not named:
            problems.append(f"outputs/{shown!r}: {why}")
    if problems:
        raise AssertionError(f"I3 {_where(run_id, ctx)} ended {rec.status.value} without naming these files: "
                             + "; ".join(problems) + f". Stored: {sorted(files)}. Error: {error[:300]}")


def check_i4(workspace: Workspace, run_id: str, ctx: FaultContext) -> None:
    """No process or container of the run survives its terminal state (after a short bounded wait)."""
    deadline = time.monotonic() + ctx.survivor_grace_s
    while True:
        pids = run_processes(run_id, ctx.run_dir)
        containers = run_containers(run_id, required=ctx.docker)
        if not pids and not containers:
            return
        if time.monotonic() > deadline:
            break
        time.sleep(0.1)
    status = workspace.store.get_run(run_id).status.value
    listed = [describe(p) for p in pids] + containers
    raise AssertionError(f"I4 {_where(run_id, ctx)}: {len(listed)} processes/containers of the run still live "
                         f"{ctx.survivor_grace_s:g} s after it ended {status}: " + " | ".join(listed))


def check_i5(workspace: Workspace, run_id: str, ctx: FaultContext) -> None:
    """The script ran exactly once if the run reached Running (at most once otherwise)."""
    starts = ctx.probe_lines(run_id, "starts")
    path = [c.status for c in workspace.store.status_history(run_id)]
    ran = RunStatus.RUNNING in path
    if len(starts) > 1 or (ran and len(starts) != 1):
        raise AssertionError(f"I5 {_where(run_id, ctx)}: the script started {len(starts)} times (pids {starts}); "
                             f"the run {'was' if ran else 'was never'} Running")


def history_hits(workspace_path: str, markers: list[bytes]) -> set[tuple[bytes, str]]:
    """(marker, file) for each canary marker found in the run history's files, searched from another
    process: opening and closing them here would drop this process's SQLite (POSIX) locks on them, and
    another connection could then reset the WAL index under this process's mapping of it (SIGBUS)."""
    db_files = [os.path.join(workspace_path, n) for n in ("history.db", "history.db-wal")]
    hits = set()
    for marker in markers:
        found = subprocess.run(["grep", "-l", "-a", "-F", marker.decode(), *db_files], capture_output=True,
                               text=True).stdout.split()
        hits.update((marker, path) for path in found)
    return hits


def _grep(path: str, markers: list[bytes]) -> list[bytes]:
    try:
        with open(path, "rb") as fh:
            data = fh.read()
    except OSError:
        return []
    return [m for m in markers if m in data]


def check_i6(workspace: Workspace, run_id: str, ctx: FaultContext) -> None:
    """Nothing outside the run directory was read or written on behalf of the job."""
    problems = []
    files = workspace.store.list_files(run_id)
    if ctx.canaries is not None:
        # Blobs stored since the scenario began (earlier runs of the workspace answer for theirs), and the
        # run's own files wherever they are.
        before = ctx.outside.artifacts_before if ctx.outside is not None else set()
        scan = {os.path.join(d, f) for d, _, fs in os.walk(workspace.artifacts.root) for f in fs} - before
        for name, rec in files.items():
            try:
                data = workspace.artifacts.read(rec.digest)
            except (OSError, ValueError):
                continue
            problems += [f"a canary secret ({m.decode()}) is in the run's stored file {name!r}"
                         for m in ctx.canaries.markers if m in data]
        for path in sorted(scan):
            for marker in _grep(path, ctx.canaries.markers):
                problems.append(f"a canary secret ({marker.decode()}) is in {path}")
        # The history's own files are searched from another process: opening and closing them here would
        # drop this process's SQLite (POSIX) locks on them, and another connection could then reset the
        # WAL index under this process's mapping of it (SIGBUS).
        known = ctx.outside.db_hits_before if ctx.outside is not None else set()
        for marker, path in sorted(history_hits(workspace.path, ctx.canaries.markers) - known):
            problems.append(f"a canary secret ({marker.decode()}) is in the run history file {path}")
    system = {}
    for path in SYSTEM_FILES:
        try:
            with open(path, "rb") as fh:
                system[_sha256(fh.read())] = path
        except OSError:
            pass
    for name, rec in files.items():
        if rec.digest in system:
            problems.append(f"stored file {name!r} holds the content of {system[rec.digest]}")
        parts = name.replace("\\", "/").split("/")
        if name.startswith(("/", "\\")) or ".." in parts:
            problems.append(f"stored file name {name!r} leaves the run's folder (a download would write outside)")
    family, seen, frontier = [], {run_id}, [run_id]
    while frontier:  # the run's children, grandchildren...
        children = [c for p in frontier for c in workspace.store.list_runs(parent_id=p, include_children=True)
                    if c.run_id not in seen]
        seen.update(c.run_id for c in children)
        family += children
        frontier = [c.run_id for c in children]
    for other in family:
        if ".." in other.run_id.split("/") or other.run_id.startswith("/") or "/" in other.run_id:
            problems.append(f"a run id that is a path escaping its folder was accepted: {other.run_id!r} "
                            f"(parent {other.parent_id})")
    if ctx.outside is not None:
        problems += [f"outside the run: {c}" for c in ctx.outside.changes()]
    if problems:
        raise AssertionError(f"I6 {_where(run_id, ctx)}: " + "; ".join(problems[:20]))


CHECKS: tuple[Callable[[Workspace, str, FaultContext], None], ...] = (
    check_i1, check_i2, check_i3, check_i4, check_i5, check_i6)


def run_checks(workspace: Workspace, run_id: str, ctx: FaultContext) -> dict[str, str | None]:
    """Every invariant: name -> None when it holds, else the failure message."""
    results: dict[str, str | None] = {}
    for name, check in zip(NAMES, CHECKS, strict=True):
        try:
            check(workspace, run_id, ctx)
            results[name] = None
        except AssertionError as exc:
            results[name] = str(exc)
        except Exception as exc:  # a check that cannot even run says why
            results[name] = f"{name} {_where(run_id, ctx)}: the check itself raised {type(exc).__name__}: {exc}"
    return results


def check_all(workspace: Workspace, run_id: str, ctx: FaultContext) -> dict[str, str | None]:
    """Run all six; raise one AssertionError listing every broken invariant."""
    results = run_checks(workspace, run_id, ctx)
    broken = [msg for msg in results.values() if msg]
    if broken:
        raise AssertionError(f"{len(broken)} invariants broken:\n  " + "\n  ".join(broken))
    return results
