"""``rundock diff RUN_A RUN_B``: what changed from one run to another.

- files: the two snapshots compared by their manifests (path -> digest), so unchanged files are never
  read: files added, removed and changed; a changed text file as a unified diff (difflib), a changed
  binary file (a NUL byte, or not UTF-8) or one over ``MAX_DIFF_BYTES`` named only;
- arguments: the script's arguments of each run, when they differ;
- configuration: the other fields of the run definitions that differ (script, target, limits, secrets);
- environment: the environment's fields that differ, as dotted paths (``docker.base_image``,
  ``environment_variables.SEED``), its package lists aside;
- packages: pip and conda packages added, removed, or changed (same name, another version spec);
- metrics: every metric of either run, side by side: its latest value and how many values were logged.

A run without a snapshot (an interactive run) has no files; one without a run definition, no
configuration. ``RunDiff.to_dict()`` is the ``--json`` form; ``render()`` the text one.
"""

from __future__ import annotations

import dataclasses
import difflib
import re
from collections.abc import Mapping
from typing import Any

from rundock.history.artifacts import ArtifactStore
from rundock.submitter.run import Run

MAX_DIFF_BYTES = 1 << 20
MISSING = "(none)"  # a field or metric one run does not have
_PACKAGE_LISTS = {"pip": "pip_packages", "conda": "conda_packages"}
_NOT_CONFIGURATION = ("arguments", "environment", "source_directory")
_NAME_END = re.compile(r"[<>=!~;\[\s@(]")


@dataclasses.dataclass
class FileChange:
    """One file that differs: ``change`` is added, removed or changed; ``diff`` the unified diff of a changed
    text file (empty for a binary or too large one: ``binary`` / ``too_large`` say which); ``mode`` the
    change of its mode (``"644 -> 755"``) when that changed."""

    path: str
    change: str
    binary: bool = False
    too_large: bool = False
    diff: str = ""
    mode: str = ""


@dataclasses.dataclass
class RunDiff:
    """What differs from run ``run_a`` to run ``run_b`` (pairs are (a, b); ``MISSING`` where one has none)."""

    run_a: str
    run_b: str
    snapshots: tuple[str | None, str | None]
    files: list[FileChange]
    arguments: tuple[list[Any], list[Any]] | None
    configuration: dict[str, tuple[Any, Any]]
    environment: dict[str, tuple[Any, Any]]
    packages: dict[str, dict[str, list[Any]]]  # pip/conda -> added / removed / changed ([a, b] pairs)
    metrics: dict[str, tuple[dict[str, Any] | None, dict[str, Any] | None]]  # {"latest", "count"} per side

    def to_dict(self) -> dict[str, Any]:
        """Plain data for ``--json``: every (a, b) pair as ``{"a": ..., "b": ...}``."""
        def pair(values: tuple[Any, Any]) -> dict[str, Any]:
            return {"a": values[0], "b": values[1]}

        return {
            "run_a": self.run_a, "run_b": self.run_b, "snapshots": pair(self.snapshots),
            "files": [dataclasses.asdict(f) for f in self.files],
            "arguments": pair(self.arguments) if self.arguments else None,
            "configuration": {k: pair(v) for k, v in self.configuration.items()},
            "environment": {k: pair(v) for k, v in self.environment.items()},
            "packages": self.packages,
            "metrics": {k: pair(v) for k, v in self.metrics.items()},
        }


