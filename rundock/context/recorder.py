"""What a run can record: metrics, tags, properties, files (standard library only).

One implementation for both sides: the job-side run (``rundock.context.Run``)
turns each call into a journal record, the client run
(``rundock.submitter.run.Run``) into a change of the run history. Subclasses
provide ``_emit`` and ``_stage_file``.
"""

from __future__ import annotations

import io
import os
from typing import IO, Any, Iterable, Mapping, TypeVar, Union

from rundock.context import schemas
from rundock.context.names import artifact_name, metric_name
from rundock.context.records import MAX_TEXT

_SCALARS = (int, float, bool, str)
PathOrStream = Union[str, "os.PathLike[str]", IO[bytes]]
_Self = TypeVar("_Self", bound="RunRecorder")


class RunRecorder:
    """Azure ML's logging, tagging and upload methods, built on ``_emit``."""

    id: str

    def __init__(self) -> None:
        self._steps: dict[str, bool] = {}
        self._tags: dict[str, str | None] = {}
        self._properties: dict[str, str] = {}

    # -- what a subclass provides ---------------------------------------------------------
    def _emit(self, record_type: str, /, **fields: Any) -> None:
        raise NotImplementedError

    def _log_scalar(self, name: str, value: Any) -> bool:
        """A faster way to record a plain scalar, where the subclass has one; False to use ``_emit``."""
        return False

    def _stage_file(self, path_or_stream: PathOrStream) -> dict[str, Any]:
        """Fields of a file record for this content (a staged path, or digest and size)."""
        raise NotImplementedError

    def _check_step(self, name: str, has_step: bool) -> None:
        if self._steps.setdefault(name, has_step) != has_step:
            raise ValueError(f"metric {name!r}: give 'step' for every value of a metric or for none")

    def _check_properties(self, values: Mapping[str, str]) -> None:
        for key, val in values.items():
            if key in self._properties and self._properties[key] != val:
                raise ValueError(f"property {key!r} is already {self._properties[key]!r}; properties are immutable")

    # -- lifecycle (``with run:`` completes the run, or fails it on an exception) ----------------
    def complete(self, _set_status: bool = True) -> None:
        raise NotImplementedError

    def fail(self, error_details: Any = None, error_code: str | None = None, _set_status: bool = True) -> None:
        raise NotImplementedError

    def __enter__(self: _Self) -> _Self:
        return self

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        if exc is not None:
            self.fail(error_details=repr(exc))
        else:
            self.complete()

    # -- metrics --------------------------------------------------------------------------
    def log(self, name: str, value: Any, description: str = "", step: int | None = None) -> None:
        """Log a scalar; calling again with the same name builds a list."""
        metric_name(name)
        if not isinstance(value, _SCALARS) and value is not None:
            raise TypeError(f"metric {name!r}: log() takes a number, bool or string, not {type(value).__name__}; "
                            "use log_list or log_table for collections")
        self._check_step(name, step is not None)
        if step is None and not description and self._log_scalar(name, value):
            return
        fields: dict[str, Any] = {"name": name, "kind": "scalar", "value": value}
        if step is not None:
            fields["step"] = int(step)
        if description:
            fields["description"] = description
        self._emit("metric", **fields)

    def log_list(self, name: str, value: Iterable[Any], description: str = "") -> None:
        """Log a list of values as one metric."""
        metric_name(name)
        values = list(value)
        if any(not isinstance(v, _SCALARS) and v is not None for v in values):
            raise TypeError(f"metric {name!r}: log_list takes a list of numbers, bools or strings")
        self._emit("metric", name=name, kind="list", value=values, description=description)

    def log_row(self, name: str, description: str | None = None, **kwargs: Any) -> None:
        """Log one row of a table metric; each keyword is a column."""
        metric_name(name)
        if not kwargs:
            raise ValueError(f"metric {name!r}: log_row needs at least one column, e.g. log_row(name, x=1)")
        self._emit("metric", name=name, kind="row", value=dict(kwargs), description=description or "")

    def log_table(self, name: str, value: Mapping[str, Any], description: str = "") -> None:
        """Log a table: a dict of columns (lists of equal length)."""
        metric_name(name)
        if not isinstance(value, Mapping) or not all(isinstance(c, (list, tuple)) for c in value.values()):
            raise TypeError(f"metric {name!r}: log_table takes a dict of columns, e.g. {{'x': [1, 2]}}")
        lengths = {len(c) for c in value.values()}
        if len(lengths) > 1:
            raise ValueError(f"metric {name!r}: table columns have different lengths {sorted(lengths)}")
        self._emit("metric", name=name, kind="table", value={k: list(v) for k, v in value.items()},
                   description=description)

    def _log_schema(self, kind: str, name: str, value: Any, description: str) -> None:
        metric_name(name)
        self._emit("metric", name=name, kind=kind, value=schemas.validate(kind, value), description=description)

    def log_accuracy_table(self, name: str, value: Any, description: str = "") -> None:
        """Log an accuracy table (dict or JSON; schema accuracy_table 1.0.1, shape [C, M, 4])."""
        self._log_schema("accuracy_table", name, value, description)

    def log_confusion_matrix(self, name: str, value: Any, description: str = "") -> None:
        """Log a confusion matrix (dict or JSON; schema confusion_matrix 1.0.0)."""
        self._log_schema("confusion_matrix", name, value, description)

    def log_predictions(self, name: str, value: Any, description: str = "") -> None:
        """Log binned predictions (dict or JSON; schema predictions 1.0.0)."""
        self._log_schema("predictions", name, value, description)

    def log_residuals(self, name: str, value: Any, description: str = "") -> None:
        """Log a residuals histogram (dict or JSON; schema residuals 1.0.0)."""
        self._log_schema("residuals", name, value, description)

    def log_image(self, name: str, path: str | None = None, plot: Any = None, description: str = "") -> None:
        """Log an image file or a matplotlib plot; stored as a file of the run under ``images/``."""
        metric_name(name)
        if (path is None) == (plot is None):
            raise ValueError(f"image {name!r}: give exactly one of path= (an image file) or plot= (a matplotlib plot)")
        content: Any = path
        file_name = f"images/{name}{os.path.splitext(str(path))[1] or '.png'}"
        if plot is not None:
            content = io.BytesIO()
            plot.savefig(content, format="png")
            content.seek(0)
            file_name = f"images/{name}.png"
        self._emit("file", name=artifact_name(file_name), **self._stage_file(content))
        self._emit("metric", name=name, kind="image", value=file_name, description=description)

    # -- tags and properties ------------------------------------------------------------------
    def tag(self, key: str, value: str | None = None) -> None:
        """Set one mutable tag."""
        self.set_tags({key: value})

    def set_tags(self, tags: Union[Mapping[str, Any], str]) -> None:
        """Add or change tags; a string is a tag with value None."""
        values = {tags: None} if isinstance(tags, str) else dict(tags)
        clean = {str(k): (None if v is None else str(v)) for k, v in values.items()}
        _check_sizes(clean, "tag")
        self._tags.update(clean)
        self._emit("tags", values=clean)

    def add_properties(self, properties: Mapping[str, Any]) -> None:
        """Add immutable properties (an existing key cannot get a new value)."""
        values = {str(k): str(v) for k, v in properties.items()}
        _check_sizes(values, "property")
        self._check_properties(values)
        self._properties.update(values)
        self._emit("properties", values=values)

    # -- files ------------------------------------------------------------------------------
    def upload_file(self, name: str, path_or_stream: PathOrStream, datastore_name: str | None = None) -> None:
        """Store a local file (or a binary stream) with the run under ``name``."""
        clean = artifact_name(name)
        self._emit("file", name=clean, **self._stage_file(path_or_stream))

    def upload_files(self, names: list[str], paths: list[str], return_artifacts: bool = False,
                     timeout_seconds: int | None = None, datastore_name: str | None = None) -> None:
        """Store several files: ``names[i]`` gets the content of ``paths[i]``."""
        if len(names) != len(paths):
            raise ValueError(f"upload_files: {len(names)} names for {len(paths)} paths; give one name per path")
        for name in names:
            artifact_name(name)
        for name, path in zip(names, paths):
            self.upload_file(name, path)

    def upload_folder(self, name: str, path: str, datastore_name: str | None = None) -> None:
        """Store every file under folder ``path`` with the prefix ``name``."""
        if not os.path.isdir(path):
            raise FileNotFoundError(f"upload_folder: {path!r} is not a folder")
        prefix = artifact_name(name)
        for root, _dirs, files in os.walk(path):
            for fname in sorted(files):
                full = os.path.join(root, fname)
                rel = os.path.relpath(full, path).replace(os.sep, "/")
                self.upload_file(f"{prefix}/{rel}", full)


def _check_sizes(values: Mapping[str, str | None], what: str) -> None:
    for key, val in values.items():
        if len(key) > 255 or (val is not None and len(val) > MAX_TEXT):
            raise ValueError(f"{what} {key[:40]!r}: keys are at most 255 characters and values at most {MAX_TEXT}")


def child_tags(count: int | None, tag_key: str | None, tag_values: list[Any] | None) -> list[dict[str, str]]:
    """The tags of each child ``create_children`` makes: ``count`` children, or one per tag value."""
    if (count is None) == (tag_key is None and tag_values is None):
        raise ValueError("create_children: give either count, or tag_key and tag_values")
    if count is None:
        if not tag_key or tag_values is None:
            raise ValueError("create_children: tag_key and tag_values go together")
        return [{tag_key: str(v)} for v in tag_values]
    if count < 1:
        raise ValueError(f"create_children: count must be at least 1, got {count}")
    return [{} for _ in range(count)]
