import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from pipeline.core.labels import FINDINGS
from pipeline.core.metrics import (
    FALLBACK_THRESHOLD,
    choose_threshold,
    evaluation_metrics,
    mean_of_defined,
    per_class_auc,
)


def random_split(n=300, seed=0):
    rng = np.random.default_rng(seed)
    labels = (rng.random((n, 14)) < 0.2).astype(int)
    probs = np.clip(labels * 0.3 + rng.random((n, 14)) * 0.7, 0, 1)
    return labels, probs


def test_per_class_auc_matches_sklearn():
    labels, probs = random_split()
    auc = per_class_auc(labels, probs)
    assert list(auc) == list(FINDINGS)
    for i, finding in enumerate(FINDINGS):
        assert auc[finding] == pytest.approx(roc_auc_score(labels[:, i], probs[:, i]))
    assert mean_of_defined(auc) == pytest.approx(np.mean(list(auc.values())))


def test_auc_undefined_without_positives():
    labels, probs = random_split()
    labels[:, FINDINGS.index("Hernia")] = 0
    auc = per_class_auc(labels, probs)
    assert auc["Hernia"] is None
    assert mean_of_defined(auc) == pytest.approx(np.mean([v for v in auc.values() if v is not None]))


@pytest.mark.parametrize("method", ["youden", "max_f1"])
def test_threshold_separates_separable_scores(method):
    y = np.array([0, 0, 0, 0, 1, 1, 1])
    p = np.array([0.1, 0.2, 0.3, 0.35, 0.6, 0.7, 0.9])
    threshold = choose_threshold(y, p, method)
    assert 0.35 < threshold <= 0.6
    assert ((p >= threshold) == (y == 1)).all()


def test_thresholds_from_val_applied_to_test():
    val, test = random_split(seed=1), random_split(seed=2)
    val[0][:, FINDINGS.index("Hernia")] = 0
    metrics = evaluation_metrics((val[0], val[1]), (test[0], test[1]), "youden")
    assert metrics["thresholds"]["Hernia"] == FALLBACK_THRESHOLD
    assert metrics["thresholds_defaulted"] == ["Hernia"]
    threshold = metrics["thresholds"]["Mass"]
    i = FINDINGS.index("Mass")
    positive = test[0][:, i] == 1
    assert metrics["sensitivity"]["Mass"] == pytest.approx((test[1][positive, i] >= threshold).mean())
    assert metrics["test_images"] == 300 and set(metrics["auc"]) == set(FINDINGS)


def test_bootstrap_aucs_equal_sklearn_on_the_same_patient_resamples():
    from pipeline.core.bootstrap import patient_resample_counts
    from pipeline.core.metrics import bootstrap_aucs

    labels, probs = random_split(n=60, seed=3)
    probs = np.round(probs, 1)  # ties, which the rank formula counts as one half
    patients = np.arange(60) // 3  # three films a patient
    fast = bootstrap_aucs(labels, probs, patients, 40, seed=7)
    counts = np.concatenate(list(patient_resample_counts(patients, 40, 7)))
    for row, weights in zip(fast, counts):
        # a patient drawn twice brings all three of its films twice
        assert all(len(set(weights[patients == p])) == 1 for p in range(20))
        films = np.repeat(np.arange(60), weights)
        for i in range(14):
            y, p = labels[films, i], probs[films, i]
            expected = roc_auc_score(y, p) if 0 < y.sum() < len(y) else np.nan
            np.testing.assert_allclose(row[i], expected, atol=1e-12)


def test_auc_interval_contains_the_estimate_and_shrinks_with_n():
    from pipeline.core.metrics import auc_intervals

    widths = []
    for n in (200, 3200):
        labels, probs = random_split(n=n, seed=4)
        intervals = auc_intervals(labels, probs, np.arange(n), 300, seed=0)
        auc = per_class_auc(labels, probs)
        for f in FINDINGS:
            assert intervals["auc_ci_low"][f] <= auc[f] <= intervals["auc_ci_high"][f]
        low, high = intervals["mean_auc_ci"]
        assert low <= mean_of_defined(auc) <= high
        widths.append(np.mean([intervals["auc_ci_high"][f] - intervals["auc_ci_low"][f] for f in FINDINGS]))
    assert widths[1] < widths[0] / 2  # ~1/sqrt(n): 16x the images, a quarter of the width
    assert intervals["ci_method"] == "95% CI, percentile bootstrap over patients, 300 resamples"


