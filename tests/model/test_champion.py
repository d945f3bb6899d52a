"""The evaluate stage's champion re-scoring, on a real MLflow store and real
TFRecord shards: the champion is scored on the current test split by the same
code path, and a champion that cannot be loaded means no promotion, in one line."""
from __future__ import annotations

import dataclasses
import json
import shutil

import numpy as np
import pytest

from pipeline.core.labels import FINDINGS
from pipeline.model.architectures import build_model
from pipeline.model.champion import SplitScores, champion_decision
from pipeline.model.promotion import RULE_FIRST, RULE_NO_CHAMPION_SCORES, RULE_PROMOTED
from pipeline.model.registry import register_model, registry_model_metadata
from pipeline.model.scoring import predict_split
from pipeline.records.preprocess import write_tfrecord_shards
from tests.conftest import build_manifest, mlflow_store, section_settings

NAME = "chestxray"
FIRST = {"promote": True, "rule": RULE_FIRST, "reasons": ["first"], "champion_version": None, "comparison": None}


@pytest.fixture
def shards(small_nih_root, tmp_path):
    """12 small real PNGs at 32 px; 40% of the patients in test."""
    manifest, _ = build_manifest(small_nih_root, {"method": "random", "train": 0.4, "val": 0.2, "test": 0.4}, seed=1)
    out = tmp_path / "tfrecords"
    out.mkdir()
    index, _ = write_tfrecord_shards(manifest, out, image_size=32, shard_size=100)
    (out / "index.json").write_text(json.dumps(index))
    return out


def register(store: str, tmp_path, model, decision=FIRST) -> int:
    metadata = registry_model_metadata({f: 0.5 for f in FINDINGS}, {"image_size": model.inputs[0].shape[1],
                                                                    "fit": "crop"}, {"mean_auc": 0.5, "auc": {}})
    with mlflow_store(store) as mlflow:
        experiment = mlflow.get_experiment_by_name("champion-tests")
        experiment_id = (experiment.experiment_id if experiment else mlflow.create_experiment(
            "champion-tests", artifact_location=(tmp_path / "artifacts").as_uri()))
        with mlflow.start_run(experiment_id=experiment_id):
            return register_model(mlflow, model, NAME, metadata, {}, decision)["version"]


# 12 films of a few patients: floors of one, so that the comparison runs at all
SMALL = section_settings("evaluate", min_slice_positives=1, min_slice_patients=1, batch_size=4,
                         promotion={"margin": 0.02, "max_class_drop": 0.05, "resamples": 100, "subgroups": False,
                                    "strata": False})


def decide(store, shards, probs, labels, ids, settings=SMALL, thresholds=None):
    challenger = SplitScores.of_split(shards, labels, probs, ids, thresholds)
    return champion_decision(NAME, store, shards, challenger, settings, seed=0)


@pytest.fixture
def store(tmp_path):
    return f"sqlite:///{tmp_path / 'mlflow.db'}"


def test_the_first_version_is_promoted(store, shards):
    model = build_model("small_cnn", 32, "none")
    probs, labels, ids = predict_split(model, shards, "test", 4)
    decision = decide(store, shards, probs, labels, ids)
    assert decision["promote"] and decision["rule"] == RULE_FIRST and decision["comparison"] is None


def test_the_champion_is_scored_on_the_same_test_images(store, shards, tmp_path):
    model = build_model("small_cnn", 32, "none")
    assert register(store, tmp_path, model) == 1
    probs, labels, ids = predict_split(model, shards, "test", 4)
    decision = decide(store, shards, probs, labels, ids)  # the challenger is the champion itself
    comparison = decision["comparison"]
    assert decision["champion_version"] == 1 and comparison["test_images"] == len(ids) > 0
    assert comparison["mean_auc_diff"] in (0.0, None)
    assert all(v in (0.0, None) for v in comparison["auc_diff"].values())
    assert decision["promote"] and decision["rule"] == RULE_PROMOTED


def test_a_champion_of_another_image_size_is_scored_on_resized_records(store, shards, tmp_path):
    champion = build_model("small_cnn", 24, "none")
    register(store, tmp_path, champion)
    challenger = build_model("small_cnn", 32, "none")
    probs, labels, ids = predict_split(challenger, shards, "test", 4)
    decision = decide(store, shards, probs, labels, ids)
    assert decision["comparison"]["champion_image_size"] == 24
    expected, _, _ = predict_split(champion, shards, "test", 4)  # resized inside predict_split
    assert expected.shape == probs.shape and not np.allclose(expected, probs)


