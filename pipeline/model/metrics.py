"""Evaluation metrics (NumPy and scikit-learn only): per-class ROC AUC with bootstrap confidence intervals and AUPRC
on test, operating thresholds chosen on validation and applied to test."""
from __future__ import annotations

import hashlib
import math

import numpy as np
from sklearn.metrics import average_precision_score, precision_recall_curve, roc_auc_score, roc_curve

from pipeline.core.labels import FINDINGS

THRESHOLD_METHODS = ("youden", "max_f1", "sensitivity")
# Used when a split has no positive (or no negative) for a finding, so no
# threshold can be chosen from data; reported as such in the metrics.
FALLBACK_THRESHOLD = 0.5
CONFIDENCE = 0.95
# Resamples per vectorised block: bounds memory at a few (block, n) float arrays.
BOOTSTRAP_BLOCK = 50
# Points kept per ROC/PR curve file, so that plots of 25,000 images stay small.
MAX_CURVE_POINTS = 400


def _both_classes(y: np.ndarray) -> bool:
    return 0 < int(y.sum()) < len(y)


def per_class_auc(labels: np.ndarray, probs: np.ndarray) -> dict[str, float | None]:
    """ROC AUC per finding; None where the split lacks positives or negatives."""
    return {
        finding: float(roc_auc_score(labels[:, i], probs[:, i])) if _both_classes(labels[:, i]) else None
        for i, finding in enumerate(FINDINGS)
    }


def mean_of_defined(values: dict[str, float | None]) -> float | None:
    defined = [v for v in values.values() if v is not None and not math.isnan(v)]
    return float(np.mean(defined)) if defined else None


def bootstrap_indices(n: int, resamples: int, seed: int, block: int = BOOTSTRAP_BLOCK):
    """Blocks of a (resamples, n) matrix of indices drawn with replacement from
    one seeded generator: the same resamples for every finding, so that the
    mean AUC's interval is that of a paired bootstrap."""
    rng = np.random.default_rng(seed)
    for start in range(0, resamples, block):
        yield rng.integers(0, n, (min(block, resamples - start), n))


def resample_counts(indices: np.ndarray, n: int) -> np.ndarray:
    """(b, n) indices -> (b, n) how many times each image was drawn in each resample."""
    rows = len(indices)
    offsets = (indices + np.arange(rows)[:, None] * n).ravel()
    return np.bincount(offsets, minlength=rows * n).reshape(rows, n)


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


def bootstrap_aucs(labels: np.ndarray, probs: np.ndarray, resamples: int, seed: int) -> np.ndarray:
    """(resamples, findings) AUCs of test resamples; NaN where undefined."""
    n = len(labels)
    blocks = []
    for indices in bootstrap_indices(n, resamples, seed):
        counts = resample_counts(indices, n)
        blocks.append(np.stack([weighted_aucs(labels[:, i], probs[:, i], counts)
                                for i in range(labels.shape[1])], axis=1))
    return np.concatenate(blocks) if blocks else np.zeros((0, labels.shape[1]))


def percentile_interval(values: np.ndarray) -> tuple[float | None, float | None]:
    """The central CONFIDENCE interval of the defined values (percentile bootstrap)."""
    defined = values[~np.isnan(values)]
    if not len(defined):
        return None, None
    tail = 100 * (1 - CONFIDENCE) / 2
    low, high = np.percentile(defined, [tail, 100 - tail])
    return float(low), float(high)


def auc_intervals(labels: np.ndarray, probs: np.ndarray, resamples: int, seed: int) -> dict:
    """95% bootstrap intervals of each finding's AUC and of the mean AUC. The
    mean of a resample averages the findings whose AUC is defined on the full
    test set, as the point estimate does."""
    aucs = bootstrap_aucs(labels, probs, resamples, seed)
    defined = [i for i in range(labels.shape[1]) if _both_classes(labels[:, i])]
    per_finding = {f: percentile_interval(aucs[:, i]) if i in defined else (None, None)
                   for i, f in enumerate(FINDINGS)}
    chosen = aucs[:, defined]
    counted = (~np.isnan(chosen)).sum(1)
    means = np.where(counted > 0, np.nansum(chosen, 1) / np.maximum(counted, 1), np.nan)
    return {
        "auc_ci_low": {f: low for f, (low, _) in per_finding.items()},
        "auc_ci_high": {f: high for f, (_, high) in per_finding.items()},
        "mean_auc_ci": list(percentile_interval(means)),
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
        return float(min(thresholds[best], 1.0))
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
    """Per-finding thresholds, and the findings that fell back to FALLBACK_THRESHOLD."""
    thresholds, fallbacks = {}, []
    for i, finding in enumerate(FINDINGS):
        chosen = choose_threshold(labels[:, i], probs[:, i], method, target_sensitivity) if len(labels) else None
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
) -> dict:
    """The content of metrics/evaluate.json."""
    val_labels, val_probs = val
    test_labels, test_probs = test
    thresholds, fallbacks = choose_thresholds(val_labels, val_probs, method, target_sensitivity)
    auc = per_class_auc(test_labels, test_probs)
    auprc = per_class_auprc(test_labels, test_probs)
    return {
        "mean_auc": mean_of_defined(auc),
        "auc": auc,
        **auc_intervals(test_labels, test_probs, resamples, seed),
        "bootstrap_resamples": resamples,
        "mean_auprc": mean_of_defined(auprc),
        "auprc": auprc,
        "thresholds": thresholds,
        "threshold_method": method,
        **({"target_sensitivity": target_sensitivity} if method == "sensitivity" else {}),
        "thresholds_defaulted": fallbacks,
        **operating_point_metrics(test_labels, test_probs, thresholds),
        "test_positives": {f: int(test_labels[:, i].sum()) for i, f in enumerate(FINDINGS)} if len(test_labels)
        else {f: 0 for f in FINDINGS},
        "test_images": len(test_labels),
        "val_images": len(val_labels),
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
        table[f"prob_{finding}"] = np.round(probs[:, i], 6) if len(probs) else []
    return table