def diff_runs(run_a: Run, run_b: Run) -> RunDiff:
    """What changed from ``run_a`` to ``run_b``: files, arguments, configuration, environment, packages and
    metrics (see the module docstring). Reads only: neither run changes."""
    store = run_a.experiment.workspace.store
    artifacts = run_a.experiment.workspace.artifacts
    snapshots = (run_a.get_snapshot_id(), run_b.get_snapshot_id())
    manifests = [{e["path"]: e for e in (store.get_snapshot(s) if s else [])} for s in snapshots]
    definitions = [dict(r.get_details()["runDefinition"] or {}) for r in (run_a, run_b)]
    envs = [dict(d.get("environment") or {}) for d in definitions]
    for env in envs:  # the package lists are compared on their own
        env["python"] = dict(env.get("python") or {})
    lists = {kind: [env["python"].pop(key, None) or [] for env in envs] for kind, key in _PACKAGE_LISTS.items()}
    arguments = [list(d.get("arguments") or []) for d in definitions]
    metrics = [_metric_sides(store.get_metric_records(r.id)) for r in (run_a, run_b)]
    return RunDiff(
        run_a=run_a.id, run_b=run_b.id, snapshots=snapshots,
        files=_file_changes(manifests[0], manifests[1], artifacts, run_a.id, run_b.id),
        arguments=(arguments[0], arguments[1]) if arguments[0] != arguments[1] else None,
        configuration=_mapping_changes(*({k: v for k, v in d.items() if k not in _NOT_CONFIGURATION}
                                         for d in definitions)),
        environment=_mapping_changes(envs[0], envs[1]),
        packages={kind: changes for kind, (a, b) in lists.items() if (changes := _package_changes(a, b))},
        metrics={name: (metrics[0].get(name), metrics[1].get(name))
                 for name in sorted(set(metrics[0]) | set(metrics[1]))})


def _file_changes(a: Mapping[str, dict[str, Any]], b: Mapping[str, dict[str, Any]], artifacts: ArtifactStore,
                  name_a: str, name_b: str) -> list[FileChange]:
    changes = []
    for path in sorted(set(a) | set(b)):
        if path not in b:
            changes.append(FileChange(path, "removed"))
        elif path not in a:
            changes.append(FileChange(path, "added"))
        else:
            modes = [entry.get("mode", 0o644) for entry in (a[path], b[path])]
            change = _text_change(path, a[path], b[path], artifacts, name_a, name_b) \
                if a[path]["digest"] != b[path]["digest"] else FileChange(path, "changed")
            change.mode = f"{modes[0]:o} -> {modes[1]:o}" if modes[0] != modes[1] else ""
            if change.mode or a[path]["digest"] != b[path]["digest"]:
                changes.append(change)
    return changes


def _text_change(path: str, a: dict[str, Any], b: dict[str, Any], artifacts: ArtifactStore, name_a: str,
                 name_b: str) -> FileChange:
    if max(a["size"], b["size"]) > MAX_DIFF_BYTES:
        return FileChange(path, "changed", too_large=True)
    texts = []
    for entry in (a, b):
        data = artifacts.read(entry["digest"])
        try:
            if b"\0" in data:
                raise UnicodeDecodeError("utf-8", data, 0, 1, "a NUL byte")
            texts.append(data.decode("utf-8"))
        except UnicodeDecodeError:
            return FileChange(path, "changed", binary=True)
    lines = difflib.unified_diff(texts[0].splitlines(), texts[1].splitlines(), fromfile=f"{name_a}/{path}",
                                 tofile=f"{name_b}/{path}", lineterm="")
    return FileChange(path, "changed", diff="\n".join(lines))


def _flatten(value: Any, prefix: str = "") -> dict[str, Any]:
    """A mapping as dotted paths to its leaves (lists are leaves)."""
    if isinstance(value, Mapping) and value:
        flat: dict[str, Any] = {}
        for key, inner in value.items():
            flat.update(_flatten(inner, f"{prefix}{key}."))
        return flat
    return {prefix[:-1]: value} if prefix else {}


def _mapping_changes(a: Mapping[str, Any], b: Mapping[str, Any]) -> dict[str, tuple[Any, Any]]:
    flat_a, flat_b = _flatten(a), _flatten(b)
    return {key: (flat_a.get(key, MISSING), flat_b.get(key, MISSING)) for key in sorted(set(flat_a) | set(flat_b))
            if flat_a.get(key, MISSING) != flat_b.get(key, MISSING)}


