"""Recalibrated probabilities, as a registered model carries them.

The evaluate stage can fit a recalibration per finding on the validation
split (pipeline/model/calibration.py, `evaluate.calibration`); the fitted
description is plain JSON in the model's metadata, and this module applies
it with NumPy alone, so the serving code (load_model, `cxr`, the pyfunc)
needs neither scikit-learn nor the fitting code.
"""
from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from pipeline.core.labels import FINDINGS, NUM_FINDINGS

# Probabilities are kept this far from 0 and 1 before the logit, so that a
# model's saturated float32 outputs (exactly 0.0 or 1.0) stay finite.
LOGIT_EPS = 1e-7


def logit(probs: np.ndarray) -> np.ndarray:
    clipped = np.clip(np.asarray(probs, dtype=float), LOGIT_EPS, 1 - LOGIT_EPS)
    return np.log(clipped / (1 - clipped))


def apply_one(mapping: Mapping, probs: np.ndarray) -> np.ndarray:
    """One finding's probabilities through its recalibration description (NumPy only)."""
    kind = mapping["kind"]
    if kind == "identity":
        return probs
    if kind == "platt":
        return 1 / (1 + np.exp(-(mapping["slope"] * logit(probs) + mapping["intercept"])))
    if kind == "isotonic":
        # np.interp holds the end values outside the breakpoints: IsotonicRegression's clip
        return np.interp(probs, np.asarray(mapping["x"], dtype=float), np.asarray(mapping["y"], dtype=float))
    raise ValueError(f"unknown recalibration kind {kind!r}")


def apply_recalibration(description: Mapping, y_prob: np.ndarray) -> np.ndarray:
    """(images, 14) probabilities recalibrated by a fit_recalibration description
    (as returned, or after a JSON round trip). Works on one image's 14 values too."""
    probs = np.asarray(y_prob, dtype=float)
    single = probs.ndim == 1
    probs = np.atleast_2d(probs)
    if probs.shape[1] != NUM_FINDINGS:
        raise ValueError(f"expected {NUM_FINDINGS} probabilities per image, got {probs.shape[1]}")
    out = np.column_stack([apply_one(description["findings"][f], probs[:, i]) for i, f in enumerate(FINDINGS)])
    out = np.clip(out, 0.0, 1.0)
    return out[0] if single else out
