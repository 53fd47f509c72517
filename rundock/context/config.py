"""What a job says when it submits a child job: Azure ML's ``ScriptRunConfig`` (standard library only).

Inside a job, ``run.submit_child(ScriptRunConfig(source_directory=".", script="trial.py", arguments=[...]))``
asks the job's agent to submit a child job (see ``Run.submit_child``). This stand-in carries only what
that request needs: ``source_directory`` (a folder inside the job's working directory), ``script``,
``arguments`` and ``compute_target`` (a name, or an object with ``.name``; the parent's target when
None). ``environment`` is accepted for Azure ML compatibility but the child always runs in the
parent's environment. rundock's full ``rundock.runconfig.script_run_config.ScriptRunConfig`` is
accepted by ``submit_child`` too (read by its attributes).
"""

from __future__ import annotations

import os
from typing import Any


class ScriptRunConfig:
    """Azure ML's ``ScriptRunConfig`` as a job sees it: a folder, a script, arguments and a target."""

    def __init__(self, source_directory: Any = ".", script: str | None = None, arguments: list[Any] | None = None,
                 run_config: Any = None, compute_target: Any = None, environment: Any = None,
                 **kwargs: Any) -> None:
        self.source_directory = os.fspath(source_directory)
        self.script = script
        self.arguments = list(arguments or [])
        self.run_config = run_config
        self.compute_target = compute_target
        self.environment = environment  # not used: a child runs in its parent's environment

    def __repr__(self) -> str:
        return f"ScriptRunConfig(source_directory={self.source_directory!r}, script={self.script!r})"


def child_request(config: Any, tags: dict[str, Any] | None = None) -> dict[str, Any]:
    """The request a job leaves for its agent: this stand-in's fields, or those of rundock's full
    ``ScriptRunConfig`` (duck-typed: ``source_directory``, ``script``, ``arguments`` and the target in
    ``compute_target`` or ``run_config.target``)."""
    source = getattr(config, "source_directory", None)
    script = getattr(config, "script", None)
    if source is None or not isinstance(script, str) or not script:
        raise TypeError(f"submit_child() takes a ScriptRunConfig with a source_directory and a script, "
                        f"not {config!r}")
    target = getattr(config, "compute_target", None)
    if target is None:
        target = getattr(getattr(config, "run_config", None), "target", None)
    if target is not None and not isinstance(target, str):
        target = getattr(target, "name", None)
        if not isinstance(target, str):
            raise TypeError("compute_target must be a target name or an object with a .name")
    return {"source_directory": os.path.realpath(os.fspath(source)), "script": script,
            "arguments": [str(a) for a in (getattr(config, "arguments", None) or [])],
            "target": target or None,
            "tags": None if tags is None else {str(k): None if v is None else str(v) for k, v in tags.items()}}
