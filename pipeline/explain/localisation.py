"""How well a heatmap localises a finding, against ground-truth boxes, with the
protocol of Wang et al. 2017 (ChestX-ray8), plus the pointing game.

Boxes are (x, y, w, h) in continuous model-input pixel coordinates: pixel
(row i, column j) covers [j, j+1) x [i, i+1), so its centre is (j+0.5, i+0.5).

- Pointing game: the heatmap's maximum (the first in raster order when
  tied) has its centre inside a ground-truth box.
- T(IoBB): the heatmap is binarised at a fixed fraction of its maximum and
  every 8-connected region gives one detected box, its bounding box (as
  Wang et al., who "generate bounding boxes to cover the isolated regions in
  the resulting binary maps"). IoBB = area(detected & truth) / area(detected);
  an image is correctly localised at T when some detected box has IoBB > T.
  IoBB, unlike IoU, does not punish a detection smaller than the truth.
"""
from __future__ import annotations

from collections.abc import Iterable, Sequence

import cv2
import numpy as np
import pandas as pd

from pipeline.core.labels import FINDINGS

Box = tuple[float, float, float, float]
# Per (image, finding): the score columns, for the heatmap and the random map.
SCORE_COLUMNS = ("pointing_hit", "best_iobb")
RANDOM_PREFIX = "random_"


def peak_in_box(heatmap: np.ndarray, box: Box) -> bool:
    """Pointing game: is the centre of the heatmap's maximum pixel inside the box?"""
    row, column = np.unravel_index(int(np.argmax(heatmap)), heatmap.shape)
    x, y, w, h = box
    return bool(x <= column + 0.5 <= x + w and y <= row + 0.5 <= y + h)


def detected_boxes(heatmap: np.ndarray, fraction: float) -> list[Box]:
    """Bounding boxes of the 8-connected regions where heatmap >= fraction * its
    maximum; none for an all-zero map (no evidence anywhere)."""
    peak = float(heatmap.max())
    if peak <= 0:
        return []
    binary = (heatmap >= fraction * peak).astype(np.uint8)
    count, _, stats, _ = cv2.connectedComponentsWithStats(binary, connectivity=8)
    return [tuple(float(v) for v in stats[label, :4]) for label in range(1, count)]


def iobb(detected: Box, truth: Box) -> float:
    """Intersection over the detected box's area."""
    dx, dy, dw, dh = detected
    tx, ty, tw, th = truth
    overlap_w = max(0.0, min(dx + dw, tx + tw) - max(dx, tx))
    overlap_h = max(0.0, min(dy + dh, ty + th) - max(dy, ty))
    return overlap_w * overlap_h / (dw * dh)


def score_heatmap(heatmap: np.ndarray, truth: Sequence[Box], fraction: float) -> dict:
    """{"pointing_hit": bool, "best_iobb": float} of one heatmap against the
    finding's boxes on its image (any box counts)."""
    detections = detected_boxes(heatmap, fraction)
    return {
        "pointing_hit": any(peak_in_box(heatmap, box) for box in truth),
        "best_iobb": max((iobb(d, t) for d in detections for t in truth), default=0.0),
    }


def iobb_key(threshold: float) -> str:
    """The metric name of T(IoBB) accuracy at one T: iobb_0.1, iobb_0.25, ..."""
    return f"iobb_{threshold:g}"


def _rates(scores: pd.DataFrame, prefix: str, iobb_thresholds: Iterable[float]) -> dict[str, float]:
    rates = {"pointing_game": float(scores[f"{prefix}pointing_hit"].astype(bool).mean())}
    for threshold in iobb_thresholds:
        rates[iobb_key(threshold)] = float((scores[f"{prefix}best_iobb"] > threshold).mean())
    return rates


def summarise_group(scores: pd.DataFrame, iobb_thresholds: Sequence[float], min_images: int = 1) -> dict:
    """n, then each score next to the random map's (key + "_random"). With
    fewer than `min_images` boxed images (and none) the scores are None and
    "reason" says why: one film's hit is a pointing game of 1.00, not a rate."""
    summary: dict = {"n": len(scores)}
    shown = len(scores) >= max(min_images, 1)
    ours = _rates(scores, "", iobb_thresholds) if shown else None
    chance = _rates(scores, RANDOM_PREFIX, iobb_thresholds) if shown else None
    for key in ["pointing_game", *map(iobb_key, iobb_thresholds)]:
        summary[key] = ours[key] if ours else None
        summary[f"{key}_random"] = chance[key] if chance else None
    if len(scores) and not shown:
        summary["reason"] = f"too few boxed films (n={len(scores)})"
    return summary


def summarise(scores: pd.DataFrame, iobb_thresholds: Sequence[float], min_images: int = 1) -> dict:
    """{"overall": {...}, "per_finding": {finding: {...}}} from one row per
    scored (image, finding) with the SCORE_COLUMNS and their random_ twins;
    a group of fewer than `min_images` rows has no scores, only its reason."""
    return {
        "overall": summarise_group(scores, iobb_thresholds, min_images),
        "per_finding": {
            finding: summarise_group(scores[scores["finding"] == finding], iobb_thresholds, min_images)
            for finding in FINDINGS
        },
    }
