"""Runs again (``rerun``), compared (``diff``), put away (``archive``, ``delete``) and freed (``gc``).

Real agents and a real history; the CLI as a user runs it (one process per command). Age is made with
past mtimes (and, for a snapshot record, a past time) or an injected ``now``, never by waiting.
"""

from __future__ import annotations

import hashlib
import json
import os
import sqlite3
import subprocess
import sys
import time
import zipfile
from collections.abc import Callable
from pathlib import Path

import pytest

from rundock import Environment, Experiment, Run, ScriptRunConfig
from rundock.errors import RunNotFoundError
from rundock.history import gc
from rundock.history.artifacts import ArtifactStore
from rundock.history.backends.sqlite_file import history_path
from rundock.submitter import housekeeping
from rundock.submitter.diff import diff_runs
from rundock.submitter.rerun import rerun
from rundock.submitter.targets import local as local_target
from rundock.submitter.workspace import Workspace
from tests.conftest import processes_of_run, wait_until

HOURS_AGO = 2 * 3600.0


def rundock(cwd: Path, *args: str, timeout: float = 120, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "rundock", *args], cwd=cwd, capture_output=True, text=True,
                          timeout=timeout, input=stdin)


def _env(name: str, pip: list[str] | None = None, **variables: str) -> Environment:
    env = Environment(name)
    env.python.user_managed_dependencies = True  # the listed packages are recorded, not installed
    env.python.interpreter_path = sys.executable
    env.python.pip_packages = list(pip or [])
    env.environment_variables = dict(variables)
    return env


def _submit(ws: Workspace, src: Path, experiment: str, arguments: list[object] | None = None,
            env: Environment | None = None) -> Run:
    return Experiment(ws, experiment).submit(ScriptRunConfig(str(src), "train.py", arguments=arguments,
                                                             environment=env))


def _age(*paths: str | Path) -> None:
    """Make files look stored two hours ago."""
    old = time.time() - HOURS_AGO
    for path in paths:
        os.utime(path, (old, old))


# -- rerun -------------------------------------------------------------------------------------------------
RERUN_TRAIN = """
import argparse, os
from rundock.context import Run
parser = argparse.ArgumentParser()
parser.add_argument("--alpha", type=float, default=0.0)
args = parser.parse_args()
run = Run.get_context()
run.log("alpha", args.alpha)
run.log("seed", float(os.environ.get("SEED", "-1")))
with open("data/values.txt") as fh:
    run.log("data", fh.read().strip())
os.makedirs("outputs", exist_ok=True)
with open("outputs/result.txt", "w") as fh:
    fh.write(str(args.alpha))
"""


def test_rerun_runs_the_stored_snapshot_with_the_same_configuration_and_environment(
        workspace: Workspace, source: Callable[..., Path], monkeypatch: pytest.MonkeyPatch) -> None:
    src = source(**{"train.py": RERUN_TRAIN, "data/values.txt": "v1", ".gitignore": "*.log\n", "notes.log": "out"})
    (src / "tool.sh").write_text("#!/bin/sh\n")
    (src / "tool.sh").chmod(0o755)
    (src / "big.bin").write_bytes(os.urandom(2 << 20))  # stored loose, not in a pack
    old = _submit(workspace, src, "rerun", ["--alpha", 0.5], _env("rerun-env", SEED="7"))
    old.wait_for_completion()
    (src / "data" / "values.txt").write_text("v2")  # the folder changed since: a rerun runs what was stored
    (src / "train.py").write_text("raise SystemExit(3)\n")

    taken = []
    real = local_target.take_snapshot

    def spy(*args: object, **kwargs: object) -> object:
        taken.append(real(*args, **kwargs))  # type: ignore[arg-type]
        return taken[-1]

    monkeypatch.setattr(local_target, "take_snapshot", spy)
    new = rerun(old)
    new.wait_for_completion()
    assert taken[0].snapshot_id == old.get_snapshot_id() == new.get_snapshot_id()
    assert taken[0].new_bytes == 0  # every file was already stored
    assert new.get_metrics() == {"alpha": 0.5, "seed": 7.0, "data": "v1"}
    assert new.get_properties()["rerunOf"] == old.id and new.get_tags()["rerunOf"] == old.id
    assert new.experiment.name == old.experiment.name and new.id != old.id
    old_definition, new_definition = (dict(r.get_details()["runDefinition"]) for r in (old, new))
    assert not os.path.exists(new_definition.pop("source_directory"))  # the private folder is gone
    old_definition.pop("source_directory")
    assert new_definition == old_definition  # script, arguments, target, limits, environment
    assert new.get_details()["target"] == old.get_details()["target"] == "local"

    again = rerun(old, ["--alpha", "0.7"])
    again.wait_for_completion()
    assert again.get_metrics()["alpha"] == 0.7 and again.get_details()["runDefinition"]["arguments"] == ["--alpha",
                                                                                                         "0.7"]
    project = Path(workspace.path).parent
    result = rundock(project, "rerun", old.id, "--detach", "-t", "why=check", "--", "--alpha", "0.9")
    assert result.returncode == 0, result.stderr
    new_id = result.stdout.strip()
    assert f"a rerun of {old.id}" in result.stderr
    assert rundock(project, "wait", new_id).returncode == 0
    by_cli = Run.get(workspace, new_id)
    assert by_cli.get_metrics()["alpha"] == 0.9 and by_cli.get_tags() == {"rerunOf": old.id, "why": "check"}
    assert by_cli.get_snapshot_id() == old.get_snapshot_id()
    followed = rundock(project, "rerun", old.id)  # follows the new run; exit status: its outcome
    assert followed.returncode == 0 and "Status: Completed" in followed.stdout, followed.stderr


