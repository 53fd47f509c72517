"""``export_runs`` / ``import_runs``: runs made by real local submits move to another history whole, once.

The source history is made once per module: real jobs that log every kind of metric, print to their
log, write outputs, make child runs (one with a grandchild) and fail; a model is registered from one of
them. Each test imports its archive into a fresh workspace and compares what a user would see.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import subprocess
import sys
import tarfile
import textwrap
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from rundock import Experiment, Run, ScriptRunConfig
from rundock.history import transfer_format as fmt
from rundock.history.artifacts import ArtifactStore
from rundock.history.store import RunStore
from rundock.history.transfer import ArchiveError, TransferError, export_runs, import_runs, select_runs
from rundock.states import RunStatus
from rundock.submitter.workspace import Workspace
from tests.conftest import REPO

TRAIN = """
import os
from rundock.context import Run
run = Run.get_context()
print("training starts", flush=True)
run.log("lr", 0.01, description="learning rate")
for i in range(5):
    run.log("loss", 1.0 / (i + 1), step=i)
run.log("acc", float("nan"))
run.log_list("classes", [1, 2, 3])
run.log_row("perf", epoch=0, error=0.5)
run.log_row("perf", epoch=1, error=0.25)
run.log_table("curve", {"x": [1, 2], "y": [0.5, 0.7]})
with open("chart.png", "wb") as fh:
    fh.write(b"not really a png")
run.log_image("chart", path="chart.png")
run.tag("stage", "train")
run.add_properties({"dataset": "v1"})
os.makedirs("fold", exist_ok=True)
with open("fold/result.txt", "w") as fh:
    fh.write("fold result")
with run.child_run(name="fold-a", outputs="fold") as child:
    child.log("acc", 0.75)
    grand = child.child_run(name="inner")
    grand.log("depth", 2)
    grand.complete()
os.makedirs("outputs/weights", exist_ok=True)
with open("outputs/model.txt", "w") as fh:
    fh.write("weights " * 1000)
with open("outputs/weights/big.bin", "wb") as fh:
    fh.write(os.urandom(3 << 20))