def package_name(spec: str) -> str:
    """The normalized name of a package spec (``NumPy>=1.2`` -> ``numpy``; ``a_b.c`` -> ``a-b-c``)."""
    return re.sub(r"[-_.]+", "-", _NAME_END.split(spec.strip(), 1)[0]).lower()


def _package_changes(a: list[str], b: list[str]) -> dict[str, list[Any]]:
    by_name = [{package_name(str(s)): str(s) for s in specs} for specs in (a, b)]
    names = sorted(set(by_name[0]) | set(by_name[1]))
    changes: dict[str, list[Any]] = {"added": [by_name[1][n] for n in names if n not in by_name[0]],
               "removed": [by_name[0][n] for n in names if n not in by_name[1]],
               "changed": [[by_name[0][n], by_name[1][n]] for n in names
                           if n in by_name[0] and n in by_name[1] and by_name[0][n] != by_name[1][n]]}
    return {k: v for k, v in changes.items() if v}


def _metric_sides(records: list[Any]) -> dict[str, dict[str, Any]]:
    sides: dict[str, dict[str, Any]] = {}
    for record in records:  # in logging order: the last one seen is the latest
        side = sides.setdefault(record.name, {"latest": None, "count": 0})
        side["latest"] = record.value
        side["count"] += 1
    return sides


def render(diff: RunDiff) -> str:
    """The text form of ``diff``: one section per aspect, each saying when nothing differs."""
    out = [f"--- {diff.run_a}", f"+++ {diff.run_b}", ""]
    same = " (the same snapshot)" if diff.snapshots[0] == diff.snapshots[1] and diff.snapshots[0] else ""
    counts = {c: sum(f.change == c for f in diff.files) for c in ("changed", "added", "removed")}
    out.append(f"Files{same}: " + (", ".join(f"{n} {c}" for c, n in counts.items()) if diff.files else "no changes"))
    for f in diff.files:
        notes = [n for n in ("binary" if f.binary else "", f"over {MAX_DIFF_BYTES >> 20} MiB" if f.too_large else "",
                             f"mode {f.mode}" if f.mode else "") if n]
        if not f.diff or notes:
            shown = f"{f.change} ({', '.join(notes)})" if notes else f.change
            out.append(f"  {shown}: {f.path}")
    out.extend(f.diff for f in diff.files if f.diff)
    out.append("")
    out.append("Arguments: the same" if diff.arguments is None else "Arguments:")
    if diff.arguments is not None:
        out.extend(f"  {side}: {' '.join(map(str, args)) or '(none)'}"
                   for side, args in ((diff.run_a, diff.arguments[0]), (diff.run_b, diff.arguments[1])))
    for title, changes in (("Configuration", diff.configuration), ("Environment", diff.environment)):
        out.append(f"{title}: the same" if not changes else f"{title}:")
        out.extend(f"  {key}: {a!r} -> {b!r}" for key, (a, b) in changes.items())
    out.append("Packages: the same" if not diff.packages else "Packages:")
    for kind, lists in diff.packages.items():
        out.extend(f"  {kind} + {spec}" for spec in lists.get("added", []))
        out.extend(f"  {kind} - {spec}" for spec in lists.get("removed", []))
        out.extend(f"  {kind} {a} -> {b}" for a, b in lists.get("changed", []))
    out.append("Metrics: " + ("none" if not diff.metrics else "latest value (values logged)"))
    if diff.metrics:
        rows = [["metric", diff.run_a, diff.run_b]] + [
            [name, *(MISSING if s is None else f"{_short(s['latest'])} ({s['count']})" for s in sides)]
            for name, sides in diff.metrics.items()]
        widths = [max(len(row[i]) for row in rows) for i in range(3)]
        out.extend("  " + "  ".join(row[i].ljust(widths[i]) for i in range(3)).rstrip() for row in rows)
    return "\n".join(out)


def _short(value: Any) -> str:
    text = f"{value:.6g}" if isinstance(value, float) else str(value)
    return text if len(text) <= 40 else text[:39] + "…"
