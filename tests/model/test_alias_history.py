"""The alias history (pipeline.model.alias_history): every move of the
champion and challenger aliases, automatic or by hand, read back in order,
and "which version was champion at <time>" answered from it, on a SQLite
store and on a real `mlflow server` on 127.0.0.1."""
from __future__ import annotations

import json
import subprocess
import sys
import time

import pytest

from pipeline.model.alias_history import (
    HOW_AUTOMATIC,
    HOW_MANUAL,
    holder_at,
    parse_time,
    read_history,
    utc_text,
)
from pipeline.model.architectures import build_model
from pipeline.model.promotion import RULE_FIRST, RULE_MEAN, RULE_PROMOTED
from pipeline.model.registry import register_model
from tests.conftest import mlflow_store
from tests.e2e.project import pipeline_env
from tests.model.test_registry import BASE_AUC, NAME, SIZE, evaluated

COMPARISON = {"mean_auc_diff": 0.0123, "mean_auc_diff_ci": [-0.004, 0.031], "test_images": 70}
# What the three registrations and the promotion by hand move, in order: (alias, from, to, how).
EXPECTED_MOVES = [("challenger", None, 1, HOW_AUTOMATIC), ("champion", None, 1, HOW_AUTOMATIC),
                  ("challenger", 1, 2, HOW_AUTOMATIC), ("champion", 1, 2, HOW_AUTOMATIC),
                  ("challenger", 2, 3, HOW_AUTOMATIC), ("champion", 2, 1, HOW_MANUAL)]


def registry_command(*args: str, store: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "pipeline.model.registry", *args, "--tracking-uri", store],
                          capture_output=True, text=True, timeout=300, env=pipeline_env())


@pytest.fixture(scope="module", params=["sqlite", "server"])
def moved(request, tmp_path_factory):
    """Three versions registered (v1 first, v2 promoted, v3 refused), then v1
    promoted back by hand: the store and the time just before each move of champion."""
    import mlflow

    root = tmp_path_factory.mktemp(f"history-{request.param}")
    process = None
    if request.param == "sqlite":
        store, artifacts = f"sqlite:///{root / 'mlflow.db'}", (root / "artifacts").as_uri()
    else:
        from tests.e2e.test_mlflow_server import start_server

        store, process = start_server(root / "server")
        artifacts = None  # the server's proxied artifacts
    model = build_model("small_cnn", SIZE, "none")
    decisions = [
        (evaluated(0.80, BASE_AUC, "test-a"), {"promote": True, "rule": RULE_FIRST, "reasons": ["first version"],
                                               "champion_version": None, "comparison": None}),
        (evaluated(0.82, BASE_AUC, "test-a"), {"promote": True, "rule": RULE_PROMOTED, "reasons": ["non-inferior"],
                                               "champion_version": 1, "comparison": COMPARISON}),
        (evaluated(0.70, BASE_AUC, "test-b"), {"promote": False, "rule": RULE_MEAN, "reasons": ["mean AUC lower"],
                                               "champion_version": 2, "comparison": COMPARISON}),
    ]
    try:
        with mlflow_store(store):
            experiment = mlflow.create_experiment("history", artifact_location=artifacts)
            for metadata, decision in decisions:
                with mlflow.start_run(experiment_id=experiment):
                    register_model(mlflow, model, NAME, metadata, {}, decision)
                time.sleep(0.05)  # moves of different registrations a few ms apart at least
        promoted = registry_command("promote", "1", "--reason", "v2 misses drains", "--model", NAME, store=store)
        assert promoted.returncode == 0, promoted.stderr
        yield store
    finally:
        if process is not None:
            from tests.e2e.test_mlflow_server import stop

            stop(process)


def test_every_move_is_recorded_in_order(moved):
    import mlflow

    history = read_history(mlflow.MlflowClient(tracking_uri=moved, registry_uri=moved), NAME)
    assert [(m.alias, m.from_version, m.to_version, m.how) for m in history] == EXPECTED_MOVES
    assert [m.time_ms for m in history] == sorted(m.time_ms for m in history)
    promoted, refused, manual = history[3], history[4], history[5]
    assert promoted.rule == RULE_PROMOTED and promoted.mean_auc_difference == pytest.approx(0.0123)
    assert promoted.mean_auc_difference_ci == pytest.approx((-0.004, 0.031)) and promoted.test_manifest == "test-a"
    assert refused.rule == RULE_MEAN and refused.reasons == "mean AUC lower" and refused.test_manifest == "test-b"
    assert manual.reasons == "v2 misses drains" and manual.mean_auc_difference is None and manual.actor


def test_the_champion_at_any_time_between_moves(moved):
    import mlflow

    history = read_history(mlflow.MlflowClient(tracking_uri=moved, registry_uri=moved), NAME)
    champion_moves = [m for m in history if m.alias == "champion"]
    assert holder_at(history, "champion", champion_moves[0].time_ms - 1) is None
    times = []
    for before, after in zip(champion_moves, champion_moves[1:] + [None]):
        when = (before.time_ms + after.time_ms) // 2 if after else before.time_ms + 60_000
        assert holder_at(history, "champion", when) == before.to_version
        times.append(utc_text(when))
    result = registry_command("history", "--at", *times, "--model", NAME, store=moved)
    assert result.returncode == 0, result.stderr
    answers = [line for line in result.stdout.splitlines() if line.startswith("champion at ")]
    assert answers == [f"champion at {when}: version {v}" for when, v in zip(times, (1, 2, 1))]


def test_history_prints_the_moves_and_names_a_move_made_outside_the_pipeline(moved, tmp_path):
    import mlflow

    listed = registry_command("history", "--json", "--model", NAME, store=moved)
    assert listed.returncode == 0, listed.stderr
    assert [(m["alias"], m["to_version"]) for m in json.loads(listed.stdout)] == [(a, t) for a, _, t, _ in
                                                                                 EXPECTED_MOVES]
    text = registry_command("history", "--model", NAME, store=moved)
    assert "champion      v2 -> v1    by hand (promote)" in text.stdout and "history: note" not in text.stderr
    assert "manual promotion (v2 misses drains); test set test-a" in text.stdout
    client = mlflow.MlflowClient(tracking_uri=moved, registry_uri=moved)
    client.set_registered_model_alias(NAME, "champion", "3")  # as the MLflow UI would, unrecorded
    try:
        noted = registry_command("history", "--model", NAME, store=moved)
        assert "history: note: the champion alias is now on 3 but the history's last move put it on 1" in noted.stderr
    finally:
        client.set_registered_model_alias(NAME, "champion", "1")


def test_a_time_is_read_in_utc_unless_it_says_otherwise():
    assert parse_time("2026-12-04 10:30") == parse_time("2026-12-04T10:30:00Z") == \
        parse_time("2026-12-04T11:30:00+01:00")
    assert utc_text(parse_time("2026-12-04T10:30:05.250Z")) == "2026-12-04T10:30:05.250Z"
    with pytest.raises(ValueError, match="not a time: give ISO 8601"):
        parse_time("yesterday")


def test_history_of_a_missing_store_is_one_line_and_creates_nothing(tmp_path):
    store = f"sqlite:///{tmp_path / 'none' / 'mlflow.db'}"
    result = registry_command("history", store=store)
    assert result.returncode == 1 and result.stderr.count("\n") == 1 and "does not exist" in result.stderr
    assert not (tmp_path / "none").exists()
