"""Live reads of remote runs: every read pulls, rate limited and shared by the whole process.

Each read of a live remote run (``rundock.submitter.targets.check``) asks ``read`` for a pull:

- at most one pull per run every PULL_INTERVAL seconds in this process: a tight loop of reads opens no
  SSH session per call, and a read inside the interval shows what the history holds (at most that old);
- a pull runs in a thread of its own; a read that finds one in flight joins it instead of starting another,
  and waits for it while its host answers;
- a host that sends nothing for ANSWER_WAIT seconds, or whose connection still fails after the retries of
  ``rundock.submitter.ssh.retrying``, is *unreachable*: reads show what is stored, with one warning per run
  naming the host (HostUnreachableWarning); its live runs show NotResponding (this module answers
  ``rundock.history.liveness.host_unreachable_since``); a new attempt starts at most every RETRY_SECONDS;
  the first pull that succeeds clears it (and a later outage warns again);
- a pull that has received nothing for STALL_SECONDS drops its connection (a frozen host never closes it),
  and its retry starts a new one.

Only transient failures make a host unreachable. What a pull raises otherwise (a refused login, a changed
host key, records that could not be applied) reaches every read that joined it. All of it is this process's
memory, measured on its monotonic clock.
"""

from __future__ import annotations

import contextlib
import dataclasses
import threading
import time
import warnings
from collections import Counter
from collections.abc import Callable, Iterator

from rundock.history import liveness
from rundock.history.records import RunRecord
from rundock.submitter.ssh import SshError

PULL_INTERVAL = 0.5  # seconds between two pulls of one run, at least
ANSWER_WAIT = 10.0  # a read waits this long for a host that sends nothing, then shows what is stored
RETRY_SECONDS = 2.0  # between two attempts while the host is unreachable
JOIN_UNREACHABLE = 0.25  # how long a read waits for an attempt on a host that did not answer last time
STALL_SECONDS = 20.0  # a pull that receives nothing this long drops its connection
PULLS: Counter[str] = Counter()  # pulls started in this process, per run id


class HostUnreachableWarning(UserWarning):
    """A remote run's host cannot be reached: what is shown is what the history held."""


@dataclasses.dataclass
class Host:
    """What this process knows of a host's reachability."""

    where: str  # "target NAME (ADDRESS)"
    since: float | None = None  # monotonic; None while it answers
    error: str = ""


class Attempt:
    """One pull in flight: when it started, when its host last sent something, how it ended."""

    def __init__(self, clock: Callable[[], float]) -> None:
        self.clock = clock
        self.started = self.heard = clock()
        self.local = 0  # > 0 while this process works on what the host sent (not the host's silence)
        self.done = threading.Event()
        self.error: BaseException | None = None

    def hear(self) -> None:
        """The host sent something (or answered a command)."""
        self.heard = self.clock()

    @contextlib.contextmanager
    def working_locally(self) -> Iterator[None]:
        self.local += 1
        try:
            yield
        finally:
            self.local -= 1
            self.hear()

    def silent_for(self) -> float:
        return 0.0 if self.local else self.clock() - self.heard


class _Gate:
    def __init__(self, host: Host) -> None:
        self.lock = threading.Lock()
        self.host = host
        self.current: Attempt | None = None


_LOCK = threading.Lock()
_HOSTS: dict[tuple[str, str], Host] = {}
_GATES: dict[tuple[str, str], _Gate] = {}
_RUN_HOSTS: dict[str, Host] = {}
_WARNED: set[str] = set()  # runs warned about during their host's current outage


def host(workspace_path: str, target: str, where: str) -> Host:
    with _LOCK:
        found = _HOSTS.setdefault((workspace_path, target), Host(where))
        found.where = where
        return found


def unreachable_since(run: RunRecord) -> float | None:
    """When (time.monotonic()) this process found the run's host unreachable; None while it answers."""
    found = _RUN_HOSTS.get(run.run_id)
    return None if found is None else found.since


