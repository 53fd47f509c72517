"""The agent's heartbeat: a lease renewed every interval, through Finalizing.

The agent beats (never the job), stating its interval. Each beat is a journal
record (shipped to the run history) and the run directory's
``heartbeat.json`` (sequence number, this host's monotonic time): readers on
this host judge silence from that on their own monotonic clock, never by
comparing wall clocks (see ``rundock.agent.runlock`` and
``rundock.history.liveness``).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

from rundock.agent.runlock import write_heartbeat
from rundock.context.journal import JournalWriter

log = logging.getLogger(__name__)


class Heartbeat:
    def __init__(self, journal: JournalWriter, interval: float, on_beat: Callable[[], None] | None = None,
                 run_dir: str | None = None) -> None:
        self.journal = journal
        self.interval = interval
        self.on_beat = on_beat
        self.run_dir = run_dir
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="rundock-heartbeat", daemon=True)

    def beat(self) -> None:
        seq = self.journal.append("heartbeat", interval=self.interval)
        if self.run_dir is not None:
            write_heartbeat(self.run_dir, seq, self.interval)
        if self.on_beat is not None:
            self.on_beat()

    def _loop(self) -> None:
        while True:
            try:
                self.beat()
            except OSError as exc:  # a full disk: beat again next time, say why once
                log.error("heartbeat not recorded: %s", exc)
            if self._stop.wait(self.interval):
                return

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join()
