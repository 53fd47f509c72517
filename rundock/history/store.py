"""The run history interface: a few narrow abstract interfaces, conveniences built on them, and the registry of
backends.

``RunsStore`` (runs and states), ``MetricsStore`` (journal batches, metrics, tags), ``FilesStore`` (file records,
live logs, snapshots) and ``ModelsStore`` (models, environments) are what callers use; ``RunStore`` is all of them
plus housekeeping (``StoreAdmin``), which every backend provides. Backends are chosen by URI scheme through
``open_store``; every backend passes the same contract tests (tests/contract).
"""

from __future__ import annotations

import abc
import importlib
import math
import re
import secrets
import time
import typing
from array import array
from collections.abc import Callable, Collection, Iterable, Iterator, Mapping
from typing import Any, Optional, Union

from rundock.errors import ConfigError
from rundock.history.metric_reads import MetricBuckets, MetricSummary, buckets_of, summaries_of
from rundock.history.query import RunPage, RunQuery, metric_names_in_python, query_runs_in_python, scalar_number
from rundock.history.records import FileRecord, JournalPlan, MetricRecord, ModelRecord, RunRecord, StatusChange
from rundock.states import RunStatus

Filter = Union[str, typing.Mapping[str, Any], None]  # evaluated at run time: typing.Mapping for Python 3.8


_NOT_IN_RUN_IDS = re.compile(r"[^A-Za-z0-9_.-]+|\.\.+")


def new_run_id(experiment: str, now: float | None = None) -> str:
    """``<experiment>_<unix seconds>_<8 hex>``, a valid run id whatever the experiment's name: characters a run id
    may not hold (it names a folder on compute hosts: ``context.records.check_run_id``) become ``-``."""
    stem = _NOT_IN_RUN_IDS.sub("-", experiment)[:200].lstrip("-_.") or "run"
    return f"{stem}_{int(time.time() if now is None else now)}_{secrets.token_hex(4)}"


class StoreAdmin(abc.ABC):
    """A backend's housekeeping primitives (``rundock archive``, ``delete``, ``gc``), reached through
    ``RunStore.admin()``: kept apart from the everyday ones so that each backend writes them in a module of
    their own. Every method is one transaction: it happens whole or not at all.
    """

    @abc.abstractmethod
    def set_archived(self, run_ids: Iterable[str], archived: bool = True) -> list[str]:
        """Archive (or, with ``archived=False``, restore) the runs and all their descendants; return their ids.

        An unknown id raises RunNotFoundError and changes nothing. Archived runs are still runs (``get_run``,
        ``list_runs`` return them, with ``archived`` set); ``find_runs(archived=False)`` leaves them out.
        """

    @abc.abstractmethod
    def delete_runs(self, run_ids: Iterable[str]) -> list[str]:
        """Delete the runs, all their descendants and everything recorded about them (status history, tags,
        properties, metrics, file records, logs, journal marks); return the ids deleted.

        An unknown id raises RunNotFoundError and deletes nothing. Whether a run may go (it is live) is the
        caller's business. Snapshots, models, stored blobs and run numbers stay: ``rundock gc`` frees blobs
        nothing refers to any more, and a new run never takes a deleted run's number.
        """

    @abc.abstractmethod
    def list_snapshots(self) -> dict[str, float]:
        """Every snapshot id, with when it was last stored (``put_snapshot`` of a known snapshot counts)."""

    @abc.abstractmethod
    def prune_snapshots(self, stored_before: float, *, dry_run: bool = False) -> list[str]:
        """Remove the snapshots no run refers to that were last stored before ``stored_before``; return their ids.

        A snapshot stored again since (a submit on its way, between ``put_snapshot`` and ``create_run``) is
        kept. ``dry_run``: only say which would go.
        """

    @abc.abstractmethod
    def referenced_digests(self, skip_snapshots: Collection[str] = ()) -> set[str]:
        """Every blob digest the history refers to: the manifests of the snapshots (but those in
        ``skip_snapshots``), the files of every run (archived ones too) and the files of every model version."""


