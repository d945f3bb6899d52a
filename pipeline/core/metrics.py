"""Evaluation metrics (NumPy and scikit-learn only): per-class ROC AUC with
patient-bootstrap confidence intervals and AUPRC on test, operating thresholds
chosen on validation and applied to test.

A figure needs enough data to be one: a finding's test AUC is given only when
the test set holds at least `min_positives` positive and as many negative
films of it (evaluate.min_slice_positives; the whole test set is held to the
rule its slices are), else None with the reason ("too few positives (n=1)");
the mean AUC averages the findings given and says how many.
"""
from __future__ import annotations

import hashlib
import math

import numpy as np
from sklearn.metrics import average_precision_score, precision_recall_curve, roc_auc_score, roc_curve

from pipeline.core.bootstrap import (
    describe,
    mean_over,
    patient_resample_counts,
    percentile_interval,
    weighted_aucs,
)
from pipeline.core.floors import MIN_PATIENTS, MIN_POSITIVES, MIN_THRESHOLD_FILMS
from pipeline.core.labels import FINDINGS
from pipeline.core.settings import THRESHOLD_METHODS

# Used when a split has too few positives or negatives of a finding
# (MIN_THRESHOLD_FILMS), so no threshold can be chosen from data; reported as such in the metrics.
FALLBACK_THRESHOLD = 0.5
# Youden's "call nothing": the best cut is above every score. Probabilities lie
# in [0, 1], so the next float above 1 calls no film, a saturated 1.0 included.
ABOVE_EVERY_SCORE = math.nextafter(1.0, math.inf)
# Points kept per ROC/PR curve file, so that plots of 25,000 images stay small.
MAX_CURVE_POINTS = 400


class ScoreError(ValueError):
    """Model outputs that cannot be scored (NaN or infinite); the message names the finding and split."""


def _both_classes(y: np.ndarray) -> bool:
    return 0 < int(y.sum()) < len(y)


def check_scores(probs: np.ndarray, split: str) -> np.ndarray:
    """`probs` as float64, or ScoreError naming each finding with a NaN or
    infinite score in `split`: a NaN would otherwise drop out of a threshold
    search or an AUC without a word."""
    probs = np.asarray(probs, dtype=np.float64)
    bad = ~np.isfinite(probs)
    if bad.any():
        named = [f"{FINDINGS[i]} ({int(bad[:, i].sum())} film(s), first at row {int(np.argmax(bad[:, i]))})"
                 for i in range(probs.shape[1]) if bad[:, i].any()]
        raise ScoreError(f"{split} scores are NaN or infinite for {', '.join(named)}: the model's outputs "
                         "cannot be scored")
    return probs


def per_class_auc(labels: np.ndarray, probs: np.ndarray) -> dict[str, float | None]:
    """ROC AUC per finding; None where the split lacks positives or negatives."""
    return {
        finding: float(roc_auc_score(labels[:, i], probs[:, i])) if _both_classes(labels[:, i]) else None
        for i, finding in enumerate(FINDINGS)
    }


def too_few(positives: int, negatives: int, minimum: int) -> str | None:
    """Why an AUC on these counts is not a figure ("too few positives (n=1)"), or None."""
    for count, kind in ((positives, "positives"), (negatives, "negatives")):
        if count < max(minimum, 1):
            return f"too few {kind} (n={count})"
    return None


# The films each operating-point figure of a finding is a share of: on fewer
# than the floor (evaluate.min_slice_positives, as for the AUC) it is not shown.
SHARE_OF = {"sensitivity": "positives", "ppv": "positives", "f1": "positives", "specificity": "negatives",
            "npv": "negatives"}


def share_films(figure: str, positives: int, images: int | None = None) -> int | None:
    """How many films `figure` (a SHARE_OF key) of one finding is a share of:
    its positives, or its negatives (None without the image count)."""
    if SHARE_OF[figure] == "positives":
        return positives
    return None if images is None else images - positives