def test_rerun_refuses_a_run_without_a_job(workspace: Workspace) -> None:
    interactive = Experiment(workspace, "notebook").start_logging()
    interactive.complete()
    with pytest.raises(Exception, match="only runs submitted with a ScriptRunConfig"):
        rerun(interactive)


# -- diff --------------------------------------------------------------------------------------------------
DIFF_TRAIN = """
import argparse
from rundock.context import Run
parser = argparse.ArgumentParser()
parser.add_argument("--n", type=int)
args = parser.parse_args()
run = Run.get_context()
for i in range(args.n):
    run.log("loss", 1.0 / (i + 1))
run.log("n", args.n)
"""


def test_diff_shows_files_arguments_environment_packages_and_metrics(workspace: Workspace,
                                                                      source: Callable[..., Path]) -> None:
    a_src = source("a", **{"train.py": DIFF_TRAIN, "same.txt": "same\n", "gone.txt": "bye\n",
                           "conf.txt": "lr = 1\nepochs = 3\n"})
    b_src = source("b", **{"train.py": DIFF_TRAIN, "same.txt": "same\n", "new.txt": "hi\n",
                           "conf.txt": "lr = 2\nepochs = 3\n"})
    (a_src / "weights.bin").write_bytes(b"\0\1\2")
    (b_src / "weights.bin").write_bytes(b"\0\1\3")
    a = _submit(workspace, a_src, "diff", ["--n", 2], _env("env", ["numpy==1.0", "pandas"], SEED="1"))
    b = _submit(workspace, b_src, "diff", ["--n", 3], _env("env", ["NumPy==2.0", "scipy"], SEED="2"))
    a.wait_for_completion()
    b.wait_for_completion()

    d = diff_runs(a, b)
    files = {f.path: f for f in d.files}
    assert set(files) == {"gone.txt", "new.txt", "conf.txt", "weights.bin"}
    assert files["gone.txt"].change == "removed" and files["new.txt"].change == "added"
    assert files["weights.bin"].binary and not files["weights.bin"].diff
    assert "-lr = 1" in files["conf.txt"].diff and "+lr = 2" in files["conf.txt"].diff
    assert f"--- {a.id}/conf.txt" in files["conf.txt"].diff
    assert d.arguments == (["--n", 2], ["--n", 3])
    assert d.environment == {"environment_variables.SEED": ("1", "2")}
    assert d.packages == {"pip": {"added": ["scipy"], "removed": ["pandas"], "changed": [["numpy==1.0", "NumPy==2.0"]]}}
    assert d.configuration == {}
    assert d.metrics["loss"] == ({"latest": 0.5, "count": 2}, {"latest": 1.0 / 3, "count": 3})
    assert d.metrics["n"] == ({"latest": 2, "count": 1}, {"latest": 3, "count": 1})

    same = diff_runs(a, a)
    assert (same.files, same.arguments, same.environment, same.packages) == ([], None, {}, {})

    project = Path(workspace.path).parent
    text = rundock(project, "diff", a.id, b.id)
    assert text.returncode == 0, text.stderr
    for expected in ("removed: gone.txt", "added: new.txt", "changed (binary): weights.bin", "+lr = 2",
                     "Arguments:", "--n 3", "environment_variables.SEED: '1' -> '2'", "pip + scipy",
                     "pip - pandas", "pip numpy==1.0 -> NumPy==2.0", "loss", "0.333333 (3)"):
        assert expected in text.stdout, (expected, text.stdout)
    as_json = rundock(project, "diff", a.id, b.id, "--json")
    assert as_json.returncode == 0, as_json.stderr
    data = json.loads(as_json.stdout)
    assert data["metrics"]["loss"]["b"] == {"latest": 1.0 / 3, "count": 3}
    assert data["arguments"] == {"a": ["--n", 2], "b": ["--n", 3]}
    assert {f["path"]: f["change"] for f in data["files"]}["new.txt"] == "added"
    assert rundock(project, "diff", a.id, a.id).returncode == 0