class RunsStore(abc.ABC):
    """Runs and their states: what listing, showing and the state machine need."""

    @abc.abstractmethod
    def create_run(self, experiment: str, *, run_id: str | None = None, parent_id: str | None = None,
                   run_type: str = "rundock.scriptrun", display_name: str | None = None,
                   description: str | None = None, target: str = "local",
                   run_definition: dict[str, Any] | None = None, snapshot_id: str | None = None,
                   submitted_by: str | None = None, run_dir: str | None = None,
                   tags: Mapping[str, str | None] | None = None,
                   properties: Mapping[str, str] | None = None, created_at: float | None = None) -> RunRecord:
        """Create a NotStarted run with the next number of its experiment (``created_at``: now, unless a run
        moved from another history keeps its own)."""

    @abc.abstractmethod
    def get_run(self, run_id: str) -> RunRecord:
        """The run, or RunNotFoundError."""

    @abc.abstractmethod
    def list_runs(self, *, experiment: str | None = None, statuses: Iterable[str] | None = None,
                  parent_id: str | None = None, run_type: str | None = None, target: str | None = None,
                  include_children: bool = True) -> list[RunRecord]:
        """Runs matching the filters, newest first (tag/property filters: see ``find_runs``)."""

    @abc.abstractmethod
    def update_run(self, run_id: str, *, display_name: str | None = None, description: str | None = None,
                   run_dir: str | None = None, snapshot_id: str | None = None) -> None:
        """Change a run's mutable attributes."""

    @abc.abstractmethod
    def transition(self, run_id: str, status: RunStatus | str, *, detail: str = "",
                   error: dict[str, Any] | None = None, at: float | None = None) -> bool:
        """Move the run to ``status`` if the transition table allows it; return whether it moved."""

    @abc.abstractmethod
    def status_history(self, run_id: str) -> list[StatusChange]:
        """Every status the run went through, with times and details, oldest first."""

    def find_runs(self, *, tags: Filter = None, properties: Filter = None, status: str | None = None,
                  archived: bool | None = None, **filters: Any) -> list[RunRecord]:
        """``list_runs`` plus tag/property filters (``"key"`` or ``{"key": "value"}``) and ``archived``
        (None: archived or not; False: only runs that are not archived; True: only archived ones)."""
        runs = self.list_runs(statuses=[status] if status else None, **filters)
        return [r for r in runs if matches(r, tags, properties) and (archived is None or r.archived == archived)]

    def query_runs(self, q: RunQuery) -> RunPage:
        """One page of the runs table and how many runs match (``rundock.history.query`` says what each field
        means). This default reads every run in Python; the SQL backends answer in the database."""
        return query_runs_in_python(self, q)

    def metric_names(self, experiment: str | None = None) -> list[str]:
        """The names of the metrics with a latest number in the experiment's runs (every run's when None), sorted:
        what the runs table can show as columns. This default reads every run's metrics in Python."""
        return metric_names_in_python(self, experiment)

    def family(self, run_ids: Iterable[str]) -> list[RunRecord]:
        """The runs and all their descendants, each once, every run before its children.

        An unknown id raises RunNotFoundError.
        """
        found: dict[str, RunRecord] = {}
        frontier = [self.get_run(run_id) for run_id in run_ids]
        while frontier:
            fresh = [r for r in frontier if r.run_id not in found]
            found.update((r.run_id, r) for r in fresh)
            frontier = [c for r in fresh for c in self.list_runs(parent_id=r.run_id)]
        return list(found.values())

    def end_open_children(self, run_id: str, status: RunStatus | str) -> None:
        """Children a job created and left open end with their parent's final status."""
        final = RunStatus(status)
        for child in self.list_runs(parent_id=run_id, run_type="rundock.childrun"):
            if not child.status.is_terminal:
                self.transition(child.run_id, final, detail=f"its parent run ended {final.value} while it was "
                                                            "still open")


