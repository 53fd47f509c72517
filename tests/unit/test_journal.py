from __future__ import annotations

import os
from pathlib import Path

from rundock.context.journal import JournalReader, JournalWriter


def test_sequence_numbers_continue_after_reopening(tmp_path: Path) -> None:
    first = JournalWriter(str(tmp_path), "agent")
    assert [first.append("metric", name="a", value=i) for i in range(3)] == [1, 2, 3]
    first.close()
    again = JournalWriter(str(tmp_path), "agent")
    assert again.append("metric", name="a", value=9) == 4


def test_reader_returns_only_new_complete_records(tmp_path: Path) -> None:
    writer = JournalWriter(str(tmp_path), "job-1")
    reader = JournalReader(str(tmp_path))
    writer.append("tags", values={"a": "1"})
    assert [(s, [r["seq"] for r in recs]) for s, recs in reader.read_new()] == [("job-1", [1])]
    assert [s for s, _ in reader.read_new()] == ["job-1"]  # not committed (the pass failed): read again
    reader.commit()
    assert reader.read_new() == []
    with open(writer.path, "ab") as fh:  # a record still being written
        fh.write(b'{"seq": 2, "type": "tags", "val')
    assert reader.read_new() == []
    with open(writer.path, "ab") as fh:
        fh.write(b'ues": {"b": "2"}}\n')
    assert [(s, [r["values"] for r in recs]) for s, recs in reader.read_new()] == [("job-1", [{"b": "2"}])]


def test_records_of_each_source_come_in_order(tmp_path: Path) -> None:
    a, b = JournalWriter(str(tmp_path), "agent"), JournalWriter(str(tmp_path), f"job-{os.getpid()}")
    for i in range(5):
        a.append("heartbeat", interval=1)
        b.append("metric", name="x", value=i)
    batches = dict(JournalReader(str(tmp_path)).read_new())
    for source in ("agent", f"job-{os.getpid()}"):
        assert [r["seq"] for r in batches[source]] == [1, 2, 3, 4, 5]


def test_a_torn_record_is_skipped_without_losing_its_neighbours(tmp_path: Path) -> None:
    writer = JournalWriter(str(tmp_path), "job-9")
    writer.append("tags", values={"a": "1"})
    with open(writer.path, "ab") as fh:
        fh.write(b'{"seq": 2, "type": "ta\n')  # a writer died mid-record, then another record follows
    writer.append("tags", values={"c": "3"})
    (_, records), = JournalReader(str(tmp_path)).read_new()
    assert [r["values"] for r in records if r["type"] != "unreadable"] == [{"a": "1"}, {"c": "3"}]
    assert [r["type"] for r in records].count("unreadable") == 1  # handed over, for the syncer to quarantine


def test_only_the_agent_journal_speaks_for_the_agent(tmp_path: Path) -> None:
    agent = JournalWriter(str(tmp_path), "agent")
    assert agent.path == str(tmp_path / "agent_journal" / "agent.jsonl")
    agent.append("heartbeat", interval=1)
    (tmp_path / "journal").mkdir(exist_ok=True)
    (tmp_path / "journal" / "agent.jsonl").write_text('{"seq": 9, "type": "state", "status": "Completed"}\n')
    (tmp_path / "journal" / "notes.jsonl").write_text('{"seq": 1, "type": "state", "status": "Completed"}\n')
    batches = JournalReader(str(tmp_path)).read_new()
    assert [(s, [r["seq"] for r in recs]) for s, recs in batches] == [("agent", [1])]


def test_a_record_too_large_to_read_back_is_refused_when_written(tmp_path: Path) -> None:
    import pytest

    writer = JournalWriter(str(tmp_path), "job-1")
    with pytest.raises(ValueError, match="larger than the limit"):
        writer.append("metric", name="big", kind="list", value=list(range(400_000)))
    assert writer.append("metric", name="ok", value=1) == 1  # the refused record took no sequence number


def test_a_short_write_is_cut_off_and_the_next_record_is_whole(tmp_path: Path) -> None:
    import subprocess
    import sys

    script = f"""
import resource, signal
from rundock.context.journal import JournalWriter
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
w = JournalWriter({str(tmp_path)!r}, "job-1")
w.append("metric", name="a", value=1)
resource.setrlimit(resource.RLIMIT_FSIZE, (len(open(w.path, "rb").read()) + 20, resource.RLIM_INFINITY))
try:
    w.append("metric", name="b", value="x" * 100)
except OSError as exc:
    print("refused", exc.errno)
resource.setrlimit(resource.RLIMIT_FSIZE, (resource.RLIM_INFINITY, resource.RLIM_INFINITY))
print("seq", w.append("metric", name="c", value=3))
"""
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60).stdout
    assert "refused 28" in out and "seq 2" in out
    reader = JournalReader(str(tmp_path))
    ((_, records),) = reader.read_new()
    assert [(r["seq"], r["name"]) for r in records] == [(1, "a"), (2, "c")]
