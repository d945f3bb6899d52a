"""The subgroup gap test: is the largest gap between an attribute's slices
more than slice membership alone would give? (pipeline.model.subgroups'
notes say why this test and not an interval.)

The statistic is the largest standardised gap among the slices: a pair's
difference over sqrt(1/n_i + 1/n_j), n a slice's ill films (underdiagnosis
rate) or films (mean AUC). Its reference distribution comes from shuffles of
slice membership: each (patient, slice) group of films is dealt to a slice
at random, slice sizes kept, so that a patient's films move together. The
metrics of one attribute share the shuffles and are adjusted together by
Westfall and Young's min-p. Under no true gap a permutation test flags at
most its level of the time, whatever the slice sizes.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from pipeline.core.bootstrap import RESAMPLE_BLOCK, mean_over, weighted_aucs, weighted_share
from pipeline.core.labels import NUM_FINDINGS


@dataclass
class AttributeFilms:
    """One attribute's films, as the gap test shuffles them: per image its
    slice, its (patient, slice) group, and what the metrics need."""

    labels: np.ndarray
    probs: np.ndarray
    missed: np.ndarray
    ill: np.ndarray
    slice_of: np.ndarray  # each image's slice name, "" for none
    patients: np.ndarray


def slice_metric(films: AttributeFilms, metric: str, weights: np.ndarray,
                 findings: Sequence[int]) -> tuple[np.ndarray, np.ndarray]:
    """(a metric of a slice, the count its noise scales with) for each row of
    image weights (0/1 membership): the underdiagnosis rate and the slice's
    ill films, or the mean AUC and the slice's films."""
    if metric == "underdiagnosis_rate":
        return weighted_share(weights, films.missed, films.ill), weights @ films.ill.astype(np.int64)
    aucs = np.full((len(weights), NUM_FINDINGS), np.nan)
    for i in findings:
        aucs[:, i] = weighted_aucs(films.labels[:, i], films.probs[:, i], weights)
    return mean_over(aucs, findings), weights.sum(axis=1, dtype=np.int64)


def standardised_gaps(values: np.ndarray, counts: np.ndarray) -> np.ndarray:
    """(rows, k, k): each pair's difference over its noise scale,
    sqrt(1/count_i + 1/count_j) (a binomial or AUC standard error up to a
    factor the pairs share); NaN where a slice has no value."""
    with np.errstate(invalid="ignore", divide="ignore"):
        inverse = 1.0 / np.where(counts > 0, counts, np.nan)
        return (values[:, :, None] - values[:, None, :]) / np.sqrt(inverse[:, :, None] + inverse[:, None, :])


def largest_gap(values: np.ndarray, counts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per row: the largest standardised gap among the slices (0 without two
    values), and the (high, low) slice indices it is between."""
    gaps = np.nan_to_num(standardised_gaps(values, counts), nan=-np.inf)
    k = values.shape[1]
    flat = gaps.reshape(len(values), k * k).argmax(axis=1)
    largest = gaps.reshape(len(values), k * k)[np.arange(len(values)), flat]
    return np.where(np.isfinite(largest), np.maximum(largest, 0.0), 0.0), np.column_stack([flat // k, flat % k])


def shuffled_gaps(films: AttributeFilms, compared: dict[str, dict[str, list[int]]], permutations: int,
                  seed: int) -> dict[str, tuple[np.ndarray, tuple[int, int], np.ndarray]]:
    """Per metric: (the largest standardised gap among its compared slices
    under each of `permutations` shuffles of slice membership, the observed
    (high, low) pair as indices into compared[metric], the observed largest
    gap). `compared`: {metric: {slice: findings its mean AUC averages}}.
    Each (patient, slice) group of films is dealt to a slice at random, slice
    sizes (in groups) kept; every metric sees the same shuffles, so that they
    can be adjusted together, and the observed statistic comes from the same
    arithmetic as the shuffled ones."""
    names = sorted({name for slices in compared.values() for name in slices})
    inside = np.isin(films.slice_of, names)
    keys = np.char.add(np.char.add(films.slice_of[inside].astype(str), "|"), films.patients[inside].astype(str))
    groups, group_of = np.unique(keys, return_inverse=True)
    group_slice = np.empty(len(groups), dtype=object)
    group_slice[group_of] = films.slice_of[inside]
    sub = AttributeFilms(films.labels[inside], films.probs[inside], films.missed[inside], films.ill[inside],
                         films.slice_of[inside], films.patients[inside])

    def statistics(dealt: np.ndarray) -> dict[str, tuple[np.ndarray, np.ndarray]]:
        weights = {name: (dealt == name).astype(np.int32) for name in names}
        found = {}
        for metric, slices in compared.items():
            pairs = [slice_metric(sub, metric, weights[name], findings) for name, findings in slices.items()]
            found[metric] = largest_gap(np.stack([v for v, _ in pairs], axis=1),
                                        np.stack([c for _, c in pairs], axis=1))
        return found

    observed = statistics(sub.slice_of[None, :])
    rng = np.random.default_rng(seed)
    blocks: dict[str, list[np.ndarray]] = {metric: [] for metric in compared}
    for start in range(0, permutations, RESAMPLE_BLOCK):
        rows = min(RESAMPLE_BLOCK, permutations - start)
        dealt = np.stack([rng.permutation(group_slice) for _ in range(rows)])[:, group_of]
        for metric, (largest, _) in statistics(dealt).items():
            blocks[metric].append(largest)
    return {metric: (np.concatenate(blocks[metric]), tuple(int(v) for v in observed[metric][1][0]),
                     observed[metric][0]) for metric in compared}


def permutation_p(observed: float, shuffled: np.ndarray) -> float:
    """(1 + shuffles at least as extreme) / (1 + shuffles): never 0, and at
    most alpha with probability at most alpha under the null. A float-rounding
    tolerance, so that the observed arrangement counts as at least as large;
    a shuffle without the figure (NaN) counts as not."""
    extreme = np.abs(np.nan_to_num(shuffled, nan=-np.inf)) >= abs(observed) - 1e-12
    return float((1 + int(extreme.sum())) / (1 + len(shuffled)))


def min_p_adjusted(observed: dict[str, float], shuffled: dict[str, np.ndarray]) -> dict[str, float]:
    """Westfall and Young's min-p adjustment over the metrics (Resampling-Based
    Multiple Testing, 1993, algorithm 2.8): each shuffle's smallest
    single-metric p-value is the reference distribution, so the family of all
    of them is flagged at most 5% of the time under no gap at all."""
    count = len(next(iter(shuffled.values())))
    per_shuffle = []
    for values in shuffled.values():
        values = np.nan_to_num(values, nan=-np.inf)
        ranked = np.sort(values)
        # p of each shuffle against all of them: (1 + shuffles at least as large) / (1 + shuffles)
        at_least = count - np.searchsorted(ranked, values - 1e-12, side="left")
        per_shuffle.append((1 + at_least) / (1 + count))
    smallest = np.min(per_shuffle, axis=0)
    return {metric: float((1 + int((smallest <= p + 1e-12).sum())) / (1 + count)) for metric, p in observed.items()}