# -- archive and delete ----------------------------------------------------------------------------------
PARENT = """
import os
from rundock.context import Run
run = Run.get_context()
with run.child_run(name="fold") as child:
    child.log("acc", 0.9)
os.makedirs("outputs", exist_ok=True)
with open("outputs/model.txt", "w") as fh:
    fh.write("a model only this run made")
"""
SLEEPER = "import time\nprint('sleeping', flush=True)\ntime.sleep(300)\n"


def test_archive_and_delete_from_the_command_line(workspace: Workspace, source: Callable[..., Path]) -> None:
    project = Path(workspace.path).parent
    done = _submit(workspace, source("p", **{"train.py": PARENT}), "house")
    live = _submit(workspace, source("s", **{"train.py": SLEEPER}), "house")
    bulk = [_submit(workspace, source("q", **{"train.py": "print(1)\n"}), "bulk") for _ in range(2)]
    done.wait_for_completion()
    for run in bulk:
        run.wait_for_completion()
    wait_until(lambda: live.get_status() == "Running", message="the sleeper to run")
    (child,) = done.get_children()
    output_digest = workspace.store.list_files(done.id)["outputs/model.txt"].digest
    run_dir = workspace.store.get_run(done.id).run_dir
    assert run_dir and os.path.isdir(run_dir)

    archived = rundock(project, "archive", done.id)
    assert archived.returncode == 0, archived.stderr
    assert set(archived.stdout.split()) == {done.id, child.id}
    assert done.id not in rundock(project, "runs", "-e", "house").stdout
    shown = rundock(project, "runs", "-e", "house", "--archived").stdout
    assert done.id in shown and "(archived)" in shown
    house = Experiment(workspace, "house")
    assert [r.id for r in Run.list(house)] == [live.id]
    assert {r.id for r in Run.list(house, include_archived=True)} == {live.id, done.id}
    assert workspace.store.get_run(child.id).archived
    refused = rundock(project, "archive", live.id)
    assert refused.returncode == 2 and "have not ended" in refused.stderr
    assert rundock(project, "archive", "--undo", done.id).returncode == 0
    assert done.id in rundock(project, "runs", "-e", "house").stdout

    refused = rundock(project, "delete", live.id)
    assert refused.returncode == 2 and "have not ended" in refused.stderr and "--force" in refused.stderr
    assert workspace.store.get_run(live.id).status.value == "Running"

    deleted = rundock(project, "delete", done.id)
    assert deleted.returncode == 0, deleted.stderr
    assert set(deleted.stdout.split()) == {done.id, child.id}
    for run_id in (done.id, child.id):
        with pytest.raises(RunNotFoundError):
            workspace.store.get_run(run_id)
    assert not os.path.exists(run_dir)
    assert workspace.artifacts.has(output_digest)  # stored files stay until `rundock gc`
    assert rundock(project, "show", done.id).returncode == 2

    forced = rundock(project, "delete", "--force", live.id)
    assert forced.returncode == 0, forced.stderr
    with pytest.raises(RunNotFoundError):
        workspace.store.get_run(live.id)
    assert processes_of_run(live.id) == []

    asked = rundock(project, "delete", "-e", "bulk", stdin="n\n")
    assert asked.returncode != 0 and len(workspace.store.list_runs(experiment="bulk")) == 2
    assert rundock(project, "delete", "-e", "bulk", "--yes").returncode == 0
    assert workspace.store.list_runs(experiment="bulk") == []
    assert rundock(project, "delete").returncode == 2  # nothing named


