"""Calibration: whether a predicted 0.3 means "30% of such films have the
finding", and recalibration that can travel with a registered model.

Expected calibration error uses equal-mass bins (each bin holds the same
number of images, give or take one): NIH findings are rare, so equal-width
bins would put nearly every image in the first bin and leave the rest with a
handful each. The reliability curve (mean predicted vs observed frequency per
bin) comes as plain rows for a DVC plot CSV and as an inline SVG for the model
card (no JavaScript, no matplotlib).

Recalibration is fitted on validation, per finding, with scikit-learn (Platt:
a logistic regression on the logit of the probability; isotonic regression),
and described as JSON (Platt: slope and intercept; isotonic: the fitted
breakpoints), which apply_recalibration turns back into probabilities with
NumPy alone, so the serving code needs no pickled scikit-learn object. Platt
keeps each finding's ranking (AUC unchanged when the slope is positive);
isotonic is monotone but flat between breakpoints, so ties can move the AUC
slightly.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from xml.sax.saxutils import escape, quoteattr

import numpy as np

from pipeline.core.labels import FINDINGS, NUM_FINDINGS
from pipeline.core.recalibration import apply_recalibration, logit
from pipeline.core.settings import RECALIBRATION_METHODS

DEFAULT_BINS = 10
POOLED = "all findings"
# Platt's logistic regression: an L2 penalty this weak is no penalty on
# thousands of validation images, yet keeps the slope finite when a finding's
# validation scores separate the classes perfectly.
PLATT_C = 1e4
DIGITS = 6
# The SVG: plot area size in px, margin for the axes' labels, one colour per curve.
SVG_SIZE, SVG_MARGIN = 280, 40
PALETTE = ("#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f",
           "#bcbd22", "#17becf", "#393b79", "#637939", "#8c6d31", "#843c39", "#000000")


# --- reliability and ECE ----------------------------------------------------

def equal_mass_bins(probs: np.ndarray, n_bins: int = DEFAULT_BINS) -> np.ndarray:
    """Each image's bin, 0..n_bins-1, by rank of its probability: bin sizes differ
    by at most one, except that images with the same probability share one bin
    (that of the first of them in rank order), so the bins, and the ECE, do
    not depend on the order of the rows."""
    if n_bins < 1:
        raise ValueError(f"n_bins must be at least 1, got {n_bins}")
    probs = np.asarray(probs, dtype=float)
    first_rank = np.searchsorted(np.sort(probs), probs, side="left")
    return (first_rank * n_bins) // max(len(probs), 1)


def reliability_curve(labels: np.ndarray, probs: np.ndarray, n_bins: int = DEFAULT_BINS) -> list[dict]:
    """Per non-empty equal-mass bin: {"bin", "mean_predicted", "observed_frequency", "count"}."""
    labels, probs = np.asarray(labels, dtype=float), np.asarray(probs, dtype=float)
    bins = equal_mass_bins(probs, n_bins)
    count = np.bincount(bins, minlength=n_bins)
    predicted = np.bincount(bins, weights=probs, minlength=n_bins)
    observed = np.bincount(bins, weights=labels, minlength=n_bins)
    return [{"bin": int(b), "mean_predicted": float(predicted[b] / count[b]),
             "observed_frequency": float(observed[b] / count[b]), "count": int(count[b])}
            for b in np.flatnonzero(count)]


def curve_ece(curve: Sequence[Mapping]) -> float | None:
    """Expected calibration error of a reliability curve: the count-weighted mean
    of |mean predicted - observed frequency| over its bins; None when empty."""
    total = sum(point["count"] for point in curve)
    if not total:
        return None
    return float(sum(point["count"] * abs(point["mean_predicted"] - point["observed_frequency"])
                     for point in curve) / total)


def calibration_report(y_true: np.ndarray, y_prob: np.ndarray, n_bins: int = DEFAULT_BINS) -> dict:
    """{"n_bins", "ece": {finding: value}, "mean_ece" (over the findings),
    "pooled_ece", "reliability": {finding: curve, POOLED: curve}}; the pooled
    curve bins all findings' (label, probability) pairs together."""
    labels, probs = np.asarray(y_true, dtype=float), np.asarray(y_prob, dtype=float)
    if labels.shape != probs.shape or labels.ndim != 2 or labels.shape[1] != NUM_FINDINGS:
        raise ValueError(f"y_true and y_prob must both be (images, {NUM_FINDINGS}), got {labels.shape}, {probs.shape}")
    curves = {f: reliability_curve(labels[:, i], probs[:, i], n_bins) for i, f in enumerate(FINDINGS)}
    ece = {f: curve_ece(curves[f]) for f in FINDINGS}
    defined = [v for v in ece.values() if v is not None]
    curves[POOLED] = reliability_curve(labels.ravel(), probs.ravel(), n_bins)
    return {"n_bins": n_bins, "ece": ece, "mean_ece": float(np.mean(defined)) if defined else None,
            "pooled_ece": curve_ece(curves[POOLED]), "reliability": curves}


