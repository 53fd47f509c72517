"""Child jobs a running job submits (``run.submit_child`` inside a job), carried out by its agent.

The job leaves ``requests/submit-<id>.json`` (see rundock.context.rundir); each poll of the running job,
the agent reads every request not yet answered (a small plain file, never through a link), checks it
(the source folder's real path inside the run's ``src/``, the script a file inside it, the target a known
name or null), submits it with the full submitter (in the parent's experiment and environment, with the
job's run as parent) and answers ``requests/submit-<id>.answer.json``: ``{"run_id": ...}`` or
``{"error": ...}``. It then keeps ``requests/children/<child id>.json`` (``{"status", "error"}``) up to date
for the job's ``wait_for_completion``. A bad request is answered with its error: it never breaks the
parent run. Only agents that write the history themselves (local and Docker runs) submit; an SSH host's
agent answers with an error.
"""

from __future__ import annotations

import json
import logging
import os
import re
from typing import Any

from rundock.agent.job import MODE_STORE, JobSpec
from rundock.context import rundir
from rundock.context.names import open_inside

log = logging.getLogger("rundock.agent")

REQUEST_LIMIT = 64 * 1024
_REQUEST = re.compile(re.escape(rundir.SUBMIT_PREFIX) + r"[A-Za-z0-9_-]{1,64}\.json")
NOT_ON_SSH = ("submit_child from a job on an SSH host is not supported yet; submit children from the submitting "
              "side with Run.get(ws, id).submit_child(config)")
_NOFOLLOW = getattr(os, "O_NOFOLLOW", 0)


