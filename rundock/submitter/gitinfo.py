"""Git facts about a source folder, recorded as run properties (Azure ML's keys)."""

from __future__ import annotations

import subprocess


def _git(path: str, *args: str) -> str | None:
    try:
        proc = subprocess.run(["git", "-C", path, *args], capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return proc.stdout.strip() if proc.returncode == 0 else None


def git_properties(path: str) -> dict[str, str]:
    """repository, branch, commit and dirty flag when ``path`` is in a git work tree; else nothing."""
    if _git(path, "rev-parse", "--is-inside-work-tree") != "true":
        return {}
    repository = _git(path, "config", "--get", "remote.origin.url") or _git(path, "rev-parse", "--show-toplevel")
    facts = {"repository_uri": repository, "branch": _git(path, "rev-parse", "--abbrev-ref", "HEAD"),
             "commit": _git(path, "rev-parse", "HEAD")}
    status = _git(path, "status", "--porcelain")
    facts["dirty"] = None if status is None else str(bool(status))
    props = {f"azureml.git.{k}": v for k, v in facts.items() if v}
    mlflow = {"repository_uri": "repoURL", "branch": "branch", "commit": "commit"}
    props.update({f"mlflow.source.git.{mlflow[k]}": v for k, v in facts.items() if v and k in mlflow})
    return props