def test_films_of_one_patient_widen_the_interval():
    """The same films as 60 patients of 5 or as 300 patients of 1: resampling
    patients keeps their films together, and a patient's films are alike here,
    so the interval must be wider than one that treats every film as independent."""
    from pipeline.core.metrics import auc_intervals

    rng = np.random.default_rng(11)
    patients = np.repeat(np.arange(60), 5)
    labels = np.repeat((rng.random((60, 14)) < 0.3).astype(int), 5, axis=0)
    probs = np.repeat(rng.random((60, 14)) * 0.6 + labels[::5] * 0.3, 5, axis=0) + rng.normal(0, 0.01, (300, 14))
    clustered = auc_intervals(labels, probs, patients, 400, seed=1)["mean_auc_ci"]
    independent = auc_intervals(labels, probs, np.arange(300), 400, seed=1)["mean_auc_ci"]
    assert clustered[1] - clustered[0] > 1.8 * (independent[1] - independent[0])


def test_a_finding_below_the_floor_is_not_a_figure_anywhere():
    labels, probs = random_split(n=300, seed=8)
    fibrosis = FINDINGS.index("Fibrosis")
    labels[:, fibrosis] = 0
    labels[np.argmax(probs[:, fibrosis]), fibrosis] = 1  # one positive, scored highest: AUC 1.0 on one film
    metrics = evaluation_metrics((labels, probs), (labels, probs), "youden", resamples=50,
                                 test_patients=np.arange(300))
    assert metrics["auc"]["Fibrosis"] is None
    assert metrics["auc_missing_reason"]["Fibrosis"] == "too few positives (n=1)"
    assert metrics["auc_ci_low"]["Fibrosis"] is None and metrics["auc_ci_high"]["Fibrosis"] is None
    assert metrics["mean_auc_findings"] == 13
    assert metrics["mean_auc"] == pytest.approx(np.mean([v for v in metrics["auc"].values() if v is not None]))
    few = evaluation_metrics((labels, probs), (labels, probs), "youden", resamples=50,
                             test_patients=np.arange(300) % 4)
    assert few["mean_auc_ci"] == [None, None] and few["ci_missing_reason"] == "too few patients (n=4)"


def test_nan_scores_are_an_error_naming_the_finding_and_split():
    from pipeline.core.metrics import ScoreError

    labels, probs = random_split(seed=9)
    val = probs.copy()
    val[5, FINDINGS.index("Mass")] = np.nan
    with pytest.raises(ScoreError, match=r"val scores are NaN or infinite for Mass \(1 film\(s\), first at row 5\)"):
        evaluation_metrics((labels, val), (labels, probs), "max_f1", resamples=10)
    test = probs.copy()
    test[:, FINDINGS.index("Edema")] = np.inf
    with pytest.raises(ScoreError, match="test scores .* Edema"):
        evaluation_metrics((labels, probs), (labels, test), "sensitivity", resamples=10)


def test_youden_call_nothing_lies_above_every_score():
    # every cut is worse than calling nothing: positives score lowest
    y = np.array([1, 1, 0, 0, 0])
    p = np.array([0.1, 0.2, 0.5, 0.9, 1.0])
    threshold = choose_threshold(y, p, "youden")
    assert threshold > 1.0
    assert not (p >= threshold).any()
    # a network's saturated float32 1.0, widened to float64 as every serving path does
    assert not np.asarray(np.float32(1.0), dtype=np.float64) >= threshold


def test_auprc_equals_sklearn_average_precision():
    from sklearn.metrics import average_precision_score

    from pipeline.core.metrics import per_class_auprc

    labels, probs = random_split(seed=5)
    auprc = per_class_auprc(labels, probs)
    for i, f in enumerate(FINDINGS):
        assert auprc[f] == pytest.approx(average_precision_score(labels[:, i], probs[:, i]))