class MetricsStore(abc.ABC):
    """What a run logs: journal batches (metrics, tags, properties, files, states) applied exactly once."""

    @abc.abstractmethod
    def apply_journal(self, run_id: str, attempt: int, source: str, records: list[dict[str, Any]]) -> int:
        """Apply the records with a sequence number above the stored mark, atomically.

        In the same transaction the mark for (run, attempt, source) moves to the
        highest sequence number applied, so shipping a record twice is harmless.
        Records of a child that does not exist yet create it (from a ``child``
        record); other records for an unknown run raise RunNotFoundError and
        leave the mark where it was. Returns the new mark.
        """

    @abc.abstractmethod
    def apply_plan(self, run_id: str, plan: JournalPlan) -> None:
        """Apply changes made outside a job (client calls) atomically."""

    @abc.abstractmethod
    def journal_mark(self, run_id: str, attempt: int, source: str) -> int:
        """The last sequence number applied for (run, attempt, source); 0 if none."""

    @abc.abstractmethod
    def get_metric_records(self, run_id: str, name: str | None = None) -> list[MetricRecord]:
        """Logged values in logging order."""

    @abc.abstractmethod
    def remove_tags(self, run_id: str, keys: Iterable[str]) -> None:
        """Remove tags (missing keys are ignored)."""

    def metric_values(self, run_id: str, name: str) -> Iterator[tuple[int | None, float, float | None]]:
        """Every scalar value of one metric of a run in logging order, as ``(step, time, number)``: the number is
        None for a value that is not one (a string, a bool, an integer too big for a float); NaN and infinities
        come as floats. Values of other kinds (lists, tables, images) are left out. The SQL backends read the
        rows in chunks, so that a metric with millions of values never sits in memory as records; this default
        reads ``get_metric_records``."""
        for m in self.get_metric_records(run_id, name):
            if m.kind == "scalar":
                yield m.step, m.at, scalar_number(m.value)

    def metric_points(self, run_id: str, name: str, x: str = "step") -> tuple[array[float], array[float]]:
        """The values of ``metric_values`` as two arrays of doubles, for a chart: x is the step (the value's
        position among them when it has none) or, with ``x="time"``, when it was logged; y is the number, NaN
        where there is none. The SQL backends fill the arrays a chunk of rows at a time, without a Python object
        per value; this default reads ``metric_values``."""
        xs, ys = array("d"), array("d")
        for i, (step, at, value) in enumerate(self.metric_values(run_id, name)):
            xs.append(at if x == "time" else float(i if step is None else step))
            ys.append(math.nan if value is None else value)
        return xs, ys

    def metric_summaries(self, run_id: str) -> list[MetricSummary]:
        """Each metric of the run (kind, number of values, last value) in the order first logged, without its
        values (``rundock.history.metric_reads``); the SQL backends answer in one statement. This default reads
        ``get_metric_records``."""
        return summaries_of(self.get_metric_records(run_id))

    def metric_buckets(self, run_id: str, name: str, x: str = "step", buckets: int = 2000) -> MetricBuckets:
        """The chart candidates of one metric in at most ``buckets`` buckets (first, last, lowest and highest
        finite points and where a gap starts, per bucket; every point when there are no more values than
        ``buckets``; see ``rundock.history.metric_reads``). The SQL backends compute them in the database; this
        default reads ``metric_points``."""
        return buckets_of(*self.metric_points(run_id, name, x), buckets)

    def metric_version(self, run_id: str, name: str) -> int | None:
        """A number that grows whenever a value of the metric is logged (where its latest value is stored), for
        caches of what is computed from all its values; None when this store cannot tell cheaply (or the metric
        has no value), and then nothing is cached."""
        return None

    def log_metrics(self, run_id: str, metrics: list[MetricRecord]) -> None:
        """Log a batch of values from outside a job."""
        self.apply_plan(run_id, JournalPlan(metrics=metrics))

    def set_tags(self, run_id: str, tags: Mapping[str, str | None]) -> None:
        self.apply_plan(run_id, JournalPlan(tags=dict(tags)))

    def add_file(self, run_id: str, name: str, digest: str, size: int) -> None:
        self.apply_plan(run_id, JournalPlan(files=[FileRecord(name, digest, size, time.time())]))

    def heartbeat(self, run_id: str, interval: float, at: float | None = None) -> None:
        self.apply_plan(run_id, JournalPlan(heartbeat=(at or time.time(), interval)))


class FilesStore(abc.ABC):
    """A run's file records and live logs, and the source snapshots runs start from."""

    @abc.abstractmethod
    def list_files(self, run_id: str) -> dict[str, FileRecord]:
        """The run's files by name (latest version of each)."""

    @abc.abstractmethod
    def append_log(self, run_id: str, name: str, offset: int, data: bytes) -> None:
        """Store a chunk of a live log at ``offset``; storing the same chunk twice is harmless."""

    @abc.abstractmethod
    def read_log(self, run_id: str, name: str, offset: int = 0) -> bytes:
        """The contiguous bytes of a live log from ``offset`` on."""

    @abc.abstractmethod
    def log_names(self, run_id: str) -> list[str]:
        """Names of the live logs of a run."""

    @abc.abstractmethod
    def put_snapshot(self, snapshot_id: str, manifest: list[dict[str, Any]]) -> bool:
        """Record a snapshot manifest; False if it was already known. Either way it counts as stored now: gc
        keeps an unused snapshot stored within its grace period (``StoreAdmin.prune_snapshots``)."""

    @abc.abstractmethod
    def get_snapshot(self, snapshot_id: str) -> list[dict[str, Any]]:
        """A snapshot's manifest (path, digest, size, mode per file)."""


class ModelsStore(abc.ABC):
    """Registered models and environments, by name and version."""

    @abc.abstractmethod
    def register_model(self, name: str, *, run_id: str | None, path: str, files: list[dict[str, Any]],
                       tags: Mapping[str, str | None] | None = None, properties: Mapping[str, str] | None = None,
                       framework: str | None = None, framework_version: str | None = None,
                       description: str | None = None, created_at: float | None = None) -> ModelRecord:
        """Add the next version (1, 2, 3...) of model ``name`` (``created_at``: now unless given)."""

    @abc.abstractmethod
    def get_model(self, name: str, version: int | None = None) -> ModelRecord:
        """A model version (the latest when ``version`` is None); KeyError if missing."""

    @abc.abstractmethod
    def list_models(self, name: str | None = None) -> list[ModelRecord]:
        """Model versions, newest first."""

    @abc.abstractmethod
    def register_environment(self, name: str, definition: dict[str, Any]) -> int:
        """Store the next version of environment ``name``; return its version."""

    @abc.abstractmethod
    def get_environment(self, name: str, version: int | None = None) -> tuple[int, dict[str, Any]]:
        """(version, definition) of a registered environment (latest by default); KeyError if missing."""

    @abc.abstractmethod
    def environment_names(self) -> list[str]:
        """Names of the registered environments."""

    def find_models(self, name: str | None = None, tags: Filter = None, properties: Filter = None,
                    run_id: str | None = None) -> list[ModelRecord]:
        """``list_models`` with tag, property and run filters."""
        return [m for m in self.list_models(name) if _matches(m.tags, tags) and _matches(m.properties, properties)
                and (run_id is None or m.run_id == run_id)]