# -- gc ----------------------------------------------------------------------------------------------------
def _interactive(ws: Workspace, src: Path, name: str, tmp_path: Path) -> Run:
    """A finished run with ``src`` as its snapshot and one output of its own."""
    run = Experiment(ws, "gc").start_logging(snapshot_directory=str(src))
    output = tmp_path / f"{name}.bin"
    output.write_bytes(hashlib.sha256(name.encode()).digest() * 1000)
    run.upload_file(f"outputs/{name}.bin", str(output))
    run.complete()
    return run


def _store_files(ws: Workspace) -> dict[str, float]:
    root = ws.artifacts.root
    return {os.path.relpath(os.path.join(d, f), root): os.stat(os.path.join(d, f)).st_mtime
            for d, _, files in os.walk(root) for f in files}


def _pack_of(ws: Workspace, digest: str) -> str:
    packs = ws.artifacts.packs_dir
    return next(n for n in os.listdir(packs) if n.endswith(".idx") and digest in ws.artifacts.index_entries(n))


def _digests(ws: Workspace, run: Run) -> dict[str, str]:
    return {e["path"]: e["digest"] for e in ws.store.get_snapshot(run.get_snapshot_id() or "")}


def test_gc_frees_what_nothing_refers_to_and_keeps_the_rest(workspace: Workspace, source: Callable[..., Path],
                                                           tmp_path: Path) -> None:
    shared = "a file in two snapshots\n" * 5
    runs = {
        "a": _interactive(workspace, source("a", **{f"a{i}.txt": f"only in a {i}\n" * 100 for i in range(9)},
                                            **{"shared.txt": shared}), "a", tmp_path),
        "c": _interactive(workspace, source("c", **{f"c{i}.txt": f"only in c {i}\n" for i in range(3)},
                                            **{"shared.txt": shared}), "c", tmp_path),
        "d": _interactive(workspace, source("d", **{f"d{i}.txt": f"in d {i}\n" * 100 for i in range(10)}), "d",
                          tmp_path),
        "e": _interactive(workspace, source("e", **{f"d{i}.txt": f"in d {i}\n" * 100 for i in range(9)}), "e",
                          tmp_path),  # d's files but the last
    }
    digests = {name: _digests(workspace, run) for name, run in runs.items()}
    unused = sorted(runs[name].get_snapshot_id() or "" for name in ("a", "d"))
    outputs = {name: workspace.store.list_files(run.id)[f"outputs/{name}.bin"].digest for name, run in runs.items()}
    pack_a, pack_d = _pack_of(workspace, digests["a"]["a0.txt"]), _pack_of(workspace, digests["d"]["d0.txt"])
    reader = ArtifactStore(workspace.artifacts.root)  # another process's view, read before gc
    assert reader.read(digests["c"]["shared.txt"]) == shared.encode()
    leftover = Path(workspace.artifacts.root) / ".incoming-crashed"
    leftover.write_bytes(b"half a blob")
    housekeeping.delete_runs(workspace, [runs["a"].id, runs["d"].id])

    later = time.time() + HOURS_AGO  # everything is older than the grace period
    before = _store_files(workspace)
    dry = gc.collect(workspace.store, workspace.artifacts, dry_run=True, now=later)
    assert _store_files(workspace) == before and len(workspace.store.admin().list_snapshots()) == 4
    assert sorted(dry.snapshots) == unused
    assert (dry.loose_blobs, dry.packs_rewritten, dry.temp_files) == (2, 1, 1)
    assert dry.dead_bytes_left == len("in d 9\n" * 100)  # one file of ten: not worth rewriting d's pack
    assert dry.loose_bytes == 2 * 32000 and dry.pack_bytes == sum(len(f"only in a {i}\n" * 100) for i in range(9))

    now = housekeeping.collect_garbage(workspace)  # the real time: all of it is young
    assert now.freed_bytes == 0 and now.young >= 2 and now.snapshots == []

    done = gc.collect(workspace.store, workspace.artifacts, now=later)
    assert (done.snapshots, done.loose_blobs, done.packs_rewritten, done.temp_files, done.dead_bytes_left) == \
        (dry.snapshots, 2, 1, 1, dry.dead_bytes_left)
    packs = os.listdir(workspace.artifacts.packs_dir)
    assert pack_a not in packs and pack_d in packs and not leftover.exists()
    fresh = ArtifactStore(workspace.artifacts.root)
    for name in ("a", "d"):
        assert not fresh.has(outputs[name])
    assert not fresh.has(digests["a"]["a0.txt"]) and fresh.has(digests["d"]["d9.txt"])  # d9: left in its pack
    for name in ("c", "e"):  # what is referenced is all there, through every reader
        run = Run.get(workspace, runs[name].id)
        assert Path(run.download_file(f"outputs/{name}.bin", str(tmp_path / f"{name}.out"))).read_bytes() == \
            hashlib.sha256(name.encode()).digest() * 1000
        with zipfile.ZipFile(run.restore_snapshot(path=str(tmp_path / name))) as zf:
            assert sorted(zf.namelist()) == sorted(digests[name])
        for digest in digests[name].values():
            assert reader.read(digest) == fresh.read(digest) == workspace.artifacts.read(digest)
    assert reader.keep(digests["c"]["shared.txt"]) and not reader.keep(digests["a"]["a0.txt"])
    again = gc.collect(workspace.store, workspace.artifacts, now=later)
    assert again.freed_bytes == 0 and again.snapshots == []


