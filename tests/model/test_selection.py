"""The paired comparison of challenger and champion, and the promotion rule."""
from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from pipeline.core.labels import FINDINGS
from pipeline.core.settings import PromotionSettings
from pipeline.model.promotion import RULE_FINDING, RULE_MEAN, RULE_PROMOTED, apply_rule
from pipeline.model.selection import paired_auc_comparison, patient_resample_counts

N_FINDINGS = len(FINDINGS)


def promotion_decision(comparison: dict, margin: float, max_class_drop: float) -> tuple[bool, str, list[str]]:
    """The promotion rule in force on a comparison alone (no subgroup check)."""
    settings = PromotionSettings(margin, max_class_drop, resamples=1000, subgroups=False, strata=False)
    outcome = apply_rule(comparison, None, settings)
    return outcome.promote, outcome.rule, outcome.reasons


def scored_test_set(n: int = 300, seed: int = 0):
    """Labels with every finding present, a fair model's scores, and 3 films per patient."""
    rng = np.random.default_rng(seed)
    labels = (rng.random((n, N_FINDINGS)) < 0.3).astype(int)
    scores = np.clip(labels * 0.3 + rng.normal(0.35, 0.2, labels.shape), 0, 1)
    patients = np.repeat(np.arange(n // 3), 3)
    return labels, scores, patients


def test_an_image_weighs_as_often_as_its_patient_was_drawn():
    patients = ["p1", "p1", "p2", "p3", "p3", "p3"]
    for counts in patient_resample_counts(patients, resamples=40, seed=1, block=16):
        assert counts.shape[1] == 6
        assert (counts[:, 0] == counts[:, 1]).all() and (counts[:, 3] == counts[:, 5]).all()
        # three patients drawn per resample: the weights of one film per patient add up to 3
        assert (counts[:, [0, 2, 3]].sum(1) == 3).all()


def test_bootstrap_differences_match_a_direct_computation():
    labels, scores, patients = scored_test_set(60, seed=2)
    other = np.clip(scores + np.random.default_rng(3).normal(0, 0.1, scores.shape), 0, 1)
    counts = next(patient_resample_counts(patients, resamples=1, seed=9))[0]
    rows = np.repeat(np.arange(len(labels)), counts)  # the resample as a list of images
    finding = 4
    expected = (roc_auc_score(labels[rows, finding], scores[rows, finding])
                - roc_auc_score(labels[rows, finding], other[rows, finding]))
    from pipeline.core.metrics import weighted_aucs

    got = (weighted_aucs(labels[:, finding], scores[:, finding], counts[None])
           - weighted_aucs(labels[:, finding], other[:, finding], counts[None]))[0]
    assert got == pytest.approx(expected, abs=1e-12)


def test_identical_predictions_differ_by_zero_and_are_promoted():
    labels, scores, patients = scored_test_set()
    comparison = paired_auc_comparison(labels, scores, scores.copy(), patients, resamples=200, seed=0)
    assert comparison["mean_auc_diff"] == 0.0 and comparison["mean_auc_diff_ci"] == [0.0, 0.0]
    assert all(comparison["auc_diff"][f] == 0.0 for f in FINDINGS)
    assert comparison["test_images"] == 300 and comparison["test_patients"] == 100
    promoted, rule, reasons = promotion_decision(comparison, margin=0.02, max_class_drop=0.05)
    assert promoted and rule == RULE_PROMOTED and "-0.02" in reasons[0]


def test_a_challenger_far_worse_on_one_finding_is_refused_naming_it():
    labels, champion, patients = scored_test_set()
    challenger = champion.copy()
    mass = FINDINGS.index("Mass")
    challenger[:, mass] = 1 - challenger[:, mass]  # Mass inverted: its AUC falls below 0.5
    comparison = paired_auc_comparison(labels, challenger, champion, patients, resamples=300, seed=0)
    assert comparison["auc_diff"]["Mass"] < -0.3 and comparison["auc_diff_ci"]["Mass"][1] < -0.05
    assert all(comparison["auc_diff"][f] == 0.0 for f in FINDINGS if f != "Mass")
    promoted, rule, reasons = promotion_decision(comparison, margin=0.5, max_class_drop=0.05)
    assert not promoted and rule == RULE_FINDING
    assert len(reasons) == 1 and reasons[0].startswith("Mass AUC difference")


def test_a_challenger_worse_overall_fails_non_inferiority():
    labels, champion, patients = scored_test_set()
    noise = np.random.default_rng(5).normal(0, 0.4, champion.shape)
    challenger = np.clip(champion + noise, 0, 1)
    comparison = paired_auc_comparison(labels, challenger, champion, patients, resamples=300, seed=0)
    low, high = comparison["mean_auc_diff_ci"]
    assert low < comparison["mean_auc_diff"] < high < 0
    promoted, rule, reasons = promotion_decision(comparison, margin=0.02, max_class_drop=0.5)
    assert not promoted and rule == RULE_MEAN and "mean AUC difference" in reasons[0]


def test_a_finding_without_both_classes_is_left_out_of_the_mean():
    labels, scores, patients = scored_test_set()
    labels[:, 0] = 0  # no Atelectasis positives in this test set
    comparison = paired_auc_comparison(labels, scores, scores, patients, resamples=50, seed=0)
    assert comparison["auc_diff"][FINDINGS[0]] is None
    assert comparison["auc_diff_ci"][FINDINGS[0]] == [None, None]
    assert comparison["mean_auc_diff"] == 0.0


def test_mismatched_rows_are_refused():
    labels, scores, patients = scored_test_set()
    with pytest.raises(ValueError, match="one row per test image"):
        paired_auc_comparison(labels, scores, scores[:-1], patients, resamples=10, seed=0)


def test_subgroup_refusals_name_each_worse_slice():
    from pipeline.model.promotion import subgroup_refusals

    regression = {
        "worse_slices": ["age/0-20"],
        "sex": {"F": {"worse": False, "difference": 0.01, "ci": [-0.02, 0.04], "champion_rate": 0.3,
                      "challenger_rate": 0.31}},
        "age": {"0-20": {"worse": True, "difference": 0.2, "ci": [0.05, 0.35], "champion_rate": 0.3,
                         "challenger_rate": 0.5}},
    }
    (reason,) = subgroup_refusals(regression)
    assert reason.startswith("underdiagnosis in age 0-20 +0.2") and "0.300 -> 0.500" in reason
    assert subgroup_refusals({"worse_slices": [], "sex": {}, "age": {}}) == []
