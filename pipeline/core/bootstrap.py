"""The one resampler behind every interval the project reports: a bootstrap
over patients.

NIH has up to 184 films of one patient, and films of one patient are alike,
so resampling films pretends the test set holds more independent evidence
than it does (intervals too narrow: on simulated test sets of about 5 films a
patient, a film-level mean-AUC interval covered the truth 89% of the time
instead of 95%). Each resample here draws the test set's patients with
replacement and keeps all their films; a film weighs as often as its patient
was drawn. The test-set intervals (pipeline.core.metrics), the paired
champion comparison (pipeline.model.selection) and the subgroup figures
(pipeline.model.subgroups) all draw through patient_resample_counts, and
AUCs of weighted resamples come from weighted_aucs, exact and vectorised.
"""
from __future__ import annotations

from collections.abc import Iterator, Sequence

import numpy as np
import pandas as pd

CONFIDENCE = 0.95
# Resamples per vectorised block: bounds memory at a few (block, n) arrays.
BOOTSTRAP_BLOCK = 50
# The subgroup report's block: weighted_aucs sorts a finding's negatives once a
# block, so larger blocks sort less; 200 x 25,596 int32 weights is 20 MB.
RESAMPLE_BLOCK = 200
# How every interval is described where it is shown.
METHOD = "percentile bootstrap over patients"


def describe(resamples: int) -> str:
    """The sentence a report shows beside an interval: "95% CI, percentile
    bootstrap over patients, 1000 resamples"."""
    return f"{CONFIDENCE:.0%} CI, {METHOD}, {resamples} resamples"


def resample_counts(indices: np.ndarray, n: int) -> np.ndarray:
    """(b, k) indices drawn from range(n) -> (b, n) how many times each was drawn in each resample."""
    rows = len(indices)
    offsets = (indices + np.arange(rows)[:, None] * n).ravel()
    return np.bincount(offsets, minlength=rows * n).reshape(rows, n)


def patient_resample_counts(patient_ids: Sequence, resamples: int, seed: int,
                            block: int = BOOTSTRAP_BLOCK) -> Iterator[np.ndarray]:
    """Blocks of (b, n_images) weights: each resample draws the patients with
    replacement, and an image weighs as often as its patient was drawn. One
    seeded generator, so every finding (and both models of a paired
    comparison) sees the same resamples."""
    codes, patients = pd.factorize(pd.Series(list(patient_ids), dtype=object))
    n_patients = len(patients)
    rng = np.random.default_rng(seed)
    for start in range(0, resamples, block):
        draws = rng.integers(0, n_patients, (min(block, resamples - start), n_patients))
        yield resample_counts(draws, n_patients)[:, codes]


def weighted_aucs(y: np.ndarray, p: np.ndarray, counts: np.ndarray) -> np.ndarray:
    """ROC AUC for each row of image weights `counts` at once: the Mann-Whitney
    statistic, sum over positives of weight x (negative weight scored below +
    half the negative weight tied) / (positive weight x negative weight).
    Negatives are sorted once; a running sum of their weights, read at each
    positive's place (found once, for all rows), gives the weight below and tied.
    Exact integer arithmetic; NaN where a resample lacks a class."""
    negatives = np.flatnonzero(y == 0)
    negative_order = negatives[np.argsort(p[negatives], kind="stable")]
    negative_scores = p[negative_order]
    positive_scores = p[y == 1]
    below_at = np.searchsorted(negative_scores, positive_scores, side="left")
    up_to_at = np.searchsorted(negative_scores, positive_scores, side="right")
    running = np.zeros((len(counts), len(negative_scores) + 1), dtype=np.int64)
    np.cumsum(counts[:, negative_order], axis=1, out=running[:, 1:])
    positive_weights = counts[:, y == 1].astype(np.int64)
    twice = (positive_weights * (running[:, below_at] + running[:, up_to_at])).sum(1)
    pairs = positive_weights.sum(1) * running[:, -1]
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(pairs > 0, twice / (2.0 * np.maximum(pairs, 1)), np.nan)


def weighted_share(counts: np.ndarray, hits: np.ndarray, of: np.ndarray) -> np.ndarray:
    """Per row of image weights: weighted hits / weighted `of` (NaN where none of `of` was drawn)."""
    numerator = counts @ hits.astype(np.int64)
    denominator = counts @ of.astype(np.int64)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(denominator > 0, numerator / np.maximum(denominator, 1), np.nan)


def mean_over(values: np.ndarray, columns: Sequence[int]) -> np.ndarray:
    """Per resample (row), the mean of `columns`, leaving out those a resample lacks (NaN)."""
    chosen = values[:, list(columns)]
    counted = (~np.isnan(chosen)).sum(axis=1)
    with np.errstate(invalid="ignore"):
        return np.where(counted > 0, np.nansum(chosen, axis=1) / np.maximum(counted, 1), np.nan)


def percentile_interval(values: np.ndarray, confidence: float = CONFIDENCE) -> tuple[float | None, float | None]:
    """The central `confidence` interval of the defined values (percentile bootstrap)."""
    defined = values[~np.isnan(values)]
    if not len(defined):
        return None, None
    tail = 100 * (1 - confidence) / 2
    low, high = np.percentile(defined, [tail, 100 - tail])
    return float(low), float(high)