class RunStore(RunsStore, MetricsStore, FilesStore, ModelsStore):
    """A whole run history: every narrow interface plus housekeeping. Code that needs only part of it takes
    the narrow interface (``RunsStore``, ``MetricsStore``, ``FilesStore``, ``ModelsStore``), so a stand-in for a
    unit test implements only what that code calls."""

    @abc.abstractmethod
    def admin(self) -> StoreAdmin:
        """This backend's housekeeping primitives (archive, delete, snapshot pruning, blob references)."""

    @abc.abstractmethod
    def close(self) -> None:
        """Release connections."""

    def add_properties(self, run_id: str, properties: Mapping[str, str]) -> None:
        """Add immutable properties; a key that exists with another value raises ValueError."""
        current = self.get_run(run_id).properties
        for key, val in properties.items():
            if key in current and current[key] != str(val):
                raise ValueError(f"property {key!r} of run {run_id} is already {current[key]!r}; "
                                 "properties are immutable (use tags for values that change)")
        self.apply_plan(run_id, JournalPlan(properties={k: str(v) for k, v in properties.items()}))

    def __enter__(self) -> RunStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def matches(run: RunRecord, tags: Filter = None, properties: Filter = None) -> bool:
    """Whether a run has the tags and properties asked for (``"key"`` or ``{"key": "value"}``)."""
    return _matches(run.tags, tags) and _matches(run.properties, properties)


def _matches(values: Mapping[str, Any], wanted: Filter) -> bool:
    if wanted is None:
        return True
    if isinstance(wanted, str):
        return wanted in values
    return all(k in values and (v is None or values[k] == str(v)) for k, v in wanted.items())


Factory = typing.Callable[[str, Optional[str]], RunStore]  # evaluated at run time: typing for Python 3.8

# Each scheme names the module that implements it; the module is imported when a URI of that scheme is opened
# (so that opening an SQLite history never imports psycopg or requests), and registers its factory then.
_BACKEND_MODULES = {
    "sqlite": "rundock.history.backends.sqlite",
    "postgresql": "rundock.history.backends.postgres",
    "postgres": "rundock.history.backends.postgres",
    "http": "rundock.history.backends.http",
    "https": "rundock.history.backends.http",
    "memory": "rundock.history.backends.memory",
}
_BACKENDS: dict[str, Factory] = {}


def register_backend(scheme: str, factory: Callable[..., RunStore], *, takes_artifacts: bool = False) -> None:
    """Make ``open_store`` build ``factory(uri)`` for URIs of ``scheme`` (``factory(uri, artifacts_root)`` when
    ``takes_artifacts``: a backend that keeps blobs elsewhere, using the local artifact store as its cache)."""
    if takes_artifacts:
        _BACKENDS[scheme] = factory
    else:
        _BACKENDS[scheme] = lambda uri, _artifacts_root: factory(uri)


def open_store(uri: str, *, artifacts_root: str | None = None) -> RunStore:
    """Open the run history at ``uri`` (e.g. ``sqlite:////home/me/.rundock/history.db``,
    ``postgresql://rundock@db/rundock``, ``https://runs.lab:8765``). ``artifacts_root``: this machine's artifact
    store, which a server-backed history uses as its cache of blobs."""
    scheme = uri.split(":", 1)[0].lower() if ":" in uri else ""
    if scheme not in _BACKENDS and scheme in _BACKEND_MODULES:
        try:
            importlib.import_module(_BACKEND_MODULES[scheme])  # registers itself
        except ImportError as exc:
            raise ConfigError(f"the {scheme}:// run history needs a package that is not installed ({exc}); "
                              "reinstall rundock with its dependencies (pip install rundock)",
                              field="history") from None
    factory = _BACKENDS.get(scheme)
    if factory is None:
        known = ", ".join(f"{s}://" for s in sorted(set(_BACKEND_MODULES) | set(_BACKENDS)))
        raise ConfigError(f"unknown run history URI {uri!r}; expected one of: {known}", field="history")
    return factory(uri, artifacts_root)
