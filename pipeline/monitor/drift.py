"""Is a batch of new films drawn like the reference? One joint permutation test.

Every feature's two-sample statistic is computed on the observed split of the
pooled films (reference | new) and on the same `permutations` random
re-splits. A re-split moves patients, not films: the films of one patient
look alike (on the phantom, as in a hospital, a patient's films differ far
less than two patients' do), so shuffling films would treat them as
independent and raise false alarms (benchmarks/RESULTS.md, bench_drift_monitor);
films of an unknown patient move alone.
So:
  - each statistic is put on one scale, z = (s - null mean) / null sd, its
    null taken from the permutations (a feature "moved" by z null SDs);
  - the combined drift score is the mean z of each group of features (file,
    image, patient, output, embedding), averaged over the groups: every kind of
    evidence counts once however many features it has;
  - a feature is flagged by the Westfall-Young single-step maxT rule: its
    adjusted p is the share of permutations whose largest z reaches its z,
    which holds the family-wise error at alpha whatever the features'
    correlation (Westfall & Young 1993, Resampling-based multiple testing);
  - the verdict is drift when the combined score's permutation p, or the
    smallest adjusted p, is at most alpha / 2 (Bonferroni over the two looks:
    false alarms at most alpha in all).

Statistics: Kolmogorov-Smirnov D for a number, the chi-square statistic of the
2 x k table for a category, and the (biased, V-statistic) squared maximum mean
discrepancy with a Gaussian kernel for a vector (Gretton et al., JMLR 2012),
its bandwidth the median distance of the pooled sample. Films lacking a
feature (no age, say) leave that feature's test only.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

MIN_FILMS = 5  # a feature is tested only with at least this many films on each side


@dataclass(frozen=True)
class Feature:
    """One feature of the films: reference and new values (NaN / None = unknown;
    2-D rows for an embedding)."""

    name: str
    group: str
    kind: str
    reference: np.ndarray
    new: np.ndarray


@dataclass(frozen=True)
class FeatureResult:
    name: str
    group: str
    kind: str
    statistic: float | None
    z: float | None
    p: float | None  # this feature's own permutation p
    p_adjusted: float | None  # Westfall-Young maxT: family-wise
    flagged: bool
    films: tuple[int, int]  # (reference, new) films that have it
    not_tested: str | None = None  # why, when it could not be tested


@dataclass(frozen=True)
class DriftResult:
    score: float
    score_p: float
    critical_z: float  # a feature whose z reaches this is flagged (the maxT null's 1 - alpha/2 quantile)
    verdict: str  # "drift" | "no drift"
    alpha: float
    permutations: int
    features: list[FeatureResult]


def group_codes(groups: Sequence | None, n: int) -> np.ndarray:
    """0..k-1 per film: its patient's code, a code of its own where the patient is unknown (None)."""
    keys = [f"film {i}" if groups is None or groups[i] is None else f"patient {groups[i]}" for i in range(n)]
    return np.unique(keys, return_inverse=True)[1] if n else np.zeros(0, int)


def split_labels(n_reference: int, n_new: int, permutations: int, rng: np.random.Generator,
                 reference_groups: Sequence | None = None, new_groups: Sequence | None = None) -> np.ndarray:
    """(permutations + 1, n) booleans, True = counted as new; row 0 is the
    observed split, each other row a random re-split of the patients (groups;
    None = every film its own) between the two sides, as many new as observed."""
    reference = group_codes(reference_groups, n_reference)
    new = group_codes(new_groups, n_new)
    k_reference = int(reference.max()) + 1 if n_reference else 0
    film_group = np.r_[reference, new + k_reference]
    group_is_new = np.r_[np.zeros(k_reference, bool), np.ones(int(new.max()) + 1 if n_new else 0, bool)]
    rows = [group_is_new] + [rng.permutation(group_is_new) for _ in range(permutations)]
    return np.stack(rows)[:, film_group]


def ks_statistics(values: np.ndarray, is_new: np.ndarray) -> np.ndarray:
    """Two-sample Kolmogorov-Smirnov D for every row of `is_new` (rows x n) over `values` (n,)."""
    order = np.argsort(values, kind="stable")
    sorted_values = values[order]
    # the empirical CDFs are compared only where a run of equal values ends
    ends = np.r_[np.flatnonzero(np.diff(sorted_values) != 0), sorted_values.size - 1]
    labels = is_new[:, order]
    # a re-split of patients may leave one side without a film that has the feature
    n_new = np.maximum(labels.sum(axis=1, keepdims=True), 1)
    n_ref = np.maximum(labels.shape[1] - labels.sum(axis=1, keepdims=True), 1)
    new_cdf = np.cumsum(labels, axis=1)[:, ends] / n_new
    ref_cdf = (ends + 1 - np.cumsum(labels, axis=1)[:, ends]) / n_ref
    return np.abs(new_cdf - ref_cdf).max(axis=1)


def chi_square_statistics(codes: np.ndarray, is_new: np.ndarray) -> np.ndarray:
    """Pearson's chi-square of the 2 x k table (new / reference x category) for every row."""
    k = int(codes.max()) + 1
    onehot = np.eye(k)[codes]
    new_counts = is_new.astype(float) @ onehot
    totals = onehot.sum(axis=0)
    ref_counts = totals - new_counts
    n_new = is_new.sum(axis=1, keepdims=True)
    n = codes.size
    expected_new = np.maximum(n_new * totals / n, 1e-12)  # no new film at all: the table's row is empty
    expected_ref = np.maximum((n - n_new) * totals / n, 1e-12)
    return (((new_counts - expected_new) ** 2 / expected_new).sum(axis=1)
            + ((ref_counts - expected_ref) ** 2 / expected_ref).sum(axis=1))


