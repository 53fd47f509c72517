"""The CLI's pure helpers: strict JSON, relative times, ``--columns``, the children tree, ``submit``'s
first argument, exit statuses, ``--status`` parsing and what following a run prints."""

from __future__ import annotations

import io
import json
import math
import os
from pathlib import Path

import click
import pytest

from rundock.history.records import MetricRecord, RunRecord, StatusChange
from rundock.states import RunStatus
from rundock.submitter import follow
from rundock.submitter.cli.columns import Column, argument_value, column_value, parse_columns, tree
from rundock.submitter.cli.listing import StatusType
from rundock.submitter.cli.output import ago, dumps, duration, jsonable, short
from rundock.submitter.cli.submit import default_experiment, exit_code, split_source


def record(run_id: str, parent: str | None = None, created: float = 0.0, number: int = 1, **kw: object) -> RunRecord:
    return RunRecord(run_id=run_id, experiment="e", number=number, status=RunStatus.COMPLETED, created_at=created,
                     parent_id=parent, **kw)  # type: ignore[arg-type]


def test_json_never_holds_nan_or_infinity() -> None:
    value = {"a": [1.0, math.nan, math.inf, -math.inf], "b": (1, 2), 3: {"c": None}}
    text = dumps(value)
    assert json.loads(text) == {"a": [1.0, "NaN", "Infinity", "-Infinity"], "b": [1, 2], "3": {"c": None}}
    assert "NaN," not in text.replace('"NaN"', "")
    assert jsonable(object).startswith("<class")


@pytest.mark.parametrize(("seconds", "shown"), [
    (0, "just now"), (4.9, "just now"), (42, "42 s ago"), (60, "1 min ago"), (3 * 60 + 59, "3 min ago"),
    (2 * 3600, "2 h ago"), (86400, "1 day ago"), (5 * 86400, "5 days ago"), (-10, "just now")])
def test_relative_times(seconds: float, shown: str) -> None:
    assert ago(1_000_000.0, 1_000_000.0 + seconds) == shown


def test_old_times_and_durations() -> None:
    assert ago(0.0, 90 * 86400) == "1970-01-01"
    assert ago(None) == ""
    assert [duration(s) for s in (0.42, 12, 185, 7620)] == ["0.4s", "12.0s", "3m05s", "2h07m"]
    assert [short(v) for v in (0.123456, 3, "x", None, True, [1, 2])] == ["0.1235", "3", "x", "", "True", "[1,2]"]
    assert short({"k": "v" * 100}).endswith("…")


def test_columns_are_parsed_with_what_is_wrong() -> None:
    assert parse_columns(["tag:team,arg:--alpha", "metric:acc", "properties:BuildId"]) == [
        Column("tag", "team"), Column("arg", "--alpha"), Column("metric", "acc"), Column("prop", "BuildId")]
    with pytest.raises(ValueError, match="KIND:NAME"):
        parse_columns(["team"])
    with pytest.raises(ValueError, match="'color:red' is not a column"):
        parse_columns(["tag:x,color:red"])


@pytest.mark.parametrize(("arguments", "name", "value"), [
    (["--alpha", "0.5"], "--alpha", "0.5"), (["--alpha=0.5"], "--alpha", "0.5"), (["--alpha", 0.5], "alpha", "0.5"),
    (["--fast", "--alpha", "1"], "fast", "yes"), (["--alpha", "-1"], "--alpha", "-1"), (["--fast"], "--fast", "yes"),
    (["--beta", "2"], "--alpha", None), (["-n", "3"], "-n", "3")])
def test_argument_values(arguments: list[object], name: str, value: str | None) -> None:
    assert argument_value(arguments, name) == value


class FakeStore:
    def get_metric_records(self, run_id: str, name: str | None = None) -> list[MetricRecord]:
        return [MetricRecord("acc", "scalar", 0.5), MetricRecord("acc", "scalar", 0.75)] if name == "acc" else []


def test_column_values() -> None:
    run = record("r", tags={"team": "nlp", "flag": None}, properties={"BuildId": "42"},
                 run_definition={"arguments": ["--alpha", "0.1"]})
    store = FakeStore()
    values = [column_value(c, run, store) for c in parse_columns(  # type: ignore[arg-type]
        ["tag:team,tag:flag,tag:none,prop:BuildId,arg:alpha,metric:acc,metric:loss"])]
    assert values == ["nlp", "yes", None, "42", "0.1", 0.75, None]


def test_children_are_grouped_under_their_parents() -> None:
    runs = [record("p2", created=5), record("p1", created=1), record("c1b", "p1", created=3),
            record("c1a", "p1", created=2), record("g", "c1a", created=4), record("orphan", "gone", created=6)]
    groups = tree(runs)
    assert [[(r.run_id, depth) for r, depth in group] for group in groups] == [
        [("p2", 0)], [("p1", 0), ("c1a", 1), ("g", 2), ("c1b", 1)], [("orphan", 0)]]