def auc_floor_reasons(labels: np.ndarray, minimum: int) -> dict[str, str]:
    """{finding: reason} for the findings whose AUC the floor withholds."""
    positives = labels.sum(axis=0).astype(int) if len(labels) else np.zeros(len(FINDINGS), dtype=int)
    return {f: reason for i, f in enumerate(FINDINGS)
            if (reason := too_few(int(positives[i]), len(labels) - int(positives[i]), minimum))}


def floored_aucs(labels: np.ndarray, probs: np.ndarray, minimum: int) -> tuple[dict[str, float | None], dict[str, str]]:
    """(AUC per finding, None below the floor; {finding: why not})."""
    reasons = auc_floor_reasons(labels, minimum)
    auc = per_class_auc(labels, probs)
    return {f: None if f in reasons else auc[f] for f in FINDINGS}, reasons


def mean_of_defined(values: dict[str, float | None]) -> float | None:
    defined = [v for v in values.values() if v is not None and not math.isnan(v)]
    return float(np.mean(defined)) if defined else None


def bootstrap_aucs(labels: np.ndarray, probs: np.ndarray, patient_ids, resamples: int, seed: int,
                   findings: list[int] | None = None) -> np.ndarray:
    """(resamples, 14) AUCs of patient resamples of a test set; NaN where
    undefined and for the findings not in `findings` (default: all)."""
    findings = range(labels.shape[1]) if findings is None else findings
    blocks = []
    for counts in patient_resample_counts(patient_ids, resamples, seed):
        block = np.full((len(counts), labels.shape[1]), np.nan)
        for i in findings:
            block[:, i] = weighted_aucs(labels[:, i], probs[:, i], counts)
        blocks.append(block)
    return np.concatenate(blocks) if blocks else np.zeros((0, labels.shape[1]))


def auc_intervals(labels: np.ndarray, probs: np.ndarray, patient_ids, resamples: int, seed: int,
                  min_positives: int = MIN_POSITIVES, min_patients: int = MIN_PATIENTS) -> dict:
    """95% intervals of each finding's AUC and of the mean AUC, by the patient
    bootstrap (pipeline.core.bootstrap). Only the findings whose AUC the floor
    gives get one; each resample's mean averages those findings, as the point
    estimate does. With fewer than `min_patients` patients no interval is given."""
    patients = len(set(patient_ids))
    reasons = auc_floor_reasons(labels, min_positives)
    given = [i for i, f in enumerate(FINDINGS) if f not in reasons]
    if patients < max(min_patients, 1) or resamples <= 0:
        aucs = np.full((0, labels.shape[1]), np.nan)
    else:
        aucs = bootstrap_aucs(labels, probs, patient_ids, resamples, seed, given)
    per_finding = {f: percentile_interval(aucs[:, i]) if i in given else (None, None)
                   for i, f in enumerate(FINDINGS)}
    return {
        "auc_ci_low": {f: low for f, (low, _) in per_finding.items()},
        "auc_ci_high": {f: high for f, (_, high) in per_finding.items()},
        "mean_auc_ci": list(percentile_interval(mean_over(aucs, given))) if given else [None, None],
        "ci_method": describe(resamples),
        **({"ci_missing_reason": f"too few patients (n={patients})"} if patients < max(min_patients, 1) else {}),
    }


def per_class_auprc(labels: np.ndarray, probs: np.ndarray) -> dict[str, float | None]:
    """Average precision per finding (area under the precision-recall curve);
    None where the split has no positive."""
    return {
        finding: float(average_precision_score(labels[:, i], probs[:, i])) if labels[:, i].any() else None
        for i, finding in enumerate(FINDINGS)
    }


