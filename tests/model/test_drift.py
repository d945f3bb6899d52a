"""The drift test's statistics against textbook references (scipy.stats), and
its error rates by simulation: no drift flags about alpha at most, a real
shift is found, and films lacking a feature leave that feature's test only."""
from __future__ import annotations

import numpy as np
import pytest
from scipy import stats

from pipeline.monitor.drift import (
    Feature,
    chi_square_statistics,
    detect_drift,
    ks_statistics,
    mmd_statistics,
    permutation_p,
    split_labels,
)

RNG = np.random.default_rng(7)


def observed(n_reference: int, n_new: int) -> np.ndarray:
    return split_labels(n_reference, n_new, 0, RNG)


@pytest.mark.parametrize("kind", ["continuous", "integers with ties"])
def test_ks_statistic_is_scipys(kind):
    for _ in range(20):
        if kind == "continuous":
            a, b = RNG.normal(size=60), RNG.normal(0.3, size=90)
        else:
            a, b = RNG.integers(20, 80, 60).astype(float), RNG.integers(25, 85, 90).astype(float)
        assert ks_statistics(np.r_[a, b], observed(60, 90))[0] == pytest.approx(stats.ks_2samp(a, b).statistic)


def test_chi_square_statistic_is_scipys():
    for _ in range(20):
        codes = RNG.integers(0, 4, 150)
        codes[:4] = [0, 1, 2, 3]  # every category present
        table = np.array([[np.sum(codes[60:] == k) for k in range(4)], [np.sum(codes[:60] == k) for k in range(4)]])
        expected = stats.chi2_contingency(table, correction=False).statistic
        assert chi_square_statistics(codes, observed(60, 90))[0] == pytest.approx(expected)


def test_mmd_is_the_v_statistic_of_gretton_2012():
    x, y = RNG.normal(size=(30, 3)), RNG.normal(0.5, size=(40, 3))
    rows = np.vstack([x, y])
    squared = ((rows[:, None] - rows[None]) ** 2).sum(-1)
    bandwidth = np.median(squared[np.triu_indices(70, 1)])
    kernel = np.exp(-squared / (2 * bandwidth))
    expected = kernel[:30, :30].mean() + kernel[30:, 30:].mean() - 2 * kernel[:30, 30:].mean()
    assert mmd_statistics(rows, observed(30, 40))[0] == pytest.approx(expected)


def test_permutation_p_is_never_zero():
    assert permutation_p(np.zeros(999), 5.0) == pytest.approx(1 / 1000)
    assert permutation_p(np.full(99, 5.0), 5.0) == 1.0


def null_features(rng, n_reference=60, n_new=50, shift=0.0):
    sex = np.array(["M", "F"], dtype=object)
    return [
        *(Feature(f"grey_{i}", "image", "continuous", rng.normal(size=n_reference), rng.normal(shift, size=n_new))
          for i in range(4)),
        *(Feature(f"p_{i}", "output", "continuous", rng.beta(2, 5, n_reference), rng.beta(2, 5, n_new))
          for i in range(6)),
        Feature("sex", "patient", "categorical", rng.choice(sex, n_reference), rng.choice(sex, n_new)),
        Feature("embedding", "embedding", "embedding", rng.normal(size=(n_reference, 8)),
                rng.normal(size=(n_new, 8))),
    ]


def test_no_drift_raises_at_most_alpha_false_alarms_and_raw_p_values_are_uniform():
    """Under no drift: the verdict's false alarms at most alpha (5%), and each
    feature's own permutation p about uniform (it fires about 5% at 0.05)."""
    rng = np.random.default_rng(11)
    runs = 300
    alarms, raw_p = 0, []
    for seed in range(runs):
        result = detect_drift(null_features(rng), permutations=200, alpha=0.05, seed=seed)
        alarms += result.verdict == "drift"
        raw_p += [f.p for f in result.features]
    rate = alarms / runs
    # 300 runs: a true rate of 5% gives at most 9.3% at the 99.9% binomial bound
    assert rate <= 0.093, rate
    raw_p = np.array(raw_p)
    assert 0.03 <= np.mean(raw_p <= 0.05) <= 0.07, np.mean(raw_p <= 0.05)
    assert stats.kstest(raw_p, "uniform").statistic < 0.05


def test_a_shift_in_one_group_is_found_and_named():
    """Every run finds it and flags a shifted feature; an unshifted one is
    flagged in few runs (family-wise error alpha / 2 = 2.5%: at most 3 of 20
    runs but with chance below 0.2%)."""
    rng = np.random.default_rng(12)
    shifted = {f"grey_{i}" for i in range(4)}
    found, false_flags, scores = 0, 0, []
    for seed in range(20):
        result = detect_drift(null_features(rng, shift=1.0), permutations=300, seed=seed)
        found += result.verdict == "drift"
        flagged = {f.name for f in result.features if f.flagged}
        assert flagged & shifted, flagged
        false_flags += bool(flagged - shifted)
        scores.append(result.score)
    assert found == 20
    assert false_flags <= 3
    null_scores = [detect_drift(null_features(rng), permutations=300, seed=seed).score for seed in range(20)]
    assert np.median(scores) > max(null_scores), (scores, null_scores)


def test_films_without_a_feature_leave_that_test_only():
    rng = np.random.default_rng(13)
    features = null_features(rng)
    ages_new = np.full(50, np.nan)
    features.append(Feature("age", "patient", "continuous", rng.normal(50, 10, 60), ages_new))
    constant = Feature("width", "file", "continuous", np.full(60, 1024.0), np.full(50, 1024.0))
    result = detect_drift([*features, constant], permutations=100)
    by_name = {f.name: f for f in result.features}
    assert by_name["age"].not_tested.startswith("too few films with it (reference 60, new 0")
    assert by_name["width"].not_tested == "one value only (1024)"
    assert by_name["sex"].z is not None and by_name["age"].z is None


def test_no_testable_feature_is_an_error():
    constant = Feature("width", "file", "continuous", np.full(10, 1.0), np.full(10, 1.0))
    with pytest.raises(ValueError, match="no feature could be tested: width: one value only"):
        detect_drift([constant], permutations=10)


def clustered_features(rng, patients_reference=40, patients_new=30, films=3):
    """Films of one patient alike (patient SD 1, film SD 0.4), as a phantom's or a hospital's are."""
    def sample(patients):
        base = np.repeat(rng.normal(size=(patients, 4)), films, axis=0)
        return base + 0.4 * rng.normal(size=base.shape), np.repeat(np.arange(patients), films)

    (reference, reference_ids), (new, new_ids) = sample(patients_reference), sample(patients_new)
    features = [Feature(f"grey_{i}", "image", "continuous", reference[:, i], new[:, i]) for i in range(4)]
    return features, reference_ids, new_ids + 1000


def test_films_of_one_patient_move_together_or_false_alarms_multiply():
    """Shuffling films as if independent, when a patient's films look alike,
    raises many false alarms; shuffling patients keeps them at alpha or below."""
    rng = np.random.default_rng(14)
    runs = 150
    by_patient = by_film = 0
    for seed in range(runs):
        features, reference_ids, new_ids = clustered_features(rng)
        by_patient += detect_drift(features, 200, 0.05, seed, reference_ids, new_ids).verdict == "drift"
        by_film += detect_drift(features, 200, 0.05, seed).verdict == "drift"
    assert by_patient / runs <= 0.093, by_patient / runs  # 99.9% binomial bound of 5% over 150 runs: 10.7%
    assert by_film / runs >= 0.15, by_film / runs
