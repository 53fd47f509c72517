"""Part of a benchmark run written into BENCHMARKS.md: the new figures' rows and notes replace those with the same
numbers, every other row and note stays as it was, and the header says which figures this run measured."""

from __future__ import annotations

import re

_ROW = re.compile(r"^\| (\d+) \|")
_NOTE = re.compile(r"^- \*\*(\d+)\.\*\* ")


def _numbered(lines: list[str], pattern: re.Pattern[str]) -> dict[int, str]:
    return {int(m.group(1)): line for line in lines if (m := pattern.match(line))}


def merge(old: str, new: str) -> str:
    """BENCHMARKS.md text ``old`` with the figures of ``new`` (a full ``render`` of some figures) put in."""
    old_lines, new_lines = old.splitlines(), new.splitlines()
    rows = {**_numbered(old_lines, _ROW), **_numbered(new_lines, _ROW)}
    notes = {**_numbered(old_lines, _NOTE), **_numbered(new_lines, _NOTE)}
    measured = sorted(_numbered(new_lines, _ROW))
    out: list[str] = []
    for line in new_lines:
        if _ROW.match(line) or _NOTE.match(line) or line in ("## Notes",):
            continue
        if line.startswith("- Date: ") and measured:
            line += f" (figures {', '.join(map(str, measured))}; the others are from the run before, "\
                    f"{_date(old_lines)})"
        out.append(line)
    while out and not out[-1]:
        out.pop()
    out += [rows[n] for n in sorted(rows)]
    if notes:
        out += ["", "## Notes", "", *[notes[n] for n in sorted(notes)]]
    return "\n".join(out) + "\n"


def _date(lines: list[str]) -> str:
    """When the figures not measured now were measured: the date of the full run before (kept through any
    number of partial runs)."""
    for line in lines:
        if line.startswith("- Date: "):
            earlier = re.search(r"the others are from the run before, ([^)]+)\)", line)
            return earlier.group(1) if earlier else line[len("- Date: "):].split(";")[0]
    return "an earlier run"