print("training done", flush=True)
"""
FAIL = """
from rundock.context import Run
Run.get_context().log("loss", 0.9)
raise SystemExit("diverged")
"""


def _submit(ws: Workspace, src: Path, script: str, experiment: str) -> Run:
    run = Experiment(ws, experiment).submit(ScriptRunConfig(str(src), script))
    run.wait_for_completion(raise_on_error=False)
    return run


@pytest.fixture(scope="module")
def origin(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Workspace, list[str], Path]]:
    """A history with finished runs (their ids, parents first) and an archive of all of them."""
    root = tmp_path_factory.mktemp("origin")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("RUNDOCK_HEARTBEAT_SECONDS", "0.2")
        mp.setenv("RUNDOCK_AGENT_IDLE_SECONDS", "10")
        ws = Workspace.create(str(root / "project"))
        src = root / "src"
        src.mkdir()
        (src / "train.py").write_text(TRAIN)
        (src / "fail.py").write_text(FAIL)
        trained = _submit(ws, src, "train.py", "train")
        assert trained.get_status() == "Completed", trained.get_details().get("error")
        trained.register_model("m", model_path="outputs/model.txt", tags={"stage": "dev"})
        trained.register_model("m", model_path="outputs/weights")
        failed = _submit(ws, src, "fail.py", "train")
        assert failed.get_status() == "Failed"
        other = _submit(ws, src, "train.py", "other")
        ws.store.admin().set_archived([other.id])
        ids, live = select_runs(ws.store)
        assert ids == [trained.id, failed.id, other.id] and live == []
        archive = root / "runs.tar"
        report = export_runs(ws.store, ws.artifacts, ids, str(archive), source="laptop")
        assert len(report.runs) == 7 and report.models == 2  # 3 runs, 2 children and 2 grandchildren
        yield ws, report.runs, archive
        ws.close()


@pytest.fixture
def target(tmp_path: Path) -> Iterator[Workspace]:
    ws = Workspace.create(str(tmp_path / "target"))
    yield ws
    ws.close()


def _seen(ws: Workspace, run_ids: list[str]) -> dict[str, Any]:
    """Everything a user sees of these runs but their numbers (creation and status times included)."""
    store, out = ws.store, {}
    for run_id in run_ids:
        run = store.get_run(run_id)
        record = {k: v for k, v in vars(run).items() if k not in ("number", "run_dir", "properties")}
        record["properties"] = {k: v for k, v in run.properties.items() if not k.startswith("rundock.import.")}
        history = store.status_history(run_id)
        out[run_id] = {
            "record": record, "history": history,
            "metrics": json.dumps(store.get_metric_records(run_id)),  # NaN == NaN as text
            "logs": {name: store.read_log(run_id, name) for name in store.log_names(run_id)},
            "files": store.list_files(run_id),
            "snapshot": store.get_snapshot(run.snapshot_id) if run.snapshot_id else None}
    return out


def _models(ws: Workspace) -> list[tuple[Any, ...]]:
    return sorted((m.name, m.version, m.run_id, m.path, json.dumps(m.files), m.tags, m.framework, m.description,
                   m.created_at,
                   {k: v for k, v in m.properties.items() if not k.startswith("rundock.import.")})
                  for m in ws.store.list_models())


def _downloaded(ws: Workspace, run_id: str, folder: Path) -> dict[str, bytes]:
    paths = Run.get(ws, run_id).download_files(output_directory=str(folder))
    return {Path(p).relative_to(folder).as_posix(): Path(p).read_bytes() for p in paths}


def test_everything_moves_and_importing_again_adds_nothing(origin: tuple[Workspace, list[str], Path],
                                                          target: Workspace, tmp_path: Path) -> None:
    source, run_ids, archive = origin
    report = import_runs(target.store, target.artifacts, str(archive))
    assert report.summary == "7 imported, 0 already present; model versions: 2 imported, 0 already present"
    assert report.imported == run_ids and report.warnings == []
    assert _seen(target, run_ids) == _seen(source, run_ids)
    assert _models(target) == _models(source)
    for run_id in run_ids:
        assert _downloaded(target, run_id, tmp_path / "to" / run_id) == _downloaded(source, run_id,
                                                                                   tmp_path / "from" / run_id)
        imported = target.store.get_run(run_id)
        assert imported.properties[fmt.PROP_NUMBER] == str(source.store.get_run(run_id).number)
        assert imported.properties[fmt.PROP_SOURCE] == "laptop"
    trained = Run.get(target, run_ids[0])
    assert trained.get_metrics()["perf"] == {"epoch": [0, 1], "error": [0.5, 0.25]}
    assert b"training done" in target.store.read_log(run_ids[0], "system_logs/driver_log.txt")
    assert [r.number for r in target.store.list_runs(experiment="train")] == \
        [r.number for r in source.store.list_runs(experiment="train")]  # an empty experiment: same numbers
    failed = next(r for r in target.store.list_runs() if r.status == RunStatus.FAILED and r.parent_id is None)
    assert failed.error == source.store.get_run(failed.run_id).error and "diverged" in str(failed.error)
    assert [r.archived for r in target.store.list_runs(experiment="other")] == [True] * 3
    for manifest_entry in target.store.get_snapshot(failed.snapshot_id or ""):
        assert target.artifacts.has(manifest_entry["digest"])

    again = import_runs(target.store, target.artifacts, str(archive))
    assert again.summary == "0 imported, 7 already present; model versions: 0 imported, 2 already present"
    assert _seen(target, run_ids) == _seen(source, run_ids) and _models(target) == _models(source)


def test_a_history_holding_some_of_the_runs_gets_only_the_others(origin: tuple[Workspace, list[str], Path],
                                                                  target: Workspace, tmp_path: Path) -> None:
    source, run_ids, archive = origin
    failed = next(r for r in source.store.list_runs() if r.status == RunStatus.FAILED and r.parent_id is None)
    part = tmp_path / "part.tar"
    export_runs(source.store, source.artifacts, [failed.run_id], str(part), source="laptop")
    target.store.create_run("train")  # the target's experiment has a run #1 of its own
    assert import_runs(target.store, target.artifacts, str(part)).imported == [failed.run_id]
    assert failed.number == 4 and target.store.get_run(failed.run_id).number == 2  # the next free number
    report = import_runs(target.store, target.artifacts, str(archive))
    assert report.present == [failed.run_id] and sorted(report.imported) == sorted(set(run_ids) - {failed.run_id})
    assert _seen(target, run_ids) == _seen(source, run_ids)
    assert len(target.store.list_runs()) == 8


def test_an_interrupted_import_finishes_on_the_next_one_with_every_value_once(
        origin: tuple[Workspace, list[str], Path], target: Workspace, monkeypatch: pytest.MonkeyPatch) -> None:
    source, run_ids, archive = origin
    store = target.store
    real = store.apply_journal

    def failing(run_id: str, attempt: int, src: str, records: list[dict[str, Any]]) -> int:
        if run_id == run_ids[0] and any(r["type"] == "state" for r in records):
            raise OSError("disk full")  # the run's last batch: its metrics and logs are in already
        return real(run_id, attempt, src, records)

    monkeypatch.setattr(store, "apply_journal", failing)
    with pytest.raises(OSError, match="disk full"):
        import_runs(store, target.artifacts, str(archive))
    monkeypatch.undo()
    assert store.get_run(run_ids[0]).status == RunStatus.NOT_STARTED and store.get_metric_records(run_ids[0])
    report = import_runs(store, target.artifacts, str(archive))
    assert sorted(report.imported) == sorted(run_ids)
    assert _seen(target, run_ids) == _seen(source, run_ids)


def test_a_child_exported_alone_becomes_a_top_level_run(origin: tuple[Workspace, list[str], Path],
                                                        target: Workspace, tmp_path: Path) -> None:
    source, run_ids, _ = origin
    child = next(r for r in run_ids if source.store.get_run(r).parent_id == run_ids[0])
    alone = tmp_path / "child.tar"
    report = export_runs(source.store, source.artifacts, [child], str(alone), include_children=False)
    assert report.runs == [child] and report.models == 0
    import_runs(target.store, target.artifacts, str(alone))
    imported = target.store.get_run(child)
    assert imported.parent_id is None and imported.properties["rundock.import.parent"] == run_ids[0]
    assert [r.run_id for r in target.store.list_runs(include_children=False)] == [child]


def test_live_runs_and_unknown_ids_are_refused_and_leave_no_file(origin: tuple[Workspace, list[str], Path],
                                                                 tmp_path: Path) -> None:
    source, _, _ = origin
    live = source.store.create_run("live")
    out = tmp_path / "x.tar"
    try:
        with pytest.raises(TransferError, match=f"{live.run_id} \\(NotStarted\\)"):
            export_runs(source.store, source.artifacts, [live.run_id], str(out))
        assert live.run_id in select_runs(source.store, "live")[1]
        with pytest.raises(KeyError, match="no run 'nope'"):
            export_runs(source.store, source.artifacts, ["nope"], str(out))
        assert not out.exists() and not list(tmp_path.glob(".rundock-export-*"))
    finally:
        source.store.admin().delete_runs([live.run_id])


# -- other backends ------------------------------------------------------------------------------------------
@contextlib.contextmanager
def _backend(kind: str, tmp_path: Path) -> Iterator[tuple[RunStore, Callable[[], ArtifactStore]]]:
    """A store of another backend, and a maker of fresh artifact stores for it (a server's: empty caches that
    fetch what they lack from the server)."""
    if kind == "postgresql":
        from tests.pg import ThrowawayStore

        pg = ThrowawayStore()
        try:
            yield pg, lambda: ArtifactStore(str(tmp_path / "pg-artifacts"))
        finally:
            pg.close()
        return
    from rundock.history.backends.http import HttpRunStore
    from tests.server_fixtures import running_server

    with running_server(tmp_path) as server:
        token = server.make_token("alice", "user")
        caches = iter(range(100))

        def cache() -> ArtifactStore:
            made = ArtifactStore(str(tmp_path / f"cache-{next(caches)}"))
            made.remote = http.remote_blobs()
            return made

        http = HttpRunStore(server.url, artifacts_root=str(tmp_path / "cache-upload"), token=token)
        try:
            yield http, cache
        finally:
            http.close()


@pytest.mark.parametrize("kind", ["postgresql", "server"])
def test_other_backends_take_the_runs_and_give_them_back_whole(origin: tuple[Workspace, list[str], Path],
                                                               target: Workspace, tmp_path: Path, kind: str) -> None:
    source, run_ids, archive = origin
    back = tmp_path / "back.tar"
    with _backend(kind, tmp_path) as (store, artifacts):
        upload = artifacts() if kind == "postgresql" else ArtifactStore(str(tmp_path / "cache-upload"))
        assert sorted(import_runs(store, upload, str(archive)).imported) == sorted(run_ids)
        assert import_runs(store, upload, str(archive)).present == run_ids
        chosen, _ = select_runs(store)
        export_runs(store, artifacts(), chosen, str(back))  # a server's blobs: fetched into an empty cache
    import_runs(target.store, target.artifacts, str(back))
    seen, expected = _seen(target, run_ids), _seen(source, run_ids)
    if kind == "server":  # a server records who submitted a run (the token's name) and lets only admins archive
        for run_id in run_ids:
            assert seen[run_id]["record"].pop("submitted_by") == "alice"
            expected[run_id]["record"].pop("submitted_by")
            seen[run_id]["record"].pop("archived")
            expected[run_id]["record"].pop("archived")
    assert seen == expected and _models(target) == _models(source)


# -- damaged and hostile archives ---------------------------------------------------------------------------
def _members(archive: Path) -> list[tuple[tarfile.TarInfo, bytes]]:
    with tarfile.open(archive) as tar:
        return [(m, tar.extractfile(m).read() if m.isreg() else b"") for m in tar.getmembers()]  # type: ignore[union-attr]


def _rewrite(members: list[tuple[tarfile.TarInfo, bytes]], path: Path) -> Path:
    with tarfile.open(path, "w", format=tarfile.PAX_FORMAT) as tar:
        for info, data in members:
            info.size = len(data) if info.isreg() else 0
            tar.addfile(info, io.BytesIO(data) if info.isreg() else None)
    return path


def _empty(ws: Workspace) -> bool:
    blobs = [p for p in Path(ws.artifacts.root).rglob("*") if p.is_file()]
    return not ws.store.list_runs() and not ws.store.list_models() and not blobs


def test_a_tampered_blob_is_named_and_nothing_is_imported(origin: tuple[Workspace, list[str], Path],
                                                          target: Workspace, tmp_path: Path) -> None:
    members = _members(origin[2])
    blobs = [i for i, (m, _) in enumerate(members) if m.name.startswith("blobs/")]
    at = blobs[-1]  # the last blob: every run before it has been read whole
    info, data = members[at]
    members[at] = (info, data[:-1] + bytes([data[-1] ^ 1]))
    with pytest.raises(ArchiveError, match=f"{info.name}: its content does not match"):
        import_runs(target.store, target.artifacts, str(_rewrite(members, tmp_path / "bad.tar")))
    assert _empty(target)
    truncated = tmp_path / "short.tar"
    truncated.write_bytes(origin[2].read_bytes()[:origin[2].stat().st_size // 2])
    with pytest.raises(ArchiveError, match="truncated|damaged"):
        import_runs(target.store, target.artifacts, str(truncated))
    assert _empty(target)


def _hostile(tmp_path: Path, name: str, data: bytes = b"x", kind: bytes = tarfile.REGTYPE,
             link: str = "") -> Path:
    info = tarfile.TarInfo(name)
    info.type, info.linkname = kind, link
    manifest = json.dumps({"format": fmt.FORMAT, "version": 1, "created": 0, "source": "", "runs": [],
                           "models": 0}).encode()
    return _rewrite([(tarfile.TarInfo(fmt.MANIFEST), manifest), (info, data)], tmp_path / "hostile.tar")


@pytest.mark.parametrize("name,kind,link,refused", [
    ("../evil", tarfile.REGTYPE, "", "leaves the run's namespace"),
    ("/etc/evil", tarfile.REGTYPE, "", "absolute"),
    ("blobs/../../evil", tarfile.REGTYPE, "", "leaves"),
    ("runs/a/./run.json", tarfile.REGTYPE, "", "normal form"),
    ("evil.sh", tarfile.REGTYPE, "", "no member of this name"),
    ("blobs/" + "0" * 64, tarfile.SYMTYPE, "/etc/passwd", "a link"),
    ("blobs/" + "1" * 64, tarfile.LNKTYPE, fmt.MANIFEST, "a link"),
    ("blobs/" + "2" * 64, tarfile.CHRTYPE, "", "a device"),
    ("runs/..a/run.json", tarfile.REGTYPE, "", "not valid"),
])
def test_hostile_member_names_and_types_are_refused(target: Workspace, tmp_path: Path, name: str, kind: bytes,
                                                    link: str, refused: str) -> None:
    with pytest.raises(ArchiveError, match=refused) as caught:
        import_runs(target.store, target.artifacts, str(_hostile(tmp_path, name, kind=kind, link=link)))
    assert caught.value.member == name
    assert _empty(target) and not (tmp_path / "evil").exists() and not (tmp_path.parent / "evil").exists()


@pytest.mark.parametrize("field,value,refused", [
    ("files", [{"name": "../../evil", "digest": "0" * 64, "size": 1, "at": 0}], "leaves"),
    ("files", [{"name": "/abs", "digest": "0" * 64, "size": 1, "at": 0}], "absolute"),
    ("logs", [{"name": "a/../../b"}], "leaves"),
    ("metrics", -1, "whole number"),
    ("run.experiment", "../x", "letters, digits"),
    ("run.status", "Running", "only finished runs"),
    ("run.run_definition", [], "must be dict"),
    ("run.tags", {"k": 5}, "must be a string"),
    ("status_history", [{"status": "Completed", "at": 0, "detail": ""}], "must start with NotStarted"),
])
def test_hostile_documents_are_refused(origin: tuple[Workspace, list[str], Path], target: Workspace,
                                       tmp_path: Path, field: str, value: Any, refused: str) -> None:
    members = _members(origin[2])
    at = next(i for i, (m, _) in enumerate(members) if m.name.endswith("/run.json"))
    doc = json.loads(members[at][1])
    parent, _, key = field.rpartition(".")
    (doc[parent] if parent else doc)[key] = value
    members[at] = (members[at][0], json.dumps(doc).encode())
    with pytest.raises(ArchiveError, match=refused) as caught:
        import_runs(target.store, target.artifacts, str(_rewrite(members, tmp_path / "bad.tar")))
    assert caught.value.member == members[at][0].name
    assert _empty(target)


@pytest.mark.parametrize("prefix,change,refused", [
    ("snapshots/", lambda doc: [{**doc[0], "path": "other.py"}, *doc[1:]], "does not hash to its snapshot id"),
    ("snapshots/", lambda doc: [{**doc[0], "path": "../../evil.py"}, *doc[1:]], "leaves"),
    ("models/", lambda doc: {**doc, "files": [{**doc["files"][0], "name": "/etc/passwd"}]}, "absolute"),
    ("models/", lambda doc: {**doc, "run_id": "someone_else_1_00"}, "not in the archive"),
    ("models/", lambda doc: {**doc, "name": "a/b"}, "without '/'"),
])
def test_hostile_snapshots_and_models_are_refused(origin: tuple[Workspace, list[str], Path], target: Workspace,
                                                  tmp_path: Path, prefix: str, change: Any, refused: str) -> None:
    members = _members(origin[2])
    at = next(i for i, (m, _) in enumerate(members) if m.name.startswith(prefix))
    members[at] = (members[at][0], json.dumps(change(json.loads(members[at][1]))).encode())
    with pytest.raises(ArchiveError, match=refused) as caught:
        import_runs(target.store, target.artifacts, str(_rewrite(members, tmp_path / "bad.tar")))
    assert caught.value.member == members[at][0].name and _empty(target)


@pytest.mark.parametrize("line,refused", [
    (b'["loss", "scalar", 1, null, "", 0]\n["x"]\n', "metric 2 must be"),
    (b'["", "scalar", 1, null, "", 0]\n', "metric name"),
    (b'["loss", "sound", 1, null, "", 0]\n', "metric kind"),
    (b'["loss", "scalar", 1, 1.5, "", 0]\n', "step"),
    (b"[" * 100000 + b"\n", "longer than|not valid JSON"),
])
def test_hostile_metric_lines_are_refused(origin: tuple[Workspace, list[str], Path], target: Workspace,
                                          tmp_path: Path, line: bytes, refused: str) -> None:
    members = _members(origin[2])
    at = next(i for i, (m, _) in enumerate(members) if m.name.endswith("/metrics.jsonl"))
    members[at] = (members[at][0], line + members[at][1])
    with pytest.raises(ArchiveError, match=refused) as caught:
        import_runs(target.store, target.artifacts, str(_rewrite(members, tmp_path / "bad.tar")))
    assert caught.value.member == members[at][0].name and _empty(target)


def test_not_an_archive_a_newer_format_and_a_missing_file(target: Workspace, tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="not found"):
        import_runs(target.store, target.artifacts, str(tmp_path / "missing.tar"))
    (tmp_path / "text.tar").write_text("hello")
    with pytest.raises(ArchiveError, match="not a rundock export archive"):
        import_runs(target.store, target.artifacts, str(tmp_path / "text.tar"))
    other = _rewrite([(tarfile.TarInfo("README"), b"hi")], tmp_path / "other.tar")
    with pytest.raises(ArchiveError, match="not a rundock export archive"):
        import_runs(target.store, target.artifacts, str(other))
    newer = json.dumps({"format": fmt.FORMAT, "version": fmt.VERSION + 1, "created": 0, "source": "", "runs": [],
                        "models": 0}).encode()
    with pytest.raises(ArchiveError, match="newer rundock; upgrade"):
        import_runs(target.store, target.artifacts, str(_rewrite([(tarfile.TarInfo(fmt.MANIFEST), newer)],
                                                                 tmp_path / "newer.tar")))


# -- memory ------------------------------------------------------------------------------------------------
MEASURE = """
import json, sys, threading, time
import psutil
from rundock.history.transfer import export_runs, import_runs
from rundock.submitter.workspace import Workspace

