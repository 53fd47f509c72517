"""``python -m rundock.history.shipper``: ship one run directory's journal from a process of its own.

An interactive run (a notebook) appends its values to a journal, as a job does;
this small process ships them to the history beside it, as a job's agent
does, so the notebook's ``log()`` never waits for the history and the two
share no interpreter lock. It ships until told to stop (SIGTERM) or until the
process it serves is gone, then ships what is left and exits. Exactly once
holds whoever ships: records are applied by (run, attempt, source, sequence
number).
"""

from __future__ import annotations

import logging
import os
import signal
import sys
import threading
import time

from rundock.history.artifacts import ArtifactStore
from rundock.history.store import open_store
from rundock.history.sync import Syncer

log = logging.getLogger("rundock.shipper")
BUSY_PAUSE = 0.005  # between passes while values keep coming
IDLE_PAUSE = 0.1
FINAL_RETRY_SECONDS = 60.0  # once its process is gone, how long the shipper keeps trying a refusing history


def _alive(pid: int) -> bool:
    """Whether the process this one serves is still its parent (a dead one, even a zombie, is not)."""
    return os.getppid() == pid


def ship(run_dir: str, run_id: str, store_uri: str, artifacts_root: str, parent: int) -> int:
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    store = open_store(store_uri, artifacts_root=artifacts_root)
    syncer = Syncer(run_dir, run_id, store, ArtifactStore(artifacts_root))
    give_up = time.monotonic() + FINAL_RETRY_SECONDS
    pause = BUSY_PAUSE
    while True:
        done = stop.is_set() or not _alive(parent)
        try:
            moved = syncer.sync_once()
            failed = False
        except Exception as exc:  # the history refuses now: the journal keeps everything, try again
            log.warning("run %s: shipping failed, retrying: %s", run_id, exc)
            moved, failed = 0, True
        if done and not moved and not failed:
            return 0  # everything is shipped
        if done and failed and time.monotonic() > give_up:
            log.error("run %s: the history refused the last values for %.0f s; they stay in the journal and "
                      "are shipped the next time the run is read", run_id, FINAL_RETRY_SECONDS)
            return 1
        if not done:
            give_up = time.monotonic() + FINAL_RETRY_SECONDS
        pause = BUSY_PAUSE if moved else min(max(pause, IDLE_PAUSE) * 2, 5.0) if failed else min(pause * 2, IDLE_PAUSE)
        stop.wait(pause)

if __name__ == "__main__":
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr, format="%(asctime)s %(name)s: %(message)s")
    sys.exit(ship(sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4], int(sys.argv[5])))