def test_gc_spares_blobs_taken_up_again_and_restores_what_a_crashed_gc_left(
        workspace: Workspace, source: Callable[..., Path], tmp_path: Path) -> None:
    gone = _interactive(workspace, source("x", **{"x.txt": "x"}), "x", tmp_path)
    kept = _interactive(workspace, source("k", **{"k.txt": "k"}), "k", tmp_path)
    dead = {name: workspace.store.list_files(gone.id)[f"outputs/{name}.bin"].digest for name in ("x",)}
    extra = tmp_path / "y.bin"
    extra.write_bytes(b"y" * 5000)
    gone.upload_file("outputs/y.bin", str(extra))
    dead["y"] = workspace.store.list_files(gone.id)["outputs/y.bin"].digest
    live = workspace.store.list_files(kept.id)["outputs/k.bin"].digest
    housekeeping.delete_runs(workspace, [gone.id])
    art = workspace.artifacts
    _age(art.path(dead["x"]), art.path(dead["y"]), art.path(live))
    assert art.keep(dead["x"])  # a writer stores the same bytes again: x is young again
    os.replace(art.path(live), art.path(live) + gc.TRASH)  # a gc that crashed had taken it out of sight

    report = housekeeping.collect_garbage(workspace)
    assert (report.loose_blobs, report.loose_bytes) == (1, 5000)
    assert art.has(dead["x"]) and not art.has(dead["y"]) and art.read(live)
    assert not os.path.exists(art.path(live) + gc.TRASH)

    project = Path(workspace.path).parent
    dry = rundock(project, "gc", "--dry-run")
    assert dry.returncode == 0 and dry.stdout.startswith("Would free 0 bytes"), dry.stdout + dry.stderr
    as_json = json.loads(rundock(project, "gc", "--grace", "0", "--json").stdout)
    assert (as_json["loose_blobs"], as_json["loose_bytes"]) == (1, 32000)  # x, now that nothing is under way
    assert not ArtifactStore(art.root).has(dead["x"])


LIVE_WRITER = """
import hashlib, os, sys, time
key, parts, pause = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
os.makedirs("outputs", exist_ok=True)
if key != "c":
    with open("outputs/shared.bin", "wb") as fh:
        fh.write(b"the same output in a and b\\n" * 5000)
for i in range(parts):
    with open(f"outputs/{key}_{i}.bin", "wb") as fh:
        fh.write(hashlib.sha256(f"{key}-{i}".encode()).digest() * 2048)
    time.sleep(pause)
"""


