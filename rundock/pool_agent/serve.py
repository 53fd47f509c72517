"""``rundock agent serve``: a GPU box's daemon that pulls runs of one pool from the team server.

Outbound connections only. The loop:

1. Detect the GPUs (``gpus``), find the per-run agents still running in the work folder (``adopt``) and
   register with them as ``running``: a restarted ``agent serve`` kills nothing and starts nothing twice.
   Attempts the server fenced meanwhile are listed back, and their runs are stopped. An adopted node of a
   multi-node run (its ``node.json``) has its records shipped again from the start (the history applies each
   record once) and is ended with its outcome, as if this ``agent serve`` had started it.
2. Long-poll ``/agents/{id}/poll`` with what runs and which GPUs are free. Each poll renews the leases of the
   running attempts (the box's heartbeat), so while runs are live a poll goes out at least every third of
   the lease. An answer brings assignments (each gets a run directory, a job file and its own per-run agent
   process: ``runner``), cancels and fenced attempts: both leave the run directory's cancel request, which
   the per-run agent carries out (grace period, then every process of the run; the run ends Canceled).
3. When a per-run agent exits, its attempt is ended (``/attempts/{run}/{n}/end``: the GPUs are free again);
   if it exited without finishing its run (killed, crashed), the run is first ended Failed by the lost-run
   policy (``rundock.history.liveness``: ship the journal, reap every process, store the outputs), unless its
   definition allows another try (``max_retries``: the attempt's processes are killed and the server queues the
   run again) or the server already took the run from this attempt (fenced: only this attempt's processes are
   killed, never by run id, as a later attempt of the run may be running on this box).

With ``--docker``, a run whose environment enables Docker runs in a container (``docker_runner``); when its
per-run agent is gone, a container of its attempt still there is removed first.

Stopping ``agent serve`` (SIGTERM, Ctrl-C, or ``kill -9``) leaves running jobs (and their containers) alone;
restart it within the lease (30 s by default) and it adopts them. A server that cannot be reached is retried
with backoff (while runs are live, at most a tenth of the lease apart, so a link back within the lease renews it
in time); a token the server refuses stops the daemon with the reason.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Callable
from typing import Any
from urllib.parse import quote

import psutil

from rundock.agent import runlock
from rundock.context import rundir
from rundock.errors import AttemptFencedError, RundockError, RunNotFoundError, StoreError
from rundock.history.backends.http import HttpRunStore
from rundock.history.backends.http_client import ServerAuthError, ServerPermissionError
from rundock.history.wire import Gpu, max_retries
from rundock.pool_agent import adopt, docker_runner
from rundock.pool_agent.address import primary_address, too_old
from rundock.pool_agent.client import Assignment, Attempt, PoolClient, Registration
from rundock.pool_agent.gpus import detect
from rundock.pool_agent.nodes import NodeSync, read_node
from rundock.pool_agent.runner import AssignmentError, Runner, run_dir_of

log = logging.getLogger("rundock.pool_agent")

RETRY_MAX_SECONDS = 30.0
ADOPTED_CHECK_SECONDS = 0.5


@dataclasses.dataclass
class ServeOptions:
    server: str
    pool: str
    work_dir: str
    token: str | None = None
    gpus: list[int] | None = None  # None: every GPU of the box
    slots: int | None = None  # None: one per GPU (at least 1)
    docker: bool = False
    labels: list[str] = dataclasses.field(default_factory=list)
    address: str | None = None  # where other nodes of a multi-node run reach this box (None: its primary IP)


@dataclasses.dataclass
class Handle:
    """One attempt this agent holds: preparing, running, or being ended."""

    attempt: Attempt
    gpus: list[int]
    run_dir: str
    cancel: bool = False  # asked to stop (its cancel request is written)
    ending: bool = False  # its per-run agent is gone: no longer reported as running, its GPUs not yet free
    process: subprocess.Popen[bytes] | None = None


class Stopping(Exception):
    """SIGTERM or SIGINT: leave the loop (the runs go on)."""


def _memory_mb() -> int:
    try:
        with open("/proc/meminfo", encoding="ascii") as fh:
            for line in fh:
                if line.startswith("MemTotal:"):
                    return int(line.split()[1]) // 1024
    except (OSError, ValueError, IndexError):
        pass
    return 0


class PoolAgent:
    """One ``agent serve`` process."""

    def __init__(self, options: ServeOptions) -> None:
        self.options = options
        self.work_dir = os.path.abspath(os.path.expanduser(options.work_dir))
        os.makedirs(self.work_dir, mode=0o700, exist_ok=True)
        self.gpus: list[Gpu] = detect(options.gpus)
        self.docker: Any = docker_runner.connect() if options.docker else None  # fails early without an engine
        self.slots = options.slots or max(1, len(self.gpus))
        self.host = socket.gethostname()
        self.store = HttpRunStore(options.server, artifacts_root=os.path.join(self.work_dir, "artifacts"),
                                  token=options.token)
        self.client = PoolClient(self.store.client)
        self.runner = Runner(self.work_dir, self.store.url, options.token, options.pool, self.slots, options.docker,
                             self.store, self.host)
        self.handles: dict[Attempt, Handle] = {}
        self.lock = threading.Lock()
        self.stopping = threading.Event()
        self.registration: Registration | None = None

    # -- registering ------------------------------------------------------------------------------------------
    def register_body(self) -> dict[str, Any]:
        from rundock import __version__

        with self.lock:
            running = [h.attempt.to_json() for h in self.handles.values() if not h.ending]
        labels = list(dict.fromkeys([*self.options.labels, *(["docker"] if self.options.docker else [])]))
        body: dict[str, Any] = {"name": self.host, "pool": self.options.pool, "slots": self.slots,
                                "gpus": [g.to_json() for g in self.gpus], "cpus": os.cpu_count() or 1,
                                "memory_mb": _memory_mb(), "labels": labels, "version": str(__version__),
                                "running": running}
        address = self.options.address or primary_address(self.options.server)
        if address:  # only multi-node runs need it; a server that predates them refuses unknown fields
            body["address"] = address
        return body

    def adopt(self) -> None:
        """Take up the per-run agents still running here; end the attempts that ended while nobody watched."""
        for found in adopt.scan(self.work_dir, self.options.pool):
            handle = Handle(found.attempt, found.gpus, found.run_dir, ending=not found.alive)
            with self.lock:
                self.handles[found.attempt] = handle
            if found.alive:
                container = f"; {docker_runner.describe(self.docker, found.attempt)}" if self.docker else ""
                log.info("adopted run %s (attempt %d, GPUs %s): its agent still runs%s", found.attempt.run_id,
                         found.attempt.attempt, _gpu_list(found.gpus), container)
            node = read_node(found.run_dir)
            if node is not None:  # a node of a multi-node run: ship its records again, end it with its outcome
                self._thread(self._run_node, handle, found.run_dir, node, lambda h=handle: self._wait_adopted(h))
            else:
                self._thread(self._watch_adopted, handle)

    def register(self) -> Registration:
        """Register (retrying while the server cannot be reached); a refused token raises."""
        pause = 0.5
        while True:
            try:
                registration = self.client.register(self.register_body())
                break
            except (ServerAuthError, ServerPermissionError):
                raise
            except (StoreError, ValueError) as exc:
                if too_old(exc):
                    raise RundockError(f"the server {self.store.url} refused this agent's registration: {exc}. "
                                       "It is older than this agent (rundock "
                                       f"{self.register_body()['version']}): upgrade the server first, then the "
                                       "agents") from exc
                if isinstance(exc, ValueError):
                    raise
                log.warning("cannot register with %s: %s; retrying in %.0f s", self.store.url, exc, pause)
                self._pause(pause)
                pause = min(pause * 2, RETRY_MAX_SECONDS)
            except OSError as exc:
                log.warning("cannot register with %s: %s; retrying in %.0f s", self.store.url, exc, pause)
                self._pause(pause)
                pause = min(pause * 2, RETRY_MAX_SECONDS)
        log.info("registered as agent %s of pool %s at %s: %d GPUs (%s), %d slots, lease %.0f s",
                 registration.agent_id, self.options.pool, self.store.url, len(self.gpus),
                 ", ".join(f"{g.index}: {g.name} {g.memory_mb} MiB" for g in self.gpus) or "none", self.slots,
                 registration.lease_seconds)
        self.stop_attempts(registration.fenced, "fenced")
        self.registration = registration
        return registration

    # -- the loop ---------------------------------------------------------------------------------------------
    def serve(self) -> int:
        self.adopt()
        registration = self.register()
        pause = 0.5
        while not self.stopping.is_set():
            with self.lock:
                running = [h.attempt for h in self.handles.values() if not h.ending]
                busy = {g for h in self.handles.values() for g in h.gpus}
            free = [g.index for g in self.gpus if g.index not in busy]
            wait = min(registration.poll_seconds, registration.lease_seconds / 3) if running \
                else registration.poll_seconds
            try:
                answer = self.client.poll(registration.agent_id, running, free, wait)
            except RunNotFoundError:  # the server forgot this agent (a new database): register again
                log.warning("the server does not know agent %s any more; registering again", registration.agent_id)
                registration = self.register()
                continue
            except (ServerAuthError, ServerPermissionError):
                raise
            except (StoreError, OSError, ValueError) as exc:
                # While runs are live a link that comes back within their lease must find a poll soon enough to
                # renew it: back off at most a tenth of the lease then (a third of it goes by between polls).
                pause = min(pause, registration.lease_seconds / 10) if running else pause
                log.warning("polling %s failed: %s; retrying in %.1f s", self.store.url, exc, pause)
                self._pause(pause)
                pause = min(pause * 2, RETRY_MAX_SECONDS)
                continue
            pause = 0.5
            self.stop_attempts(answer.cancel, "cancel")
            self.stop_attempts(answer.fenced, "fenced")
            for assignment in answer.assignments:
                self.start(assignment)
        return 0

    def start(self, assignment: Assignment) -> None:
        attempt = assignment.attempt
        with self.lock:
            if attempt in self.handles:
                return  # handed out again (a poll answer was lost): it is already here
            handle = Handle(attempt, list(assignment.gpus), run_dir_of(self.work_dir, attempt))
            self.handles[attempt] = handle
        log.info("run %s (attempt %d): starting on GPUs %s", attempt.run_id, attempt.attempt,
                 _gpu_list(assignment.gpus))
        self._thread(self._run_new, handle, assignment)

    def stop_attempts(self, attempts: list[Attempt], why: str) -> None:
        """Leave the cancel request of each attempt's run (a fenced one is logged as such)."""
        for attempt in attempts:
            with self.lock:
                handle = self.handles.get(attempt)
                if handle is None or handle.cancel or handle.ending:
                    continue  # asked already, or its per-run agent is gone (the server repeats until it ends)
                handle.cancel = True
            if why == "fenced":
                log.warning("run %s (attempt %d) was fenced by the server (its lease ran out, or the run went "
                            "elsewhere): stopping its job", attempt.run_id, attempt.attempt)
            else:
                log.info("run %s (attempt %d): cancel requested", attempt.run_id, attempt.attempt)
            self.runner.cancel(handle.run_dir)

    # -- one attempt ------------------------------------------------------------------------------------------
    def _run_new(self, handle: Handle, assignment: Assignment) -> None:
        attempt = handle.attempt
        try:
            run_dir = self.runner.prepare(assignment)
        except FileExistsError:
            log.warning("run %s (attempt %d): %s exists already; it is never started twice", attempt.run_id,
                        attempt.attempt, handle.run_dir)
            self._watch_adopted(handle)
            return
        except (AssignmentError, RundockError, OSError, ValueError) as exc:
            log.error("run %s (attempt %d) cannot start here: %s", attempt.run_id, attempt.attempt, exc)
            try:
                self.runner.fail(attempt, f"agent {self.host} of pool {self.options.pool} could not start the run: "
                                          f"{exc}")
            except (RundockError, OSError, ValueError) as failure:
                log.error("run %s: could not record the failure: %s", attempt.run_id, failure)
            self._end(handle)
            return
        if handle.cancel:
            self.runner.cancel(run_dir)
        process = handle.process = self.runner.spawn(run_dir, attempt, handle.gpus)
        if assignment.node is not None:
            self._run_node(handle, run_dir, assignment.node, lambda: process.wait() is not None)
            return
        process.wait()
        self._finished(handle)

    def _run_node(self, handle: Handle, run_dir: str, node: dict[str, Any], wait: Callable[[], bool]) -> None:
        """One node of a multi-node run (started here, or adopted): ship its records while its per-run agent
        runs (``wait`` returns once it ended; False when ``agent serve`` stops first: the next one adopts the
        node), then end the attempt with the node's outcome."""
        attempt = handle.attempt
        sync = NodeSync(self.store.url, self.options.token, self.runner.artifacts, run_dir, attempt.run_id,
                        attempt.attempt, int(node["rank"]))
        sync.start()
        if not wait():
            return
        try:
            outcome, message = self._finish_node(sync, attempt, node["rank"])
        except Stopping:
            return  # left unreported: the next ``agent serve`` ships the node's records again from node.json
        if outcome is None:
            kill_attempt_processes(run_dir)
        log.info("run %s (attempt %d, node %s of %s) ended: %s", attempt.run_id, attempt.attempt, node["rank"],
                 node["count"], outcome or "without an outcome")
        self._end(handle, outcome, message)

    def _finish_node(self, sync: NodeSync, attempt: Attempt, rank: Any) -> tuple[str | None, str | None]:
        """Ship a node's last records and read its outcome, retrying with backoff while the server cannot be
        reached (a node's end is not reported without them: that would fail a run that succeeded). Raises
        ``Stopping`` when this ``agent serve`` stops first; (None, None) when the server refuses the attempt."""
        pause = 0.5
        try:
            while True:
                try:
                    return sync.finish()
                except (AttemptFencedError, RunNotFoundError) as exc:
                    log.error("run %s (node %s): its last records are refused: %s", attempt.run_id, rank, exc)
                    return None, None
                except (RundockError, OSError, ValueError) as exc:
                    log.warning("run %s (node %s): could not ship its last records: %s; retrying in %.1f s",
                                attempt.run_id, rank, exc, pause)
                if self.stopping.wait(pause):
                    raise Stopping()
                pause = min(pause * 2, RETRY_MAX_SECONDS)
        finally:
            sync.close()

    def _watch_adopted(self, handle: Handle) -> None:
        if self._wait_adopted(handle):
            self._finished(handle)

    def _wait_adopted(self, handle: Handle) -> bool:
        """Until an adopted per-run agent ends (True), or this ``agent serve`` stops (False)."""
        while runlock.agent_alive(handle.run_dir):
            if self.stopping.wait(ADOPTED_CHECK_SECONDS):
                return False
        return True

    def _finished(self, handle: Handle) -> None:
        """The per-run agent is gone: end the run by the lost-run policy if it did not, then end the attempt."""
        if self.stopping.is_set():
            return  # the next ``agent serve`` finds it ended and reports it
        handle.ending = True
        attempt = handle.attempt
        if self.docker is not None:  # its agent removes the container it made; one left over is an orphan
            docker_runner.remove_attempt_containers(attempt)
        store = HttpRunStore(self.store.url, artifacts_root=self.runner.artifacts.root, token=self.options.token,
                             attempt=attempt.attempt)
        try:
            record = store.get_run(attempt.run_id)
            if record.status.is_terminal:
                pass
            elif not self._current(attempt):
                # The server took the run from this attempt (and may have handed it to another one on this very
                # box): stop only this attempt's processes and leave the run alone.
                log.info("run %s (attempt %d) is no longer this attempt's (fenced): stopping what is left of it",
                         attempt.run_id, attempt.attempt)
                kill_attempt_processes(handle.run_dir)
            elif may_retry(record.run_definition, attempt.attempt):
                log.warning("run %s (attempt %d): its agent ended without finishing it; the run may be tried "
                            "again, so the server queues it again", attempt.run_id, attempt.attempt)
                kill_attempt_processes(handle.run_dir)
            else:
                from rundock.history.liveness import Liveness

                log.warning("run %s (attempt %d): its agent ended without finishing it; ending it Failed",
                            attempt.run_id, attempt.attempt)
                Liveness(store, self.runner.artifacts).declare_lost(dataclasses.replace(record,
                                                                                        run_dir=handle.run_dir))
        except AttemptFencedError:
            log.info("run %s (attempt %d) belongs to the server now (fenced): nothing more written for it",
                     attempt.run_id, attempt.attempt)
        except (RundockError, OSError, ValueError) as exc:
            log.error("run %s (attempt %d): could not check how it ended: %s", attempt.run_id, attempt.attempt, exc)
        finally:
            store.close()
        self._end(handle)

    def _current(self, attempt: Attempt) -> bool:
        """Whether the server still counts ``attempt`` as the one that holds its run."""
        answer = self.store.client.get_json(f"/runs/{quote(attempt.run_id, safe='')}/queue",
                                            what=f"reading the queue of run {attempt.run_id}")
        return isinstance(answer, dict) and answer.get("state") == "assigned" and \
            answer.get("attempt") == attempt.attempt

    def _end(self, handle: Handle, outcome: str | None = None, message: str | None = None) -> None:
        """Tell the server the attempt ended (its GPUs are free), retrying until it hears it."""
        handle.ending = True
        pause = 0.5
        while not self.stopping.is_set():
            registration = self.registration
            if registration is not None:
                try:
                    self.client.end(registration.agent_id, handle.attempt, outcome, message)
                    break
                except (RundockError, OSError, ValueError) as exc:
                    log.warning("run %s: could not end attempt %d: %s; retrying", handle.attempt.run_id,
                                handle.attempt.attempt, exc)
            self.stopping.wait(pause)
            pause = min(pause * 2, RETRY_MAX_SECONDS)
        else:
            return  # the next ``agent serve`` finds it ended and reports it
        adopt.mark_reported(self.work_dir, handle.attempt)
        with self.lock:
            self.handles.pop(handle.attempt, None)
        log.info("run %s (attempt %d) ended; GPUs %s are free", handle.attempt.run_id, handle.attempt.attempt,
                 _gpu_list(handle.gpus))

    # -- plumbing ---------------------------------------------------------------------------------------------
    def _thread(self, target: Any, *args: Any) -> None:
        threading.Thread(target=target, args=args, daemon=True, name=f"rundock-pool-{args[0].attempt.run_id}").start()

    def _pause(self, seconds: float) -> None:
        if self.stopping.wait(seconds):
            raise Stopping()