def choose_threshold(
    y: np.ndarray, p: np.ndarray, method: str = "youden", target_sensitivity: float = 0.9
) -> float | None:
    """The operating point for one finding, or None when y has a single class.

    youden: max sensitivity + specificity - 1; max_f1: max F1; sensitivity: the
    highest threshold whose sensitivity reaches target_sensitivity (the fewest
    false positives that still catch that share of positives)."""
    if method not in THRESHOLD_METHODS:
        raise ValueError(f"evaluate.threshold_method must be one of {', '.join(THRESHOLD_METHODS)}, got {method!r}")
    if not _both_classes(y):
        return None
    if method == "youden":
        fpr, tpr, thresholds = roc_curve(y, p)
        best = int(np.argmax(tpr - fpr))
        # sklearn's first cut is +inf ("call nothing"); a real cut is a score itself
        return float(thresholds[best]) if np.isfinite(thresholds[best]) else ABOVE_EVERY_SCORE
    if method == "max_f1":
        candidates = np.unique(p)
        predicted = p[None, :] >= candidates[:, None]
        tp = (predicted & (y[None, :] == 1)).sum(1)
        f1 = 2 * tp / (predicted.sum(1) + y.sum())
        return float(candidates[int(np.argmax(f1))])
    positives = np.sort(p[y == 1])[::-1]
    # the k-th highest positive score: at it, k of the positives are called positive
    needed = max(1, math.ceil(target_sensitivity * len(positives) - 1e-9))
    return float(positives[needed - 1])


def choose_thresholds(
    labels: np.ndarray, probs: np.ndarray, method: str, target_sensitivity: float = 0.9
) -> tuple[dict[str, float], list[str]]:
    """Per-finding thresholds, and the findings that fell back to FALLBACK_THRESHOLD:
    those with fewer than MIN_THRESHOLD_FILMS positive or negative films in `labels`."""
    thresholds, fallbacks = {}, []
    for i, finding in enumerate(FINDINGS):
        positives = int(labels[:, i].sum()) if len(labels) else 0
        enough = min(positives, len(labels) - positives) >= MIN_THRESHOLD_FILMS
        chosen = choose_threshold(labels[:, i], probs[:, i], method, target_sensitivity) if enough else None
        if chosen is None:
            fallbacks.append(finding)
            chosen = FALLBACK_THRESHOLD
        thresholds[finding] = chosen
    return thresholds, fallbacks


def _ratio(numerator: int, denominator: int) -> float | None:
    return float(numerator / denominator) if denominator else None


def operating_point_metrics(labels: np.ndarray, probs: np.ndarray, thresholds: dict[str, float]) -> dict:
    """At each finding's threshold: sensitivity, specificity, PPV, NPV, F1 and
    accuracy (None where a denominator is zero), and the exact-match accuracy
    (all 14 calls right), the figures the seed project reported."""
    names = ("sensitivity", "specificity", "ppv", "npv", "f1", "accuracy")
    figures: dict = {name: {} for name in names}
    cutoffs = np.array([thresholds[f] for f in FINDINGS])
    called = probs >= cutoffs[None, :]
    for i, finding in enumerate(FINDINGS):
        predicted, positive = called[:, i], labels[:, i] == 1
        tp, fp = int((predicted & positive).sum()), int((predicted & ~positive).sum())
        fn, tn = int((~predicted & positive).sum()), int((~predicted & ~positive).sum())
        figures["sensitivity"][finding] = _ratio(tp, tp + fn)
        figures["specificity"][finding] = _ratio(tn, tn + fp)
        figures["ppv"][finding] = _ratio(tp, tp + fp)
        figures["npv"][finding] = _ratio(tn, tn + fn)
        figures["f1"][finding] = _ratio(2 * tp, 2 * tp + fp + fn)
        figures["accuracy"][finding] = _ratio(tp + tn, len(labels))
    figures["exact_match_accuracy"] = _ratio(int((called == (labels == 1)).all(1).sum()), len(labels))
    return figures


