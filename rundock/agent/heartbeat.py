"""The agent's heartbeat: a lease renewed every interval, through Finalizing.

The agent beats (never the job), stating its interval; the run history's
reader decides liveness from it (see rundock.history.liveness).
"""

from __future__ import annotations

import threading
from collections.abc import Callable

from rundock.context.journal import JournalWriter


class Heartbeat:
    def __init__(self, journal: JournalWriter, interval: float, on_beat: Callable[[], None] | None = None) -> None:
        self.journal = journal
        self.interval = interval
        self.on_beat = on_beat
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="rundock-heartbeat", daemon=True)

    def beat(self) -> None:
        self.journal.append("heartbeat", interval=self.interval)
        if self.on_beat is not None:
            self.on_beat()

    def _loop(self) -> None:
        while True:
            self.beat()
            if self._stop.wait(self.interval):
                return

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()
