"""Choosing between models: the challenger and the champion scored on the same
test images, compared by a paired bootstrap over patients, and a promotion
rule that decides on the uncertainty rather than on point estimates.

NIH has up to 184 films of one patient, so the resampling unit is the patient:
each resample draws patients with replacement and keeps all their films, and
the same draws weight both models' predictions (a paired comparison).
"""
from __future__ import annotations

import numpy as np
import pandas as pd

from pipeline.core.labels import FINDINGS
from pipeline.model.bootstrap import mean_over, patient_resample_counts, percentile_interval, weighted_aucs
from pipeline.model.metrics import DEFAULT_MIN_POSITIVES, auc_floor_reasons, check_scores, per_class_auc
from pipeline.model.version_notes import difference

# evaluate.promotion defaults (params.yaml; justified in docs/evaluation.md).
DEFAULT_MARGIN = 0.02
DEFAULT_MAX_CLASS_DROP = 0.05
# How a decision was reached, as recorded on the version and in the metrics.
RULE_FIRST = "first version: no champion to compare with"
RULE_NO_CHAMPION_SCORES = "champion could not be scored: no promotion"
RULE_LEAKAGE = "refused: too few test patients that the champion did not train on"
RULE_PROMOTED = "non-inferior: mean AUC difference CI lower bound above -margin, no finding significantly worse"
RULE_MEAN = "refused: mean AUC difference CI lower bound at or below -margin"
RULE_FINDING = "refused: a finding's AUC difference CI lies below -max_class_drop"
RULE_SUBGROUP = "refused: underdiagnosis rises significantly in a sex or age slice (evaluate.promotion.subgroups)"


def paired_auc_comparison(
    labels: np.ndarray, challenger: np.ndarray, champion: np.ndarray, patient_ids, resamples: int, seed: int,
    min_positives: int = DEFAULT_MIN_POSITIVES,
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


def promotion_decision(comparison: dict, margin: float, max_class_drop: float) -> tuple[bool, str, list[str]]:
    """(promote, rule, reasons) for a challenger against the champion.

    Promote when the challenger is non-inferior on the mean AUC (its paired
    difference's CI lower bound is above -margin) and no finding is
    significantly worse by more than max_class_drop (that finding's CI upper
    bound below -max_class_drop). Every failing condition is named."""
    reasons = []
    low, high = comparison["mean_auc_diff_ci"]
    if low is None or low <= -margin:
        reasons.append(f"mean AUC difference {difference(comparison['mean_auc_diff'])} with 95% CI "
                       f"[{difference(low)}, {difference(high)}]: the lower bound is not above -{margin} (margin)")
    dropped = [f for f in FINDINGS
               if comparison["auc_diff_ci"][f][1] is not None and comparison["auc_diff_ci"][f][1] < -max_class_drop]
    for finding in dropped:
        ci_low, ci_high = comparison["auc_diff_ci"][finding]
        reasons.append(f"{finding} AUC difference {difference(comparison['auc_diff'][finding])} with 95% CI "
                       f"[{difference(ci_low)}, {difference(ci_high)}] lies below -{max_class_drop} (max_class_drop)")
    if not reasons:
        return True, RULE_PROMOTED, [
            f"mean AUC difference {difference(comparison['mean_auc_diff'])} with 95% CI "
            f"[{difference(low)}, {difference(high)}] "
            f"is above -{margin}, and no finding's CI lies below -{max_class_drop}"]
    return False, (RULE_MEAN if low is None or low <= -margin else RULE_FINDING), reasons


def subgroup_refusals(regression: dict) -> list[str]:
    """One reason per sex or age slice whose underdiagnosis rate the challenger
    raises significantly (pipeline.model.subgroups.underdiagnosis_regression)."""
    reasons = []
    for name in regression["worse_slices"]:
        attribute, group = name.split("/", 1)
        figures = regression[attribute][group]
        low, high = figures["ci"]
        reasons.append(f"underdiagnosis in {attribute} {group} {difference(figures['difference'])} "
                       f"({figures['champion_rate']:.3f} -> {figures['challenger_rate']:.3f}), CI "
                       f"[{difference(low)}, {difference(high)}] above 0")
    return reasons