def test_gc_while_a_run_writes_outputs_leaves_every_file_intact(workspace: Workspace, source: Callable[..., Path],
                                                               tmp_path: Path) -> None:
    common = "shared by two runs' snapshots\n"
    a = _submit(workspace, source("a", **{"train.py": LIVE_WRITER, "common.txt": common,
                                          "a_only.txt": "only in a's snapshot\n" * 3000}), "live", ["a", 2, 0])
    a.wait_for_completion()
    c = _submit(workspace, source("c", **{"train.py": LIVE_WRITER, "common.txt": common, "c.txt": "c"}), "live",
                ["c", 1, 0])
    c.wait_for_completion()
    art, store = workspace.artifacts, workspace.store
    a_snapshot = _digests(workspace, a)
    a_outputs = {n: f.digest for n, f in store.list_files(a.id).items() if n.startswith("outputs/")}
    pack_a, a_snapshot_id = _pack_of(workspace, a_snapshot["a_only.txt"]), a.get_snapshot_id()
    housekeeping.delete_runs(workspace, [a.id])
    # Two hours pass for what only a used (its snapshot, its pack, its outputs, one of which b writes again).
    _age(*(art.path(d) for d in a_outputs.values()), os.path.join(art.packs_dir, pack_a),
         os.path.join(art.packs_dir, pack_a[:-len(".idx")] + ".pack"))
    db = sqlite3.connect(history_path(workspace.history_uri))
    db.execute("UPDATE snapshots SET created_at = created_at - ? WHERE snapshot_id = ?",
               (HOURS_AGO, a_snapshot_id))
    db.commit()
    db.close()

    b = _submit(workspace, source("b", **{"train.py": LIVE_WRITER + "# b\n", "b.txt": "b"}), "live", ["b", 40, 0.1])
    wait_until(lambda: b.get_status() == "Running", message="b to run")
    reports = []
    project = Path(workspace.path).parent
    cli = subprocess.Popen([sys.executable, "-m", "rundock", "gc", "--json"], cwd=project, stdout=subprocess.PIPE,
                           stderr=subprocess.PIPE, text=True)
    while not store.get_run(b.id).status.is_terminal:
        reports.append(housekeeping.collect_garbage(workspace))  # the default grace period: an hour
        time.sleep(0.05)
    out, err = cli.communicate(timeout=60)
    assert cli.returncode == 0, err
    reports.append(gc.GcReport(**{k: v for k, v in json.loads(out).items() if k != "freed_bytes"}))
    b.wait_for_completion()
    assert len(reports) > 5

    assert sum(r.packs_rewritten for r in reports) == 1 and sum(r.loose_blobs for r in reports) >= 2
    assert not ArtifactStore(art.root).has(a_snapshot["a_only.txt"])
    files = store.list_files(b.id)
    expected = {f"outputs/b_{i}.bin": hashlib.sha256(f"b-{i}".encode()).digest() * 2048 for i in range(40)}
    expected["outputs/shared.bin"] = b"the same output in a and b\n" * 5000
    assert set(expected) <= set(files)
    run = Run.get(workspace, b.id)
    for name, content in expected.items():
        assert Path(run.download_file(name, str(tmp_path / "dl" / name), _validate_checksum=True)).read_bytes() == \
            content
    for name in files:  # logs too
        run.download_file(name, str(tmp_path / "all" / name), _validate_checksum=True)
    for kept in (b, c):  # their snapshots, c's through the pack gc rewrote
        with zipfile.ZipFile(Run.get(workspace, kept.id).restore_snapshot(path=str(tmp_path / kept.id))) as zf:
            assert sorted(zf.namelist()) == sorted(_digests(workspace, kept))
            assert zf.read("train.py").decode().startswith(LIVE_WRITER)
    assert a_outputs["outputs/a_0.bin"] not in {f.digest for f in files.values()}
    assert not ArtifactStore(art.root).has(a_outputs["outputs/a_0.bin"])


def test_gc_puts_back_what_a_writer_takes_up_after_the_listing(workspace: Workspace, source: Callable[..., Path],
                                                              tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    gone = _interactive(workspace, source("g", **{f"g{i}.txt": f"only in g {i}\n" * 100 for i in range(5)}), "g",
                        tmp_path)
    snapshot, output = _digests(workspace, gone), workspace.store.list_files(gone.id)["outputs/g.bin"].digest
    snapshot_id = gone.get_snapshot_id()
    housekeeping.delete_runs(workspace, [gone.id])
    art = workspace.artifacts
    _age(*(os.path.join(art.packs_dir, n) for n in os.listdir(art.packs_dir)), art.path(output))
    db = sqlite3.connect(history_path(workspace.history_uri))
    db.execute("UPDATE snapshots SET created_at = created_at - ? WHERE snapshot_id = ?", (HOURS_AGO, snapshot_id))
    db.commit()
    db.close()
    packs_before = sorted(os.listdir(art.packs_dir))
    listing = gc._listing

    def then_a_writer_takes_them_up(artifacts: ArtifactStore) -> object:
        found = listing(artifacts)  # the output and the pack are old and unreferenced: candidates...
        assert art.keep(output) and art.keep(snapshot["g0.txt"])  # ...when a run stores the same bytes again
        return found

    monkeypatch.setattr(gc, "_listing", then_a_writer_takes_them_up)
    report = gc.collect(workspace.store, art)
    assert report.snapshots == [snapshot_id]
    assert (report.taken_up, report.loose_blobs, report.packs_rewritten) == (2, 0, 0)
    assert sorted(os.listdir(art.packs_dir)) == packs_before  # the old pack is back, nothing else is left
    assert art.read(output) and all(art.read(d) for d in snapshot.values())