def may_retry(run_definition: Any, number: int) -> bool:
    """Whether a run whose attempt ``number`` was lost goes back to the queue: its definition's
    ``max_retries`` allows another try (the server's rule, ``rundock.server.pools.Pools.may_retry``)."""
    return max_retries(run_definition) >= number


def kill_attempt_processes(run_dir: str, timeout: float = 10.0) -> list[int]:
    """SIGKILL the processes of one attempt: those holding its run directory's members file open. Never by
    run id, as the lost-run policy does: another attempt of the same run may be running on this box.
    Returns the pids that would not die."""
    members = os.path.realpath(os.path.join(run_dir, rundir.MEMBERS_FILE))
    deadline = time.monotonic() + timeout
    while True:
        found = []
        for proc in psutil.process_iter():
            try:
                if proc.pid != os.getpid() and any(f.path == members for f in proc.open_files()):
                    found.append(proc)
            except psutil.Error:
                continue
        if not found or time.monotonic() >= deadline:
            return [p.pid for p in found]
        for proc in found:
            with contextlib.suppress(psutil.Error):
                proc.kill()
        time.sleep(0.05)


def _gpu_list(gpus: list[int]) -> str:
    return ",".join(str(g) for g in gpus) or "none"


def serve(options: ServeOptions) -> int:
    """Run ``agent serve`` until SIGTERM or SIGINT; the runs go on without it."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    agent = PoolAgent(options)

    def stop(signum: int, frame: Any) -> None:
        agent.stopping.set()
        raise Stopping()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    try:
        return agent.serve()
    except Stopping:
        log.info("stopping; %d runs go on (a restarted agent adopts them)", len(agent.handles))
        return 0
