"""Comparing two models: the challenger and the champion scored on the same
test images, compared by a paired bootstrap over patients (the rule that
decides on it is pipeline.model.promotion).

NIH has up to 184 films of one patient, so the resampling unit is the patient:
each resample draws patients with replacement and keeps all their films, and
the same draws weight both models' predictions (a paired comparison).
"""
from __future__ import annotations

import numpy as np
import pandas as pd

from pipeline.core.bootstrap import mean_over, patient_resample_counts, percentile_interval, weighted_aucs
from pipeline.core.floors import MIN_POSITIVES
from pipeline.core.labels import FINDINGS
from pipeline.core.metrics import auc_floor_reasons, check_scores, per_class_auc


def paired_auc_comparison(
    labels: np.ndarray, challenger: np.ndarray, champion: np.ndarray, patient_ids, resamples: int, seed: int,
    min_positives: int = MIN_POSITIVES,
) -> dict:
    """Challenger minus champion, per finding and for the mean AUC, on the same
    images, with 95% paired-bootstrap intervals. The mean is over the findings
    whose test AUC the floor gives (min_positives positives and negatives), as
    the reported mean AUC is. ScoreError (a ValueError) when either model's
    scores hold NaN."""
    labels = np.asarray(labels)
    if not (len(labels) == len(challenger) == len(champion) == len(patient_ids)):
        raise ValueError("labels, both models' predictions and patient ids must have one row per test image")
    challenger, champion = check_scores(challenger, "test"), check_scores(champion, "champion's test")
    floor = auc_floor_reasons(labels, min_positives)
    ours, theirs = per_class_auc(labels, challenger), per_class_auc(labels, champion)
    defined = [i for i, f in enumerate(FINDINGS)
               if ours[f] is not None and theirs[f] is not None and f not in floor]
    diffs = []
    for counts in patient_resample_counts(patient_ids, resamples, seed):
        block = np.full((len(counts), len(FINDINGS)), np.nan)
        for i in defined:
            block[:, i] = (weighted_aucs(labels[:, i], challenger[:, i], counts)
                           - weighted_aucs(labels[:, i], champion[:, i], counts))
        diffs.append(block)
    diffs = np.concatenate(diffs) if diffs else np.zeros((0, len(FINDINGS)))
    means = mean_over(diffs, defined)
    auc_diff = {f: (ours[f] - theirs[f] if i in defined else None) for i, f in enumerate(FINDINGS)}
    return {
        "test_images": int(len(labels)),
        "test_patients": int(pd.Series(list(patient_ids)).nunique()),
        "resamples": int(resamples),
        "findings_compared": len(defined),
        "mean_auc_diff": float(np.mean([auc_diff[FINDINGS[i]] for i in defined])) if defined else None,
        "mean_auc_diff_ci": list(percentile_interval(means)),
        "auc_diff": auc_diff,
        "auc_diff_ci": {f: (list(percentile_interval(diffs[:, i])) if i in defined else [None, None])
                        for i, f in enumerate(FINDINGS)},
    }