liveness.host_unreachable_since = unreachable_since


def _gate(workspace_path: str, run_id: str, found: Host) -> _Gate:
    with _LOCK:
        gate = _GATES.setdefault((workspace_path, run_id), _Gate(found))
        gate.host = found
        _RUN_HOSTS[run_id] = found
        return gate


def _transient(exc: BaseException | None) -> bool:
    return isinstance(exc, SshError) and exc.transient


def _run(gate: _Gate, attempt: Attempt, pull: Callable[[Attempt], None], on_stall: Callable[[], None]) -> None:
    watchdog = threading.Thread(target=_watch, args=(attempt, on_stall), name="rundock-pull-watchdog", daemon=True)
    watchdog.start()
    try:
        pull(attempt)
    except BaseException as exc:  # handed to the readers (see read)
        attempt.error = exc
    found = gate.host
    if _transient(attempt.error):
        found.error = str(attempt.error)
        if found.since is None:
            found.since = attempt.started
    elif found.since is not None:  # it answered: a later outage is news again
        found.since = None
        with _LOCK:
            _WARNED.difference_update([r for r, h in _RUN_HOSTS.items() if h is found])
    attempt.done.set()


def _watch(attempt: Attempt, on_stall: Callable[[], None]) -> None:
    dropped = attempt.started
    while not attempt.done.wait(min(1.0, STALL_SECONDS / 4)):
        if attempt.silent_for() > STALL_SECONDS and attempt.clock() - dropped > STALL_SECONDS:
            dropped = attempt.clock()  # the retry gets as long again
            on_stall()


def _warn(run_id: str, found: Host) -> None:
    with _LOCK:
        if run_id in _WARNED:
            return
        _WARNED.add(run_id)
    reason = f" ({found.error})" if found.error else ""
    warnings.warn(f"run {run_id}: {found.where} cannot be reached{reason}; showing what the history holds. Reads "
                  "keep trying, and the run shows NotResponding until the host answers again (`rundock cancel "
                  f"{run_id} --abandon` gives up on it)", HostUnreachableWarning, stacklevel=2)


def read(workspace_path: str, run_id: str, found: Host, pull: Callable[[Attempt], None],
         on_stall: Callable[[], None], *, force: bool = False, patience: float | None = None,
         clock: Callable[[], float] = time.monotonic) -> bool:
    """Pull the run if it is due (see the module docstring); True when a pull finished for this read.

    ``force`` asks for a pull that starts after this call (a cancel to deliver), whatever the interval;
    ``patience``: how long a silent host is waited for, if not ANSWER_WAIT.
    Raises what the pull raised, except a transient SSH failure (a warning instead: the host is unreachable).
    """
    gate = _gate(workspace_path, run_id, found)
    requested = clock()
    while True:
        with gate.lock:
            current, ours = gate.current, False
            if current is None or current.done.is_set():
                interval = PULL_INTERVAL if found.since is None else RETRY_SECONDS
                if current is not None and not force and clock() - current.started < interval:
                    return False  # pulled a moment ago: what is stored is that fresh
                current, ours = Attempt(clock), True
                gate.current = current
                PULLS[run_id] += 1
                threading.Thread(target=_run, args=(gate, current, pull, on_stall), name=f"rundock-pull-{run_id}",
                                 daemon=True).start()
        joined = clock()
        while not current.done.is_set():
            waited = ANSWER_WAIT if patience is None else patience
            if found.since is None and current.silent_for() > waited:
                found.since, found.error = current.started, f"no answer for {waited:g} s"
            if found.since is not None and clock() - joined >= (JOIN_UNREACHABLE if ours else 0):
                _warn(run_id, found)  # (an attempt of its own gets a moment: the host may be back)
                return False
            current.done.wait(0.02)
        if force and current.started < requested:
            continue  # it started before this call: the next one is ours
        if _transient(current.error):
            _warn(run_id, found)
            return False
        if current.error is not None:
            raise current.error
        return True
