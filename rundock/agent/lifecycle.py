"""One job's lifecycle on its compute host.

Preparing (materialize the snapshot, check the interpreter) → Queued (wait
for a run slot) → Running (execute, watch outputs, honour cancel and the
time limit) → Finalizing (stop every process of the run, store outputs and
logs) → Completed | Failed | Canceled.

One agent per run, one execution: ``main`` takes the run directory's agent
lock (``rundock.agent.runlock``) and runs nothing if another agent holds it
or if an agent already took this run before (its journal exists), or if the
history already holds the run as finished (declared lost before the agent
could start).

Stop order at the end, and why: the job's whole tree is stopped first (no
process may write after the final scan); then the output pipes drain; then
the final scan stores every file (a file that cannot be stored fails the run,
naming it); then the journal is synced; only then is the terminal status
written, so a reader that sees it also sees every file. The heartbeat runs
from the start until the history has accepted the terminal status: when the
history refuses writes (locked, full), the agent logs the real cause and
retries with backoff, keeping everything in its journal meanwhile.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import socket
import sys
import time
from typing import Any, Callable

from rundock.agent import jobfiles, reaper, runlock
from rundock.agent.cancel import become_subreaper
from rundock.agent.children import ChildSubmitter
from rundock.agent.environments import PrepareError
from rundock.agent.executors import Executor
from rundock.agent.executors.process import ProcessExecutor
from rundock.agent.heartbeat import Heartbeat
from rundock.agent.job import ENV_USER_PYTHONPATH, MODE_STORE, JobSpec, cancel_requested
from rundock.agent.jobenv import job_base_environment
from rundock.agent.joblib import ensure_azureml_shim, ensure_job_lib
from rundock.agent.materialize import materialize
from rundock.agent.outputs import OutputCollector
from rundock.agent.prepare import Plan, distribute, prepare
from rundock.agent.slots import Slot, Ticket, try_acquire
from rundock.context import run as ctx
from rundock.context import rundir
from rundock.context.journal import JournalWriter
from rundock.errors import AttemptFencedError, RundockError, RunNotFoundError, StoreReplacedError
from rundock.history.artifacts import ArtifactStore
from rundock.history.store import open_store
from rundock.history.sync import SYSTEM_LOGS_DIR, JournalOnly, Syncer
from rundock.states import RunStatus

log = logging.getLogger("rundock.agent")

POLL_SECONDS = 0.25  # how often a running job's cancel request and time limit are checked
DRIVER_LOG = rundir.DRIVER_LOG
PREPARE_LOG = rundir.PREPARE_LOG
SECRETS_FILE = rundir.SECRETS_FILE
MANIFEST_FILE = rundir.MANIFEST_FILE
RUN_MOUNT = "/rundock/run"  # where a container sees the job's part of the run directory
LIB_MOUNT = "/rundock/lib"  # and the job-side package
RETRY_MAX_SECONDS = 30.0
GENERIC_CANCEL = "cancel requested"  # what a plain Run.cancel() says: no reason to repeat
MAX_REASON = 500  # characters of a canceller's reason kept in the Canceled detail


@dataclasses.dataclass
class Outcome:
    status: RunStatus
    detail: str
    error: dict[str, Any] | None = None


ExecutorFactory = Callable[[Plan, "dict[str, str]", "list[str]"], Executor]


class Agent:
    def __init__(self, run_dir: str, *, clock: Callable[[], float] = time.monotonic,
                 sleep: Callable[[float], None] = time.sleep, executor_factory: ExecutorFactory | None = None) -> None:
        self.run_dir = os.path.abspath(run_dir)
        self.spec = JobSpec.load(self.run_dir)
        self.clock = clock
        self.sleep = sleep
        self.executor_factory = executor_factory
        self.src = os.path.join(self.run_dir, rundir.SRC_DIR)
        self.logs_dir = os.path.join(self.run_dir, SYSTEM_LOGS_DIR)
        os.makedirs(self.logs_dir, exist_ok=True)
        self.artifacts = ArtifactStore(self.spec.artifacts_root)
        self.journal = JournalWriter(self.run_dir, "agent")
        # Without a history (a remote host), everything stays in the run directory for the submitter to pull.
        self.store = open_store(self.spec.store_uri, artifacts_root=self.spec.artifacts_root) \
            if self.spec.mode == MODE_STORE else None
        self.syncer: Syncer | JournalOnly = JournalOnly() if self.store is None else \
            Syncer(self.run_dir, self.spec.run_id, self.store, self.artifacts, self.spec.attempt)
        self.heartbeat = Heartbeat(self.journal, self.spec.heartbeat_seconds, on_beat=self.syncer.poke,
                                   run_dir=self.run_dir)
        self.collector = OutputCollector(self.src, self.artifacts, self.journal, on_record=self.syncer.poke)
        self.executor: Executor | None = None
        self.children: ChildSubmitter | None = None  # the job's submit_child requests, once it runs
        self._status: RunStatus | None = None
        self.agent_root = os.path.dirname(os.path.dirname(self.run_dir))
        self.secrets: dict[str, str] = {}
        self.slot: Slot | None = None
        self.slots_dir = self.spec.slots_dir or os.path.join(os.path.dirname(self.run_dir), ".slots")
        self.ticket = Ticket(self.slots_dir, self.spec.submitted_at, self.spec.run_id)

    # -- helpers ---------------------------------------------------------------------
    def state(self, status: RunStatus, detail: str = "", error: dict[str, Any] | None = None) -> None:
        """Record a status change (the same status again is not a change: the history would ignore it)."""
        if status == self._status:
            return
        self._status = status
        self.journal.append("state", status=status.value, detail=detail, error=error)
        self.syncer.poke()

    def note(self, logname: str, line: str) -> None:
        with open(os.path.join(self.logs_dir, logname), "a", encoding="utf-8") as fh:
            fh.write(f"{time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime())} {line}\n")

    def canceled(self) -> bool:
        """Whether to stop: a cancel request, or a team server that fenced this attempt of a pool run."""
        return cancel_requested(self.run_dir) or isinstance(self.syncer.last_error, AttemptFencedError)

    def cancel_detail(self) -> str:
        """The Canceled detail: the reason the canceller gave with CancelRequested (a sweep's early-termination
        policy names itself and its numbers there), when this agent writes to the history directly."""
        reason = ""
        if self.store is not None:
            try:
                asked = [c for c in self.store.status_history(self.spec.run_id)
                         if c.status == RunStatus.CANCEL_REQUESTED]
            except (RundockError, OSError):
                asked = []
            reason = asked[-1].detail.strip() if asked else ""
        if not reason or reason == GENERIC_CANCEL:
            return "canceled on request"
        return f"canceled on request: {reason[:MAX_REASON]}"

    # -- phases -------------------------------------------------------------------------
    def prepare(self) -> Plan:
        spec = self.spec
        self.state(RunStatus.PREPARING, f"materializing snapshot {spec.snapshot_id[:12]} on {socket.gethostname()}")
        started = time.monotonic()
        if self.store is not None:
            manifest = self.store.get_snapshot(spec.snapshot_id)
        else:
            with open(os.path.join(self.run_dir, MANIFEST_FILE), encoding="utf-8") as fh:
                manifest = json.load(fh)
        materialize(manifest, self.artifacts, self.src)
        self.note(PREPARE_LOG, f"materialized {len(manifest)} files from snapshot {spec.snapshot_id} "
                               f"in {time.monotonic() - started:.2f} s")
        return prepare(spec, self.src, self.agent_root, os.path.join(self.logs_dir, PREPARE_LOG),
                       lambda line: self.note(PREPARE_LOG, line))

    def wait_for_slot(self) -> bool:
        """Take a run slot; False if the run was canceled while it waited."""
        spec, slots_dir, ticket = self.spec, self.slots_dir, self.ticket
        try:
            self.slot = try_acquire(slots_dir, spec.max_concurrent_runs, spec.run_id) if ticket.is_first() else None
            if self.slot is not None:
                self._clear_previous(self.slot.previous)
                self.state(RunStatus.QUEUED, f"run slot {self.slot.index + 1} of {spec.max_concurrent_runs} is free")
                return True
            self.state(RunStatus.QUEUED, f"waiting for a free run slot: all {spec.max_concurrent_runs} "
                                         f"slots of target '{spec.target}' are busy or taken by older runs")
            while self.slot is None:
                if self.canceled():
                    return False
                self.sleep(0.1)
                self.slot = try_acquire(slots_dir, spec.max_concurrent_runs, spec.run_id) if ticket.is_first() else None
            self._clear_previous(self.slot.previous)
            return True
        finally:
            ticket.release()

    def _clear_previous(self, run_id: str) -> None:
        """The slot's last holder may have died leaving work behind (a container holds no slot lock): end it by
        the lost-run policy before this run starts, so a slot never runs two jobs at once."""
        previous = os.path.join(os.path.dirname(self.run_dir), run_id)
        if not run_id or run_id == self.spec.run_id or not os.path.isdir(previous) or runlock.agent_alive(previous):
            return
        if self.store is not None:
            from rundock.history.liveness import Liveness

            try:
                record = self.store.get_run(run_id)
            except RunNotFoundError:
                record = None
            if record is not None and not record.status.is_terminal:
                Liveness(self.store, self.artifacts).check(record)
            return
        try:  # a host without a history: the journal stays for the submitter's pull; only the work is ended
            with open(os.path.join(previous, rundir.PROCESSES_FILE), encoding="utf-8") as fh:
                container = json.load(fh).get("container")
        except (OSError, ValueError, AttributeError):
            container = None
        if container:
            reaper.remove_run_containers(run_id)
        reaper.kill_run_processes(run_id, previous)

    def job_env(self, plan: Plan) -> tuple[dict[str, str], list[str]]:
        """The job's environment variables and the host folders to put on its PYTHONPATH.

        What passes from the agent's own environment is ``rundock.agent.jobenv``'s list (never
        rundock's credentials); the run configuration's variables and the run's context come on top.
        """
        spec = self.spec
        lib_root = os.path.join(self.agent_root, "lib")
        libs = [ensure_job_lib(lib_root)] + ([ensure_azureml_shim(lib_root)] if plan.azureml_shim else [])
        in_container = plan.image is not None
        run_dir = RUN_MOUNT if in_container else self.run_dir
        paths = [f"{LIB_MOUNT}/{i}" for i in range(len(libs))] if in_container else libs
        env = {"HOME": "/tmp"} if in_container else job_base_environment(os.environ)
        user_path = os.environ.get(ENV_USER_PYTHONPATH)
        if user_path and not in_container:  # the user's PYTHONPATH, never the agent's own (rundock, its packages)
            env["PYTHONPATH"] = user_path
        env.update(spec.environment_variables)
        env.update(((spec.environment or {}).get("environment_variables")) or {})
        env.update(distribute(plan, spec))  # a distributed run on this node: the launcher and its variables
        env["PYTHONPATH"] = os.pathsep.join(p for p in (*paths, env.get("PYTHONPATH", "")) if p)
        env.update({ctx.ENV_RUN_ID: spec.run_id, ctx.ENV_RUN_DIR: run_dir, ctx.ENV_EXPERIMENT: spec.experiment,
                    ctx.ENV_DISPLAY_NAME: spec.display_name or spec.run_id, "PYTHONUNBUFFERED": "1"})
        if spec.workspace_name:
            env[ctx.ENV_WORKSPACE_NAME] = spec.workspace_name
        if plan.gpus and not in_container:
            env["CUDA_VISIBLE_DEVICES"] = ",".join(plan.gpus)
        self.secrets = self._take_secrets()
        if self.secrets:
            env[ctx.ENV_SECRETS_FILE] = os.path.join(run_dir, SECRETS_FILE)
        return env, libs

    def _take_secrets(self) -> dict[str, str]:
        return jobfiles.take_secrets(self.run_dir, self.spec.secrets_file)

    def _remove_secrets(self) -> None:
        jobfiles.remove_secrets(self.run_dir, self.spec.secrets_file)

    def execute(self, plan: Plan) -> Outcome:
        spec = self.spec
        env, libs = self.job_env(plan)
        driver_log = os.path.join(self.logs_dir, DRIVER_LOG)
        secrets = list(self.secrets.values())
        for name in rundir.JOB_WRITABLE:
            os.makedirs(os.path.join(self.run_dir, name), exist_ok=True)
        for name in rundir.WATCHED_DIRS:
            os.makedirs(os.path.join(self.src, name), exist_ok=True)
        executor: Executor
        # The job holds its slot until its last process is gone, and the members file by which reapers find it.
        members = os.open(os.path.join(self.run_dir, rundir.MEMBERS_FILE), os.O_RDONLY | os.O_CREAT, 0o600)
        keep_slot = [members] + ([self.slot.fd] if self.slot is not None else [])
        if self.executor_factory is not None:
            executor = self.executor_factory(plan, env, secrets)
        elif plan.image is not None:
            from rundock.agent.executors.docker import DockerExecutor  # docker-py only where Docker is used

            executor = DockerExecutor(plan.docker_client, plan.image, plan.argv, spec.run_id, self.run_dir, libs, env,
                                      driver_log, secrets, plan.docker_settings,
                                      spec.run_as or f"{os.getuid()}:{os.getgid()}", plan.gpus, attempt=spec.attempt)
        else:
            executor = ProcessExecutor(plan.argv, self.src, env, driver_log, secrets, inherit_fds=keep_slot)
        self.executor = executor
        try:
            executor.start()
        finally:
            os.close(members)
        self.collector.start()  # after the job: watching costs the job's start nothing; it then catches up
        with open(os.path.join(self.run_dir, rundir.PROCESSES_FILE), "w", encoding="utf-8") as fh:
            json.dump({"host": socket.gethostname(), "agent_pid": os.getpid(), "job_pgid": executor.pid,
                       "container": executor.container_id or None}, fh)
        where = f"container {plan.image}" if plan.image else f"pid {executor.pid}"
        processes = int((spec.distributed or {}).get("process_count_per_node") or 1)
        if processes > 1:
            where = f"{processes} processes, {where}"
        self.state(RunStatus.RUNNING, f"running {os.path.basename(spec.shown_script or spec.script)} ({where})")
        deadline = self.clock() + spec.max_run_duration_seconds
        self.children = ChildSubmitter(self.run_dir, spec, RUN_MOUNT if plan.image is not None else self.run_dir)
        while True:
            code = executor.wait(POLL_SECONDS)
            if code is not None:
                break
            self._poll_children()
            if self.canceled():
                self.state(RunStatus.FINALIZING, "cancel requested: stopping the job's processes")
                executor.stop(spec.cancel_grace_seconds)
                return Outcome(RunStatus.CANCELED, self.cancel_detail())
            if self.clock() > deadline:
                self.state(RunStatus.FINALIZING, "time limit reached: stopping the job's processes")
                executor.stop(spec.cancel_grace_seconds)
                return Outcome(RunStatus.FAILED, "timeout", {
                    "code": "Timeout", "message": f"the run exceeded max_run_duration_seconds="
                                                  f"{spec.max_run_duration_seconds:g} and was stopped"})
        self.state(RunStatus.FINALIZING, f"script exited with code {code}")
        executor.stop(min(spec.cancel_grace_seconds, 2.0))  # processes the script left behind
        tail = executor.finish_logs()
        if code != 0:
            how = f"was killed by signal {-code}" if code < 0 else f"exited with code {code}"
            if executor.oom_killed:
                how += " (out of memory: the container hit its memory limit; raise --memory in docker.arguments)"
            message = f"the script {how}" + ("; last lines of stderr:\n" + "\n".join(tail) if tail else "")
            return Outcome(RunStatus.FAILED, f"script {how}", {
                "code": "UserError", "message": message, "exit_code": code, "stderr_tail": tail})
        error = self._fail_request()
        if error is not None:
            return Outcome(RunStatus.FAILED, "run.fail() was called", error)
        return Outcome(RunStatus.COMPLETED, "script exited with code 0")

    def _poll_children(self) -> None:
        """Answer the job's submit_child requests; nothing there may break the run."""
        if self.children is None:
            return
        try:
            self.children.poll()
        except Exception:
            log.exception("run %s: handling the job's submit_child requests failed", self.spec.run_id)

    def _fail_request(self) -> dict[str, Any] | None:
        return jobfiles.fail_request(self.run_dir)

    def finalize(self, outcome: Outcome) -> Outcome:
        """Store outputs and logs, then record the terminal status; return the outcome recorded."""
        self.state(RunStatus.FINALIZING, "storing outputs and logs")
        if self.executor is not None:
            self.executor.finish_logs()
            self.collector.stop()
        stored, failures = self.collector.final_scan()
        for name in sorted(os.listdir(self.logs_dir)):
            if not self.collector.store_as(os.path.join(self.logs_dir, name), f"{SYSTEM_LOGS_DIR}/{name}"):
                failures.extend(self.collector.last_failures())
        if failures and outcome.status != RunStatus.FAILED:
            listed = "; ".join(f"{name}: {error}" for name, error in failures[:5])
            more = f" (and {len(failures) - 5} more)" if len(failures) > 5 else ""
            outcome = Outcome(RunStatus.FAILED, "outputs could not be stored", {
                "code": "OutputsNotStored", "message": f"outputs could not be stored: {listed}{more}"})
        self.note(rundir.FINALIZE_LOG, f"final scan stored {stored} changed files, {len(failures)} could not be "
                                       f"stored; ending {outcome.status.value}")
        self._remove_secrets()
        self._until_accepted("ship the journal", self.syncer.sync_once)  # files reach the history first
        if self.store is not None:
            store = self.store
            self._until_accepted("end open child runs",
                                 lambda: store.end_open_children(self.spec.run_id, outcome.status))
        self.state(outcome.status, outcome.detail, outcome.error)
        self._until_accepted("record the final status", self.syncer.stop)
        self.heartbeat.stop()
        self.ticket.release()
        if self.slot is not None:
            self.slot.release()
        return outcome

    def _until_accepted(self, what: str, action: Callable[[], Any]) -> None:
        """Run ``action`` until the history accepts it, logging the real cause of each refusal; the journal
        keeps everything meanwhile and the heartbeat goes on, so no reader takes the run for lost."""
        delay = 0.5
        while True:
            try:
                action()
                return
            except AttemptFencedError as exc:  # the server gave the run up (or to another agent): never retried
                log.error("run %s: could not %s: %s; this attempt writes nothing more", self.spec.run_id, what, exc)
                return
            except Exception as exc:
                log.error("run %s: could not %s in the run history: %s: %s; retrying in %.1f s",
                          self.spec.run_id, what, type(exc).__name__, exc, delay, exc_info=delay == 0.5)
                if isinstance(exc, StoreReplacedError):  # rebuilt by `rundock doctor --repair`: open the new one
                    self._reopen_store()
                self.sleep(delay)
                delay = min(delay * 2, RETRY_MAX_SECONDS)

    def _reopen_store(self) -> None:
        try:
            store = open_store(self.spec.store_uri)
        except Exception as exc:
            log.error("run %s: cannot open the run history again: %s", self.spec.run_id, exc)
            return
        self.store = store
        if isinstance(self.syncer, Syncer):
            self.syncer.store = store

    def already_finished(self) -> bool:
        """Whether the history holds this run as finished already (declared lost before this agent began)."""
        if self.store is None:
            return False
        return self.store.get_run(self.spec.run_id).status.is_terminal

    def run(self) -> Outcome:
        become_subreaper()
        if self.already_finished():
            log.warning("run %s already ended in the run history; not running it", self.spec.run_id)
            return Outcome(RunStatus.FAILED, "already ended")
        self.syncer.start()
        self.heartbeat.start()
        try:
            if self.canceled():
                outcome = Outcome(RunStatus.CANCELED, "canceled before it started")
            else:
                plan = self.prepare()
                if not self.wait_for_slot() or self.canceled():
                    outcome = Outcome(RunStatus.CANCELED, "canceled while queued")
                else:
                    outcome = self.execute(plan)
        except PrepareError as exc:
            self.note(PREPARE_LOG, f"error: {exc}")
            outcome = Outcome(RunStatus.FAILED, "setup failed", {"code": "SetupError", "message": str(exc)})
        except Exception as exc:  # anything else is a bug or a broken host: fail the run, say why
            log.exception("run %s failed in the agent", self.spec.run_id)
            if self.executor is not None:
                self.executor.stop(self.spec.cancel_grace_seconds)
            outcome = Outcome(RunStatus.FAILED, "agent error", {"code": "AgentError",
                                                                "message": f"{type(exc).__name__}: {exc}"})
        return self.finalize(outcome)


def main(run_dir: str) -> int:
    """Run the job of ``run_dir`` if no other agent has it; every error is logged (stderr is the agent log)."""
    logging.basicConfig(level=logging.INFO, stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        lock = runlock.AgentLock(run_dir)
        if not lock.acquire():
            log.warning("another agent holds %s; this one runs nothing", lock.path)
            return 0
        if runlock.agent_started(run_dir):
            log.warning("an earlier agent already took run %s; it is never executed twice", run_dir)
            return 0
        outcome = Agent(run_dir).run()
        log.info("run ended %s: %s", outcome.status.value, outcome.detail)
        return 0
    except BaseException:
        log.exception("the agent of %s failed", run_dir)
        raise