def reliability_rows(report: dict, digits: int = DIGITS) -> list[dict]:
    """A calibration_report's curves as table rows (finding, bin, mean_predicted,
    observed_frequency, count), e.g. pd.DataFrame(rows).to_csv(...) for a DVC plot."""
    return [{"finding": name, "bin": point["bin"], "mean_predicted": round(point["mean_predicted"], digits),
             "observed_frequency": round(point["observed_frequency"], digits), "count": point["count"]}
            for name, curve in report["reliability"].items() for point in curve]


# --- SVG reliability diagram --------------------------------------------------

def _xy(predicted: float, observed: float) -> tuple[float, float]:
    """Plot coordinates: probability 0..1 on both axes, y growing upwards."""
    return SVG_MARGIN + predicted * SVG_SIZE, SVG_MARGIN / 2 + (1 - observed) * SVG_SIZE


def _axes() -> list[str]:
    x0, y0 = _xy(0, 0)
    x1, y1 = _xy(1, 1)
    parts = [f'<rect x="{x0:.1f}" y="{y1:.1f}" width="{SVG_SIZE}" height="{SVG_SIZE}" fill="none" stroke="#999"/>',
             f'<line x1="{x0:.1f}" y1="{y0:.1f}" x2="{x1:.1f}" y2="{y1:.1f}" stroke="#999" stroke-dasharray="4 3">'
             '<title>perfect calibration</title></line>']
    for tick in (0, 0.5, 1):
        x, y = _xy(tick, tick)
        parts.append(f'<text x="{x:.1f}" y="{y0 + 14:.1f}" text-anchor="middle" font-size="10">{tick:g}</text>')
        parts.append(f'<text x="{x0 - 4:.1f}" y="{y + 3:.1f}" text-anchor="end" font-size="10">{tick:g}</text>')
    parts.append(f'<text x="{(x0 + x1) / 2:.1f}" y="{y0 + 28:.1f}" text-anchor="middle" font-size="11">'
                 'mean predicted probability</text>')
    parts.append(f'<text transform="translate({x0 - 28:.1f} {(y0 + y1) / 2:.1f}) rotate(-90)" '
                 'text-anchor="middle" font-size="11">observed frequency</text>')
    return parts


def _curve(name: str, curve: Sequence[Mapping], colour: str) -> list[str]:
    points = [_xy(p["mean_predicted"], p["observed_frequency"]) for p in curve]
    path = " ".join(f"{x:.1f},{y:.1f}" for x, y in points)
    parts = [f'<polyline points="{path}" fill="none" stroke="{colour}" stroke-width="1.5">'
             f"<title>{escape(name)}</title></polyline>"]
    for (x, y), p in zip(points, curve):
        tip = escape(f"{name}: predicted {p['mean_predicted']:.3f}, observed {p['observed_frequency']:.3f}, "
                     f"{p['count']} images")
        parts.append(f'<circle cx="{x:.1f}" cy="{y:.1f}" r="2.5" fill="{colour}"><title>{tip}</title></circle>')
    return parts


