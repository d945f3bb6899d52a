"""Does a 95% interval cover about 95% of the time? Simulated test sets of
about 5 films a patient, whose films are alike (as a patient's follow-ups
are), scored by the evaluate stage's own auc_intervals; the truth is the AUC
of the same generator on a population of 100,000 patients."""
from __future__ import annotations

import numpy as np
import pytest

from pipeline.core.labels import FINDINGS
from pipeline.core.metrics import auc_intervals, per_class_auc

pytestmark = pytest.mark.slow

# 600 sets: a binomial standard error of 0.9 points around 95%, so the
# 93-97% band tests the method rather than the luck of one seed
SETS = 600
PATIENTS = 60  # per simulated test set, about 300 films
RESAMPLES = 1000  # as evaluate.bootstrap
N_FINDINGS = len(FINDINGS)


def clustered_test_set(patients: int, rng: np.random.Generator):
    """(labels, scores, patient ids): 1 to 9 films a patient (mean 5); a
    patient's findings and most of each score's spread are the patient's."""
    films = rng.integers(1, 10, patients)
    patient_of = np.repeat(np.arange(patients), films)
    ill = rng.random((patients, N_FINDINGS)) < 0.3
    patient_score = rng.normal(size=(patients, N_FINDINGS)) + 1.2 * ill
    scores = patient_score[patient_of] + 0.4 * rng.normal(size=(len(patient_of), N_FINDINGS))
    return ill[patient_of].astype(int), 1 / (1 + np.exp(-scores)), patient_of


def true_mean_auc() -> float:
    labels, scores, _ = clustered_test_set(100_000, np.random.default_rng(2024))
    return float(np.mean(list(per_class_auc(labels, scores).values())))


def coverage(by_patient: bool, sets: int = SETS) -> float:
    truth = true_mean_auc()
    rng = np.random.default_rng(7)
    covered = 0
    for k in range(sets):
        labels, scores, patients = clustered_test_set(PATIENTS, rng)
        units = patients if by_patient else np.arange(len(labels))  # every film its own "patient"
        low, high = auc_intervals(labels, scores, units, RESAMPLES, seed=k)["mean_auc_ci"]
        covered += low <= truth <= high
    return covered / sets


def test_the_mean_auc_interval_covers_about_95_percent():
    rate = coverage(by_patient=True)
    print(f"patient bootstrap: the mean-AUC 95% CI covered the true mean AUC in {rate:.1%} of {SETS} test sets")
    assert 0.93 <= rate <= 0.97


def test_a_film_level_bootstrap_fails_the_same_check():
    """The check can fail: resampling films, as the evaluate stage did before,
    treats a patient's alike films as independent evidence."""
    rate = coverage(by_patient=False, sets=200)
    print(f"film bootstrap: the mean-AUC 95% CI covered the true mean AUC in {rate:.1%} of 200 test sets")
    assert rate < 0.93
