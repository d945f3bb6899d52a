"""Recalibrated probabilities, as a registered model carries them, and the
one numeric policy every path that scores a film follows.

The network answers in float32. Every path (the evaluate stage, the champion
re-scoring, load_model(...).predict, `cxr`, the pyfunc) widens that to
float64 and recalibrates in float64 (served_probabilities), and compares with
the float64 thresholds chosen on the same float64 values. Isotonic output is a
step function: a threshold often equals a step that many films score exactly,
and narrowing the step to float32 puts those films below it; so nothing after
the network is float32.

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


def served_probabilities(network_outputs: np.ndarray, description: Mapping | None) -> np.ndarray:
    """The network's (n, 14) float32 outputs as the probabilities every path
    serves and thresholds: float64, recalibrated when the model has a description."""
    probs = np.asarray(network_outputs, dtype=np.float64)
    return apply_recalibration(description, probs) if description else probs


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
