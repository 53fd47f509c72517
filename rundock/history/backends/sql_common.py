"""What the SQL backends share: the columns of a run and of a model version, and the records built from them.

Both backends store the same columns with the same meaning: times as unix seconds, JSON documents
(run definitions, errors, model files, tags and properties of a model) as JSON text. A row read from
either database is a plain sequence of Python values, so one function turns it into a record.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from rundock.history.records import ModelRecord, RunRecord
from rundock.states import RunStatus

RUN_COLUMNS = ("run_id, experiment, number, status, created_at, parent_id, run_type, display_name, description, "
               "target, run_definition, snapshot_id, submitted_by, run_dir, start_at, end_at, status_detail, "
               "error, last_heartbeat, heartbeat_interval, archived")
MODEL_COLUMNS = ("name, version, run_id, path, files, created_at, tags, properties, framework, framework_version, "
                 "description")


def run_record(row: Sequence[Any]) -> RunRecord:
    """A run from a row of ``RUN_COLUMNS`` (tags and properties left empty)."""
    (run_id, experiment, number, status, created_at, parent_id, run_type, display_name, description,
     target, run_definition, snapshot_id, submitted_by, run_dir, start_at, end_at, status_detail,
     error, last_heartbeat, heartbeat_interval, archived) = row
    return RunRecord(
        run_id=run_id, experiment=experiment, number=number, status=RunStatus(status),
        created_at=created_at, parent_id=parent_id, run_type=run_type, display_name=display_name,
        description=description, target=target, run_definition=json.loads(run_definition),
        snapshot_id=snapshot_id, submitted_by=submitted_by, run_dir=run_dir, start_at=start_at,
        end_at=end_at, status_detail=status_detail, error=json.loads(error) if error else None,
        last_heartbeat=last_heartbeat, heartbeat_interval=heartbeat_interval, archived=bool(archived))


def model_record(row: Sequence[Any]) -> ModelRecord:
    """A model from a row of ``MODEL_COLUMNS``."""
    name, version, run_id, path, files, created_at, tags, properties, framework, fw_version, description = row
    return ModelRecord(name, version, run_id, path, json.loads(files), created_at, json.loads(tags),
                       json.loads(properties), framework, fw_version, description)
