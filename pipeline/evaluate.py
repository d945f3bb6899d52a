"""Evaluation: per-class ROC AUC on test, operating thresholds chosen on validation."""
from __future__ import annotations

import math
from pathlib import Path

import keras
import numpy as np
from sklearn.metrics import roc_auc_score, roc_curve

from pipeline.dataset import make_dataset, shard_files
from pipeline.labels import FINDINGS

THRESHOLD_METHODS = ("youden", "max_f1")
# Used when a split has no positive (or no negative) for a finding, so no
# threshold can be chosen from data; reported as such in the metrics.
FALLBACK_THRESHOLD = 0.5


def predict_split(model: keras.Model, tfrecord_dir: Path, split: str, batch_size: int = 16):
    """Stream a split through the model: (probabilities, labels, image ids)."""
    probs, labels, ids = [], [], []
    files = shard_files(tfrecord_dir, split)
    if not files:
        return np.zeros((0, len(FINDINGS))), np.zeros((0, len(FINDINGS))), []
    for images, y, image_ids in make_dataset(files, batch_size, with_ids=True):
        probs.append(model.predict_on_batch(images))
        labels.append(y.numpy())
        ids.extend(i.decode() for i in image_ids.numpy())
    if not probs:
        return np.zeros((0, len(FINDINGS))), np.zeros((0, len(FINDINGS))), []
    return np.concatenate(probs).astype(np.float64), np.concatenate(labels).astype(np.int64), ids


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


def choose_threshold(y: np.ndarray, p: np.ndarray, method: str = "youden") -> float | None:
    """The operating point for one finding, or None when y has a single class."""
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
    raise ValueError(f"evaluate.threshold_method must be one of {', '.join(THRESHOLD_METHODS)}, got {method!r}")


def choose_thresholds(labels: np.ndarray, probs: np.ndarray, method: str) -> tuple[dict[str, float], list[str]]:
    """Per-finding thresholds, and the findings that fell back to FALLBACK_THRESHOLD."""
    thresholds, fallbacks = {}, []
    for i, finding in enumerate(FINDINGS):
        chosen = choose_threshold(labels[:, i], probs[:, i], method) if len(labels) else None
        if chosen is None:
            fallbacks.append(finding)
            chosen = FALLBACK_THRESHOLD
        thresholds[finding] = chosen
    return thresholds, fallbacks


def operating_point_metrics(labels: np.ndarray, probs: np.ndarray, thresholds: dict[str, float]) -> dict:
    """Sensitivity and specificity per finding at its threshold (None if undefined)."""
    sensitivity, specificity = {}, {}
    for i, finding in enumerate(FINDINGS):
        predicted = probs[:, i] >= thresholds[finding]
        positive = labels[:, i] == 1
        sensitivity[finding] = float(predicted[positive].mean()) if positive.any() else None
        specificity[finding] = float((~predicted[~positive]).mean()) if (~positive).any() else None
    return {"sensitivity": sensitivity, "specificity": specificity}


def evaluation_metrics(
    val: tuple[np.ndarray, np.ndarray], test: tuple[np.ndarray, np.ndarray], method: str
) -> dict:
    """The content of metrics/evaluate.json."""
    val_labels, val_probs = val
    test_labels, test_probs = test
    thresholds, fallbacks = choose_thresholds(val_labels, val_probs, method)
    auc = per_class_auc(test_labels, test_probs)
    return {
        "mean_auc": mean_of_defined(auc),
        "auc": auc,
        "thresholds": thresholds,
        "threshold_method": method,
        "thresholds_defaulted": fallbacks,
        **operating_point_metrics(test_labels, test_probs, thresholds),
        "test_images": int(len(test_labels)),
        "val_images": int(len(val_labels)),
    }


def predictions_table(image_ids: list[str], labels: np.ndarray, probs: np.ndarray):
    """One row per image: image_id, label_<finding>..., prob_<finding>..."""
    import pandas as pd

    table = pd.DataFrame({"image_id": image_ids})
    for i, finding in enumerate(FINDINGS):
        table[f"label_{finding}"] = labels[:, i].astype(int) if len(labels) else []
    for i, finding in enumerate(FINDINGS):
        table[f"prob_{finding}"] = np.round(probs[:, i], 6) if len(probs) else []
    return table
