"""How MLflow's objects map onto rundock's: statuses, ids, values from requests, run answers, run tokens."""

from __future__ import annotations

import math

import pytest

from rundock.history.records import MetricRecord, RunRecord
from rundock.server import mlflow_map as mm
from rundock.server.mlflow_tokens import RunTokenError, mint_token, signing_key, verify
from rundock.states import RunStatus


def test_statuses_map_both_ways_and_early_ones_read_as_scheduled() -> None:
    for mlflow, rundock in mm.TO_RUNDOCK.items():
        assert mm.mlflow_status(rundock) == mlflow
    assert mm.mlflow_status(RunStatus.QUEUED) == "SCHEDULED"
    assert mm.mlflow_status(RunStatus.FINALIZING) == "RUNNING"
    assert mm.requested_status(3) == "FINISHED" and mm.requested_status("killed") == "KILLED"
    with pytest.raises(mm.MlflowError, match="not an MLflow run status"):
        mm.requested_status("DONE")


def test_experiment_ids_are_names_and_zero_is_default() -> None:
    assert mm.experiment_name("0") == "Default" and mm.experiment_id("Default") == "0"
    assert mm.experiment_name("mnist") == "mnist" and mm.experiment_id("mnist") == "mnist"
    with pytest.raises(mm.MlflowError, match="not a rundock experiment name"):
        mm.experiment_name("/Users/me/my experiment")


def test_metric_values_come_as_protobuf_json_and_times_turn_into_seconds() -> None:
    record = mm.metric_record({"key": "acc", "value": "NaN", "timestamp": "1700000000123", "step": "4"})
    assert record.name == "acc" and math.isnan(record.value) and record.step == 4
    assert record.at == pytest.approx(1700000000.123)
    assert mm.metric_record({"key": "loss", "value": 0.5, "timestamp": 1000}).step == 0
    assert mm.metric_json(MetricRecord("x", "scalar", -math.inf, 2, "", 1.5)) == \
        {"key": "x", "value": "-Infinity", "timestamp": 1500, "step": 2}
    for bad in ({"key": "", "value": 1, "timestamp": 1}, {"key": "k", "value": "high", "timestamp": 1},
                {"key": "k", "value": 1}, {"key": "k" * 251, "value": 1, "timestamp": 1}):
        with pytest.raises(mm.MlflowError) as caught:
            mm.metric_record(bad)
        assert caught.value.status == 400


def test_a_run_answer_holds_latest_numeric_metrics_params_and_tags() -> None:
    run = RunRecord(run_id="exp_1_ab", experiment="exp", number=1, status=RunStatus.COMPLETED, created_at=10.0,
                    start_at=11.0, end_at=12.5, submitted_by="alice", properties={"lr": "0.1"},
                    tags={"mlflow.runName": "first", "note": None}, display_name="first")
    metrics = [MetricRecord("acc", "scalar", 0.5, 2, "", 5.0), MetricRecord("acc", "scalar", 0.7, 1, "", 6.0),
               MetricRecord("acc", "scalar", 0.9, 2, "", 5.0), MetricRecord("table", "row", {"a": 1}, None, "", 1.0)]
    answer = mm.run_json(run, metrics)
    assert answer["info"] == {"run_id": "exp_1_ab", "run_uuid": "exp_1_ab", "run_name": "first",
                              "experiment_id": "exp", "user_id": "alice", "status": "FINISHED", "start_time": 11000,
                              "end_time": 12500, "artifact_uri": "", "lifecycle_stage": "active"}
    assert answer["data"]["metrics"] == [{"key": "acc", "value": 0.9, "timestamp": 5000, "step": 2}]
    assert answer["data"]["params"] == [{"key": "lr", "value": "0.1"}]
    assert {"key": "note", "value": ""} in answer["data"]["tags"]


def test_run_tokens_name_their_run_and_refuse_forgery_other_keys_and_expiry() -> None:
    key = signing_key("server-secrets-key")
    token, expires_at = mint_token(key, "exp_1_ab", "tok_alice", days=1, now=1000.0)
    assert token.startswith("rdkrun_") and expires_at == 1000 + 86400
    assert verify(key, token, now=2000.0).run_id == "exp_1_ab"
    assert verify(key, token, now=2000.0).minted_by == "tok_alice"  # checked against the token table per request
    assert mint_token(key, "exp_1_ab", "tok_alice", days=1, now=1000.0, not_after=1500.0)[1] == 1500
    with pytest.raises(RunTokenError, match="expired"):
        verify(key, token, now=expires_at + 1.0)
    with pytest.raises(RunTokenError, match="not minted by this server"):
        verify(signing_key("another-key"), token, now=2000.0)
    other, _ = mint_token(key, "exp_2_cd", "tok_alice", now=1000.0)
    forged = token.split(".")[0] + "." + other.split(".")[1]  # another run's signature on this payload
    with pytest.raises(RunTokenError):
        verify(key, forged, now=2000.0)
    with pytest.raises(RunTokenError):
        verify(key, "rdkrun_garbage", now=2000.0)
