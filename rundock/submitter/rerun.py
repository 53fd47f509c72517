"""Run a finished (or live) run again: ``rerun(run)`` and ``rundock rerun RUN``.

Not part of Azure ML v1's ``Run`` (which has no rerun), so a module function rather than a method.

What is the same: the source is the run's stored snapshot, not the folder as it is now (the folder may
have changed, moved or gone); the run configuration (script, arguments, limits, secrets list) and the
environment are the ones recorded in its run definition; the run goes to the same compute target, in
the same experiment. ``arguments`` replaces the script's arguments when given.

How: the snapshot's files are restored from the artifact store into a private temporary folder (0700,
removed when the submit returns) and that folder is submitted as usual. Every file is already stored
under its digest, so the submit stores 0 new bytes and the new run's snapshot id is the old one. The
temporary folder gets a ``.amlignore`` that ignores only itself, so the files that travel are exactly
the snapshot's (the source folder's ignore files, when they travelled in the snapshot, applied once
already); the folder is checked against the manifest before anything is submitted.

The new run is linked to the old one by the property and the tag ``rerunOf`` (the old run's id); it
also gets the old run's ``azureml.git.*`` / ``mlflow.source.git.*`` properties, since its source is that
commit's (its run definition's ``source_directory`` names the temporary folder, gone by then; the old
run's names the original folder). It is a top-level run, even when the old one was the child of another.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Mapping, Sequence
from typing import Any

from rundock.agent.materialize import materialize
from rundock.errors import RundockError
from rundock.history.liveness import AGENT_RUN_TYPE
from rundock.runconfig.run_configuration import RunConfiguration
from rundock.runconfig.script_run_config import ScriptRunConfig
from rundock.submitter.run import Run
from rundock.submitter.snapshot import Progress, SnapshotLimits, collect

RERUN_OF = "rerunOf"
_SELF_IGNORING = ".amlignore"
_GIT_PROPERTIES = ("azureml.git.", "mlflow.source.git.")


def rerun(run: Run, arguments: Sequence[Any] | None = None, *, tags: Mapping[str, Any] | None = None,
          progress: Progress | None = None) -> Run:
    """Submit ``run`` again with its stored snapshot, run configuration, environment and compute target
    (``arguments``, when given, replace the script's); return the new run, linked by ``rerunOf``.

    Raises RundockError for a run that was not submitted from a ScriptRunConfig (an interactive run, a child
    run its job created) or has no snapshot, and ConfigError when its stored configuration is no longer valid.
    """
    if run.type != AGENT_RUN_TYPE:
        raise RundockError(f"run {run.id} is a {run.type} run; only runs submitted with a ScriptRunConfig "
                           "(`rundock submit`, experiment.submit) can be run again")
    snapshot_id = run.get_snapshot_id()
    if snapshot_id is None:
        raise RundockError(f"run {run.id} has no snapshot to run again")
    details = run.get_details()
    definition = dict(details["runDefinition"])
    definition.pop("source_directory", None)
    config = RunConfiguration.from_mapping(definition, source=f"the run definition of {run.id}")
    if arguments is not None:
        config.arguments = list(arguments)
    workspace = run.experiment.workspace
    manifest = workspace.store.get_snapshot(snapshot_id)
    folder = tempfile.mkdtemp(prefix=f"rundock-rerun-{run.id}-")
    try:
        _restore(manifest, workspace.artifacts, folder)
        submitted = run.experiment.submit(ScriptRunConfig(folder, run_config=config),
                                          tags={**(tags or {}), RERUN_OF: run.id}, progress=progress)
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    old = run.get_properties()
    submitted.add_properties({RERUN_OF: run.id, **{k: v for k, v in old.items() if k.startswith(_GIT_PROPERTIES)}})
    return submitted


def _restore(manifest: list[dict[str, Any]], artifacts: Any, folder: str) -> None:
    """The snapshot's files in ``folder``, checked to be exactly what a snapshot of it would take."""
    materialize(manifest, artifacts, folder)
    if not any(entry["path"] == _SELF_IGNORING for entry in manifest):
        with open(os.path.join(folder, _SELF_IGNORING), "w", encoding="utf-8") as fh:
            fh.write(f"# written by rundock rerun: the snapshot's files travel, nothing else\n/{_SELF_IGNORING}\n")
    unlimited = SnapshotLimits(max_bytes=1 << 62, max_files=1 << 62)  # the snapshot passed the limits once
    found = {f.path: f.size for f in collect(folder, unlimited)}
    wanted = {entry["path"]: entry["size"] for entry in manifest}
    if found != wanted:
        odd = sorted(set(found.items()) ^ set(wanted.items()))[:5]
        raise RundockError(f"the snapshot restored in {folder} would not travel as it was stored ({odd}); "
                           "nothing was submitted")