class ChildSubmitter:
    """Answers a job's submit_child requests and keeps its children's status files (one per agent)."""

    def __init__(self, run_dir: str, spec: JobSpec, job_run_dir: str) -> None:
        self.run_dir = run_dir
        self.spec = spec
        self.job_run_dir = job_run_dir  # the run directory as the job sees it (a container's mount)
        self.requests = os.path.join(run_dir, rundir.REQUESTS_DIR)
        self.src = os.path.realpath(os.path.join(run_dir, rundir.SRC_DIR))
        self.answered: set[str] = set()
        self.children: dict[str, dict[str, Any] | None] = {}  # child id -> the status last written
        self._workspace: Any = None

    def poll(self) -> None:
        """Answer new requests, then refresh the children's status files."""
        try:
            names = sorted(n for n in os.listdir(self.requests) if _REQUEST.fullmatch(n) and n not in self.answered)
        except OSError:
            names = []
        for name in names:
            self.answered.add(name)
            answer_name = name[:-len(".json")] + rundir.ANSWER_SUFFIX
            if os.path.lexists(os.path.join(self.requests, answer_name)):
                continue
            try:
                answer: dict[str, Any] = {"run_id": self._submit(os.path.join(self.requests, name))}
            except Exception as exc:  # every error of a request is its answer, never the parent's failure
                log.warning("run %s: submit_child request %s refused: %s", self.spec.run_id, name, exc)
                answer = {"error": f"{type(exc).__name__}: {exc}" if not isinstance(exc, ValueError) else str(exc)}
            self._write(rundir.REQUESTS_DIR, answer_name, answer, exclusive=True)
        self._refresh()

    def _submit(self, path: str) -> str:
        if self.spec.mode != MODE_STORE:
            raise RuntimeError(NOT_ON_SSH)
        with open_inside(path, self.requests, root=self.run_dir, limit=REQUEST_LIMIT) as fh:
            data = json.loads(fh.read(REQUEST_LIMIT))
        source, script, arguments, target, tags = self._check(data)
        if not self.spec.workspace_path:
            raise RuntimeError("this run's job file names no workspace (a run submitted by an older rundock?)")
        from rundock.runconfig.environment import Environment  # the full submitter: local agents have it
        from rundock.runconfig.script_run_config import ScriptRunConfig
        from rundock.submitter.experiment import Experiment
        from rundock.submitter.targets import get_target
        from rundock.submitter.workspace import Workspace

        if self._workspace is None:
            self._workspace = Workspace(self.spec.workspace_path)
        ws = self._workspace
        get_target(ws, target or self.spec.target)  # an unknown target name is refused here, with its reason
        config = ScriptRunConfig(source_directory=source, script=script, arguments=arguments,
                                 compute_target=target or self.spec.target,
                                 environment=Environment.from_mapping(self.spec.environment))
        child = Experiment(ws, self.spec.experiment).submit(config, tags=tags, _parent_id=self.spec.run_id)
        self.children[child.id] = None
        self._refresh()  # the job finds a status as soon as it has the id
        return str(child.id)

    def _check(self, data: Any) -> tuple[str, str, list[str], str | None, dict[str, str | None] | None]:
        """The request's fields, checked; ValueError naming the first that is wrong."""
        if not isinstance(data, dict):
            raise ValueError("the request must be a JSON object")
        source, script, arguments = data.get("source_directory"), data.get("script"), data.get("arguments", [])
        target, tags = data.get("target"), data.get("tags")
        if not isinstance(source, str) or not os.path.isabs(source):
            raise ValueError(f"source_directory must be an absolute path, got {source!r}")
        job_src = os.path.join(self.job_run_dir, rundir.SRC_DIR)
        relative = os.path.relpath(os.path.normpath(source), job_src)
        real = os.path.realpath(os.path.join(self.src, relative))
        if relative == os.pardir or relative.startswith(os.pardir + os.sep) or \
                (real != self.src and not real.startswith(self.src + os.sep)):
            raise ValueError(f"source_directory {source!r} is not inside the job's working directory {job_src}")
        if not os.path.isdir(real):
            raise ValueError(f"source_directory {source!r} is not a folder")
        if not isinstance(script, str) or not script or os.path.isabs(script):
            raise ValueError(f"script must be a path relative to source_directory, got {script!r}")
        script_path = os.path.realpath(os.path.join(real, script))
        if not script_path.startswith(real + os.sep) or not os.path.isfile(script_path):
            raise ValueError(f"script {script!r} is not a file inside source_directory {source!r}")
        if not isinstance(arguments, list) or not all(isinstance(a, str) for a in arguments):
            raise ValueError("arguments must be a list of strings")
        if target is not None and (not isinstance(target, str) or not target):
            raise ValueError(f"target must be a compute target's name or null, got {target!r}")
        if tags is not None and (not isinstance(tags, dict) or not all(
                isinstance(k, str) and (v is None or isinstance(v, str)) for k, v in tags.items())):
            raise ValueError("tags must map strings to strings (or null)")
        return real, script, list(arguments), target, tags

    def _refresh(self) -> None:
        """Write the status of each child not yet seen ending (only when it changed)."""
        if not self.children or self._workspace is None:
            return
        store = self._workspace.store
        for child_id, last in list(self.children.items()):
            if last is not None and last["status"] in ("Completed", "Failed", "Canceled"):
                continue
            record = store.get_run(child_id)
            current = {"status": record.status.value, "error": record.error}
            if current != last:
                self._write(rundir.CHILDREN_DIR, f"{child_id}.json", current, exclusive=False)
                self.children[child_id] = current

    def _write(self, folder: str, name: str, data: dict[str, Any], *, exclusive: bool) -> None:
        """Write ``folder/name`` in the run directory through descriptors opened without following links (the
        job can write there); ``exclusive``: create it once (O_EXCL), else replace it atomically."""
        fd = _open_dirs(self.run_dir, folder.split("/"))
        try:
            temp = name if exclusive else f".{name}.tmp"
            if not exclusive:
                try:
                    os.unlink(temp, dir_fd=fd)
                except FileNotFoundError:
                    pass
            try:
                out = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | _NOFOLLOW, 0o600, dir_fd=fd)
            except FileExistsError:
                log.warning("run %s: %s/%s exists already; not written", self.spec.run_id, folder, name)
                return
            with os.fdopen(out, "w", encoding="utf-8") as fh:
                json.dump(data, fh)
            if not exclusive:
                os.replace(temp, name, src_dir_fd=fd, dst_dir_fd=fd)
        finally:
            os.close(fd)


def _open_dirs(root: str, parts: list[str]) -> int:
    """A descriptor of ``root/parts...``, each part made if missing and opened without following a link."""
    fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY)
    for part in parts:
        try:
            os.mkdir(part, 0o700, dir_fd=fd)
        except FileExistsError:
            pass
        try:
            nxt = os.open(part, os.O_RDONLY | os.O_DIRECTORY | _NOFOLLOW, dir_fd=fd)
        finally:
            os.close(fd)
        fd = nxt
    return fd