def evaluation_metrics(
    val: tuple[np.ndarray, np.ndarray],
    test: tuple[np.ndarray, np.ndarray],
    method: str,
    target_sensitivity: float = 0.9,
    resamples: int = 1000,
    seed: int = 0,
    test_patients=None,
    min_positives: int = MIN_POSITIVES,
    min_patients: int = MIN_PATIENTS,
) -> dict:
    """The content of reports/evaluate/evaluate.json's test figures.
    `test_patients`: each test film's patient id, the bootstrap's unit (every
    film its own patient when None, for callers without patients)."""
    val_labels, test_labels = val[0], test[0]
    val_probs, test_probs = check_scores(val[1], "val"), check_scores(test[1], "test")
    patients = list(range(len(test_labels))) if test_patients is None else list(test_patients)
    if len(patients) != len(test_labels):
        raise ValueError(f"test_patients: {len(patients)} ids for {len(test_labels)} test films")
    thresholds, fallbacks = choose_thresholds(val_labels, val_probs, method, target_sensitivity)
    auc, auc_missing = floored_aucs(test_labels, test_probs, min_positives)
    auprc = per_class_auprc(test_labels, test_probs)
    return {
        "mean_auc": mean_of_defined(auc),
        "mean_auc_findings": sum(v is not None for v in auc.values()),
        "auc": auc,
        "auc_missing_reason": auc_missing,
        **auc_intervals(test_labels, test_probs, patients, resamples, seed, min_positives, min_patients),
        "bootstrap_resamples": resamples,
        "mean_auprc": mean_of_defined(auprc),
        "auprc": auprc,
        "thresholds": thresholds,
        "threshold_method": method,
        **({"target_sensitivity": target_sensitivity} if method == "sensitivity" else {}),
        "thresholds_defaulted": fallbacks,
        # Youden found no cut better than calling no film: these findings are never called
        "thresholds_call_nothing": [f for f, t in thresholds.items() if t == ABOVE_EVERY_SCORE],
        **operating_point_metrics(test_labels, test_probs, thresholds),
        "test_positives": {f: int(test_labels[:, i].sum()) for i, f in enumerate(FINDINGS)} if len(test_labels)
        else {f: 0 for f in FINDINGS},
        "test_images": len(test_labels),
        "test_patients": len(set(patients)),
        "val_images": len(val_labels),
        "min_positives": min_positives,
        "min_patients": min_patients,
    }


def thinned(points: np.ndarray, limit: int = MAX_CURVE_POINTS) -> np.ndarray:
    """At most `limit` evenly spaced rows of a curve, first and last kept."""
    if len(points) <= limit:
        return points
    return points[np.unique(np.linspace(0, len(points) - 1, limit).round().astype(int))]


def curves(labels: np.ndarray, probs: np.ndarray) -> dict[str, dict[str, list[dict]]]:
    """{"roc": {finding: [{fpr, tpr, threshold}...]}, "pr": {finding: [{recall,
    precision, threshold}...]}} for the findings with both classes in test."""
    roc, pr = {}, {}
    for i, finding in enumerate(FINDINGS):
        y, p = labels[:, i], probs[:, i]
        if not _both_classes(y):
            continue
        fpr, tpr, roc_cut = roc_curve(y, p)
        points = thinned(np.column_stack([fpr, tpr, np.minimum(roc_cut, 1.0)]))
        roc[finding] = [{"fpr": round(a, 5), "tpr": round(b, 5), "threshold": round(c, 5)} for a, b, c in points]
        precision, recall, pr_cut = precision_recall_curve(y, p)
        # sklearn gives one more precision/recall than thresholds (the recall-0 end)
        points = thinned(np.column_stack([recall, precision, np.r_[pr_cut, 1.0]]))
        pr[finding] = [{"recall": round(a, 5), "precision": round(b, 5), "threshold": round(c, 5)}
                       for a, b, c in points]
    return {"roc": roc, "pr": pr}


def manifest_hash(image_ids: list[str], labels: np.ndarray) -> str:
    """Identifies the test set a model was scored on: its image ids and labels,
    in id order (shard order must not matter). Two models' AUCs compare only
    when this matches."""
    digest = hashlib.sha256()
    for k in sorted(range(len(image_ids)), key=image_ids.__getitem__):
        digest.update(f"{image_ids[k]}:{''.join(str(int(v)) for v in labels[k])}\n".encode())
    return digest.hexdigest()[:16]


def predictions_table(image_ids: list[str], labels: np.ndarray, probs: np.ndarray):
    """One row per image: image_id, label_<finding>..., prob_<finding>..."""
    import pandas as pd

    table = pd.DataFrame({"image_id": image_ids})
    for i, finding in enumerate(FINDINGS):
        table[f"label_{finding}"] = labels[:, i].astype(int) if len(labels) else []
    for i, finding in enumerate(FINDINGS):
        # full precision: a film at exactly its threshold must read as called here too
        table[f"prob_{finding}"] = probs[:, i] if len(probs) else []
    return table