source, target, run_id, archive = sys.argv[1:]
proc = psutil.Process()

def growth(work):
    base, peak, done = proc.memory_info().rss, [0], threading.Event()
    def sample():
        while not done.is_set():
            peak[0] = max(peak[0], proc.memory_info().rss)
            time.sleep(0.002)
    thread = threading.Thread(target=sample)
    thread.start()
    work()
    done.set()
    thread.join()
    return max(peak[0], peak_rss_kib() * 1024) - base

def peak_rss_kib():  # this process's own high-water mark (getrusage's ru_maxrss keeps the parent's across exec)
    with open("/proc/self/status") as fh:
        return next(int(line.split()[1]) for line in fh if line.startswith("VmHWM:"))

src, dst = Workspace(source), Workspace(target)
src.store.list_runs(); dst.store.list_runs()  # everything imported and opened before the baseline
out = {"export": growth(lambda: export_runs(src.store, src.artifacts, [run_id], archive)),
       "import": growth(lambda: import_runs(dst.store, dst.artifacts, archive))}
print(json.dumps(out))
"""


def test_a_200_mb_output_moves_with_flat_memory(tmp_path: Path, target: Workspace,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RUNDOCK_HEARTBEAT_SECONDS", "0.2")
    ws = Workspace.create(str(tmp_path / "big"))
    src = tmp_path / "src"
    src.mkdir()
    (src / "big.py").write_text(textwrap.dedent("""
        import os
        os.makedirs("outputs", exist_ok=True)
        block = os.urandom(1 << 20)
        with open("outputs/big.bin", "wb") as fh:
            for _ in range(200):
                fh.write(block)
    """))
    run = _submit(ws, src, "big.py", "big")
    assert run.get_status() == "Completed"
    ws.close()
    archive = tmp_path / "big.tar"
    done = subprocess.run([sys.executable, "-c", MEASURE, ws.path, target.path, run.id, str(archive)],
                          capture_output=True, text=True, cwd=REPO, timeout=600)
    assert done.returncode == 0, done.stderr
    growth = json.loads(done.stdout)
    assert growth["export"] < 100 << 20 and growth["import"] < 100 << 20, growth
    assert archive.stat().st_size > 200 << 20
    stored = target.store.list_files(run.id)["outputs/big.bin"]
    with target.artifacts.open(stored.digest) as fh:
        digest = hashlib.sha256()
        while chunk := fh.read(1 << 20):
            digest.update(chunk)
    assert stored.size == 200 << 20 and digest.hexdigest() == stored.digest
    assert os.path.getsize(target.artifacts.path(stored.digest)) == 200 << 20
