import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from pipeline.evaluate import (
    FALLBACK_THRESHOLD,
    choose_threshold,
    evaluation_metrics,
    mean_of_defined,
    per_class_auc,
)
from pipeline.labels import FINDINGS


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