def test_submit_takes_a_py_file_as_its_first_argument(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "scripts").mkdir()
    (tmp_path / "train.py").write_text("")
    (tmp_path / "scripts" / "eval.py").write_text("")
    monkeypatch.chdir(tmp_path)
    assert split_source(None, None) == (".", None)
    assert split_source(None, "train.py") == (".", "train.py")
    assert split_source("train.py", None) == (".", "train.py")
    assert split_source("scripts/eval.py", None) == (".", os.path.join("scripts", "eval.py"))
    assert split_source(str(tmp_path / "train.py"), None) == (".", "train.py")
    assert split_source("scripts", "eval.py") == ("scripts", "eval.py")
    assert split_source("missing.py", None) == (".", "missing.py")  # then: "'missing.py' was not found"
    with pytest.raises(click.UsageError, match="give one of them"):
        split_source("train.py", "other.py")
    monkeypatch.chdir(tmp_path / "scripts")
    assert split_source("../train.py", None) == (str(tmp_path), "train.py")


def test_default_experiment_names_are_valid() -> None:
    assert default_experiment("/x/my project.v2") == "my-project-v2"
    assert default_experiment("/x/.hidden") == "hidden"
    assert default_experiment("/") == "default"


def test_exit_codes_and_statuses() -> None:
    assert [exit_code(s) for s in (RunStatus.COMPLETED, RunStatus.FAILED, RunStatus.CANCELED)] == [0, 1, 2]
    status = StatusType()
    assert [status.convert(v, None, None) for v in ("failed", "RUNNING", "NotResponding")] == [
        "Failed", "Running", "NotResponding"]
    with pytest.raises(click.BadParameter, match="NotStarted, Starting, .* \\(any case\\)"):
        status.convert("done", None, None)


class ScriptedStore:
    """A store whose run moves through ``steps``: (status changes so far, new driver log bytes, status)."""

    def __init__(self, steps: list[tuple[list[StatusChange], bytes, RunStatus]]) -> None:
        self.steps, self.i, self.logs = steps, -1, b""

    def get_run(self, run_id: str) -> RunRecord:
        self.i = min(self.i + 1, len(self.steps) - 1)
        self.logs += self.steps[self.i][1]
        return RunRecord(run_id=run_id, experiment="e", number=1, status=self.steps[self.i][2], created_at=0)

    def read_log(self, run_id: str, name: str, offset: int = 0) -> bytes:
        return self.logs[offset:] if name == follow.DRIVER_LOG else b"agent note\n"

    def status_history(self, run_id: str) -> list[StatusChange]:
        return self.steps[self.i][0]


def test_stream_prints_output_with_status_lines_in_order(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(follow, "poll_interval", lambda elapsed: 0)
    s = RunStatus
    c = [StatusChange(s.NOT_STARTED, 0, "run created"), StatusChange(s.PREPARING, 1, "materializing"),
         StatusChange(s.RUNNING, 2, "running t.py"), StatusChange(s.FINALIZING, 3, "exited with code 0"),
         StatusChange(s.COMPLETED, 4, "exited with code 0")]
    store = ScriptedStore([(c[:2], b"", s.PREPARING), (c[:3], b"line 1\npart", s.RUNNING),
                           (c[:5], b"ial\n", s.COMPLETED)])
    screen = io.StringIO()
    ended = follow.stream(store, "r", screen)  # type: ignore[arg-type]
    assert ended.status == s.COMPLETED
    assert screen.getvalue() == ("[rundock] Preparing: materializing\n[rundock] Running: running t.py\n"
                                 "line 1\npartial\n[rundock] Finalizing: exited with code 0\n")


def test_the_summary_leaves_out_the_stderr_tail_already_shown() -> None:
    run = RunRecord(run_id="r", experiment="e", number=1, status=RunStatus.FAILED, created_at=0,
                    error={"code": "UserError", "message": "the script exited with code 1; last lines of stderr:\n"
                                                           "Traceback...\nValueError: x"})
    shown, full = io.StringIO(), io.StringIO()
    follow.print_summary(run, shown, output_shown=True)
    follow.print_summary(run, full)
    assert "Error (UserError): the script exited with code 1 (its stderr is above)" in shown.getvalue()
    assert "ValueError" not in shown.getvalue() and "ValueError: x" in full.getvalue()
    assert follow.error_headline(run.error) == "the script exited with code 1"
    assert follow.error_headline({"message": "no GPU"}) == "no GPU"


def test_plot_shows_a_jobs_control_characters_as_text() -> None:
    """A metric name or label from a job cannot clear the screen or write the clipboard of whoever plots it."""
    from rundock.ui.termplot import Series, render

    chart = render("loss\x1b[2J\x1b]52;c;ZXZpbA==\x07", [Series("run\x1b[31m\u009b1", [0.0, 1.0], [1.0, 2.0])],
                   width=60, height=5).plain
    assert not any(ord(c) < 32 and c != "\n" or 0x7f <= ord(c) <= 0x9f for c in chart), repr(chart)
    assert "loss?[2J?]52;c;ZXZpbA==?" in chart and "run?[31m?1" in chart