def test_threshold_methods_on_a_hand_case():
    y = np.array([0, 0, 0, 1, 0, 1, 1, 1, 0, 1])
    p = np.array([0.1, 0.2, 0.3, 0.4, 0.35, 0.6, 0.7, 0.8, 0.85, 0.9])
    # youden: at 0.4 sens 1, spec 4/5 -> J 0.8; at 0.6 sens 4/5, spec 4/5 -> J 0.6
    assert choose_threshold(y, p, "youden") == pytest.approx(0.4)
    # max_f1: at 0.4 TP 5, FP 1 -> F1 10/11; at 0.6 TP 4, FP 1 -> 8/10
    assert choose_threshold(y, p, "max_f1") == pytest.approx(0.4)
    # sensitivity 0.8: 4 of 5 positives (0.9, 0.8, 0.7, 0.6) -> 0.6; 0.6 of them -> 3 -> 0.7
    assert choose_threshold(y, p, "sensitivity", target_sensitivity=0.8) == pytest.approx(0.6)
    assert choose_threshold(y, p, "sensitivity", target_sensitivity=0.6) == pytest.approx(0.7)
    assert choose_threshold(y, p, "sensitivity", target_sensitivity=1.0) == pytest.approx(0.4)
    with pytest.raises(ValueError, match="sensitivity"):
        choose_threshold(y, p, "median")


def test_operating_point_metrics_on_a_hand_case():
    from pipeline.core.metrics import operating_point_metrics

    labels = np.zeros((6, 14), int)
    probs = np.zeros((6, 14))
    labels[:, 0] = [1, 1, 1, 0, 0, 0]
    probs[:, 0] = [0.9, 0.8, 0.1, 0.7, 0.2, 0.1]  # at 0.5: TP 2, FN 1, FP 1, TN 2
    thresholds = {f: 0.5 for f in FINDINGS}
    figures = operating_point_metrics(labels, probs, thresholds)
    a = FINDINGS[0]
    assert figures["sensitivity"][a] == pytest.approx(2 / 3) and figures["specificity"][a] == pytest.approx(2 / 3)
    assert figures["ppv"][a] == pytest.approx(2 / 3) and figures["npv"][a] == pytest.approx(2 / 3)
    assert figures["f1"][a] == pytest.approx(2 / 3) and figures["accuracy"][a] == pytest.approx(4 / 6)
    # the other findings: no positive, nothing called -> sensitivity and PPV undefined, all right
    assert figures["sensitivity"][FINDINGS[1]] is None and figures["ppv"][FINDINGS[1]] is None
    assert figures["accuracy"][FINDINGS[1]] == 1.0
    assert figures["exact_match_accuracy"] == pytest.approx(4 / 6)


def test_curves_and_manifest_hash():
    from pipeline.core.metrics import curves, manifest_hash

    labels, probs = random_split(seed=6)
    drawn = curves(labels, probs)
    assert list(drawn["roc"]) == list(FINDINGS) and list(drawn["pr"]) == list(FINDINGS)
    roc = drawn["roc"]["Mass"]
    assert roc[0]["fpr"] == 0 and roc[-1]["fpr"] == 1 and roc[-1]["tpr"] == 1
    ids = [f"{k:05d}.png" for k in range(len(labels))]
    order = np.random.default_rng(0).permutation(len(labels))
    assert manifest_hash(ids, labels) == manifest_hash([ids[k] for k in order], labels[order])
    changed = labels.copy()
    changed[0, 0] ^= 1
    assert manifest_hash(ids, labels) != manifest_hash(ids, changed)


def test_a_threshold_from_one_positive_film_defaults_and_is_listed():
    """A one-patient validation split gave Youden cuts of 1.0 (that film's own score), never flagged."""
    val, test = random_split(seed=1), random_split(seed=2)
    mass, edema = FINDINGS.index("Mass"), FINDINGS.index("Edema")
    val[0][:, mass] = 0
    val[0][0, mass] = 1  # one positive
    val[0][:, edema] = 1
    val[0][:2, edema] = 0  # two negatives: enough (MIN_THRESHOLD_FILMS)
    metrics = evaluation_metrics((val[0], val[1]), (test[0], test[1]), "youden")
    assert metrics["thresholds"]["Mass"] == FALLBACK_THRESHOLD and "Mass" in metrics["thresholds_defaulted"]
    assert "Edema" not in metrics["thresholds_defaulted"]
