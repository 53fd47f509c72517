"""The model registry: named, versioned sets of a run's files (Azure ML's ``Model``)."""

from __future__ import annotations

import os
import posixpath
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from rundock.context.names import artifact_name, safe_join
from rundock.history.records import ModelRecord

if TYPE_CHECKING:
    from rundock.submitter.workspace import Workspace


class Model:
    """One version of a registered model; ``Model(ws, name)`` is the latest."""

    def __init__(self, workspace: Workspace, name: str | None = None, id: str | None = None,
                 tags: Any = None, properties: Any = None, version: int | None = None, run_id: str | None = None,
                 **kwargs: Any) -> None:
        self.workspace = workspace
        record = kwargs.get("_record")
        if record is None:
            if id is not None:
                name, _, ver = id.partition(":")
                version = int(ver) if ver else version
            if name is None:
                raise ValueError("Model(): give a name (or an id 'name:version')")
            if tags is None and properties is None and run_id is None:
                record = workspace.store.get_model(name, version)
            else:
                found = [m for m in workspace.store.find_models(name, tags, properties, run_id)
                         if version is None or m.version == version]
                if not found:
                    raise KeyError(f"no version of model {name!r} matches the given tags/properties/run_id")
                record = found[0]
        self._record: ModelRecord = record

    name = property(lambda self: self._record.name)
    version = property(lambda self: self._record.version)
    tags = property(lambda self: dict(self._record.tags))
    properties = property(lambda self: dict(self._record.properties))
    run_id = property(lambda self: self._record.run_id)
    description = property(lambda self: self._record.description)
    model_framework = property(lambda self: self._record.framework)
    model_framework_version = property(lambda self: self._record.framework_version)

    @property
    def id(self) -> str:
        return f"{self.name}:{self.version}"

    @property
    def url(self) -> str:
        """Where the model's files come from: ``rundock://runs/<run id>/<path>`` (or the model's own URL)."""
        if self._record.run_id:
            return f"rundock://runs/{self._record.run_id}/{self._record.path}"
        return f"rundock://models/{self.name}/versions/{self.version}"

    def download(self, target_dir: str = ".", exist_ok: bool = False) -> str:
        """Write the model's files under ``target_dir``; return the path of the model file or folder."""
        base = posixpath.dirname(self._record.path.rstrip("/"))
        top = os.path.join(target_dir, posixpath.basename(self._record.path.rstrip("/")))
        if os.path.exists(top) and not exist_ok:
            raise FileExistsError(f"{top} exists; pass exist_ok=True to overwrite it")
        for entry in self._record.files:
            rel = entry["name"][len(base) + 1:] if base else entry["name"]
            try:  # names are checked when they enter the history; a download checks again where it writes
                target = safe_join(target_dir, rel)
            except ValueError as exc:
                raise ValueError(f"model {self.name} version {self.version}: {exc}") from None
            self.workspace.artifacts.copy_to(entry["digest"], target)
        return top

    @staticmethod
    def list(workspace: Workspace, name: str | None = None, tags: Any = None, properties: Any = None,
             run_id: str | None = None, latest: bool = False, **kwargs: Any) -> list[Model]:
        """Registered model versions, newest first (``latest``: one per name)."""
        records = workspace.store.find_models(name, tags, properties, run_id)
        if latest:
            newest: dict[str, ModelRecord] = {}
            for rec in records:
                if rec.name not in newest or rec.version > newest[rec.name].version:
                    newest[rec.name] = rec
            records = list(newest.values())
        return [Model(workspace, _record=r) for r in records]

    @staticmethod
    def register(workspace: Workspace, model_path: str, model_name: str, tags: Mapping[str, Any] | None = None,
                 properties: Mapping[str, Any] | None = None, description: str | None = None,
                 model_framework: str | None = None, model_framework_version: str | None = None,
                 **kwargs: Any) -> Model:
        """Register a local file or folder as the next version of ``model_name``."""
        if not os.path.exists(model_path):
            raise FileNotFoundError(f"model_path {model_path!r} does not exist")
        root = os.path.basename(os.path.abspath(model_path))
        paths = [(root, model_path)] if os.path.isfile(model_path) else [
            (f"{root}/{os.path.relpath(os.path.join(d, f), model_path)}", os.path.join(d, f))
            for d, _, files in os.walk(model_path) for f in sorted(files)]
        files = []
        for name, path in paths:
            digest, size, _ = workspace.artifacts.put_file(path)
            files.append({"name": name, "digest": digest, "size": size})
        record = workspace.store.register_model(
            model_name, run_id=None, path=root, files=files, tags=_str_tags(tags),
            properties={k: str(v) for k, v in (properties or {}).items()}, framework=model_framework,
            framework_version=model_framework_version, description=description)
        return Model(workspace, _record=record)

    def __repr__(self) -> str:
        return f"Model(name={self.name!r}, version={self.version}, run_id={self.run_id!r})"


def _str_tags(tags: Mapping[str, Any] | None) -> dict[str, str | None]:
    return {k: None if v is None else str(v) for k, v in (tags or {}).items()}


def model_files(run_files: Mapping[str, Any], model_path: str) -> list[dict[str, Any]]:
    """The run files a model path names: one file, or every file under a folder."""
    path = artifact_name(model_path)
    if path in run_files:
        return [{"name": path, "digest": run_files[path].digest, "size": run_files[path].size}]
    under = sorted(n for n in run_files if n.startswith(path + "/"))
    if not under:
        raise ValueError(f"model_path {model_path!r} is not a file or folder of the run; its files: "
                         f"{', '.join(sorted(run_files)) or 'none'}")
    return [{"name": n, "digest": run_files[n].digest, "size": run_files[n].size} for n in under]
