"""Interactive runs (start_logging): log() is a journal append, every value reaches the history once."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest

from rundock.submitter.experiment import Experiment
from rundock.submitter.run import Run
from rundock.submitter.workspace import Workspace


def test_a_notebook_logging_per_batch_keeps_every_value_in_order(workspace: Workspace) -> None:
    run = Experiment(workspace, "nb").start_logging()
    for i in range(20_000):  # quadratic before: 2,000 values took 5 s, 20,000 did not finish in 300 s
        run.log("loss", i * 0.5)
    run.log("acc", 0.5, step=1)
    with pytest.raises(ValueError, match="step"):
        run.log("acc", 0.6)
    assert run.get_metrics()["loss"] == [i * 0.5 for i in range(20_000)]  # a read sees all logged so far
    run.tag("stage", "done")
    run.complete()
    again = Run.get(workspace, run.id)
    assert again.get_status() == "Completed"
    assert len(again.get_metrics()["loss"]) == 20_000 and again.get_tags()["stage"] == "done"


def test_values_of_a_notebook_that_died_before_shipping_are_kept(workspace: Workspace) -> None:
    script = textwrap.dedent(f"""
        import os, signal
        from rundock import Workspace, Experiment
        ws = Workspace({workspace.path!r})
        run = Experiment(ws, "nb").start_logging()
        print(run.id, flush=True)
        for i in range(5000):
            run.log("v", i)
        os.kill(os.getpid(), signal.SIGKILL)  # before the syncer's next pass, before flush or complete
    """)
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    run_id = proc.stdout.strip()
    run = Run.get(workspace, run_id)
    run.get_status()  # a reader ships what the dead process left in its journal
    assert run.get_metrics()["v"] == list(range(5000))
    run.get_status()
    assert run.get_metrics()["v"] == list(range(5000))  # exactly once, however often it is read
