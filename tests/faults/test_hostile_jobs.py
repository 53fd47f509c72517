"""Fault 4: hostile jobs. The job is untrusted: it may forge journal records, point file records
and links at secrets outside its run, use names that are not UTF-8 or that climb out of their
folder, and set huge tags. None of it may change the run's state, leak a byte from outside the
run, drop a value or a file silently, or hang a reader."""

from __future__ import annotations

import subprocess
import time

from rundock import Run
from rundock.states import RunStatus
from tests.faults.invariants import check_all, run_checks
from tests.faults.scenario import Lab, cli, drive_to_end, history_text


def test_a_forged_completed_record_does_not_complete_a_failing_run(lab: Lab) -> None:
    ws = lab.workspace()
    watch = lab.watch(ws)
    cfg = {"hostile": ["forge_completed"], "values": 5, "sleep": 0.8, "exit": 3}
    run = lab.submit(ws, cfg)
    ctx = lab.context(ws, run.id, cfg, watch=watch, fault="job wrote a Completed state record to its journal")
    status = drive_to_end(ws, run.id, timeout=30)
    rec = ws.store.get_run(run.id)
    path = [c.status.value for c in ws.store.status_history(run.id)]
    assert status == RunStatus.FAILED and (rec.error or {}).get("exit_code") == 3, \
        f"a job that exits 3 after forging a Completed record ended {status.value} (error {rec.error}); " \
        f"history: {history_text(ws, run.id)}"
    assert "Completed" not in path, f"the forged record was applied: {history_text(ws, run.id)}"
    check_all(ws, run.id, ctx)


def test_file_records_and_links_pointing_outside_store_nothing_from_outside(lab: Lab) -> None:
    ws = lab.workspace()
    watch = lab.watch(ws)
    cfg = {"hostile": ["file_paths"], "values": 5, "sleep": 0.5}
    run = lab.submit(ws, cfg)
    ctx = lab.context(ws, run.id, cfg, watch=watch,
                      fault="file records with /etc/passwd, an absolute and a ../ path to a secret; "
                            "outputs/leak -> secret, outputs/dir -> /etc, logs/outside -> secret's folder")
    status = drive_to_end(ws, run.id, timeout=30)
    assert status in (RunStatus.COMPLETED, RunStatus.FAILED), history_text(ws, run.id)
    check_all(ws, run.id, ctx)


def test_a_file_name_that_is_not_utf8_is_stored_or_named_and_loses_no_value(lab: Lab) -> None:
    ws = lab.workspace()
    watch = lab.watch(ws)
    cfg = {"hostile": ["non_utf8"], "values": 200}
    run = lab.submit(ws, cfg)
    ctx = lab.context(ws, run.id, cfg, watch=watch, fault="outputs/r\\xe9sultat.csv (not UTF-8) and 200 values")
    status = drive_to_end(ws, run.id, timeout=30)
    rec = ws.store.get_run(run.id)
    values = sorted(m.value for m in ws.store.get_metric_records(run.id, "v"))
    problems = [] if values == list(range(200)) else [
        f"the run ({status.value}: {rec.status_detail!r} {rec.error}) holds {len(values)} of the 200 values"]
    problems += [m for m in run_checks(ws, run.id, ctx).values() if m]
    assert not problems, "\n".join(problems)


def test_names_that_climb_out_of_their_folder_are_refused(lab: Lab) -> None:
    ws = lab.workspace()
    watch = lab.watch(ws)
    cfg = {"hostile": ["bad_names"], "values": 3}
    run = lab.submit(ws, cfg)
    ctx = lab.context(ws, run.id, cfg, watch=watch,
                      fault="child_run(run_id='../../etc'), file records named '../../evil' and '/evil-abs', "
                            "a child record for run '../../../escape'")
    status = drive_to_end(ws, run.id, timeout=30)
    problems = [] if status in (RunStatus.COMPLETED, RunStatus.FAILED) else [f"ended {status.value}"]
    accepted = [r.run_id for r in ws.store.list_runs(include_children=True) if ".." in r.run_id]
    if accepted:
        problems.append(f"child runs with ids that climb out were created: {accepted}")
    target = lab.downloads / "all"
    target.mkdir()
    try:
        Run.get(ws, run.id).download_files(output_directory=str(target))
    except Exception as exc:  # refusing a bad name is fine; what matters is that nothing lands outside
        problems.append(f"download_files raised {type(exc).__name__}: {exc} (a stored name it cannot place?)")
    problems += [m for m in run_checks(ws, run.id, ctx).values() if m]
    assert not problems, "\n".join(problems)


def test_a_huge_tag_does_not_hang_show(lab: Lab) -> None:
    ws = lab.workspace()
    watch = lab.watch(ws)
    cfg = {"hostile": ["big_tag"], "values": 3}
    run = lab.submit(ws, cfg)
    ctx = lab.context(ws, run.id, cfg, watch=watch, fault="a 100 kB tag value")
    status = drive_to_end(ws, run.id, timeout=30)
    assert status == RunStatus.COMPLETED, history_text(ws, run.id)
    started = time.monotonic()
    try:
        proc = cli(ws, "show", run.id, timeout=15, env={"COLUMNS": "120"})
    except subprocess.TimeoutExpired:
        raise AssertionError(f"`rundock show {run.id}` did not return within 15 s with a 100 kB tag "
                             "(killed; limit 5 s)") from None
    took = time.monotonic() - started
    assert proc.returncode == 0, f"`rundock show` failed: {proc.stderr[-1500:]}"
    assert took < 5.0, f"`rundock show {run.id}` took {took:.1f} s with a 100 kB tag (limit 5 s); it printed " \
                       f"{len(proc.stdout)} characters"
    check_all(ws, run.id, ctx)