def gaussian_kernel(rows: np.ndarray) -> np.ndarray:
    """exp(-d^2 / (2 s^2)) with s the median pairwise distance (the median heuristic)."""
    squared = np.maximum(((rows[:, None, :] - rows[None, :, :]) ** 2).sum(axis=-1), 0.0)
    upper = squared[np.triu_indices(len(rows), 1)]
    median = float(np.median(upper[upper > 0])) if np.any(upper > 0) else 1.0
    return np.exp(-squared / (2.0 * median))


def mmd_statistics(rows: np.ndarray, is_new: np.ndarray) -> np.ndarray:
    """Squared MMD (V-statistic) between the new and the reference rows, for every row of `is_new`."""
    kernel = gaussian_kernel(rows)
    new = is_new.astype(float)
    weights = (new / np.maximum(new.sum(axis=1, keepdims=True), 1)
               - (1 - new) / np.maximum((1 - new).sum(axis=1, keepdims=True), 1))
    return ((weights @ kernel) * weights).sum(axis=1)


def feature_statistics(feature: Feature, is_new: np.ndarray) -> tuple[np.ndarray | None, tuple[int, int], str | None]:
    """(statistic per row of is_new, (reference, new) films with the feature, why untested)."""
    values = np.concatenate([feature.reference, feature.new])
    if feature.kind == "categorical":
        known = np.array([v is not None and v == v for v in values])
    elif feature.kind == "embedding":
        known = np.isfinite(values).all(axis=1)
    else:
        values = values.astype(float)
        known = np.isfinite(values)
    n_ref = int(known[: len(feature.reference)].sum())
    films = (n_ref, int(known.sum()) - n_ref)
    if min(films) < MIN_FILMS:
        return None, films, f"too few films with it (reference {films[0]}, new {films[1]}; at least {MIN_FILMS})"
    values, labels = values[known], is_new[:, known]
    if feature.kind == "categorical":
        categories, codes = np.unique(values.astype(str), return_inverse=True)
        if len(categories) < 2:
            return None, films, f"one value only ({categories[0]})"
        return chi_square_statistics(codes, labels), films, None
    if feature.kind == "embedding":
        return mmd_statistics(values.astype(float), labels), films, None
    if np.ptp(values) == 0:
        return None, films, f"one value only ({values[0]:g})"
    return ks_statistics(values, labels), films, None


def permutation_p(null: np.ndarray, observed: float) -> float:
    """(1 + #null >= observed) / (1 + #null): never 0, exact under exchangeability."""
    return float((1 + np.count_nonzero(null >= observed - 1e-12)) / (1 + null.size))


def standardised(statistics: np.ndarray) -> np.ndarray | None:
    null = statistics[1:]
    spread = null.std()
    return None if spread == 0 else (statistics - null.mean()) / spread


def combined_scores(z_by_feature: dict[str, np.ndarray], groups: dict[str, str]) -> np.ndarray:
    """Per row: the mean z of each group, averaged over the groups."""
    by_group: dict[str, list[np.ndarray]] = {}
    for name, z in z_by_feature.items():
        by_group.setdefault(groups[name], []).append(z)
    return np.mean([np.mean(zs, axis=0) for zs in by_group.values()], axis=0)


def detect_drift(features: list[Feature], permutations: int = 1000, alpha: float = 0.05, seed: int = 0,
                 reference_patients: Sequence | None = None, new_patients: Sequence | None = None) -> DriftResult:
    """The joint permutation test of the module docstring over `features`
    (all with the same reference and new films, in the same order); each
    film's patient (None = unknown) in `*_patients`."""
    if not features:
        raise ValueError("no features to test")
    n_ref, n_new = len(features[0].reference), len(features[0].new)
    is_new = split_labels(n_ref, n_new, permutations, np.random.default_rng(seed), reference_patients, new_patients)
    statistics, z_by_feature, untested = {}, {}, {}
    for feature in features:
        stats, films, why = feature_statistics(feature, is_new)
        z = None if stats is None else standardised(stats)
        if stats is not None and z is None:
            why = "the same value on every permutation"
        statistics[feature.name] = (stats, films)
        if z is None:
            untested[feature.name] = why
        else:
            z_by_feature[feature.name] = z
    if not z_by_feature:
        reasons: dict[str, list[str]] = {}
        for name, why in untested.items():
            reasons.setdefault(why, []).append(name)
        raise ValueError("no feature could be tested: " + "; ".join(
            f"{', '.join(names[:3])}{f' and {len(names) - 3} more' if len(names) > 3 else ''}: {why}"
            for why, names in reasons.items()))
    groups = {f.name: f.group for f in features}
    combined = combined_scores(z_by_feature, groups)
    score_p = permutation_p(combined[1:], combined[0])
    max_null = np.max(np.stack(list(z_by_feature.values())), axis=0)[1:]
    results = []
    for feature in features:
        stats, films = statistics[feature.name]
        z = z_by_feature.get(feature.name)
        if z is None:
            results.append(FeatureResult(feature.name, feature.group, feature.kind, None, None, None, None, False,
                                         films, untested[feature.name]))
            continue
        adjusted = permutation_p(max_null, z[0])
        results.append(FeatureResult(feature.name, feature.group, feature.kind, float(stats[0]), float(z[0]),
                                     permutation_p(stats[1:], stats[0]), adjusted, adjusted <= alpha / 2, films))
    drift = score_p <= alpha / 2 or any(r.flagged for r in results)
    critical = float(np.quantile(max_null, 1 - alpha / 2)) if max_null.size else float("inf")
    return DriftResult(float(combined[0]), score_p, critical, "drift" if drift else "no drift", alpha, permutations,
                       results)