def test_a_champion_whose_artifacts_were_deleted_means_no_promotion_in_one_line(store, shards, tmp_path):
    model = build_model("small_cnn", 32, "none")
    register(store, tmp_path, model)
    shutil.rmtree(tmp_path / "artifacts")
    probs, labels, ids = predict_split(model, shards, "test", 4)
    decision = decide(store, shards, probs, labels, ids)
    assert not decision["promote"] and decision["rule"] == RULE_NO_CHAMPION_SCORES
    (reason,) = decision["reasons"]
    assert reason.startswith("champion version 1 could not be scored: ") and "\n" not in reason


PLATT = {"method": "platt", "findings": {f: {"kind": "platt", "slope": 0.5, "intercept": -1.0} for f in FINDINGS}}


def test_a_recalibrated_version_serves_recalibrated_probabilities(store, shards, tmp_path):
    """The recalibration fitted by evaluate travels in the version's metadata:
    load_model (and so `cxr`) and the MLflow pyfunc both apply it."""
    from pipeline.core.recalibration import apply_recalibration
    from pipeline.serve.predict import load_model

    model = build_model("small_cnn", 32, "none")
    metadata = registry_model_metadata({f: 0.5 for f in FINDINGS}, {"image_size": 32, "fit": "crop"},
                                       {"mean_auc": 0.5, "auc": {}}, recalibration=PLATT)
    with mlflow_store(store) as mlflow:
        experiment_id = mlflow.create_experiment("recal", artifact_location=(tmp_path / "artifacts").as_uri())
        with mlflow.start_run(experiment_id=experiment_id):
            version = register_model(mlflow, model, NAME, metadata, {}, FIRST)["version"]
        images = np.random.default_rng(0).uniform(0, 255, (3, 32, 32, 1)).astype(np.float32)
        raw = model.predict(images, verbose=0)
        expected = apply_recalibration(PLATT, raw)
        served = load_model(f"models:/{NAME}/{version}", tracking_uri=store)
        assert served.recalibration == PLATT
        np.testing.assert_allclose(served.predict(images), expected, atol=1e-5)
        pyfunc = mlflow.pyfunc.load_model(f"models:/{NAME}/{version}")
        np.testing.assert_allclose(pyfunc.predict({"image": images})[list(FINDINGS)].to_numpy(dtype=float), expected,
                                   atol=1e-5)
    assert not np.allclose(raw, expected, atol=1e-3)


def test_the_subgroup_check_runs_when_asked_and_names_small_slices(store, shards, tmp_path):
    model = build_model("small_cnn", 32, "none")
    register(store, tmp_path, model)
    probs, labels, ids = predict_split(model, shards, "test", 4)
    with_subgroups = dataclasses.replace(SMALL, promotion=dataclasses.replace(SMALL.promotion, subgroups=True))
    decision = decide(store, shards, probs, labels, ids, with_subgroups, thresholds={f: 0.5 for f in FINDINGS})
    check = decision["subgroups"]
    assert set(check) >= {"sex", "age", "worse_slices"} and check["worse_slices"] == []
    # the same model on both sides: a slice is too small, or its difference has no spread to test
    assert all("reason" in figures and figures["ci"] is None for figures in check["sex"].values()), check["sex"]
    assert decision["promote"]
    plain = decide(store, shards, probs, labels, ids)
    assert plain["subgroups"] is None


RULE_NOT_SUPERIOR = "refused: mean AUC difference CI lower bound not above 0 (superiority)"


def superiority(comparison, subgroups, settings):
    """A stricter rule a team might swap in: the challenger must be better, not only no worse."""
    from pipeline.model.promotion import Outcome

    low, _ = comparison["mean_auc_diff_ci"]
    if low is not None and low > 0:
        return Outcome(True, "superior: mean AUC difference CI lower bound above 0", ["better"])
    return Outcome(False, RULE_NOT_SUPERIOR, [f"mean AUC difference CI lower bound {low} is not above 0"])


def test_a_promotion_rule_swapped_in_one_place_changes_the_decision_and_its_recorded_sentence(
        store, shards, tmp_path, monkeypatch):
    from pipeline.model import promotion

    model = build_model("small_cnn", 32, "none")
    register(store, tmp_path, model)
    probs, labels, ids = predict_split(model, shards, "test", 4)
    assert decide(store, shards, probs, labels, ids)["rule"] == RULE_PROMOTED  # the same model: non-inferior
    monkeypatch.setattr(promotion, "RULE", superiority)  # the one change
    decision = decide(store, shards, probs, labels, ids)
    assert not decision["promote"] and decision["rule"] == RULE_NOT_SUPERIOR
    version = register(store, tmp_path, model, decision)
    with mlflow_store(store) as mlflow:
        tags = mlflow.MlflowClient().get_model_version(NAME, str(version)).tags
    assert tags[promotion.RULE_TAG] == RULE_NOT_SUPERIOR and tags[promotion.DECISION_TAG] == promotion.CHALLENGER
