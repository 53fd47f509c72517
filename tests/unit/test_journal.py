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