def _legend(names: Sequence[str]) -> list[str]:
    x = SVG_MARGIN + SVG_SIZE + 12
    parts = []
    for k, name in enumerate(names):
        y = SVG_MARGIN / 2 + 10 + 14 * k
        colour = PALETTE[k % len(PALETTE)]
        parts.append(f'<rect x="{x}" y="{y - 8:.1f}" width="10" height="3" fill="{colour}"/>')
        parts.append(f'<text x="{x + 14}" y="{y:.1f}" font-size="10">{escape(name)}</text>')
    return parts


def reliability_svg(curves: Mapping[str, Sequence[Mapping]], title: str = "Reliability diagram") -> str:
    """A self-contained SVG reliability diagram: the diagonal (perfect
    calibration) and one line per curve ({name: reliability_curve rows}, e.g.
    {POOLED: report["reliability"][POOLED]} or a few findings'), with a legend
    and a tooltip per bin. Inline it in HTML as is."""
    width = SVG_MARGIN + SVG_SIZE + (150 if len(curves) else 20)
    height = SVG_MARGIN / 2 + SVG_SIZE + SVG_MARGIN
    body = _axes()
    for k, (name, curve) in enumerate(curves.items()):
        if curve:
            body.extend(_curve(name, curve, PALETTE[k % len(PALETTE)]))
    body.extend(_legend(list(curves)))
    return (f'<svg xmlns="http://www.w3.org/2000/svg" width="{width:.0f}" height="{height:.0f}" '
            f'viewBox="0 0 {width:.0f} {height:.0f}" role="img" aria-label={quoteattr(title)}>'
            f"<title>{escape(title)}</title>" + "".join(body) + "</svg>")


# --- recalibration ------------------------------------------------------------

def _fit_one(method: str, labels: np.ndarray, probs: np.ndarray) -> dict:
    """One finding's recalibration as JSON-ready data."""
    positives = int(labels.sum())
    if method == "none":
        return {"kind": "identity"}
    if positives == 0 or positives == len(labels):
        missing = "positives" if positives == 0 else "negatives"
        return {"kind": "identity", "note": f"no {missing} among {len(labels)} validation images: left as is"}
    if method == "platt":
        from sklearn.linear_model import LogisticRegression

        # one feature: Newton steps converge in a handful of iterations
        model = LogisticRegression(C=PLATT_C, solver="newton-cholesky").fit(logit(probs)[:, None], labels)
        return {"kind": "platt", "slope": float(model.coef_[0, 0]), "intercept": float(model.intercept_[0])}
    from sklearn.isotonic import IsotonicRegression

    model = IsotonicRegression(y_min=0.0, y_max=1.0, out_of_bounds="clip").fit(probs, labels)
    return {"kind": "isotonic", "x": [float(v) for v in model.X_thresholds_],
            "y": [float(v) for v in model.y_thresholds_]}


def fit_recalibration(method: str, y_true_val: np.ndarray, y_prob_val: np.ndarray) -> dict:
    """Fit `method` (none | platt | isotonic) per finding on validation:
    {"method", "findings": {finding: {"kind": "identity" | "platt" | "isotonic",
    platt: "slope", "intercept" (p' = sigmoid(slope * logit(p) + intercept));
    isotonic: "x", "y" (breakpoints, linear between them, clipped outside);
    identity for a finding without positives (or negatives) in val: "note"}}}."""
    if method not in RECALIBRATION_METHODS:
        raise ValueError(f"recalibration method must be one of {', '.join(RECALIBRATION_METHODS)}, got {method!r}")
    labels, probs = np.asarray(y_true_val, dtype=float), np.asarray(y_prob_val, dtype=float)
    if labels.shape != probs.shape or labels.ndim != 2 or labels.shape[1] != NUM_FINDINGS:
        raise ValueError(f"validation labels and probabilities must be (images, {NUM_FINDINGS})")
    return {"method": method,
            "findings": {f: _fit_one(method, labels[:, i], probs[:, i]) for i, f in enumerate(FINDINGS)}}


__all__ = ["apply_recalibration", "calibration_report", "fit_recalibration", "reliability_rows", "reliability_svg"]
